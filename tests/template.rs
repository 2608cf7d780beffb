//! `sam/template.yaml` against the code, so the two cannot drift apart: every protocol action has
//! a route to the right function, `$connect` has an authorizer that always runs, the stage deploys
//! itself, every function gets every variable its crate reads, the table is the one in
//! `shared/src/adapters/table.rs`, the stream filter lets through what stream-fanout handles, and the
//! fanouts may post to `@connections`.
//!
//! [`problems`] returns each disagreement as a sentence. The mutation tests at the bottom break a
//! copy of the template (or of what the code says) one way at a time and assert that exactly that
//! breakage is reported, so a check that silently passes everything cannot go unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{json, Value as Json};
use serde_norway::Value;
use wsfan_shared::config::{recorded_reads, FromEnv, Retention, Var};
use wsfan_shared::model::keys;
use wsfan_shared::protocol::ACTIONS;
use wsfan_shared::table::{TableSpec, TABLE};
// The local stack's reader of the template, so that what is checked here is what `wsfan dev` runs.
use wsfan_local::template::document::{
    get, getatt_of, intrinsic, number, ref_of, references, strings, sub_of, Document as Template,
};
use wsfan_local::template::{load_yaml, matches_any};

const AUTHORIZER: &str = "ws-authorizer";
const CONNECT: &str = "ws-connect";
const DISCONNECT: &str = "ws-disconnect";
const MESSAGE: &str = "ws-message";
const STREAM_FANOUT: &str = "stream-fanout";
const PROGRESS_FANOUT: &str = "progress-fanout";
const DELIVER: &str = "deliver";
const PUBLISH: &str = "publish";
const EXPIRY_SWEEP: &str = "expiry-sweep";

const OUTPUTS: &[&str] = &[
    "WebSocketUrl",
    "ConnectionsUrl",
    "TableName",
    "ProgressQueueUrl",
    "ProgressQueueArn",
    "PublishQueueUrl",
    "PublishQueueArn",
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repo")
        .to_path_buf()
}

// ---------------------------------------------------------------- what the code says

/// Everything the template is checked against, read from the code and the repository.
#[derive(Clone, Debug)]
struct Code {
    /// Route keys a client can send (`ACTIONS`); `$connect`, `$disconnect`, `$default` come on top.
    actions: Vec<String>,
    /// Binary name -> the environment variables it reads (those of each crate's `Config`).
    env: BTreeMap<String, Vec<Var>>,
    /// Every `[[bin]]` target of the workspace.
    workspace_bins: BTreeSet<String>,
    /// Directories under `events/`.
    event_dirs: BTreeSet<String>,
    table: TableSpec,
    /// Sort-key prefixes stream-fanout acts on.
    stream_prefixes: Vec<String>,
    /// The attribute that makes a new membership a history request for stream-fanout.
    history_attribute: String,
    retention: Retention,
    /// The limit per connection ws-message applies when its variables are unset.
    rate_limit: wsfan_shared::rate::RateLimit,
    /// Every CloudWatch metric the functions emit as EMF: (namespace, metric, `Function` dimension).
    emf: Vec<(String, String, String)>,
}

fn owned(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl Code {
    fn current() -> Code {
        let env = lambda_configs()
            .into_iter()
            .map(|(binary, config)| (binary.to_owned(), config.vars))
            .collect();
        Code {
            actions: owned(ACTIONS),
            env,
            workspace_bins: workspace_bins(),
            event_dirs: event_dirs(),
            table: TABLE.clone(),
            stream_prefixes: owned(stream_fanout::HANDLED_SORT_KEY_PREFIXES),
            history_attribute: stream_fanout::HISTORY_REQUEST_ATTRIBUTE.to_owned(),
            retention: Retention::default(),
            rate_limit: wsfan_shared::rate::RateLimit::default(),
            emf: emf_metrics(),
        }
    }

    fn route_keys(&self) -> Vec<String> {
        let mut keys = owned(&["$connect", "$disconnect", "$default"]);
        keys.extend(self.actions.iter().cloned());
        keys
    }

    /// The TTL variables and the defaults `shared/src/adapters/config/table.rs` gives them.
    fn ttl_defaults(&self) -> [(&'static str, i64); 4] {
        [
            ("CONNECTION_TTL_SECONDS", self.retention.connection_secs),
            ("MESSAGE_TTL_SECONDS", self.retention.message_secs),
            ("EVENT_TTL_SECONDS", self.retention.event_secs),
            ("DEDUPE_TTL_SECONDS", self.retention.dedupe_secs),
        ]
    }
}

/// What one Lambda reads from its environment: its crate's `Config`.
struct LambdaConfig {
    vars: Vec<Var>,
    reads: wsfan_shared::config::RecordedReads,
}

fn lambda_config<C: FromEnv>() -> LambdaConfig {
    LambdaConfig {
        vars: C::vars(),
        reads: recorded_reads::<C>(),
    }
}

/// Every Lambda binary, with the configuration its main loads.
fn lambda_configs() -> Vec<(&'static str, LambdaConfig)> {
    vec![
        (AUTHORIZER, lambda_config::<ws_authorizer::Config>()),
        (CONNECT, lambda_config::<ws_connect::Config>()),
        (DISCONNECT, lambda_config::<ws_disconnect::Config>()),
        (MESSAGE, lambda_config::<ws_message::Config>()),
        (STREAM_FANOUT, lambda_config::<stream_fanout::Config>()),
        (PROGRESS_FANOUT, lambda_config::<progress_fanout::Config>()),
        (DELIVER, lambda_config::<deliver::Config>()),
        (PUBLISH, lambda_config::<publish::Config>()),
        (EXPIRY_SWEEP, lambda_config::<expiry_sweep::Config>()),
    ]
}

/// The binary a route's integration must run.
fn route_binary(route_key: &str) -> &'static str {
    match route_key {
        "$connect" => CONNECT,
        "$disconnect" => DISCONNECT,
        _ => MESSAGE,
    }
}

fn workspace_bins() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO")
        .ok()
        .or_else(|| option_env!("CARGO").map(str::to_owned))
        .unwrap_or_else(|| "cargo".to_owned());
    let out = Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(repo_root())
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Json = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let mut bins = BTreeSet::new();
    for package in metadata["packages"].as_array().expect("metadata lists packages") {
        for target in package["targets"].as_array().into_iter().flatten() {
            let is_bin = target["kind"].as_array().is_some_and(|k| k.iter().any(|k| k == "bin"));
            if is_bin {
                bins.insert(target["name"].as_str().expect("targets have names").to_owned());
            }
        }
    }
    bins
}

/// The EMF metrics every function emits, found in the source rather than listed, so that a new
/// metric, a new document or a new emitter is checked without editing this test:
/// - a lambda that calls `log_emf("<function>")` emits the broadcaster's counters
///   ([`wsfan_shared::broadcaster::Counters::emf`]) under that `Function`;
/// - an EMF directive (`"CloudWatchMetrics": [...]`) in a lambda's own source is emitted by it;
/// - an EMF directive anywhere else in `shared/src` (telemetry, the publishers...) stops the test
///   until this function is told who emits it: an EMF metric no check covers is the gap this is for.
fn emf_metrics() -> Vec<(String, String, String)> {
    let counters: Json = serde_json::from_str(&wsfan_shared::broadcaster::Counters::default().emf("?")).unwrap();
    let mut counter_metrics = Vec::new();
    for directive in counters["_aws"]["CloudWatchMetrics"].as_array().unwrap() {
        assert_eq!(
            directive["Dimensions"],
            json!([["Function"]]),
            "the dashboard is by Function"
        );
        let namespace = directive["Namespace"].as_str().unwrap();
        for metric in directive["Metrics"].as_array().unwrap() {
            counter_metrics.push((namespace.to_owned(), metric["Name"].as_str().unwrap().to_owned()));
        }
    }
    let mut out = Vec::new();
    for (file, source) in rust_sources(&repo_root().join("shared/src")) {
        let directives = emf_directives_in(&source);
        if file.ends_with("broadcaster/metrics.rs") {
            let mut found = directives.clone();
            found.sort();
            let mut expected = counter_metrics.clone();
            expected.sort();
            assert_eq!(
                found,
                expected,
                "{}: the directive as written is Counters::emf's",
                file.display()
            );
        } else {
            assert!(
                directives.is_empty(),
                "{} writes EMF metrics {directives:?}: teach emf_metrics (tests/template.rs) which functions \
                 emit them, so that the dashboard check covers them",
                file.display()
            );
        }
    }
    for dir in std::fs::read_dir(repo_root().join("lambdas"))
        .unwrap()
        .filter_map(Result::ok)
    {
        let binary = dir.file_name().to_string_lossy().into_owned();
        for (file, source) in rust_sources(&dir.path().join("src")) {
            for (namespace, name) in emf_directives_in(&source) {
                out.push((namespace, name, binary.clone()));
            }
            for call in source.split("log_emf(").skip(1) {
                let function = call
                    .strip_prefix('"')
                    .and_then(|c| c.split('"').next())
                    .unwrap_or_else(|| panic!("{}: log_emf must name its function literally", file.display()));
                for (namespace, name) in &counter_metrics {
                    out.push((namespace.clone(), name.clone(), function.to_owned()));
                }
            }
        }
    }
    assert!(!out.is_empty(), "the fanouts emit EMF metrics");
    out.sort();
    out.dedup();
    out
}

/// Every `.rs` file under `dir`, with its text.
fn rust_sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
    {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            out.push((path, text));
        }
    }
    out
}

/// The (namespace, metric) of every EMF directive written in `source` as JSON, in the
/// `"CloudWatchMetrics": [{"Namespace": ..., "Metrics": [{"Name": ...}]}]` form.
fn emf_directives_in(source: &str) -> Vec<(String, String)> {
    let quoted_after = |key: &str, text: &str| -> Vec<String> {
        text.split(&format!("\"{key}\": \""))
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect()
    };
    let mut out = Vec::new();
    for directive in source.split("\"CloudWatchMetrics\": [").skip(1) {
        // The directive ends at the bracket that closes the one it opened.
        let mut depth = 1;
        let end = directive
            .char_indices()
            .find(|(_, c)| {
                match c {
                    '[' => depth += 1,
                    ']' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(directive.len(), |(i, _)| i);
        for object in directive[..end].split("\"Namespace\": \"").skip(1) {
            let namespace = object.split('"').next().unwrap_or_default().to_owned();
            out.extend(
                quoted_after("Name", object)
                    .into_iter()
                    .map(|name| (namespace.clone(), name)),
            );
        }
    }
    out
}

fn event_dirs() -> BTreeSet<String> {
    let dir = repo_root().join("events");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------- reading the template

fn template_path() -> PathBuf {
    repo_root().join("sam").join("template.yaml")
}

fn load_template() -> Value {
    let path = template_path();
    load_yaml(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------- the checks

/// Every way `doc` disagrees with `code`; empty when they agree.
fn problems(doc: &Value, code: &Code) -> Vec<String> {
    let t = Template::new(doc);
    let mut out = Vec::new();
    check_functions(&t, code, &mut out);
    check_routes(&t, code, &mut out);
    check_permissions(&t, &mut out);
    check_authorizer(&t, &mut out);
    check_stage(&t, &mut out);
    check_rate_limit(&t, code, &mut out);
    check_table(&t, code, &mut out);
    check_stream(&t, code, &mut out);
    check_progress(&t, &mut out);
    check_delivery(&t, &mut out);
    check_publish(&t, &mut out);
    check_expiry(&t, &mut out);
    check_connections(&t, code, &mut out);
    check_events(&t, code, &mut out);
    check_outputs(&t, &mut out);
    check_monitoring(&t, code, &mut out);
    out
}

fn check_functions(t: &Template, code: &Code, out: &mut Vec<String>) {
    let root = repo_root().canonicalize().expect("repo root exists");
    for f in t.functions() {
        let id = f.id;
        if get(f.resource, &["Metadata", "BuildMethod"]).and_then(Value::as_str) != Some("rust-cargolambda") {
            out.push(format!("{id}: Metadata.BuildMethod must be rust-cargolambda"));
        }
        match f.binary {
            None => out.push(format!("{id}: no Metadata.BuildProperties.Binary")),
            Some(b) if !code.workspace_bins.contains(b) => {
                out.push(format!("{id}: binary \"{b}\" is not a [[bin]] of the workspace"))
            }
            Some(_) => {}
        }
        for (name, want) in [("Runtime", "provided.al2023"), ("Handler", "bootstrap")] {
            if t.function_property(&f, name).and_then(Value::as_str) != Some(want) {
                out.push(format!("{id}: {name} must be {want}"));
            }
        }
        let arm64 = t
            .function_property(&f, "Architectures")
            .and_then(Value::as_sequence)
            .is_some_and(|a| a.len() == 1 && a[0].as_str() == Some("arm64"));
        if !arm64 {
            out.push(format!("{id}: Architectures must be [arm64]"));
        }
        let code_uri = t.function_property(&f, "CodeUri").and_then(Value::as_str);
        let at_root = code_uri
            .and_then(|uri| template_path().parent()?.join(uri).canonicalize().ok())
            .is_some_and(|dir| dir == root);
        if !at_root {
            out.push(format!("{id}: CodeUri must be the workspace root (\"../\")"));
        }
        if t.function_setting(&f, &["LoggingConfig", "LogFormat"])
            .and_then(Value::as_str)
            != Some("JSON")
        {
            out.push(format!("{id}: LoggingConfig.LogFormat must be JSON"));
        }
        let Some(binary) = f.binary else { continue };
        let env = t.environment(&f);
        // A binary the code does not build is reported above; what it reads is unknown.
        if let Some(reads) = code.env.get(binary) {
            for var in reads.iter().filter(|v| v.required) {
                if !env.contains_key(var.name) {
                    out.push(format!("{id} ({binary}): environment variable {} is not set", var.name));
                }
            }
            for name in env.keys() {
                if !reads.iter().any(|v| v.name == name.as_str()) {
                    out.push(format!("{id} ({binary}): sets {name}, which its code does not read"));
                }
            }
        }
        for (name, default) in code.ttl_defaults() {
            if let Some(value) = env.get(name).and_then(|v| v.as_str()) {
                if value.parse::<i64>().ok() != Some(default) {
                    out.push(format!(
                        "{id} ({binary}): {name} is \"{value}\", but shared/src/adapters/config/table.rs defaults to {default}"
                    ));
                }
            }
        }
        if let Some(value) = env.get("DYNAMODB_TIMEOUT_MS").and_then(|v| v.as_str()) {
            let timeout_ms = t
                .function_property(&f, "Timeout")
                .and_then(Value::as_u64)
                .map_or(3000, |s| s * 1000);
            // Three operations that time out (ws-message's longest path) still end, logged, in time.
            if value.parse::<u64>().map_or(true, |ms| ms * 3 > timeout_ms) {
                out.push(format!(
                    "{id} ({binary}): DYNAMODB_TIMEOUT_MS is \"{value}\"; three of them must fit in its {timeout_ms} ms Timeout"
                ));
            }
        }
        for statement in t.statements(&f) {
            let names_transact = strings(statement.get("Action"))
                .iter()
                .any(|a| a.as_str() == Some("dynamodb:TransactWriteItems"));
            if names_transact {
                out.push(format!(
                    "{id}: dynamodb:TransactWriteItems is not an IAM action; grant the actions inside the transaction"
                ));
            }
        }
    }
    for binary in code.env.keys() {
        let n = t
            .functions()
            .iter()
            .filter(|f| f.binary == Some(binary.as_str()))
            .count();
        if n != 1 {
            out.push(format!(
                "{n} functions build binary \"{binary}\"; the template needs exactly one"
            ));
        }
    }
}

fn check_routes(t: &Template, code: &Code, out: &mut Vec<String>) {
    let Some((api_id, api)) = t.api() else {
        out.push("no AWS::ApiGatewayV2::Api".to_owned());
        return;
    };
    let websocket = get(api, &["Properties", "ProtocolType"]).and_then(Value::as_str) == Some("WEBSOCKET");
    let selection = get(api, &["Properties", "RouteSelectionExpression"]).and_then(Value::as_str);
    if !websocket || selection != Some("$request.body.action") {
        out.push(format!(
            "{api_id}: must be ProtocolType WEBSOCKET with RouteSelectionExpression $request.body.action"
        ));
    }
    let routes: Vec<(&str, &Value)> = t.of_type("AWS::ApiGatewayV2::Route");
    let route_key = |r: &Value| {
        get(r, &["Properties", "RouteKey"])
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let expected = code.route_keys();
    for (_, r) in &routes {
        if let Some(key) = route_key(r) {
            if !expected.contains(&key) {
                out.push(format!("route \"{key}\" is in the template but not in the protocol"));
            }
        }
    }
    let responses: Vec<BTreeSet<String>> = t
        .of_type("AWS::ApiGatewayV2::RouteResponse")
        .into_iter()
        .filter_map(|(_, rr)| get(rr, &["Properties", "RouteId"]).map(references))
        .collect();
    for key in &expected {
        let Some((route_id, route)) = routes.iter().find(|(_, r)| route_key(r).as_ref() == Some(key)) else {
            out.push(format!("route \"{key}\" is missing"));
            continue;
        };
        let want = route_binary(key);
        let function_id = get(route, &["Properties", "Target"])
            .map(references)
            .into_iter()
            .flatten()
            .filter_map(|integration| t.resource(&integration))
            .filter(|i| get(i, &["Properties", "IntegrationType"]).and_then(Value::as_str) == Some("AWS_PROXY"))
            .filter_map(|i| get(i, &["Properties", "IntegrationUri"]).map(references))
            .flatten()
            .find(|id| t.binary_of(id) == Some(want));
        let Some(function_id) = function_id else {
            out.push(format!("route \"{key}\": its integration must be AWS_PROXY to {want}"));
            continue;
        };
        let allowed = t.apigateway_permissions(&function_id).iter().any(|arn| {
            arn.contains(&format!("${{{api_id}}}/")) && (arn.ends_with(&format!("/{key}")) || arn.ends_with("/*"))
        });
        if !allowed {
            out.push(format!(
                "route \"{key}\": no Lambda permission lets API Gateway invoke {function_id} for it"
            ));
        }
        // ws-message answers its caller (acks, history, pong, error frames): that takes a route response.
        if want == MESSAGE {
            let selects = get(route, &["Properties", "RouteResponseSelectionExpression"]).is_some();
            if !selects || !responses.iter().any(|r| r.contains(*route_id)) {
                out.push(format!(
                    "route \"{key}\": no route response, so its answer never reaches the caller"
                ));
            }
        }
    }
}

/// One permission per function covers all of its routes, and it is limited to this API's stage.
fn check_permissions(t: &Template, out: &mut Vec<String>) {
    let (Some((api_id, _)), Some(stage)) = (t.api(), t.stage_segment()) else {
        return;
    };
    for binary in [CONNECT, DISCONNECT, MESSAGE] {
        let Some(function) = t.function(binary) else { continue };
        let arns = t.apigateway_permissions(function.id);
        if arns.len() > 1 {
            out.push(format!(
                "{}: {} Lambda permissions for API Gateway; one per function covers all of its routes",
                function.id,
                arns.len()
            ));
        }
        for arn in arns {
            if !arn.contains(&format!("${{{api_id}}}/{stage}/")) {
                out.push(format!(
                    "{}: permission {arn} is not limited to the stage {stage}",
                    function.id
                ));
            }
        }
    }
}

fn check_authorizer(t: &Template, out: &mut Vec<String>) {
    let connect = t
        .of_type("AWS::ApiGatewayV2::Route")
        .into_iter()
        .find(|(_, r)| get(r, &["Properties", "RouteKey"]).and_then(Value::as_str) == Some("$connect"));
    let Some((_, connect)) = connect else { return };
    if get(connect, &["Properties", "AuthorizationType"]).and_then(Value::as_str) != Some("CUSTOM") {
        out.push("route \"$connect\": AuthorizationType must be CUSTOM".to_owned());
    }
    let authorizer = get(connect, &["Properties", "AuthorizerId"])
        .and_then(ref_of)
        .and_then(|id| Some((id, t.resource(id)?)));
    let Some((authorizer_id, authorizer)) = authorizer else {
        out.push("route \"$connect\": no authorizer attached".to_owned());
        return;
    };
    let props = |name: &str| get(authorizer, &["Properties", name]);
    let function_id = props("AuthorizerUri")
        .map(references)
        .into_iter()
        .flatten()
        .find(|id| t.binary_of(id) == Some(AUTHORIZER));
    let request = props("AuthorizerType").and_then(Value::as_str) == Some("REQUEST");
    if !request || function_id.is_none() {
        out.push(format!(
            "{authorizer_id}: must be a REQUEST authorizer running {AUTHORIZER}"
        ));
    }
    let has_source = match props("IdentitySource") {
        None | Some(Value::Null) => false,
        Some(Value::Sequence(seq)) => !seq.is_empty(),
        Some(_) => true,
    };
    if has_source {
        out.push(format!(
            "{authorizer_id}: has an IdentitySource, so API Gateway refuses a connection without one before the authorizer runs"
        ));
    }
    if let Some(function_id) = function_id {
        let allowed = t
            .apigateway_permissions(&function_id)
            .iter()
            .any(|arn| arn.contains("/authorizers/"));
        if !allowed {
            out.push(format!(
                "{authorizer_id}: no Lambda permission lets API Gateway invoke {function_id}"
            ));
        }
    }
}

fn check_stage(t: &Template, out: &mut Vec<String>) {
    let Some((id, stage)) = t.stage() else {
        out.push("no AWS::ApiGatewayV2::Stage".to_owned());
        return;
    };
    let props = |name: &str| get(stage, &["Properties", name]);
    if props("AutoDeploy").and_then(Value::as_bool) != Some(true) {
        out.push(format!(
            "{id}: AutoDeploy must be true, or the stage stays on an old deployment after a change"
        ));
    }
    if props("DeploymentId").is_some() {
        out.push(format!("{id}: DeploymentId pins the stage to one deployment"));
    }
    if get(stage, &["Properties", "AccessLogSettings", "DestinationArn"]).is_none() {
        out.push(format!("{id}: no access logging"));
    }
    let throttled = ["ThrottlingRateLimit", "ThrottlingBurstLimit"]
        .iter()
        .all(|k| get(stage, &["Properties", "DefaultRouteSettings", k]).is_some());
    if !throttled {
        out.push(format!("{id}: no default route throttling"));
    }
    // SECURITY.md promises that message bodies (and tokens in $connect queries) are never logged.
    if get(stage, &["Properties", "DefaultRouteSettings", "DataTraceEnabled"]).and_then(Value::as_bool) != Some(false) {
        out.push(format!(
            "{id}: DataTraceEnabled must be false, or API Gateway logs message bodies"
        ));
    }
}

/// The limit per connection and the stage's throttle per route agree: the code's defaults are the
/// template's, and one connection within its limit never meets the stage's throttle, which is
/// shared by every client (API Gateway's 429 there is no `rate_limited` a client can act on).
fn check_rate_limit(t: &Template, code: &Code, out: &mut Vec<String>) {
    let Some(f) = t.functions().into_iter().find(|f| f.binary == Some(MESSAGE)) else {
        return;
    };
    let env = t.environment(&f);
    let number = |name: &str| {
        env.get(name)
            .and_then(|v| v.as_str())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let limit = code.rate_limit;
    let (rate, burst) = (number("RATE_LIMIT_PER_SECOND"), number("RATE_LIMIT_BURST"));
    for (name, value, default) in [
        ("RATE_LIMIT_PER_SECOND", rate, limit.per_second),
        ("RATE_LIMIT_BURST", burst, limit.burst),
    ] {
        if value != Some(u64::from(default)) {
            out.push(format!(
                "{} ({MESSAGE}): {name} is {value:?}, but shared/src/domain/rate.rs defaults to {default}",
                f.id
            ));
        }
    }
    let Some((id, stage)) = t.stage() else { return };
    let stage_number = |k: &str| {
        get(stage, &["Properties", "DefaultRouteSettings", k])
            .and_then(|v| v.as_f64().or_else(|| v.as_str()?.parse().ok()))
    };
    for (k, per_connection) in [("ThrottlingRateLimit", rate), ("ThrottlingBurstLimit", burst)] {
        if let (Some(stage_limit), Some(per_connection)) = (stage_number(k), per_connection) {
            if stage_limit < per_connection as f64 * 10.0 {
                out.push(format!(
                    "{id}: DefaultRouteSettings.{k} {stage_limit} is under ten connections at their own limit ({per_connection} each)"
                ));
            }
        }
    }
}

/// A DynamoDB key schema as `[(attribute, HASH|RANGE)]`.
fn key_schema(v: Option<&Value>) -> Vec<(String, String)> {
    strings(v)
        .into_iter()
        .filter_map(|k| {
            Some((
                k.get("AttributeName")?.as_str()?.to_owned(),
                k.get("KeyType")?.as_str()?.to_owned(),
            ))
        })
        .collect()
}

fn keys_of(partition: &str, sort: &str) -> Vec<(String, String)> {
    vec![
        (partition.to_owned(), "HASH".to_owned()),
        (sort.to_owned(), "RANGE".to_owned()),
    ]
}

fn check_table(t: &Template, code: &Code, out: &mut Vec<String>) {
    let tables = t.of_type("AWS::DynamoDB::Table");
    let [(id, table)] = tables.as_slice() else {
        out.push(format!("expected one AWS::DynamoDB::Table, found {}", tables.len()));
        return;
    };
    let spec = &code.table;
    let props = |path: &[&str]| {
        let mut full = vec!["Properties"];
        full.extend_from_slice(path);
        get(table, &full)
    };
    let keys = key_schema(props(&["KeySchema"]));
    let want = keys_of(spec.partition_key, spec.sort_key);
    if keys != want {
        out.push(format!(
            "{id}: KeySchema is {keys:?}; shared/src/adapters/table.rs has {want:?}"
        ));
    }
    let attributes: BTreeMap<&str, &str> = strings(props(&["AttributeDefinitions"]))
        .into_iter()
        .filter_map(|a| Some((a.get("AttributeName")?.as_str()?, a.get("AttributeType")?.as_str()?)))
        .collect();
    let mut key_attributes = vec![spec.partition_key, spec.sort_key];
    for index in spec.indexes {
        key_attributes.extend([index.partition_key, index.sort_key]);
    }
    for name in key_attributes {
        if attributes.get(name) != Some(&"S") {
            out.push(format!("{id}: attribute {name} must be defined as a string (S)"));
        }
    }
    let indexes = strings(props(&["GlobalSecondaryIndexes"]));
    let index_name = |i: &Value| i.get("IndexName").and_then(Value::as_str).map(str::to_owned);
    for spec_index in spec.indexes {
        let Some(index) = indexes
            .iter()
            .find(|i| index_name(i).as_deref() == Some(spec_index.name))
        else {
            out.push(format!("{id}: index {} is missing", spec_index.name));
            continue;
        };
        let keys = key_schema(index.get("KeySchema"));
        let want = keys_of(spec_index.partition_key, spec_index.sort_key);
        if keys != want {
            out.push(format!(
                "{id}: index {} has keys {keys:?}; shared/src/adapters/table.rs has {want:?}",
                spec_index.name
            ));
        }
        if get(index, &["Projection", "ProjectionType"]).and_then(Value::as_str) != Some("ALL") {
            out.push(format!("{id}: index {} must project ALL", spec_index.name));
        }
    }
    for index in &indexes {
        let name = index_name(index).unwrap_or_default();
        if !spec.indexes.iter().any(|i| i.name == name) {
            out.push(format!("{id}: index {name} is not in shared/src/adapters/table.rs"));
        }
    }
    if props(&["StreamSpecification", "StreamViewType"]).and_then(Value::as_str) != Some(spec.stream_view) {
        out.push(format!("{id}: StreamViewType must be {}", spec.stream_view));
    }
    let ttl_on = props(&["TimeToLiveSpecification", "Enabled"]).and_then(Value::as_bool) == Some(true);
    let ttl_attribute = props(&["TimeToLiveSpecification", "AttributeName"]).and_then(Value::as_str);
    if !ttl_on || ttl_attribute != Some(spec.ttl_attribute) {
        out.push(format!("{id}: TTL must be enabled on {}", spec.ttl_attribute));
    }
    if props(&["BillingMode"]).and_then(Value::as_str) != Some("PAY_PER_REQUEST") {
        out.push(format!("{id}: BillingMode must be PAY_PER_REQUEST"));
    }
    if props(&["PointInTimeRecoverySpecification", "PointInTimeRecoveryEnabled"]).and_then(Value::as_bool) != Some(true)
    {
        out.push(format!("{id}: point-in-time recovery must be enabled"));
    }
}

fn stream_record(event_name: &str, sort_key: &str) -> Json {
    json!({
        "eventName": event_name,
        "eventSource": "aws:dynamodb",
        "dynamodb": {
            "Keys": {"pk": {"S": "CHAN#workspace:42"}, "sk": {"S": sort_key}},
            "StreamViewType": "NEW_AND_OLD_IMAGES"
        }
    })
}

fn check_stream(t: &Template, code: &Code, out: &mut Vec<String>) {
    let from_stream = t.mappings_into(STREAM_FANOUT).into_iter().find(|m| {
        get(m, &["Properties", "EventSourceArn"])
            .and_then(getatt_of)
            .is_some_and(|(id, attr)| {
                attr == "StreamArn" && t.of_type("AWS::DynamoDB::Table").iter().any(|(table, _)| *table == id)
            })
    });
    let Some(mapping) = from_stream else {
        out.push(format!(
            "no event source mapping feeds the table's stream to {STREAM_FANOUT}"
        ));
        return;
    };
    let props = |path: &[&str]| {
        let mut full = vec!["Properties"];
        full.extend_from_slice(path);
        get(mapping, &full)
    };
    let reports_items = strings(props(&["FunctionResponseTypes"]))
        .iter()
        .any(|v| v.as_str() == Some("ReportBatchItemFailures"));
    if !reports_items {
        out.push("stream mapping: FunctionResponseTypes must include ReportBatchItemFailures".to_owned());
    }
    if props(&["BisectBatchOnFunctionError"]).and_then(Value::as_bool) != Some(true) {
        out.push("stream mapping: BisectBatchOnFunctionError must be true".to_owned());
    }
    for bounded in ["MaximumRetryAttempts", "MaximumRecordAgeInSeconds"] {
        // -1 (the default) means forever: one poison record would block its shard for a day.
        if props(&[bounded]).and_then(Value::as_i64).is_none_or(|n| n < 0) {
            out.push(format!("stream mapping: {bounded} must be set and bounded"));
        }
    }
    if props(&["DestinationConfig", "OnFailure", "Destination"]).is_none() {
        out.push("stream mapping: no on-failure destination".to_owned());
    }
    if props(&["ParallelizationFactor"]).is_none() {
        out.push("stream mapping: no ParallelizationFactor".to_owned());
    }
    let patterns: Vec<Json> = strings(props(&["FilterCriteria", "Filters"]))
        .into_iter()
        .filter_map(|f| f.get("Pattern")?.as_str())
        .map(|p| serde_json::from_str(p).unwrap_or_else(|e| panic!("filter pattern {p} is not JSON: {e}")))
        .collect();
    let events = ["INSERT", "MODIFY", "REMOVE"];
    for prefix in &code.stream_prefixes {
        let sort_key = format!("{prefix}01JD0000000000000000000000");
        if !events
            .iter()
            .any(|e| matches_any(&patterns, &stream_record(e, &sort_key)))
        {
            out.push(format!(
                "stream filter drops {prefix} records, which {STREAM_FANOUT} handles"
            ));
        }
    }
    // A new membership that asks for history is work; every other membership change is not.
    let mut request = stream_record("INSERT", &keys::connection("L0SM9cOFvHcCIhw="));
    request["dynamodb"]["NewImage"] = json!({(code.history_attribute.as_str()): {"N": "50"}});
    if !matches_any(&patterns, &request) {
        out.push(format!(
            "stream filter drops new memberships with \"{}\", which {STREAM_FANOUT} answers with history",
            code.history_attribute
        ));
    }
    let failure_queue = props(&["DestinationConfig", "OnFailure", "Destination"]).and_then(getatt_of);
    let told = t.function(STREAM_FANOUT).and_then(|f| {
        t.environment(&f)
            .get("FAILURE_QUEUE_URL")
            .copied()
            .and_then(ref_of)
            .map(str::to_owned)
    });
    if failure_queue.as_ref().map(|(id, _)| id) != told.as_ref() {
        out.push(format!(
            "{STREAM_FANOUT}: FAILURE_QUEUE_URL must !Ref the stream mapping's on-failure queue"
        ));
    }
    // Item kinds stream-fanout does not act on must not cost an invocation.
    let others = [
        keys::META.to_owned(),
        keys::connection("L0SM9cOFvHcCIhw="),
        keys::dedupe("user-1", "c1"),
        keys::PROGRESS.to_owned(),
    ];
    for sort_key in others {
        let handled = code.stream_prefixes.iter().any(|p| sort_key.starts_with(p.as_str()));
        if !handled
            && events
                .iter()
                .any(|e| matches_any(&patterns, &stream_record(e, &sort_key)))
        {
            out.push(format!(
                "stream filter lets \"{sort_key}\" records through, which {STREAM_FANOUT} ignores"
            ));
        }
    }
}

/// The event source mapping that feeds an SQS queue to `binary`, with the queue.
fn queue_mapping<'a>(t: &Template<'a>, binary: &str) -> Option<(&'a Value, (&'a str, &'a Value))> {
    let queues = t.of_type("AWS::SQS::Queue");
    t.mappings_into(binary).into_iter().find_map(|m| {
        let (id, _) = get(m, &["Properties", "EventSourceArn"]).and_then(getatt_of)?;
        let queue = queues.iter().find(|(q, _)| *q == id)?;
        Some((m, *queue))
    })
}

fn check_progress(t: &Template, out: &mut Vec<String>) {
    let Some((mapping, (queue_id, queue))) = queue_mapping(t, PROGRESS_FANOUT) else {
        out.push(format!(
            "no event source mapping feeds an SQS queue to {PROGRESS_FANOUT}"
        ));
        return;
    };
    let reports_items = strings(get(mapping, &["Properties", "FunctionResponseTypes"]))
        .iter()
        .any(|v| v.as_str() == Some("ReportBatchItemFailures"));
    if !reports_items {
        out.push("progress mapping: FunctionResponseTypes must include ReportBatchItemFailures".to_owned());
    }
    if get(mapping, &["Properties", "ScalingConfig", "MaximumConcurrency"]).is_none() {
        out.push("progress mapping: no ScalingConfig.MaximumConcurrency".to_owned());
    }
    let redrive = get(queue, &["Properties", "RedrivePolicy"]);
    let dlq = redrive
        .and_then(|r| r.get("deadLetterTargetArn"))
        .and_then(getatt_of)
        .and_then(|(id, _)| Some((id.clone(), t.resource(&id)?)));
    let max_receive = redrive.and_then(|r| r.get("maxReceiveCount")).is_some();
    let Some((dlq_id, dlq)) = dlq.filter(|_| max_receive) else {
        out.push(format!(
            "{queue_id}: needs a RedrivePolicy with a dead-letter queue and maxReceiveCount"
        ));
        return;
    };
    if get(queue, &["Properties", "FifoQueue"]) != get(dlq, &["Properties", "FifoQueue"]) {
        out.push(format!(
            "{queue_id} and its dead-letter queue {dlq_id} must be FIFO under the same condition"
        ));
    }
    for (id, q) in [(queue_id, queue), (dlq_id.as_str(), dlq)] {
        // FifoQueue: !If [Cond, true, …] pairs with QueueName: !If [Cond, "….fifo", …].
        let fifo_if = get(q, &["Properties", "FifoQueue"]).and_then(|v| intrinsic(v, "If"));
        let name_if = get(q, &["Properties", "QueueName"]).and_then(|v| intrinsic(v, "If"));
        let (Some(Value::Sequence(fifo)), Some(Value::Sequence(name))) = (fifo_if, name_if) else {
            continue;
        };
        let fifo_branch = if fifo.get(1).and_then(Value::as_bool) == Some(true) {
            1
        } else {
            2
        };
        let fifo_name = name.get(fifo_branch).and_then(|n| sub_of(n).or(n.as_str()));
        if fifo.first() != name.first() || !fifo_name.is_some_and(|n| n.ends_with(".fifo")) {
            out.push(format!("{id}: a FIFO queue's name must end in .fifo"));
        }
    }
}

/// The publish queue: FIFO (one group per channel keeps a backend's order), no content-based
/// deduplication (two equal bodies are two messages), a FIFO dead-letter queue, per-item
/// failures; and a function that can do the numbered post and nothing more (check_connections
/// already refuses it @connections, which it never calls).
fn check_publish(t: &Template, out: &mut Vec<String>) {
    let Some((mapping, (queue_id, queue))) = queue_mapping(t, PUBLISH) else {
        out.push(format!("no event source mapping feeds an SQS queue to {PUBLISH}"));
        return;
    };
    let reports_items = strings(get(mapping, &["Properties", "FunctionResponseTypes"]))
        .iter()
        .any(|v| v.as_str() == Some("ReportBatchItemFailures"));
    if !reports_items {
        out.push("publish mapping: FunctionResponseTypes must include ReportBatchItemFailures".to_owned());
    }
    if get(queue, &["Properties", "FifoQueue"]).and_then(Value::as_bool) != Some(true) {
        out.push(format!("{queue_id}: must be FIFO, one message group per channel"));
    }
    if get(queue, &["Properties", "ContentBasedDeduplication"]).and_then(Value::as_bool) == Some(true) {
        out.push(format!(
            "{queue_id}: ContentBasedDeduplication would drop a second equal message; producers send deduplication ids"
        ));
    }
    let dlq = get(queue, &["Properties", "RedrivePolicy", "deadLetterTargetArn"])
        .and_then(getatt_of)
        .and_then(|(id, _)| t.resource(&id));
    let fifo_dlq = dlq
        .and_then(|d| get(d, &["Properties", "FifoQueue"]))
        .and_then(Value::as_bool)
        == Some(true);
    if !fifo_dlq || get(queue, &["Properties", "RedrivePolicy", "maxReceiveCount"]).is_none() {
        out.push(format!(
            "{queue_id}: needs a RedrivePolicy to a FIFO dead-letter queue with maxReceiveCount"
        ));
    }
    let Some(f) = t.function(PUBLISH) else { return };
    let allowed = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem"];
    for statement in t.statements(&f) {
        for action in strings(statement.get("Action")) {
            let Some(action) = action.as_str() else { continue };
            if action.starts_with("dynamodb:") && !allowed.contains(&action) {
                out.push(format!("{}: {action} is more than the numbered post needs", f.id));
            }
        }
    }
}

/// Token expiry: the sweep runs at least every minute (a connection is closed within a minute of
/// its token's `exp`), may post to and close connections of the stage and nothing else of the
/// API, and touches only what the sweep needs of the table. `auth` verifies tokens with the
/// authorizer's very settings, or a refresh would accept what `$connect` refuses.
fn check_expiry(t: &Template, out: &mut Vec<String>) {
    let Some(f) = t.function(EXPIRY_SWEEP) else { return };
    let id = f.id;
    let schedules: Vec<&str> = get(f.resource, &["Properties", "Events"])
        .and_then(Value::as_mapping)
        .into_iter()
        .flatten()
        .filter(|(_, e)| get(e, &["Type"]).and_then(Value::as_str) == Some("Schedule"))
        .filter_map(|(_, e)| get(e, &["Properties", "Schedule"]).and_then(Value::as_str))
        .collect();
    if !schedules.contains(&"rate(1 minute)") {
        out.push(format!(
            "{id}: needs a Schedule event rate(1 minute), or expired connections stay open longer than a minute (has {schedules:?})"
        ));
    }
    let allowed = [
        "dynamodb:GetItem",
        "dynamodb:Query",
        "dynamodb:PutItem",
        "dynamodb:DeleteItem",
        "dynamodb:UpdateItem",
        "execute-api:ManageConnections",
    ];
    for statement in t.statements(&f) {
        for action in strings(statement.get("Action")) {
            let Some(action) = action.as_str() else { continue };
            if !allowed.contains(&action) {
                out.push(format!("{id}: {action} is more than the sweep needs"));
            }
            if action == "execute-api:ManageConnections" {
                for r in strings(statement.get("Resource")) {
                    let tail_ok = sub_of(r).is_some_and(|arn| {
                        arn.ends_with("/POST/@connections/*") || arn.ends_with("/DELETE/@connections/*")
                    });
                    if !tail_ok {
                        out.push(format!(
                            "{id}: ManageConnections on {r:?}; only POST and DELETE @connections/*"
                        ));
                    }
                }
            }
        }
    }
    let (Some(authorizer), Some(message)) = (t.function(AUTHORIZER), t.function(MESSAGE)) else {
        return;
    };
    let (a, m) = (t.environment(&authorizer), t.environment(&message));
    for name in [
        "JWT_SECRET",
        "JWKS_URL",
        "JWT_AUDIENCE",
        "JWT_ISSUER",
        "JWT_LEEWAY_SECONDS",
    ] {
        if a.get(name) != m.get(name) {
            out.push(format!(
                "{} ({MESSAGE}): {name} differs from the authorizer's; `auth` must verify tokens as $connect does",
                message.id
            ));
        }
    }
}

/// A parameter's default, as a number.
fn parameter_default(t: &Template, name: &str) -> Option<u64> {
    number(get(t.root, &["Parameters", name, "Default"]))
}

/// Sharded delivery: a FIFO delivery queue with a FIFO DLQ, read by deliver with item failures and
/// a bounded concurrency; the queue is where the fanouts send shards; sends only to those queues;
/// and every poster draws on the one FanoutMaxRps budget.
fn check_delivery(t: &Template, out: &mut Vec<String>) {
    let queues = t.of_type("AWS::SQS::Queue");
    let from_queue = t.mappings_into(DELIVER).into_iter().find_map(|m| {
        let (id, _) = get(m, &["Properties", "EventSourceArn"]).and_then(getatt_of)?;
        let queue = queues.iter().find(|(q, _)| *q == id)?;
        Some((m, *queue))
    });
    let Some((mapping, (queue_id, queue))) = from_queue else {
        out.push(format!("no event source mapping feeds an SQS queue to {DELIVER}"));
        return;
    };
    let reports_items = strings(get(mapping, &["Properties", "FunctionResponseTypes"]))
        .iter()
        .any(|v| v.as_str() == Some("ReportBatchItemFailures"));
    if !reports_items {
        out.push("deliver mapping: FunctionResponseTypes must include ReportBatchItemFailures".to_owned());
    }
    let concurrency = get(mapping, &["Properties", "ScalingConfig", "MaximumConcurrency"]);
    let deliver_concurrency = match concurrency {
        Some(v) => ref_of(v).and_then(|p| parameter_default(t, p)).or_else(|| v.as_u64()),
        None => {
            out.push("deliver mapping: no ScalingConfig.MaximumConcurrency".to_owned());
            None
        }
    };
    if deliver_concurrency.is_some_and(|c| c > u64::from(wsfan_shared::shard::GROUPS)) {
        out.push(format!(
            "deliver mapping: MaximumConcurrency above the {} message groups of a channel is never used",
            wsfan_shared::shard::GROUPS
        ));
    }
    let is_fifo = |q: &Value| get(q, &["Properties", "FifoQueue"]).and_then(Value::as_bool) == Some(true);
    if !is_fifo(queue) {
        out.push(format!(
            "{queue_id}: the delivery queue must be FIFO (each recipient's frames in order)"
        ));
    }
    let redrive = get(queue, &["Properties", "RedrivePolicy"]);
    let dlq = redrive
        .and_then(|r| r.get("deadLetterTargetArn"))
        .and_then(getatt_of)
        .map(|(id, _)| id);
    let Some(dlq_id) = dlq.filter(|_| redrive.and_then(|r| r.get("maxReceiveCount")).is_some()) else {
        out.push(format!(
            "{queue_id}: needs a RedrivePolicy with a dead-letter queue and maxReceiveCount"
        ));
        return;
    };
    if !t.resource(&dlq_id).is_some_and(is_fifo) {
        out.push(format!("{dlq_id}: the dead-letter queue of a FIFO queue must be FIFO"));
    }
    // Who sends to the delivery queue, and where deliver parks.
    for f in t.functions() {
        let Some(binary) = f.binary else { continue };
        let env = t.environment(&f);
        let expect = [("DELIVERY_QUEUE_URL", queue_id), ("DELIVERY_DLQ_URL", dlq_id.as_str())];
        for (name, want) in expect {
            if let Some(v) = env.get(name) {
                if ref_of(v) != Some(want) {
                    out.push(format!("{} ({binary}): {name} must be !Ref {want}", f.id));
                }
            }
        }
        let sends: BTreeSet<String> = t
            .statements(&f)
            .into_iter()
            .filter(|st| {
                strings(st.get("Action"))
                    .iter()
                    .any(|a| a.as_str() == Some("sqs:SendMessage"))
            })
            .flat_map(|st| strings(st.get("Resource")))
            .filter_map(getatt_of)
            .map(|(id, _)| id)
            .collect();
        if env.contains_key("DELIVERY_QUEUE_URL") && !sends.contains(queue_id) {
            out.push(format!("{} ({binary}): may not sqs:SendMessage to {queue_id}", f.id));
        }
        if env.contains_key("DELIVERY_DLQ_URL") && !sends.contains(&dlq_id) {
            out.push(format!("{} ({binary}): may not sqs:SendMessage to {dlq_id}", f.id));
        }
        if binary == DELIVER {
            let allowed = BTreeSet::from([queue_id.to_owned(), dlq_id.clone()]);
            if let Some(extra) = sends.difference(&allowed).next() {
                out.push(format!("{} ({binary}): sends to {extra}, beyond its queues", f.id));
            }
        }
        // Every poster's budget comes from the same two parameters.
        if let Some(v) = env.get("FANOUT_MAX_RPS") {
            if ref_of(v) != Some("FanoutMaxRps") {
                out.push(format!("{} ({binary}): FANOUT_MAX_RPS must be !Ref FanoutMaxRps", f.id));
            }
        }
    }
}

fn check_connections(t: &Template, code: &Code, out: &mut Vec<String>) {
    let (Some((api_id, _)), Some(stage)) = (t.api(), t.stage_segment()) else {
        return;
    };
    let arn_tail =
        format!(":execute-api:${{AWS::Region}}:${{AWS::AccountId}}:${{{api_id}}}/{stage}/POST/@connections/*");
    let endpoints = [
        format!("https://${{{api_id}}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{stage}"),
        format!("https://${{{api_id}}}.execute-api.${{AWS::Region}}.amazonaws.com/{stage}"),
    ];
    for f in t.functions() {
        let Some(binary) = f.binary else { continue };
        let id = f.id;
        let posts = code
            .env
            .get(binary)
            .is_some_and(|vars| vars.iter().any(|v| v.name == "CONNECTIONS_ENDPOINT"));
        let manages: Vec<&Value> = t
            .statements(&f)
            .into_iter()
            .filter(|s| {
                s.get("Effect").and_then(Value::as_str) == Some("Allow")
                    && strings(s.get("Action"))
                        .iter()
                        .any(|a| a.as_str() == Some("execute-api:ManageConnections"))
            })
            .collect();
        if !posts {
            if !manages.is_empty() {
                out.push(format!(
                    "{id} ({binary}): has execute-api:ManageConnections but never posts to @connections"
                ));
            }
            continue;
        }
        let on_stage = manages.iter().flat_map(|s| strings(s.get("Resource"))).any(|r| {
            sub_of(r).is_some_and(|arn| {
                arn.strip_suffix(arn_tail.as_str())
                    .is_some_and(|head| head == "arn:${AWS::Partition}" || head == "arn:aws")
            })
        });
        if !on_stage {
            out.push(format!(
                "{id} ({binary}): no execute-api:ManageConnections on POST @connections/* of the stage"
            ));
        }
        let endpoint = t.environment(&f).get("CONNECTIONS_ENDPOINT").copied().and_then(sub_of);
        if !endpoint.is_some_and(|e| endpoints.iter().any(|want| e.trim_end_matches('/') == want)) {
            out.push(format!(
                "{id} ({binary}): CONNECTIONS_ENDPOINT must be the stage's own https://{{api}}.execute-api.{{region}}.amazonaws.com/{{stage}}"
            ));
        }
    }
}

fn check_events(t: &Template, code: &Code, out: &mut Vec<String>) {
    for dir in &code.event_dirs {
        if t.function(dir).is_none() {
            out.push(format!("events/{dir}/ names no function of the template"));
        }
    }
}

fn check_outputs(t: &Template, out: &mut Vec<String>) {
    for name in OUTPUTS {
        if get(t.root, &["Outputs", *name, "Value"]).is_none() {
            out.push(format!("output {name} is missing"));
        }
    }
}

/// A metric as the dashboard or an alarm names it; dimension values that refer to resources are
/// written `${Id}` / `${Id.Attr}`, as in a `!Sub` string.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct MetricName {
    namespace: String,
    name: String,
    dimensions: BTreeMap<String, String>,
}

fn metric(namespace: &str, name: &str, dimensions: &[(&str, &str)]) -> MetricName {
    MetricName {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        dimensions: dimensions.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }
}

/// Every metric on the dashboards' metric widgets (`"."` repeats the row above's value).
fn dashboard_metrics(t: &Template) -> Vec<MetricName> {
    let mut out = Vec::new();
    for (id, dashboard) in t.of_type("AWS::CloudWatch::Dashboard") {
        let body = get(dashboard, &["Properties", "DashboardBody"]);
        let body = body
            .and_then(sub_of)
            .or_else(|| body.and_then(Value::as_str))
            .unwrap_or_default();
        let body: Json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{id}'s DashboardBody is not JSON: {e}"));
        for widget in body["widgets"].as_array().into_iter().flatten() {
            let mut previous: Vec<Json> = Vec::new();
            for row in widget["properties"]["metrics"].as_array().into_iter().flatten() {
                let mut row: Vec<Json> = row.as_array().cloned().unwrap_or_default();
                if row.last().is_some_and(Json::is_object) {
                    row.pop();
                }
                for (i, cell) in row.iter_mut().enumerate() {
                    if cell == "." {
                        *cell = previous.get(i).cloned().unwrap_or(Json::Null);
                    }
                }
                let text: Vec<&str> = row.iter().filter_map(Json::as_str).collect();
                if text.len() >= 2 && text.len().is_multiple_of(2) {
                    out.push(MetricName {
                        namespace: text[0].to_owned(),
                        name: text[1].to_owned(),
                        dimensions: text[2..]
                            .chunks(2)
                            .map(|p| (p[0].to_owned(), p[1].to_owned()))
                            .collect(),
                    });
                }
                previous = row;
            }
        }
    }
    out
}

/// A dimension value: a literal, or `${Id}` for `!Ref Id`, or `${Id.Attr}` for `!GetAtt Id.Attr`.
fn dimension_value(v: &Value) -> String {
    if let Some(name) = ref_of(v) {
        format!("${{{name}}}")
    } else if let Some((id, attr)) = getatt_of(v) {
        format!("${{{id}.{attr}}}")
    } else {
        v.as_str().unwrap_or("?").to_owned()
    }
}

fn alarm_metric(m: &Value) -> MetricName {
    MetricName {
        namespace: m
            .get("Namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        name: m
            .get("MetricName")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned(),
        dimensions: strings(m.get("Dimensions"))
            .into_iter()
            .filter_map(|d| Some((d.get("Name")?.as_str()?.to_owned(), dimension_value(d.get("Value")?))))
            .collect(),
    }
}

/// Every alarm, with the metrics it watches (its own, or those of its metric math).
fn alarms<'a>(t: &Template<'a>) -> Vec<(&'a str, &'a Value, Vec<MetricName>)> {
    t.of_type("AWS::CloudWatch::Alarm")
        .into_iter()
        .map(|(id, alarm)| {
            let props = alarm.get("Properties").unwrap_or(&Value::Null);
            let mut metrics = Vec::new();
            if props.get("MetricName").is_some() {
                metrics.push(alarm_metric(props));
            }
            for m in strings(props.get("Metrics")) {
                if let Some(stat) = get(m, &["MetricStat", "Metric"]) {
                    metrics.push(alarm_metric(stat));
                }
            }
            (id, props, metrics)
        })
        .collect()
}

fn check_monitoring(t: &Template, code: &Code, out: &mut Vec<String>) {
    let on_dashboard = dashboard_metrics(t);
    let alarms = alarms(t);
    let alarmed = |m: &MetricName| alarms.iter().any(|(_, _, metrics)| metrics.contains(m));
    let function_ids: Vec<&str> = t.functions().iter().map(|f| f.id).collect();

    // Every EMF metric is on the dashboard; alarms on EMF metrics watch ones that exist.
    for (namespace, name, function) in &code.emf {
        if !on_dashboard.contains(&metric(namespace, name, &[("Function", function)])) {
            out.push(format!(
                "EMF metric {namespace}/{name} of {function} is not on the dashboard"
            ));
        }
    }
    let emitted = |m: &MetricName| {
        code.emf
            .iter()
            .any(|(namespace, name, function)| *m == metric(namespace, name, &[("Function", function)]))
    };
    let emf_namespaces: BTreeSet<&str> = code.emf.iter().map(|(ns, _, _)| ns.as_str()).collect();
    for (id, _, metrics) in &alarms {
        for m in metrics {
            if emf_namespaces.contains(m.namespace.as_str()) && !emitted(m) {
                out.push(format!(
                    "alarm {id} watches {}/{} {:?}, which no function emits",
                    m.namespace, m.name, m.dimensions
                ));
            }
        }
    }
    for (namespace, name, function) in &code.emf {
        if ["Failed", "Throttled"].contains(&name.as_str())
            && !alarmed(&metric(namespace, name, &[("Function", function)]))
        {
            out.push(format!("no alarm on {namespace}/{name} of {function}"));
        }
    }

    // What operators asked to see, and what must wake someone.
    let api = t.api().map(|(id, _)| format!("${{{id}}}")).unwrap_or_default();
    let stage = t.stage_segment().unwrap_or_default();
    for name in ["ConnectCount", "MessageCount", "IntegrationLatency"] {
        let m = metric("AWS/ApiGateway", name, &[("ApiId", &api), ("Stage", &stage)]);
        if !on_dashboard.contains(&m) {
            out.push(format!("AWS/ApiGateway {name} of the stage is not on the dashboard"));
        }
    }
    for id in &function_ids {
        let errors = metric("AWS/Lambda", "Errors", &[("FunctionName", &format!("${{{id}}}"))]);
        if !on_dashboard.contains(&errors) {
            out.push(format!("{id}'s Lambda Errors are not on the dashboard"));
        }
        if !alarmed(&errors) {
            out.push(format!("no alarm on {id}'s Lambda Errors"));
        }
    }
    for queue in [
        "ProgressDeadLetterQueue",
        "StreamFailureQueue",
        "DeliveryDeadLetterQueue",
        "PublishDeadLetterQueue",
    ] {
        let depth = metric(
            "AWS/SQS",
            "ApproximateNumberOfMessagesVisible",
            &[("QueueName", &format!("${{{queue}.QueueName}}"))],
        );
        let any_message = alarms.iter().any(|(_, props, metrics)| {
            metrics.contains(&depth)
                && props.get("Threshold").and_then(Value::as_f64) == Some(1.0)
                && props.get("ComparisonOperator").and_then(Value::as_str) == Some("GreaterThanOrEqualToThreshold")
        });
        if !any_message {
            out.push(format!("no alarm on any message in {queue}"));
        }
    }
    if let Some(f) = t.function(STREAM_FANOUT) {
        if !alarmed(&metric(
            "AWS/Lambda",
            "IteratorAge",
            &[("FunctionName", &format!("${{{}}}", f.id))],
        )) {
            out.push("no alarm on the stream fanout's IteratorAge".to_owned());
        }
    }
    for (id, props, _) in &alarms {
        for actions in ["AlarmActions", "OKActions"] {
            let notifies = props
                .get(actions)
                .map(references)
                .is_some_and(|r| r.contains("AlarmTopicArn"));
            if !notifies {
                out.push(format!("alarm {id}'s {actions} do not notify AlarmTopicArn"));
            }
        }
    }
}

// ---------------------------------------------------------------- the template as it is

#[test]
fn template_agrees_with_the_code() {
    let problems = problems(&load_template(), &Code::current());
    assert!(
        problems.is_empty(),
        "sam/template.yaml disagrees with the code:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_fixture_has_a_function_to_invoke() {
    // The README's `sam local invoke` table runs each fixture against the function of its directory.
    let doc = load_template();
    let t = Template::new(&doc);
    for dir in event_dirs() {
        let function = t
            .function(&dir)
            .unwrap_or_else(|| panic!("events/{dir}/ has no function"));
        let files: Vec<_> = std::fs::read_dir(repo_root().join("events").join(&dir))
            .unwrap()
            .filter_map(Result::ok)
            .collect();
        assert!(!files.is_empty(), "events/{dir}/ is empty");
        for file in files {
            let text = std::fs::read_to_string(file.path()).unwrap();
            serde_json::from_str::<Json>(&text)
                .unwrap_or_else(|e| panic!("{} (for {}) is not JSON: {e}", file.path().display(), function.id));
        }
    }
}

#[test]
fn the_readme_shows_how_to_invoke_every_fixture() {
    let doc = load_template();
    let t = Template::new(&doc);
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("reading README.md");
    let mut missing = Vec::new();
    for dir in event_dirs() {
        let Some(function) = t.function(&dir) else { continue };
        let mut files: Vec<String> = std::fs::read_dir(repo_root().join("events").join(&dir))
            .unwrap()
            .filter_map(Result::ok)
            .filter_map(|f| f.file_name().to_str().map(str::to_owned))
            .collect();
        files.sort();
        for file in files {
            let line = format!(
                "| `{dir}/{file}` | `sam local invoke -e ../events/{dir}/{file} {}` |",
                function.id
            );
            if !readme.contains(&line) {
                missing.push(line);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README.md's fixture table (Deploy section) lacks:\n{}",
        missing.join("\n")
    );
}

// ---------------------------------------------------------------- the checks can fail

fn at<'a>(doc: &'a mut Value, path: &[&str]) -> &'a mut Value {
    path.iter().fold(doc, |v, key| {
        v.get_mut(*key)
            .unwrap_or_else(|| panic!("the template has no {}", path.join(".")))
    })
}

fn remove(doc: &mut Value, path: &[&str]) -> Value {
    let (last, parent) = path.split_last().expect("a path");
    at(doc, parent)
        .as_mapping_mut()
        .expect("a mapping")
        .remove(*last)
        .unwrap_or_else(|| panic!("the template has no {}", path.join(".")))
}

fn set(doc: &mut Value, path: &[&str], value: Value) {
    let (last, parent) = path.split_last().expect("a path");
    at(doc, parent)
        .as_mapping_mut()
        .expect("a mapping")
        .insert(Value::from(*last), value);
}

/// The problems of a mutated copy of the template.
fn problems_after(mutate: impl FnOnce(&mut Value)) -> Vec<String> {
    let mut doc = load_template();
    mutate(&mut doc);
    problems(&doc, &Code::current())
}

/// The mutation is reported, as exactly these problems: a check that also fires elsewhere would
/// hide which part of the template is wrong.
#[track_caller]
fn assert_reported(problems: &[String], expected: &[&str]) {
    assert_eq!(
        problems,
        expected,
        "expected exactly\n  {}\ngot\n  {}",
        expected.join("\n  "),
        problems.join("\n  ")
    );
}

fn yaml(text: &str) -> Value {
    serde_norway::from_str(text).expect("test YAML parses")
}

#[test]
fn a_limit_per_connection_unlike_the_code_or_above_the_stage_throttle_is_reported() {
    let problems = problems_after(|doc| {
        set(
            doc,
            &[
                "Resources",
                "WsMessageFunction",
                "Properties",
                "Environment",
                "Variables",
                "RATE_LIMIT_BURST",
            ],
            yaml("\"5\""),
        );
        set(
            doc,
            &[
                "Resources",
                "Stage",
                "Properties",
                "DefaultRouteSettings",
                "ThrottlingRateLimit",
            ],
            yaml("100"),
        );
    });
    assert_reported(
        &problems,
        &[
            "WsMessageFunction (ws-message): RATE_LIMIT_BURST is Some(5), but shared/src/domain/rate.rs defaults to 50",
            "Stage: DefaultRouteSettings.ThrottlingRateLimit 100 is under ten connections at their own limit (25 each)",
        ],
    );
}

#[test]
fn a_sweep_slower_than_a_minute_or_with_more_rights_or_a_different_verifier_is_reported() {
    let problems = problems_after(|doc| {
        set(
            doc,
            &[
                "Resources",
                "ExpirySweepFunction",
                "Properties",
                "Events",
                "EveryMinute",
                "Properties",
                "Schedule",
            ],
            Value::from("rate(5 minutes)"),
        );
        let statements = statements_of(doc, "ExpirySweepFunction");
        statements.push(yaml("{Effect: Allow, Action: dynamodb:Scan, Resource: '*'}"));
        set(
            doc,
            &[
                "Resources",
                "WsMessageFunction",
                "Properties",
                "Environment",
                "Variables",
                "JWT_LEEWAY_SECONDS",
            ],
            Value::from("600"),
        );
    });
    assert_reported(
        &problems,
        &[
            "ExpirySweepFunction: needs a Schedule event rate(1 minute), or expired connections stay open longer than a minute (has [\"rate(5 minutes)\"])",
            "ExpirySweepFunction: dynamodb:Scan is more than the sweep needs",
            "WsMessageFunction (ws-message): JWT_LEEWAY_SECONDS differs from the authorizer's; `auth` must verify tokens as $connect does",
        ],
    );
}

#[test]
fn a_missing_route_is_reported() {
    let problems = problems_after(|doc| {
        remove(doc, &["Resources", "JoinRoute"]);
    });
    assert_reported(&problems, &["route \"join\" is missing"]);
}

#[test]
fn a_new_protocol_action_without_a_route_is_reported() {
    let mut code = Code::current();
    code.actions.push("shout".to_owned());
    let problems = problems(&load_template(), &code);
    assert_reported(&problems, &["route \"shout\" is missing"]);
}

#[test]
fn a_route_for_an_action_the_protocol_does_not_know_is_reported() {
    let mut code = Code::current();
    code.actions.retain(|a| a != "typing");
    let problems = problems(&load_template(), &code);
    assert_reported(
        &problems,
        &["route \"typing\" is in the template but not in the protocol"],
    );
}

#[test]
fn a_route_to_the_wrong_function_is_reported() {
    let problems = problems_after(|doc| {
        let target = yaml("!Sub integrations/${ConnectIntegration}");
        set(doc, &["Resources", "PingRoute", "Properties", "Target"], target);
    });
    assert_reported(
        &problems,
        &["route \"ping\": its integration must be AWS_PROXY to ws-message"],
    );
}

#[test]
fn a_missing_lambda_permission_is_reported() {
    let problems = problems_after(|doc| {
        remove(doc, &["Resources", "WsDisconnectPermission"]);
    });
    assert_reported(
        &problems,
        &["route \"$disconnect\": no Lambda permission lets API Gateway invoke WsDisconnectFunction for it"],
    );
    // ws-message's one permission covers every one of its routes; without it, none is allowed.
    let problems = problems_after(|doc| {
        remove(doc, &["Resources", "WsMessagePermission"]);
    });
    assert!(problems.len() > 10, "{problems:?}");
    assert!(problems.contains(
        &"route \"presence\": no Lambda permission lets API Gateway invoke WsMessageFunction for it".to_owned()
    ));
}

#[test]
fn a_permission_per_route_or_beyond_the_stage_is_reported() {
    let problems = problems_after(|doc| {
        let mut extra = at(doc, &["Resources", "WsMessagePermission"]).clone();
        set(
            &mut extra,
            &["Properties", "SourceArn"],
            yaml("!Sub arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}/*"),
        );
        set(doc, &["Resources", "HistoryPermission"], extra);
    });
    assert_reported(
        &problems,
        &[
            "WsMessageFunction: 2 Lambda permissions for API Gateway; one per function covers all of its routes",
            "WsMessageFunction: permission arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${WebSocketApi}/* is not limited to the stage ${StageName}",
        ],
    );
}

#[test]
fn a_stream_filter_without_history_requests_or_a_stray_failure_queue_is_reported() {
    let problems = problems_after(|doc| {
        let mut filters_path = STREAM_MAPPING.to_vec();
        filters_path.extend(["FilterCriteria", "Filters"]);
        let filters = at(doc, &filters_path).as_sequence_mut().expect("filters are a list");
        filters.retain(|f| {
            !f.get("Pattern")
                .and_then(Value::as_str)
                .is_some_and(|p| p.contains("CONN#"))
        });
        set(
            doc,
            &[
                "Resources",
                "StreamFanoutFunction",
                "Properties",
                "Environment",
                "Variables",
                "FAILURE_QUEUE_URL",
            ],
            yaml("!Ref ProgressDeadLetterQueue"),
        );
    });
    assert_reported(
        &problems,
        &[
            "stream filter drops new memberships with \"history\", which stream-fanout answers with history",
            "stream-fanout: FAILURE_QUEUE_URL must !Ref the stream mapping's on-failure queue",
        ],
    );
}

#[test]
fn a_missing_route_response_is_reported() {
    let problems = problems_after(|doc| {
        remove(doc, &["Resources", "PingRouteResponse"]);
    });
    assert_reported(
        &problems,
        &["route \"ping\": no route response, so its answer never reaches the caller"],
    );
}

const STREAM_FANOUT_ENV: &[&str] = &[
    "Resources",
    "StreamFanoutFunction",
    "Properties",
    "Environment",
    "Variables",
];
const WS_MESSAGE_ENV: &[&str] = &[
    "Resources",
    "WsMessageFunction",
    "Properties",
    "Environment",
    "Variables",
];

fn path<'a>(base: &[&'a str], last: &'a str) -> Vec<&'a str> {
    let mut path = base.to_vec();
    path.push(last);
    path
}

#[test]
fn a_missing_environment_variable_is_reported() {
    let problems = problems_after(|doc| {
        remove(doc, &path(STREAM_FANOUT_ENV, "TABLE_NAME"));
    });
    assert_reported(
        &problems,
        &["StreamFanoutFunction (stream-fanout): environment variable TABLE_NAME is not set"],
    );
}

#[test]
fn a_new_environment_variable_in_the_code_is_reported() {
    let mut code = Code::current();
    let authorizer_env = code
        .env
        .get_mut(AUTHORIZER)
        .expect("the authorizer reads its environment");
    authorizer_env.push(Var::required("JWT_CLOCK", "0"));
    let problems = problems(&load_template(), &code);
    assert_reported(
        &problems,
        &["WsAuthorizerFunction (ws-authorizer): environment variable JWT_CLOCK is not set"],
    );
}

#[test]
fn a_variable_its_code_does_not_read_is_reported() {
    let problems = problems_after(|doc| {
        set(doc, &path(STREAM_FANOUT_ENV, "FANOUT_BATCH_SIZE"), Value::from("10"));
    });
    assert_reported(
        &problems,
        &["StreamFanoutFunction (stream-fanout): sets FANOUT_BATCH_SIZE, which its code does not read"],
    );
}

/// A Lambda's variables are those of the `Config` its main loads, so this holds each reader to
/// them: a read added without its `Var` is asked for and not declared.
#[test]
fn every_lambda_reads_exactly_the_variables_of_its_config() {
    for (binary, config) in lambda_configs() {
        assert_eq!(config.reads.asked, config.reads.declared, "{binary}");
        assert_eq!(config.reads.loaded, Ok(()), "{binary}: its variables' examples load");
    }
}

/// The README's configuration table names every variable a function reads.
#[test]
fn the_readme_lists_every_variable_a_function_reads() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("reading README.md");
    let table = readme
        .split("## Configuration")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("README.md has a Configuration section");
    let mut missing = BTreeSet::new();
    for (binary, config) in lambda_configs() {
        for var in config.vars {
            if !table.contains(&format!("| `{}`", var.name)) && !table.contains(&format!(", `{}`", var.name)) {
                missing.insert(format!("{} ({binary})", var.name));
            }
        }
    }
    assert!(missing.is_empty(), "README.md's Configuration table lacks {missing:?}");
}

/// The process environment is read in two places: `FromEnv::from_env`, which each main calls once
/// on its crate's `Config`, and telemetry (the platform's `RUST_LOG` and log level). A read
/// anywhere else would be a variable no `Config`, and so no check of the template, knows of.
#[test]
fn the_environment_is_read_only_through_each_lambdas_config() {
    let root = repo_root();
    let allowed = [
        root.join("shared/src/adapters/config/mod.rs"),
        root.join("shared/src/adapters/telemetry.rs"),
    ];
    let mut sources = rust_sources(&root.join("shared/src"));
    for entry in std::fs::read_dir(root.join("lambdas")).unwrap().filter_map(Result::ok) {
        sources.extend(rust_sources(&entry.path().join("src")));
    }
    let mut found = Vec::new();
    for (file, source) in &sources {
        let reads_env = ["env::var", "env::vars", "var_os("].iter().any(|p| source.contains(p));
        if reads_env && !allowed.contains(file) {
            found.push(format!("{} reads the process environment", file.display()));
        }
        let loads = source.matches("::from_env()").count();
        let is_main = file.ends_with("src/main.rs");
        if is_main && (loads != 1 || !source.contains("::Config::from_env()?")) {
            found.push(format!(
                "{}: loads {loads} configurations; it must load its crate's Config, once",
                file.display()
            ));
        }
        if !is_main && loads > 0 {
            found.push(format!("{} loads configuration; only mains do", file.display()));
        }
    }
    assert!(sources.len() > 9, "the sources were found");
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn a_ttl_that_differs_from_the_code_is_reported() {
    let problems = problems_after(|doc| {
        set(doc, &path(WS_MESSAGE_ENV, "EVENT_TTL_SECONDS"), Value::from("60"));
    });
    assert_reported(
        &problems,
        &["WsMessageFunction (ws-message): EVENT_TTL_SECONDS is \"60\", but shared/src/adapters/config/table.rs defaults to 300"],
    );
}

#[test]
fn a_renamed_binary_is_reported() {
    let problems = problems_after(|doc| {
        let binary = [
            "Resources",
            "WsConnectFunction",
            "Metadata",
            "BuildProperties",
            "Binary",
        ];
        set(doc, &binary, Value::from("ws-connekt"));
    });
    assert_reported(
        &problems,
        &[
            "WsConnectFunction: binary \"ws-connekt\" is not a [[bin]] of the workspace",
            "0 functions build binary \"ws-connect\"; the template needs exactly one",
            "route \"$connect\": its integration must be AWS_PROXY to ws-connect",
            // The fixtures of ws-connect have no function to run them any more.
            "events/ws-connect/ names no function of the template",
        ],
    );
}

#[test]
fn a_fixture_directory_without_a_function_is_reported() {
    let mut code = Code::current();
    code.event_dirs.insert("ws-shout".to_owned());
    let problems = problems(&load_template(), &code);
    assert_reported(&problems, &["events/ws-shout/ names no function of the template"]);
}

#[test]
fn an_authorizer_with_an_identity_source_is_reported() {
    let problems = problems_after(|doc| {
        let source = yaml("[route.request.querystring.token]");
        set(
            doc,
            &["Resources", "ConnectAuthorizer", "Properties", "IdentitySource"],
            source,
        );
    });
    assert_reported(
        &problems,
        &[
            "ConnectAuthorizer: has an IdentitySource, so API Gateway refuses a connection without one before the \
           authorizer runs",
        ],
    );
}

#[test]
fn a_connect_route_without_the_authorizer_is_reported() {
    let problems = problems_after(|doc| {
        set(
            doc,
            &["Resources", "ConnectRoute", "Properties", "AuthorizationType"],
            Value::from("NONE"),
        );
        remove(doc, &["Resources", "ConnectRoute", "Properties", "AuthorizerId"]);
    });
    assert_reported(
        &problems,
        &[
            "route \"$connect\": AuthorizationType must be CUSTOM",
            "route \"$connect\": no authorizer attached",
        ],
    );
}

#[test]
fn a_stage_without_auto_deploy_is_reported() {
    let problems = problems_after(|doc| {
        set(
            doc,
            &["Resources", "Stage", "Properties", "AutoDeploy"],
            Value::from(false),
        );
    });
    assert_reported(
        &problems,
        &["Stage: AutoDeploy must be true, or the stage stays on an old deployment after a change"],
    );
}

const STREAM_MAPPING: &[&str] = &["Resources", "StreamFanoutMapping", "Properties"];

#[test]
fn a_removed_stream_filter_prefix_is_reported() {
    let problems = problems_after(|doc| {
        let mut filters_path = STREAM_MAPPING.to_vec();
        filters_path.extend(["FilterCriteria", "Filters"]);
        let filters = at(doc, &filters_path).as_sequence_mut().expect("filters are a list");
        filters.retain(|f| {
            !f.get("Pattern")
                .and_then(Value::as_str)
                .is_some_and(|p| p.contains("USER#"))
        });
    });
    assert_reported(
        &problems,
        &["stream filter drops USER# records, which stream-fanout handles"],
    );
}

#[test]
fn a_stream_filter_that_lets_everything_through_is_reported() {
    let problems = problems_after(|doc| {
        remove(doc, &path(STREAM_MAPPING, "FilterCriteria"));
    });
    assert_reported(
        &problems,
        &[
            "stream filter lets \"META\" records through, which stream-fanout ignores",
            "stream filter lets \"CONN#L0SM9cOFvHcCIhw=\" records through, which stream-fanout ignores",
            "stream filter lets \"DEDUPE#user-1#c1\" records through, which stream-fanout ignores",
            "stream filter lets \"PROGRESS\" records through, which stream-fanout ignores",
        ],
    );
}

#[test]
fn an_unbounded_stream_retry_is_reported() {
    let problems = problems_after(|doc| {
        set(doc, &path(STREAM_MAPPING, "MaximumRetryAttempts"), Value::from(-1));
    });
    assert_reported(
        &problems,
        &["stream mapping: MaximumRetryAttempts must be set and bounded"],
    );
}

#[test]
fn a_table_that_differs_from_the_code_is_reported() {
    let problems = problems_after(|doc| {
        let table = ["Resources", "Table", "Properties"];
        let index = "[{IndexName: byConn, KeySchema: [{AttributeName: connectionId, KeyType: HASH}], \
                     Projection: {ProjectionType: KEYS_ONLY}}]";
        set(doc, &path(&table, "GlobalSecondaryIndexes"), yaml(index));
        set(
            doc,
            &[&table[..], &["TimeToLiveSpecification", "AttributeName"]].concat(),
            Value::from("ttl"),
        );
        set(
            doc,
            &[&table[..], &["StreamSpecification", "StreamViewType"]].concat(),
            Value::from("KEYS_ONLY"),
        );
    });
    assert_reported(
        &problems,
        &[
            "Table: index byConnection is missing",
            "Table: index byConn is not in shared/src/adapters/table.rs",
            "Table: StreamViewType must be NEW_AND_OLD_IMAGES",
            "Table: TTL must be enabled on expiresAt",
        ],
    );
}

/// The statements of a function's first inline policy.
fn statements_of<'a>(doc: &'a mut Value, function: &str) -> &'a mut Vec<Value> {
    let policies = at(doc, &["Resources", function, "Properties", "Policies"]);
    let first = policies
        .as_sequence_mut()
        .and_then(|p| p.first_mut())
        .expect("a policy");
    first
        .get_mut("Statement")
        .and_then(Value::as_sequence_mut)
        .expect("statements are a list")
}

#[test]
fn a_fanout_without_manage_connections_is_reported() {
    let problems = problems_after(|doc| {
        let statements = statements_of(doc, "ProgressFanoutFunction");
        statements.retain(|s| s.get("Sid").and_then(Value::as_str) != Some("PushToConnections"));
    });
    assert_reported(
        &problems,
        &[
            "ProgressFanoutFunction (progress-fanout): no execute-api:ManageConnections on POST @connections/* of \
           the stage",
        ],
    );
}

#[test]
fn manage_connections_on_a_handler_is_reported() {
    let problems = problems_after(|doc| {
        let push = statements_of(doc, "StreamFanoutFunction")
            .iter()
            .find(|s| s.get("Sid").and_then(Value::as_str) == Some("PushToConnections"))
            .cloned()
            .expect("stream-fanout pushes");
        statements_of(doc, "WsMessageFunction").push(push);
    });
    assert_reported(
        &problems,
        &["WsMessageFunction (ws-message): has execute-api:ManageConnections but never posts to @connections"],
    );
}

#[test]
fn a_connections_endpoint_on_a_custom_domain_is_reported() {
    let problems = problems_after(|doc| {
        let endpoint = yaml("!Sub https://ws.example.com/${StageName}");
        set(doc, &path(STREAM_FANOUT_ENV, "CONNECTIONS_ENDPOINT"), endpoint);
    });
    assert_reported(
        &problems,
        &[
            "StreamFanoutFunction (stream-fanout): CONNECTIONS_ENDPOINT must be the stage's own \
           https://{api}.execute-api.{region}.amazonaws.com/{stage}",
        ],
    );
}

#[test]
fn a_fifo_queue_with_a_standard_dead_letter_queue_is_reported() {
    let problems = problems_after(|doc| {
        remove(
            doc,
            &["Resources", "ProgressDeadLetterQueue", "Properties", "FifoQueue"],
        );
    });
    assert_reported(
        &problems,
        &["ProgressQueue and its dead-letter queue ProgressDeadLetterQueue must be FIFO under the same condition"],
    );
}

#[test]
fn a_fifo_queue_name_without_the_suffix_is_reported() {
    let problems = problems_after(|doc| {
        let name = yaml("!If [ProgressIsFifo, !Sub '${AWS::StackName}-progress', !Sub '${AWS::StackName}-progress']");
        set(doc, &["Resources", "ProgressQueue", "Properties", "QueueName"], name);
    });
    assert_reported(&problems, &["ProgressQueue: a FIFO queue's name must end in .fifo"]);
}

#[test]
fn transact_write_items_in_a_policy_is_reported() {
    let problems = problems_after(|doc| {
        let statement = statements_of(doc, "WsConnectFunction")
            .first_mut()
            .expect("a statement");
        let actions = statement
            .get_mut("Action")
            .and_then(Value::as_sequence_mut)
            .expect("actions are a list");
        actions.push(Value::from("dynamodb:TransactWriteItems"));
    });
    assert_reported(
        &problems,
        &[
            "WsConnectFunction: dynamodb:TransactWriteItems is not an IAM action; grant the actions inside the \
           transaction",
        ],
    );
}

// ---------------------------------------------------------------- alarms and dashboard

fn dashboard_body(doc: &mut Value) -> &mut String {
    match at(doc, &["Resources", "Dashboard", "Properties", "DashboardBody"]) {
        Value::Tagged(t) => match &mut t.value {
            Value::String(s) => s,
            other => panic!("DashboardBody is {other:?}"),
        },
        other => panic!("DashboardBody is {other:?}"),
    }
}

#[test]
fn an_emf_metric_missing_from_the_dashboard_is_reported() {
    let problems = problems_after(|doc| {
        let body = dashboard_body(doc);
        *body = body.replace(
            "\"Throttled\", \"Function\", \"progress-fanout\"",
            "\"Throttled\", \"Function\", \"elsewhere\"",
        );
    });
    assert_reported(
        &problems,
        &["EMF metric wsfan/Throttled of progress-fanout is not on the dashboard"],
    );
}

#[test]
fn a_new_emf_metric_in_the_code_is_reported() {
    let mut code = Code::current();
    code.emf.push(("wsfan".into(), "Dropped".into(), STREAM_FANOUT.into()));
    assert_reported(
        &problems(&load_template(), &code),
        &["EMF metric wsfan/Dropped of stream-fanout is not on the dashboard"],
    );
}

#[test]
fn emf_directives_are_read_from_the_source() {
    let source = r#"
        let doc = json!({"_aws": {"CloudWatchMetrics": [{
            "Namespace": "wsfan",
            "Dimensions": [["Function"]],
            "Metrics": [{"Name": "Shards", "Unit": "Count"}, {"Name": "PacedMs", "Unit": "Milliseconds"}],
        }]}, "Name": "not a metric"});
    "#;
    assert_eq!(
        emf_directives_in(source),
        vec![
            ("wsfan".to_owned(), "Shards".to_owned()),
            ("wsfan".to_owned(), "PacedMs".to_owned())
        ]
    );
    // The fanouts' counters, as the broadcaster writes them, each under both fanouts.
    let emf = emf_metrics();
    for function in [STREAM_FANOUT, PROGRESS_FANOUT] {
        for name in ["Delivered", "Gone", "Retried", "Throttled", "Failed"] {
            let metric = ("wsfan".to_owned(), name.to_owned(), function.to_owned());
            assert!(emf.contains(&metric), "{metric:?} in {emf:?}");
        }
    }
}

#[test]
fn an_alarm_on_a_metric_no_function_emits_is_reported() {
    let problems = problems_after(|doc| {
        let metrics = at(doc, &["Resources", "FanoutFailedAlarm", "Properties", "Metrics"]);
        let stream = metrics
            .as_sequence_mut()
            .unwrap()
            .iter_mut()
            .find(|m| m["Id"] == "stream")
            .unwrap();
        set(stream, &["MetricStat", "Metric", "MetricName"], Value::from("Failures"));
    });
    assert_reported(
        &problems,
        &[
            "alarm FanoutFailedAlarm watches wsfan/Failures {\"Function\": \"stream-fanout\"}, which no function emits",
            "no alarm on wsfan/Failed of stream-fanout",
        ],
    );
}

#[test]
fn missing_queue_iterator_age_and_error_alarms_are_reported() {
    let problems = problems_after(|doc| {
        remove(doc, &["Resources", "ProgressDeadLetterAlarm"]);
        set(
            doc,
            &["Resources", "StreamFailureAlarm", "Properties", "Threshold"],
            Value::from(10),
        );
        remove(doc, &["Resources", "StreamIteratorAgeAlarm"]);
        let metrics = at(doc, &["Resources", "FunctionErrorsAlarm", "Properties", "Metrics"]);
        metrics.as_sequence_mut().unwrap().retain(|m| m["Id"] != "message");
    });
    assert_reported(
        &problems,
        &[
            "no alarm on WsMessageFunction's Lambda Errors",
            "no alarm on any message in ProgressDeadLetterQueue",
            "no alarm on any message in StreamFailureQueue",
            "no alarm on the stream fanout's IteratorAge",
        ],
    );
}

#[test]
fn an_alarm_that_notifies_no_one_and_a_dashboard_without_latency_are_reported() {
    let problems = problems_after(|doc| {
        remove(doc, &["Resources", "StreamIteratorAgeAlarm", "Properties", "OKActions"]);
        let body = dashboard_body(doc);
        *body = body.replace("\"IntegrationLatency\"", "\"Latency\"");
    });
    assert_reported(
        &problems,
        &[
            "AWS/ApiGateway IntegrationLatency of the stage is not on the dashboard",
            "alarm StreamIteratorAgeAlarm's OKActions do not notify AlarmTopicArn",
        ],
    );
}

#[test]
fn a_dynamodb_timeout_that_does_not_fit_the_function_is_reported() {
    let problems = problems_after(|doc| {
        set(
            doc,
            &[
                "Resources",
                "WsMessageFunction",
                "Properties",
                "Environment",
                "Variables",
                "DYNAMODB_TIMEOUT_MS",
            ],
            Value::from("9000"),
        );
    });
    assert_reported(
        &problems,
        &["WsMessageFunction (ws-message): DYNAMODB_TIMEOUT_MS is \"9000\"; three of them must fit in its 10000 ms Timeout"],
    );
}

#[test]
fn a_stage_that_logs_message_bodies_is_reported() {
    let problems = problems_after(|doc| {
        set(
            doc,
            &[
                "Resources",
                "Stage",
                "Properties",
                "DefaultRouteSettings",
                "DataTraceEnabled",
            ],
            Value::from(true),
        );
    });
    assert_reported(
        &problems,
        &["Stage: DataTraceEnabled must be false, or API Gateway logs message bodies"],
    );
}

#[test]
fn a_delivery_queue_that_is_not_fifo_or_has_no_dead_letter_queue_is_reported() {
    let p = problems_after(|doc| {
        remove(doc, &["Resources", "DeliveryQueue", "Properties", "FifoQueue"]);
    });
    assert_reported(
        &p,
        &["DeliveryQueue: the delivery queue must be FIFO (each recipient's frames in order)"],
    );
    let p = problems_after(|doc| {
        remove(doc, &["Resources", "DeliveryQueue", "Properties", "RedrivePolicy"]);
    });
    assert_reported(
        &p,
        &["DeliveryQueue: needs a RedrivePolicy with a dead-letter queue and maxReceiveCount"],
    );
}

#[test]
fn a_deliver_mapping_without_item_failures_or_a_concurrency_bound_is_reported() {
    let p = problems_after(|doc| {
        remove(
            doc,
            &["Resources", "DeliverMapping", "Properties", "FunctionResponseTypes"],
        );
        remove(doc, &["Resources", "DeliverMapping", "Properties", "ScalingConfig"]);
    });
    assert_reported(
        &p,
        &[
            "deliver mapping: FunctionResponseTypes must include ReportBatchItemFailures",
            "deliver mapping: no ScalingConfig.MaximumConcurrency",
        ],
    );
}

#[test]
fn a_fanout_off_the_budget_is_reported() {
    let p = problems_after(|doc| {
        let env = &[
            "Resources",
            "StreamFanoutFunction",
            "Properties",
            "Environment",
            "Variables",
            "FANOUT_MAX_RPS",
        ];
        set(doc, env, Value::from("100000"));
    });
    assert_reported(
        &p,
        &["StreamFanoutFunction (stream-fanout): FANOUT_MAX_RPS must be !Ref FanoutMaxRps"],
    );
}

#[test]
fn a_fanout_that_may_not_send_shards_or_a_deliver_that_sends_elsewhere_is_reported() {
    let p = problems_after(|doc| {
        statements_of(doc, "StreamFanoutFunction")
            .retain(|st| st.get("Sid").and_then(Value::as_str) != Some("HandOutShards"));
    });
    assert_reported(
        &p,
        &["StreamFanoutFunction (stream-fanout): may not sqs:SendMessage to DeliveryQueue"],
    );
    let p = problems_after(|doc| {
        statements_of(doc, "DeliverFunction").push(yaml(
            "{Sid: Extra, Effect: Allow, Action: sqs:SendMessage, Resource: !GetAtt StreamFailureQueue.Arn}",
        ));
    });
    assert_reported(
        &p,
        &["DeliverFunction (deliver): sends to StreamFailureQueue, beyond its queues"],
    );
}

#[test]
fn a_publish_queue_that_drops_equal_messages_or_loses_its_order_is_reported() {
    let problems = problems_after(|doc| {
        set(
            doc,
            &["Resources", "PublishQueue", "Properties", "ContentBasedDeduplication"],
            yaml("true"),
        );
        remove(doc, &["Resources", "PublishQueue", "Properties", "FifoQueue"]);
    });
    assert_reported(
        &problems,
        &[
            "PublishQueue: must be FIFO, one message group per channel",
            "PublishQueue: ContentBasedDeduplication would drop a second equal message; producers send deduplication ids",
        ],
    );
}

#[test]
fn a_publish_function_with_more_than_the_numbered_post_is_reported() {
    let problems = problems_after(|doc| {
        let statements = statements_of(doc, "PublishFunction");
        statements.push(yaml(
            "{Effect: Allow, Action: [dynamodb:Query, execute-api:ManageConnections], Resource: '*'}",
        ));
    });
    assert_reported(
        &problems,
        &[
            "PublishFunction: dynamodb:Query is more than the numbered post needs",
            "PublishFunction (publish): has execute-api:ManageConnections but never posts to @connections",
        ],
    );
}
