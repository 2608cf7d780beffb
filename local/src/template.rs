//! Reads `sam/template.yaml`, so the local stack runs what the template deploys: its functions
//! (binary, environment, timeout), its routes and authorizer, its stream and queue mappings
//! (batch size, filters, retries), its queues' redrive policy and its schedules.

pub mod document;

use std::collections::BTreeMap;
use std::path::Path;

use serde_norway::Value;

use document::{get, number, ref_of, references, scalar, Document, FunctionResource};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("parsing the template: {0}")]
    Parse(#[from] serde_norway::Error),
    #[error("template: {0}")]
    Shape(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub logical_id: String,
    pub binary: String,
    /// Variable names with their template values (`None` where the value is an intrinsic;
    /// `!Ref` to a parameter gives the parameter's default).
    pub env: BTreeMap<String, Option<String>>,
    /// Variables whose value is `!Ref` to a resource: the resource's logical id (a queue's URL).
    pub env_refs: BTreeMap<String, String>,
    pub timeout_secs: u64,
    pub memory_mb: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub route_key: String,
    /// The binary of the function its integration invokes.
    pub binary: String,
    pub authorized: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventSource {
    pub binary: String,
    /// The logical id of the table (stream) or queue it reads.
    pub source: String,
    pub batch_size: usize,
    pub maximum_retry_attempts: Option<u32>,
    /// Lambda filter patterns, as JSON.
    pub filters: Vec<serde_json::Value>,
    /// The logical id of the queue in `DestinationConfig.OnFailure` (stream mappings).
    pub on_failure: Option<String>,
    /// `ScalingConfig.MaximumConcurrency` (queue mappings): batches invoked at once.
    pub maximum_concurrency: Option<usize>,
    /// `ParallelizationFactor` (stream mappings): batches of one shard invoked at once.
    pub parallelization_factor: Option<usize>,
}

/// A function's `Schedule` event: invoked every `every`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub binary: String,
    pub every: std::time::Duration,
}

/// `rate(N minute|minutes|hour|hours|day|days)`, EventBridge's rate expressions.
pub fn parse_rate(expression: &str) -> Option<std::time::Duration> {
    let inner = expression.trim().strip_prefix("rate(")?.strip_suffix(')')?;
    let (n, unit) = inner.trim().split_once(' ')?;
    let n: u64 = n.parse().ok().filter(|n| *n > 0)?;
    let secs = match unit.trim() {
        "minute" | "minutes" => 60,
        "hour" | "hours" => 3600,
        "day" | "days" => 86_400,
        _ => return None,
    };
    Some(std::time::Duration::from_secs(n * secs))
}

#[derive(Debug, Clone, PartialEq)]
pub struct Queue {
    pub logical_id: String,
    pub max_receive_count: Option<u32>,
    pub dead_letter_queue: Option<String>,
    /// `FifoQueue: true` (a literal; a condition counts as its default, standard).
    pub fifo: bool,
}

#[derive(Debug, Clone)]
pub struct Template {
    pub functions: Vec<Function>,
    pub routes: Vec<Route>,
    /// The binary of the `$connect` authorizer.
    pub authorizer: Option<String>,
    pub event_sources: Vec<EventSource>,
    pub queues: Vec<Queue>,
    /// Functions run on a schedule (`Events` of type `Schedule`).
    pub schedules: Vec<Schedule>,
    /// Each parameter's `Default`, as text (what `wsfan dev` deploys with: it overrides none).
    pub parameter_defaults: BTreeMap<String, String>,
}

impl Template {
    pub fn load(path: &Path) -> Result<Template, TemplateError> {
        Self::from_yaml(&load_yaml(path)?)
    }

    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        Self::from_yaml(&serde_norway::from_str(text)?)
    }

    fn from_yaml(root: &Value) -> Result<Template, TemplateError> {
        let doc = Document::new(root);
        if get(root, &["Resources"]).and_then(Value::as_mapping).is_none() {
            return Err(TemplateError::Shape("no Resources".into()));
        }
        let mut functions = Vec::new();
        let mut schedules = Vec::new();
        for f in doc.functions() {
            let (function, its_schedules) = function(&doc, &f)?;
            functions.push(function);
            schedules.extend(its_schedules);
        }
        Ok(Template {
            routes: routes(&doc, &functions)?,
            authorizer: doc
                .of_type("AWS::ApiGatewayV2::Authorizer")
                .into_iter()
                .find_map(|(_, r)| binary_of(&functions, get(r, &["Properties", "AuthorizerUri"]))),
            event_sources: event_sources(&doc, &functions)?,
            queues: queues(&doc),
            schedules,
            parameter_defaults: get(root, &["Parameters"])
                .and_then(Value::as_mapping)
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), scalar(v.get("Default"))?)))
                .collect(),
            functions,
        })
    }

    pub fn function(&self, binary: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.binary == binary)
    }
}

/// `sam/template.yaml` as YAML, for [`Template::load`] and for checks that read more of it.
pub fn load_yaml(path: &Path) -> Result<Value, TemplateError> {
    let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok(serde_norway::from_str(&text)?)
}

/// A function, with its environment as the local stack sets it, and its schedules.
fn function(doc: &Document, f: &FunctionResource) -> Result<(Function, Vec<Schedule>), TemplateError> {
    let id = f.id;
    let binary = scalar(get(f.resource, &["Metadata", "BuildProperties", "Binary"]))
        .ok_or_else(|| TemplateError::Shape(format!("{id} has no Metadata.BuildProperties.Binary")))?;
    let mut schedules = Vec::new();
    for (_, event) in get(f.resource, &["Properties", "Events"])
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter(|(_, e)| scalar(e.get("Type")).as_deref() == Some("Schedule"))
    {
        let expression = scalar(get(event, &["Properties", "Schedule"])).unwrap_or_default();
        let every = parse_rate(&expression).ok_or_else(|| {
            TemplateError::Shape(format!(
                "{id}: schedule {expression:?} is not rate(N minutes|hours|days)"
            ))
        })?;
        schedules.push(Schedule {
            binary: binary.clone(),
            every,
        });
    }
    let mut env = BTreeMap::new();
    let mut env_refs = BTreeMap::new();
    for (name, v) in doc.environment(f) {
        env.insert(name.clone(), doc.resolve(Some(v)));
        if let Some(id) = ref_of(v).filter(|id| doc.resource(id).is_some()) {
            env_refs.insert(name, id.to_owned());
        }
    }
    let setting = |name: &str| number(doc.function_property(f, name));
    let function = Function {
        logical_id: id.to_owned(),
        binary,
        env,
        env_refs,
        timeout_secs: setting("Timeout").unwrap_or(3),
        memory_mb: setting("MemorySize").unwrap_or(128) as u32,
    };
    Ok((function, schedules))
}

/// The binary of the function an intrinsic (an integration's URI, a mapping's FunctionName)
/// refers to.
fn binary_of(functions: &[Function], v: Option<&Value>) -> Option<String> {
    let refs = references(v?);
    functions
        .iter()
        .find(|f| refs.contains(&f.logical_id))
        .map(|f| f.binary.clone())
}

/// The first logical id an intrinsic refers to.
fn first_reference(v: Option<&Value>) -> Option<String> {
    references(v?).into_iter().next()
}

/// The WebSocket routes, each to the function its integration invokes.
fn routes(doc: &Document, functions: &[Function]) -> Result<Vec<Route>, TemplateError> {
    let integrations: BTreeMap<&str, Option<String>> = doc
        .of_type("AWS::ApiGatewayV2::Integration")
        .into_iter()
        .map(|(id, r)| (id, binary_of(functions, get(r, &["Properties", "IntegrationUri"]))))
        .collect();
    let mut routes = Vec::new();
    for (id, r) in doc.of_type("AWS::ApiGatewayV2::Route") {
        let route_key = scalar(get(r, &["Properties", "RouteKey"]))
            .ok_or_else(|| TemplateError::Shape(format!("{id} has no RouteKey")))?;
        let target = get(r, &["Properties", "Target"]).map(references).unwrap_or_default();
        let binary = target
            .iter()
            .find_map(|t| integrations.get(t.as_str()).cloned().flatten())
            .ok_or_else(|| TemplateError::Shape(format!("route {route_key} has no Lambda integration")))?;
        let authorized = scalar(get(r, &["Properties", "AuthorizationType"])).as_deref() == Some("CUSTOM");
        routes.push(Route {
            route_key,
            binary,
            authorized,
        });
    }
    Ok(routes)
}

/// The stream and queue mappings, with what the local pollers emulate of them.
fn event_sources(doc: &Document, functions: &[Function]) -> Result<Vec<EventSource>, TemplateError> {
    let mut event_sources = Vec::new();
    for (id, r) in doc.of_type("AWS::Lambda::EventSourceMapping") {
        let p = |name: &str| get(r, &["Properties", name]);
        let binary = binary_of(functions, p("FunctionName"))
            .ok_or_else(|| TemplateError::Shape(format!("{id} names no function of the template")))?;
        let filters = get(r, &["Properties", "FilterCriteria", "Filters"])
            .and_then(Value::as_sequence)
            .map(|seq| {
                seq.iter()
                    .filter_map(|f| scalar(f.get("Pattern")))
                    .filter_map(|p| serde_json::from_str(&p).ok())
                    .collect()
            })
            .unwrap_or_default();
        event_sources.push(EventSource {
            binary,
            source: first_reference(p("EventSourceArn")).unwrap_or_default(),
            batch_size: number(p("BatchSize")).unwrap_or(10) as usize,
            maximum_retry_attempts: number(p("MaximumRetryAttempts")).map(|n| n as u32),
            filters,
            on_failure: first_reference(get(r, &["Properties", "DestinationConfig", "OnFailure", "Destination"])),
            parallelization_factor: number(p("ParallelizationFactor")).map(|n| n as usize),
            maximum_concurrency: doc
                .resolve(get(r, &["Properties", "ScalingConfig", "MaximumConcurrency"]))
                .and_then(|n| n.parse().ok()),
        });
    }
    Ok(event_sources)
}

/// The queues, with their redrive policies.
fn queues(doc: &Document) -> Vec<Queue> {
    doc.of_type("AWS::SQS::Queue")
        .into_iter()
        .map(|(id, r)| {
            let redrive = get(r, &["Properties", "RedrivePolicy"]);
            Queue {
                logical_id: id.to_owned(),
                max_receive_count: redrive.and_then(|p| number(p.get("maxReceiveCount"))).map(|n| n as u32),
                dead_letter_queue: first_reference(redrive.and_then(|p| p.get("deadLetterTargetArn"))),
                fifo: get(r, &["Properties", "FifoQueue"]).and_then(Value::as_bool) == Some(true),
            }
        })
        .collect()
}

/// Lambda's event filtering, for the patterns the template uses: exact values, `prefix`, and
/// `exists`, nested to any depth. A record passes if any pattern matches.
pub fn matches_any(patterns: &[serde_json::Value], record: &serde_json::Value) -> bool {
    patterns.is_empty() || patterns.iter().any(|p| matches(p, record))
}

fn matches(pattern: &serde_json::Value, value: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match pattern {
        J::Object(fields) => fields.iter().all(|(k, p)| match value.get(k) {
            Some(v) => matches(p, v),
            None => matches!(p, J::Array(options) if options.iter().any(|o| o.get("exists") == Some(&J::Bool(false)))),
        }),
        J::Array(options) => options.iter().any(|option| match option {
            J::Object(rule) if rule.contains_key("prefix") => value
                .as_str()
                .zip(rule["prefix"].as_str())
                .is_some_and(|(v, p)| v.starts_with(p)),
            J::Object(rule) if rule.contains_key("exists") => rule["exists"] == J::Bool(true),
            exact => exact == value,
        }),
        _ => pattern == value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_patterns_match_like_lambda() {
        let pattern: serde_json::Value =
            serde_json::from_str(r#"{"dynamodb":{"Keys":{"sk":{"S":[{"prefix":"MSG#"}]}}}}"#).unwrap();
        let record = |sk: &str| serde_json::json!({"eventName": "INSERT", "dynamodb": {"Keys": {"sk": {"S": sk}}}});
        assert!(matches_any(std::slice::from_ref(&pattern), &record("MSG#01")));
        assert!(!matches_any(std::slice::from_ref(&pattern), &record("CONN#x")));
        let exact: serde_json::Value = serde_json::from_str(r#"{"eventName":["INSERT","MODIFY"]}"#).unwrap();
        assert!(matches_any(std::slice::from_ref(&exact), &record("x")));
        assert!(!matches_any(&[exact], &serde_json::json!({"eventName": "REMOVE"})));
    }

    #[test]
    fn schedules_read_eventbridge_rates() {
        assert_eq!(parse_rate("rate(1 minute)"), Some(std::time::Duration::from_secs(60)));
        assert_eq!(parse_rate("rate(2 hours)"), Some(std::time::Duration::from_secs(7200)));
        assert_eq!(parse_rate("rate(0 minutes)"), None);
        assert_eq!(parse_rate("cron(0 * * * ? *)"), None);
        let t = Template::parse(
            "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Metadata: {BuildProperties: {Binary: f}}\n    Properties:\n      Events:\n        E: {Type: Schedule, Properties: {Schedule: rate(1 minute)}}\n",
        )
        .unwrap();
        assert_eq!(
            t.schedules,
            vec![Schedule {
                binary: "f".into(),
                every: std::time::Duration::from_secs(60)
            }]
        );
    }

    #[test]
    fn parameters_give_their_defaults() {
        let t = Template::parse(
            "Parameters:\n  FanoutMaxRps: {Type: Number, Default: 5000}\n  Alarm: {Type: String}\nResources: {}\n",
        )
        .unwrap();
        assert_eq!(
            t.parameter_defaults.get("FanoutMaxRps").map(String::as_str),
            Some("5000")
        );
        assert!(!t.parameter_defaults.contains_key("Alarm"));
    }

    #[test]
    fn references_read_short_and_long_forms() {
        let v: Value = serde_norway::from_str(
            "a: !Sub 'arn:${AWS::Region}:x/${Fn.Arn}/y'\nb: !Ref Table\nc: !GetAtt Queue.Arn\nd: {Ref: Other}",
        )
        .unwrap();
        let refs: Vec<String> = references(&v).into_iter().collect();
        assert_eq!(refs, vec!["Fn", "Other", "Queue", "Table"]);
    }
}
