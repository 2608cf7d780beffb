//! Reads `sam/template.yaml`, so the local stack runs what the template deploys: its functions
//! (binary, environment, timeout), its routes and authorizer, its stream and queue mappings
//! (batch size, filters, retries), its queues' redrive policy and its schedules.

use std::collections::BTreeMap;
use std::path::Path;

use serde_norway::Value;

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

fn get<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, key| v.get(*key))
}

fn string(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn number(v: Option<&Value>) -> Option<u64> {
    string(v)?.parse().ok()
}

/// The logical ids an intrinsic refers to: `!Ref X`, `!GetAtt X.Arn`, `${X}` / `${X.Arn}` in
/// `!Sub`, and their long forms.
pub fn references(v: &Value) -> Vec<String> {
    fn sub_refs(s: &str, out: &mut Vec<String>) {
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            rest = &rest[start + 2..];
            let Some(end) = rest.find('}') else { break };
            let name = rest[..end].split('.').next().unwrap_or("");
            if !name.contains("::") && !name.is_empty() {
                out.push(name.to_owned());
            }
            rest = &rest[end..];
        }
    }
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Tagged(t) => {
                let tag = t.tag.to_string();
                match (tag.trim_start_matches('!'), &t.value) {
                    ("Ref", Value::String(s)) => out.push(s.clone()),
                    ("GetAtt", Value::String(s)) => out.push(s.split('.').next().unwrap_or("").to_owned()),
                    ("GetAtt", Value::Sequence(seq)) => {
                        out.extend(seq.first().and_then(|x| x.as_str()).map(str::to_owned))
                    }
                    ("Sub", Value::String(s)) => sub_refs(s, out),
                    (_, inner) => walk(inner, out),
                }
            }
            Value::Mapping(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        (Some("Ref"), Value::String(s)) => out.push(s.clone()),
                        (Some("Fn::GetAtt"), Value::Sequence(seq)) => {
                            out.extend(seq.first().and_then(|x| x.as_str()).map(str::to_owned))
                        }
                        (Some("Fn::Sub"), Value::String(s)) => sub_refs(s, out),
                        _ => walk(v, out),
                    }
                }
            }
            Value::Sequence(seq) => seq.iter().for_each(|x| walk(x, out)),
            Value::String(s) => sub_refs(s, out),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, &mut out);
    out
}

fn resources_of_type<'a>(
    resources: &'a serde_norway::Mapping,
    ty: &'a str,
) -> impl Iterator<Item = (String, &'a Value)> + 'a {
    resources
        .iter()
        .filter(move |(_, r)| r.get("Type").and_then(Value::as_str) == Some(ty))
        .map(|(k, r)| (k.as_str().unwrap_or_default().to_owned(), r))
}

impl Template {
    pub fn load(path: &Path) -> Result<Template, TemplateError> {
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let doc: Value = serde_norway::from_str(text)?;
        let resources = doc
            .get("Resources")
            .and_then(Value::as_mapping)
            .ok_or_else(|| TemplateError::Shape("no Resources".into()))?;
        let by_type = |ty: &'static str| resources_of_type(resources, ty);
        let globals = get(&doc, &["Globals", "Function"]);
        // A value, or the default of the parameter it is `!Ref` to.
        let resolve = |v: Option<&Value>| -> Option<String> {
            string(v).or_else(|| match v? {
                Value::Tagged(t) if t.tag.to_string().trim_start_matches('!') == "Ref" => {
                    string(get(&doc, &["Parameters", t.value.as_str()?, "Default"]))
                }
                _ => None,
            })
        };

        let mut functions = Vec::new();
        let mut schedules = Vec::new();
        for (id, r) in by_type("AWS::Serverless::Function") {
            let binary = string(get(r, &["Metadata", "BuildProperties", "Binary"]))
                .ok_or_else(|| TemplateError::Shape(format!("{id} has no Metadata.BuildProperties.Binary")))?;
            for (_, event) in get(r, &["Properties", "Events"])
                .and_then(Value::as_mapping)
                .into_iter()
                .flatten()
                .filter(|(_, e)| string(e.get("Type")).as_deref() == Some("Schedule"))
            {
                let expression = string(get(event, &["Properties", "Schedule"])).unwrap_or_default();
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
            for vars in [
                globals.and_then(|g| get(g, &["Environment", "Variables"])),
                get(r, &["Properties", "Environment", "Variables"]),
            ]
            .into_iter()
            .flatten()
            .filter_map(Value::as_mapping)
            {
                for (k, v) in vars {
                    if let Some(name) = k.as_str() {
                        env.insert(name.to_owned(), resolve(Some(v)));
                        if let (Value::Tagged(t), [id]) = (v, references(v).as_slice()) {
                            if t.tag.to_string().trim_start_matches('!') == "Ref"
                                && resources.get(id.as_str()).is_some()
                            {
                                env_refs.insert(name.to_owned(), id.clone());
                            }
                        }
                    }
                }
            }
            let setting = |name: &str| {
                number(get(r, &["Properties", name])).or_else(|| number(globals.and_then(|g| g.get(name))))
            };
            functions.push(Function {
                logical_id: id,
                binary,
                env,
                env_refs,
                timeout_secs: setting("Timeout").unwrap_or(3),
                memory_mb: setting("MemorySize").unwrap_or(128) as u32,
            });
        }
        let binary_of = |refs: Vec<String>| {
            functions
                .iter()
                .find(|f| refs.contains(&f.logical_id))
                .map(|f| f.binary.clone())
        };

        let integrations: BTreeMap<String, Option<String>> = by_type("AWS::ApiGatewayV2::Integration")
            .map(|(id, r)| {
                (
                    id,
                    get(r, &["Properties", "IntegrationUri"])
                        .map(references)
                        .and_then(&binary_of),
                )
            })
            .collect();
        let mut routes = Vec::new();
        for (id, r) in by_type("AWS::ApiGatewayV2::Route") {
            let route_key = string(get(r, &["Properties", "RouteKey"]))
                .ok_or_else(|| TemplateError::Shape(format!("{id} has no RouteKey")))?;
            let target = get(r, &["Properties", "Target"]).map(references).unwrap_or_default();
            let binary = target
                .iter()
                .find_map(|t| integrations.get(t).cloned().flatten())
                .ok_or_else(|| TemplateError::Shape(format!("route {route_key} has no Lambda integration")))?;
            let authorized = string(get(r, &["Properties", "AuthorizationType"])).as_deref() == Some("CUSTOM");
            routes.push(Route {
                route_key,
                binary,
                authorized,
            });
        }
        let authorizer = by_type("AWS::ApiGatewayV2::Authorizer").find_map(|(_, r)| {
            get(r, &["Properties", "AuthorizerUri"])
                .map(references)
                .and_then(&binary_of)
        });

        let mut event_sources = Vec::new();
        for (id, r) in by_type("AWS::Lambda::EventSourceMapping") {
            let p = |name: &str| get(r, &["Properties", name]);
            let binary = p("FunctionName")
                .map(references)
                .and_then(&binary_of)
                .ok_or_else(|| TemplateError::Shape(format!("{id} names no function of the template")))?;
            let source = p("EventSourceArn")
                .map(references)
                .and_then(|r| r.into_iter().next())
                .unwrap_or_default();
            let filters = get(r, &["Properties", "FilterCriteria", "Filters"])
                .and_then(Value::as_sequence)
                .map(|seq| {
                    seq.iter()
                        .filter_map(|f| string(f.get("Pattern")))
                        .filter_map(|p| serde_json::from_str(&p).ok())
                        .collect()
                })
                .unwrap_or_default();
            event_sources.push(EventSource {
                binary,
                source,
                batch_size: number(p("BatchSize")).unwrap_or(10) as usize,
                maximum_retry_attempts: number(p("MaximumRetryAttempts")).map(|n| n as u32),
                filters,
                on_failure: get(r, &["Properties", "DestinationConfig", "OnFailure", "Destination"])
                    .map(references)
                    .and_then(|r| r.into_iter().next()),
                parallelization_factor: number(p("ParallelizationFactor")).map(|n| n as usize),
                maximum_concurrency: resolve(get(r, &["Properties", "ScalingConfig", "MaximumConcurrency"]))
                    .and_then(|n| n.parse().ok()),
            });
        }

        let queues = by_type("AWS::SQS::Queue")
            .map(|(id, r)| {
                let redrive = get(r, &["Properties", "RedrivePolicy"]);
                Queue {
                    logical_id: id,
                    max_receive_count: redrive.and_then(|p| number(p.get("maxReceiveCount"))).map(|n| n as u32),
                    dead_letter_queue: redrive
                        .and_then(|p| p.get("deadLetterTargetArn"))
                        .map(references)
                        .and_then(|r| r.into_iter().next()),
                    fifo: get(r, &["Properties", "FifoQueue"]).and_then(Value::as_bool) == Some(true),
                }
            })
            .collect();

        let parameter_defaults = doc
            .get("Parameters")
            .and_then(Value::as_mapping)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), string(v.get("Default"))?)))
            .collect();

        Ok(Template {
            functions,
            routes,
            authorizer,
            event_sources,
            queues,
            schedules,
            parameter_defaults,
        })
    }

    pub fn function(&self, binary: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.binary == binary)
    }
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
        let mut refs = references(&v);
        refs.sort();
        assert_eq!(refs, vec!["Fn", "Other", "Queue", "Table"]);
    }
}
