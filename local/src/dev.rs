//! `wsfan dev` and `wsfan invoke`: the stack, assembled from the SAM template.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use wsfan_shared::auth::{mint_hs256, Claims};
use wsfan_shared::progress::ProgressEvent;
use wsfan_shared::publisher::ProgressPublisher;
use wsfan_shared::table::TABLE;

use crate::connections::ConnectionsServer;
use crate::dynamo_proxy::DynamoProxy;
use crate::faults::Faults;
use crate::gateway::{Gateway, Limits, Routes, Sockets};
use crate::logs::{Logs, Outcome};
use crate::moto::{MotoProcess, LOCAL_REGION};
use crate::runtime::{FunctionSpec, InvokeError, LambdaFunction};
use crate::sources::{dynamodb_event, record_json, StreamReader};
use crate::template::{matches_any, EventSource, Template};

/// The HS256 secret of the local stack; the demo page's tokens are signed with it.
pub const DEV_SECRET: &str = "wsfan-local-dev-secret";
const TABLE_NAME: &str = "wsfan-local";
const DEMO_PAGE: &str = include_str!("../demo/index.html");
/// The JS client (clients/js), which the demo page imports as a module.
const CLIENT_MODULE: &str = include_str!("../../clients/js/src/index.js");

#[derive(Debug, Clone)]
pub struct DevConfig {
    pub repo_root: PathBuf,
    /// Where the Lambda binaries are (`target/debug`).
    pub bin_dir: PathBuf,
    pub port: u16,
    pub moto_port: u16,
    pub stage: String,
    pub limits: Limits,
    pub anonymous_channels: Option<String>,
    /// Execution environments per function (see [`FunctionSpec::concurrency`]).
    pub concurrency: usize,
    pub verbose: bool,
    /// Faults for @connections and the functions' DynamoDB calls to inject (`--inject`), and
    /// the seed of their draws.
    pub inject: Option<(Faults, u64)>,
    /// The limit per connection instead of the template's (`--rate-limit`).
    pub rate_limit: Option<wsfan_shared::rate::RateLimit>,
    /// Run the template's scheduled functions this often instead of at their rate
    /// (`--schedule-every`): tests see a token expire in seconds, not a minute.
    pub schedule_every: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum DevError {
    #[error(transparent)]
    Moto(#[from] crate::moto::MotoError),
    #[error(transparent)]
    Template(#[from] crate::template::TemplateError),
    #[error("{0}")]
    Setup(String),
    #[error("starting {name}: {source}")]
    Function { name: String, source: std::io::Error },
    #[error(transparent)]
    Invoke(#[from] InvokeError),
}

fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DevError + '_ {
    move |e| DevError::Setup(format!("{what}: {e}"))
}

/// How long a message whose batch failed stays invisible before its retry, locally.
const FAILED_VISIBILITY_SECS: u32 = 2;

/// The AWS side: moto, the table, the queues, from the template.
pub struct Environment {
    pub moto: MotoProcess,
    pub sdk: aws_config::SdkConfig,
    pub template: Template,
    pub table_name: String,
    pub stream_arn: String,
    /// Queue URL and ARN by the template's logical id.
    pub queues: HashMap<String, (String, String)>,
    /// Where the functions' DynamoDB calls go when DynamoDB faults are injected.
    pub dynamo_proxy: Option<DynamoProxy>,
}

impl Environment {
    pub async fn start(config: &DevConfig) -> Result<Environment, DevError> {
        let template = Template::load(&config.repo_root.join("sam/template.yaml"))?;
        let moto = MotoProcess::start(&config.repo_root, config.moto_port)?;
        let sdk = moto.sdk_config().await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let stream_arn = TABLE
            .create(&dynamodb, TABLE_NAME)
            .await
            .map_err(setup("creating the table"))?;

        // Dead-letter queues first, so redrive policies can name them.
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let mut queues = HashMap::new();
        let mut ordered = template.queues.clone();
        ordered.sort_by_key(|q| q.dead_letter_queue.is_some());
        for queue in &ordered {
            let redrive = match (&queue.dead_letter_queue, queue.max_receive_count) {
                (Some(dlq), Some(max)) => {
                    let (_, dlq_arn): &(String, String) = queues
                        .get(dlq)
                        .ok_or_else(|| DevError::Setup(format!("{dlq} is not a queue")))?;
                    Some((dlq_arn.clone(), max))
                }
                _ => None,
            };
            // FIFO queue names must end in .fifo.
            let suffix = if queue.fifo { ".fifo" } else { "" };
            let name = format!("wsfan-{}{suffix}", queue.logical_id.to_lowercase());
            // A batch is not handed to a second poller while its function may still run on it;
            // a failed one is made visible again after FAILED_VISIBILITY by the poller.
            let reader_timeout = template
                .event_sources
                .iter()
                .filter(|s| s.source == queue.logical_id)
                .filter_map(|s| template.function(&s.binary))
                .map(|f| f.timeout_secs)
                .max();
            let spec = crate::sources::QueueSpec {
                name: &name,
                fifo: queue.fifo,
                visibility_timeout_seconds: reader_timeout
                    .map_or(FAILED_VISIBILITY_SECS, |t| (t as u32).max(FAILED_VISIBILITY_SECS)),
                redrive: redrive.as_ref().map(|(arn, max)| (arn.as_str(), *max)),
            };
            let (url, arn) = crate::sources::create_queue(&sqs, spec)
                .await
                .map_err(DevError::Setup)?;
            queues.insert(queue.logical_id.clone(), (url, arn));
        }
        Ok(Environment {
            moto,
            sdk,
            template,
            table_name: TABLE_NAME.to_owned(),
            stream_arn,
            queues,
            dynamo_proxy: None,
        })
    }

    /// The queue a function reads, by the template's event source mapping.
    pub fn queue_feeding(&self, binary: &str) -> Option<&(String, String)> {
        self.template
            .event_sources
            .iter()
            .find(|s| s.binary == binary)
            .and_then(|s| self.queues.get(&s.source))
    }

    /// The URL of the dead-letter queue behind the queue `binary` reads.
    pub fn dead_letter_queue_of(&self, binary: &str) -> Option<String> {
        let source = self.template.event_sources.iter().find(|s| s.binary == binary)?;
        let queue = self.template.queues.iter().find(|q| q.logical_id == source.source)?;
        self.queues
            .get(queue.dead_letter_queue.as_ref()?)
            .map(|(url, _)| url.clone())
    }

    /// The URL of the on-failure destination of the stream mapping that feeds `binary`.
    pub fn failure_queue_of(&self, binary: &str) -> Option<String> {
        self.template
            .event_sources
            .iter()
            .filter(|s| s.binary == binary)
            .find_map(|s| s.on_failure.as_ref())
            .and_then(|q| self.queues.get(q))
            .map(|(url, _)| url.clone())
    }

    /// The template's environment for `binary`, with local values.
    pub fn function_env(
        &self,
        binary: &str,
        connections_endpoint: &str,
        anonymous: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut env = vec![("AWS_ENDPOINT_URL".to_owned(), self.moto.endpoint.clone())];
        if let Some(proxy) = &self.dynamo_proxy {
            // DynamoDB only (the SDK's service-specific endpoint); SQS still goes to moto.
            env.push(("AWS_ENDPOINT_URL_DYNAMODB".to_owned(), proxy.endpoint.clone()));
        }
        env.extend([
            (
                "AWS_ACCESS_KEY_ID".to_owned(),
                crate::moto::LOCAL_ACCESS_KEY_ID.to_owned(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                crate::moto::LOCAL_SECRET_ACCESS_KEY.to_owned(),
            ),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ]);
        let Some(function) = self.template.function(binary) else {
            return env;
        };
        for (name, value) in &function.env {
            let local = match name.as_str() {
                "TABLE_NAME" => self.table_name.clone(),
                "CONNECTIONS_ENDPOINT" => connections_endpoint.to_owned(),
                "JWT_SECRET" => DEV_SECRET.to_owned(),
                "JWKS_URL" | "JWT_AUDIENCE" | "JWT_ISSUER" => String::new(),
                "ANONYMOUS_CHANNELS" => anonymous.unwrap_or_default().to_owned(),
                "FAILURE_QUEUE_URL" => self.failure_queue_of(binary).unwrap_or_default(),
                // `!Ref` to a queue: its URL.
                _ => value
                    .clone()
                    .or_else(|| {
                        let (url, _) = self.queues.get(function.env_refs.get(name)?)?;
                        Some(url.clone())
                    })
                    .unwrap_or_default(),
            };
            env.push((name.clone(), local));
        }
        env
    }

    pub async fn start_function(
        &self,
        config: &DevConfig,
        binary: &str,
        connections_endpoint: &str,
        logs: &Logs,
    ) -> Result<Arc<LambdaFunction>, DevError> {
        let overrides: Vec<(String, String)> = config
            .rate_limit
            .map(|l| {
                vec![
                    ("RATE_LIMIT_PER_SECOND".to_owned(), l.per_second.to_string()),
                    ("RATE_LIMIT_BURST".to_owned(), l.burst.to_string()),
                ]
            })
            .unwrap_or_default();
        self.start_function_with(config, binary, connections_endpoint, &overrides, logs)
            .await
    }

    /// [`Environment::start_function`], with some variables set to other values than the
    /// template's (benchmarks).
    pub async fn start_function_with(
        &self,
        config: &DevConfig,
        binary: &str,
        connections_endpoint: &str,
        overrides: &[(String, String)],
        logs: &Logs,
    ) -> Result<Arc<LambdaFunction>, DevError> {
        let function = self.template.function(binary);
        let mut env = self.function_env(binary, connections_endpoint, config.anonymous_channels.as_deref());
        for (name, value) in overrides {
            if let Some(slot) = env.iter_mut().find(|(n, _)| n == name) {
                slot.1 = value.clone();
            }
        }
        let spec = FunctionSpec {
            name: binary.to_owned(),
            binary: config.bin_dir.join(binary),
            env,
            timeout: Duration::from_secs(function.map(|f| f.timeout_secs).unwrap_or(30)),
            memory_mb: function.map(|f| f.memory_mb).unwrap_or(128),
            concurrency: config.concurrency,
        };
        LambdaFunction::start(spec, logs.clone())
            .await
            .map_err(|source| DevError::Function {
                name: binary.to_owned(),
                source,
            })
    }
}

/// A running `wsfan dev`.
pub struct DevStack {
    pub http_url: String,
    pub ws_url: String,
    pub environment: Arc<Environment>,
    pub functions: HashMap<String, Arc<LambdaFunction>>,
    pub connections: ConnectionsServer,
    logs: Logs,
}

impl DevStack {
    /// Resolves when moto has exited, with how it ended. Its state (the table, the stream, the
    /// queues) lived in its memory and is gone with it, so the stack cannot go on: a new moto
    /// would be empty, the open connections unknown to it. The caller says so and stops.
    pub async fn moto_exited(&self) -> String {
        loop {
            if let Some(status) = self.environment.moto.exit_status() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// What `--inject` injected, by status, as a log line (nothing without `--inject`).
    pub fn log_injected(&self) {
        if self.connections.injecting() {
            let requests = self
                .connections
                .stats()
                .requests
                .load(std::sync::atomic::Ordering::Relaxed);
            self.logs.injected_summary(&self.connections.injected(), requests);
        }
        if let Some(proxy) = &self.environment.dynamo_proxy {
            log_dynamo_injected(proxy, &self.logs);
        }
    }

    /// Ends every process of the stack: the functions first, so that none is cut off mid-write
    /// by moto going away, then moto. The pollers and servers are tasks of this process.
    pub async fn shutdown(&self) {
        futures::future::join_all(self.functions.values().map(|f| f.stop())).await;
        self.environment.moto.stop();
    }
}

struct App {
    gateway: Arc<Gateway>,
    connections: ConnectionsServer,
    environment: Arc<Environment>,
    logs: Logs,
    ws_url: String,
}

pub async fn start(config: DevConfig) -> Result<DevStack, DevError> {
    let logs = Logs::new(config.verbose);
    let mut environment = Environment::start(&config).await?;
    if let Some((faults, seed)) = config.inject.as_ref().filter(|(f, _)| !f.dynamo().is_empty()) {
        let proxy = DynamoProxy::start(&environment.moto.endpoint, *faults.dynamo(), *seed, Some(logs.clone()))
            .await
            .map_err(setup("starting the DynamoDB fault proxy"))?;
        environment.dynamo_proxy = Some(proxy);
    }
    let environment = Arc::new(environment);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", config.port))
        .await
        .map_err(setup("binding the WebSocket port"))?;
    let addr = listener.local_addr().map_err(setup("reading the port"))?;
    let http_url = format!("http://{addr}/");
    let ws_url = format!("ws://{addr}/{}", config.stage);
    let connections_endpoint = format!("http://{addr}/{}", config.stage);

    let mut functions = HashMap::new();
    for f in &environment.template.functions {
        let function = environment
            .start_function(&config, &f.binary, &connections_endpoint, &logs)
            .await?;
        functions.insert(f.binary.clone(), function);
    }
    let lookup = |binary: &str| {
        functions
            .get(binary)
            .cloned()
            .ok_or_else(|| DevError::Setup(format!("the template names {binary}, which is not a function")))
    };
    let mut by_key = HashMap::new();
    for route in &environment.template.routes {
        by_key.insert(route.route_key.clone(), lookup(&route.binary)?);
    }
    let authorizer = environment.template.authorizer.as_deref().map(lookup).transpose()?;

    let sockets = Arc::new(Sockets::default());
    let gateway = Arc::new(Gateway {
        routes: Routes { authorizer, by_key },
        sockets: sockets.clone(),
        limits: config.limits,
        stage: config.stage.clone(),
        domain: addr.to_string(),
        logs: logs.clone(),
        upgrade_delay: config
            .inject
            .as_ref()
            .map_or(Duration::ZERO, |(f, _)| f.upgrade_delay()),
    });
    let connections = ConnectionsServer::new(addr, Some(sockets));
    connections.keep_nothing();
    if let Some((faults, seed)) = &config.inject {
        connections.inject(faults.clone(), *seed, Some(logs.clone()));
        logs.warn(&format!(
            "injecting {faults} (seed {seed}; --inject-seed {seed} draws the same faults)"
        ));
        tokio::spawn(summarise_injected(connections.clone(), logs.clone()));
        if let Some(proxy) = &environment.dynamo_proxy {
            tokio::spawn(summarise_dynamo_injected(proxy.clone(), logs.clone()));
        }
    }
    let app = Arc::new(App {
        gateway,
        connections: connections.clone(),
        environment: environment.clone(),
        logs: logs.clone(),
        ws_url: ws_url.clone(),
    });
    let router = Router::new()
        .route("/", get(index))
        .route("/{stage}", get(websocket))
        .route("/wsfan-client.js", get(client_module))
        .route("/dev/token", get(token))
        .route("/dev/docs", post(simulate_document))
        .route("/dev/stats", get(connections_stats))
        .with_state(app)
        .merge(connections.router());
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        let service = router.into_make_service_with_connect_info::<SocketAddr>();
        if let Err(e) = axum::serve(listener, service).await {
            eprintln!("wsfan dev: the HTTP server stopped: {e}");
        }
    });

    spawn_pollers(&environment, &functions, &config, &logs)?;
    spawn_schedules(&environment, &functions, &config, &logs)?;

    Ok(DevStack {
        http_url,
        ws_url,
        environment,
        functions,
        connections,
        logs,
    })
}

/// Feeds the stream and the queues to their functions, as the template's mappings say.
fn spawn_pollers(
    environment: &Arc<Environment>,
    functions: &HashMap<String, Arc<LambdaFunction>>,
    config: &DevConfig,
    logs: &Logs,
) -> Result<(), DevError> {
    for source in &environment.template.event_sources {
        let function = functions
            .get(&source.binary)
            .cloned()
            .ok_or_else(|| DevError::Setup(format!("the template names {}, which is not a function", source.binary)))?;
        if let Some((url, arn)) = environment.queues.get(&source.source) {
            // As many batches at once as the mapping's MaximumConcurrency (within the function's
            // environments), as Lambda's pollers do; a FIFO queue keeps each group to one.
            let pollers = source
                .maximum_concurrency
                .unwrap_or(1)
                .clamp(1, config.concurrency.max(1));
            for _ in 0..pollers {
                tokio::spawn(sqs_poller(
                    environment.clone(),
                    source.clone(),
                    url.clone(),
                    arn.clone(),
                    function.clone(),
                    logs.clone(),
                ));
            }
        } else {
            let reader = StreamReader::new(
                aws_sdk_dynamodbstreams::Client::new(&environment.sdk),
                &environment.stream_arn,
                true,
            );
            let failures = source
                .on_failure
                .as_ref()
                .and_then(|q| environment.queues.get(q))
                .map(|(url, _)| (aws_sdk_sqs::Client::new(&environment.sdk), url.clone()));
            tokio::spawn(stream_poller(reader, source.clone(), function, failures, logs.clone()));
        }
    }

    Ok(())
}

/// Runs the template's scheduled functions (the expiry sweep), as EventBridge does.
fn spawn_schedules(
    environment: &Environment,
    functions: &HashMap<String, Arc<LambdaFunction>>,
    config: &DevConfig,
    logs: &Logs,
) -> Result<(), DevError> {
    for schedule in &environment.template.schedules {
        let function = functions.get(&schedule.binary).cloned().ok_or_else(|| {
            DevError::Setup(format!(
                "the template schedules {}, which is not a function",
                schedule.binary
            ))
        })?;
        let every = config.schedule_every.unwrap_or(schedule.every);
        tokio::spawn(scheduler(function, every, logs.clone()));
    }
    Ok(())
}

/// Invokes a scheduled function every `every`, as EventBridge does, with a scheduled event. One
/// run at a time: a slow run delays the next rather than overlapping it.
async fn scheduler(function: Arc<LambdaFunction>, every: Duration, logs: Logs) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let event = json!({
            "version": "0",
            "id": ulid::Ulid::generate().to_string(),
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "000000000000",
            "time": time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
            "region": LOCAL_REGION,
            "resources": [],
            "detail": {},
        });
        let started = Instant::now();
        match function.invoke(&event).await {
            // Quiet when a sweep closed nothing (every minute, or every second in tests), as the
            // pollers are when idle.
            Ok(answer) if answer["closed"].as_array().is_some_and(Vec::is_empty) && answer["failed"] == 0 => {}
            Ok(answer) => logs.invocation(
                function.name(),
                "schedule",
                started.elapsed(),
                Outcome::Ok(&answer.to_string()),
            ),
            Err(e) => logs.invocation(
                function.name(),
                "schedule",
                started.elapsed(),
                Outcome::Failed(&e.to_string()),
            ),
        }
    }
}

/// The event-source half of the stack, without the gateway: moto, the functions the stream and
/// the queues feed (posting to `connections_endpoint`), and their pollers. For benchmarks that
/// bring their own `@connections` server.
pub async fn start_pipeline(
    config: &DevConfig,
    connections_endpoint: &str,
    overrides: &[(String, String)],
) -> Result<(Arc<Environment>, HashMap<String, Arc<LambdaFunction>>), DevError> {
    let logs = Logs::new(config.verbose);
    let environment = Arc::new(Environment::start(config).await?);
    let mut functions = HashMap::new();
    for source in &environment.template.event_sources {
        if !functions.contains_key(&source.binary) {
            let function = environment
                .start_function_with(config, &source.binary, connections_endpoint, overrides, &logs)
                .await?;
            functions.insert(source.binary.clone(), function);
        }
    }
    spawn_pollers(&environment, &functions, config, &logs)?;
    Ok((environment, functions))
}

/// Every few seconds while faults are being injected, how many of each so far.
async fn summarise_injected(connections: ConnectionsServer, logs: Logs) {
    let mut shown = std::collections::BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let injected = connections.injected();
        if injected != shown {
            let requests = connections.stats().requests.load(std::sync::atomic::Ordering::Relaxed);
            logs.injected_summary(&injected, requests);
            shown = injected;
        }
    }
}

fn log_dynamo_injected(proxy: &DynamoProxy, logs: &Logs) {
    let counts: Vec<(&str, u64)> = proxy.injected().iter().map(|(f, n)| (f.as_str(), *n)).collect();
    logs.dynamo_injected_summary(&counts, proxy.requests());
}

/// [`summarise_injected`] for the functions' DynamoDB calls.
async fn summarise_dynamo_injected(proxy: DynamoProxy, logs: Logs) {
    let mut shown = std::collections::BTreeMap::new();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let injected = proxy.injected();
        if injected != shown {
            log_dynamo_injected(&proxy, &logs);
            shown = injected;
        }
    }
}

/// `GET /` and `GET /{stage}`: a WebSocket upgrade goes to the gateway, a browser gets the demo.
async fn page_or_socket(
    app: Arc<App>,
    stage_ok: bool,
    peer: SocketAddr,
    query: HashMap<String, String>,
    request: Request,
) -> Response {
    let upgrade = request
        .headers()
        .get("upgrade")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if !upgrade {
        return Html(DEMO_PAGE).into_response();
    }
    if !stage_ok {
        return (
            StatusCode::FORBIDDEN,
            format!("unknown stage; use /{}", app.gateway.stage),
        )
            .into_response();
    }
    let (mut parts, _) = request.into_parts();
    match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => app.gateway.clone().upgrade(ws, query, parts.headers, peer).await,
        Err(rejection) => rejection.into_response(),
    }
}

async fn index(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    page_or_socket(app, true, peer, query, request).await
}

async fn client_module() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CLIENT_MODULE,
    )
        .into_response()
}

async fn websocket(
    State(app): State<Arc<App>>,
    Path(stage): Path<String>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    request: Request,
) -> Response {
    let stage_ok = stage == app.gateway.stage;
    page_or_socket(app, stage_ok, peer, query, request).await
}

/// A dev token for the demo page: any name, the demo's channels; `ttl` (seconds, default 12 h)
/// for a short-lived one, to see refresh and expiry.
async fn token(State(app): State<Arc<App>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let sub = query.get("sub").map(String::as_str).unwrap_or("");
    let ttl = match query.get("ttl").map(|t| t.parse::<i64>()) {
        None => 12 * 3600,
        Some(Ok(t)) if (1..=12 * 3600).contains(&t) => t,
        Some(_) => {
            let message = "ttl must be whole seconds from 1 to 43200";
            return (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response();
        }
    };
    let claims = Claims {
        sub: sub.to_owned(),
        exp: wsfan_shared::clock::now_secs() + ttl,
        nbf: None,
        channels: vec!["workspace:*".into(), "doc:*".into(), "session:*".into()],
        role: None,
        aud: None,
        iss: None,
    };
    let valid = sub.len() <= 64 && wsfan_shared::channel::ChannelId::user(sub).is_ok();
    if !valid {
        let message = "sub must be 1-64 characters of A-Z a-z 0-9 _ . @ -";
        return (StatusCode::BAD_REQUEST, Json(json!({"error": message}))).into_response();
    }
    let token = mint_hs256(DEV_SECRET, &claims);
    Json(json!({"token": token, "url": format!("{}?token={token}", app.ws_url)})).into_response()
}

/// What @connections answered: totals, and per second for the last few minutes (benchmarks read
/// the budget used in each second from here). Beside `/dev/token`, off API Gateway's own paths.
async fn connections_stats(State(app): State<Arc<App>>) -> Response {
    Json(app.connections.stats_json()).into_response()
}

/// Publishes a simulated document's progress to the local queue over about three seconds.
async fn simulate_document(State(app): State<Arc<App>>, Query(query): Query<HashMap<String, String>>) -> Response {
    let fail = query.get("fail").is_some_and(|v| v == "true" || v == "1");
    let doc_id = format!("doc-{}", ulid::Ulid::generate().to_string().to_lowercase());
    let Some((url, _)) = app.environment.queue_feeding("progress-fanout").cloned() else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "the template has no progress queue"})),
        )
            .into_response();
    };
    let publisher = ProgressPublisher::new(aws_sdk_sqs::Client::new(&app.environment.sdk), url);
    let (logs, id) = (app.logs.clone(), doc_id.clone());
    tokio::spawn(async move {
        let total = 20;
        let mut events = vec![ProgressEvent::started(&id, Some(total))];
        let last = if fail { 12 } else { total };
        events.extend((1..=last / 2).map(|i| ProgressEvent::progress(&id, i * 2, total)));
        events.push(if fail {
            let mut e = ProgressEvent::error(&id, "PAGE_UNREADABLE", "page 13 could not be read", false);
            e.pages_processed = Some(last);
            e
        } else {
            ProgressEvent::complete(&id, Some(total))
        });
        for event in events {
            if let Err(e) = publisher.send(std::slice::from_ref(&event)).await {
                logs.warn(&format!("simulated document {id}: {e}"));
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    Json(json!({"docId": doc_id})).into_response()
}

/// Invokes an event-source function with one batch and logs how it went. Returns the ids in
/// `batchItemFailures`, or `None` when the invocation itself failed (the whole batch did).
/// `records` names the batch's records in the log line of a failure, so that what is retried,
/// and so may be delivered twice, can be told.
async fn invoke_batch(
    function: &Arc<LambdaFunction>,
    event: &Value,
    size: usize,
    records: &str,
    logs: &Logs,
) -> Option<Vec<String>> {
    let what = format!("batch of {size}");
    let started = Instant::now();
    match function.invoke(event).await {
        Ok(response) => {
            let failed: Vec<String> = response["batchItemFailures"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if failed.is_empty() {
                logs.invocation(function.name(), &what, started.elapsed(), Outcome::Ok(""));
            } else {
                let detail = format!("batchItemFailures {} of {records}", failed.join(","));
                logs.invocation(function.name(), &what, started.elapsed(), Outcome::Failed(&detail));
            }
            Some(failed)
        }
        Err(e) => {
            logs.invocation(
                function.name(),
                &what,
                started.elapsed(),
                Outcome::Failed(&format!("{e}; retrying {records}")),
            );
            None
        }
    }
}

/// What Lambda sends an on-failure destination for a stream batch that ran out of retries: where
/// the records are, not the records.
fn stream_failure_record(record: &aws_sdk_dynamodbstreams::types::Record, arn: &str, attempts: u32) -> Value {
    let sequence = record.dynamodb.as_ref().and_then(|d| d.sequence_number.clone());
    json!({
        "requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": attempts},
        "version": "1.0",
        "timestamp": wsfan_shared::clock::now_millis(),
        "DDBStreamBatchInfo": {
            "shardId": "local",
            "startSequenceNumber": sequence,
            "endSequenceNumber": sequence,
            "batchSize": 1,
            "streamArn": arn,
        },
    })
}

/// Feeds the table's stream to its function as Lambda's event source mapping does: filtered,
/// in batches, and on `batchItemFailures` retried from the first failed record, up to
/// MaximumRetryAttempts; then that record goes to the mapping's on-failure queue, as Lambda
/// sends it to its destination (dropped only when the template names none).
async fn stream_poller(
    mut reader: StreamReader,
    source: EventSource,
    function: Arc<LambdaFunction>,
    failures: Option<(aws_sdk_sqs::Client, String)>,
    logs: Logs,
) {
    let arn = reader.stream_arn().to_owned();
    // ParallelizationFactor: that many batches of a shard at once, as Lambda runs them, each
    // record in the lane of its partition key, so one channel's records stay in order while a
    // long batch (a large channel being sharded) does not hold up the other channels.
    let lanes: Vec<tokio::sync::mpsc::UnboundedSender<aws_sdk_dynamodbstreams::types::Record>> =
        (0..source.parallelization_factor.unwrap_or(1).max(1))
            .map(|_| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(stream_lane(
                    rx,
                    arn.clone(),
                    source.clone(),
                    function.clone(),
                    failures.clone(),
                    logs.clone(),
                ));
                tx
            })
            .collect();
    loop {
        let polled = tokio::time::Instant::now();
        let records = match reader.poll(STREAM_READ_LIMIT).await {
            Ok(records) => records,
            Err(e) => {
                logs.warn(&format!("reading the stream: {e}"));
                Vec::new()
            }
        };
        // A full read leaves more behind: read on at once, as Lambda catches up on a backlog.
        let next_poll = match records.len() < STREAM_READ_LIMIT as usize {
            true => Some(polled + STREAM_POLL_INTERVAL),
            false => None,
        };
        for record in records {
            if !matches_any(&source.filters, &record_json(&record, &arn, LOCAL_REGION)) {
                continue;
            }
            let key = record
                .dynamodb
                .as_ref()
                .and_then(|d| d.keys.as_ref())
                .and_then(|k| k.get("pk"))
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            let lane = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut h);
                (h.finish() % lanes.len() as u64) as usize
            };
            if lanes[lane].send(record).is_err() {
                return;
            }
        }
        if let Some(at) = next_poll {
            tokio::time::sleep_until(at).await;
        }
    }
}

/// Lambda polls each stream shard "at a base rate of 4 times per second" (AWS Lambda Developer
/// Guide, "Polling and batching streams"), so a batch holds what arrived since the last poll: a
/// busy channel's records reach stream-fanout several at a time, as on AWS. Polling as fast as
/// moto answers made batches of one that AWS would not, and overstated posts per frame.
const STREAM_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Records one poll reads (GetRecords' own limit).
const STREAM_READ_LIMIT: i32 = 1000;

/// One lane of a stream shard: its records in order, a batch at a time, retried from the first
/// failed record, then sent to the on-failure destination when the retries run out.
async fn stream_lane(
    mut records: tokio::sync::mpsc::UnboundedReceiver<aws_sdk_dynamodbstreams::types::Record>,
    arn: String,
    source: EventSource,
    function: Arc<LambdaFunction>,
    failures: Option<(aws_sdk_sqs::Client, String)>,
    logs: Logs,
) {
    let mut pending = VecDeque::new();
    let mut attempts = 0u32;
    loop {
        if pending.is_empty() {
            match records.recv().await {
                Some(r) => pending.push_back(r),
                None => return,
            }
        }
        while let Ok(r) = records.try_recv() {
            pending.push_back(r);
        }
        let batch: Vec<_> = pending.iter().take(source.batch_size.max(1)).cloned().collect();
        let event = match dynamodb_event(&batch, &arn, LOCAL_REGION) {
            Ok(e) => serde_json::to_value(e).unwrap_or_default(),
            Err(e) => {
                logs.warn(&format!("building a stream event: {e}"));
                pending.clear();
                continue;
            }
        };
        let sequence = |r: Option<&aws_sdk_dynamodbstreams::types::Record>| {
            r.and_then(|r| r.dynamodb.as_ref())
                .and_then(|d| d.sequence_number.clone())
                .unwrap_or_default()
        };
        let records = format!("seq {}..{}", sequence(batch.first()), sequence(batch.last()));
        let failed_at = match invoke_batch(&function, &event, batch.len(), &records, &logs).await {
            Some(failed) if failed.is_empty() => None,
            Some(failed) => batch.iter().position(|r| {
                r.dynamodb
                    .as_ref()
                    .and_then(|d| d.sequence_number.as_deref())
                    .is_some_and(|s| failed.iter().any(|f| f == s))
            }),
            None => Some(0),
        };
        match failed_at {
            None => {
                pending.drain(..batch.len());
                attempts = 0;
            }
            Some(index) => {
                pending.drain(..index);
                attempts += 1;
                if attempts > source.maximum_retry_attempts.unwrap_or(u32::MAX) {
                    if let Some(failed) = pending.pop_front() {
                        let seq = failed
                            .dynamodb
                            .as_ref()
                            .and_then(|d| d.sequence_number.clone())
                            .unwrap_or_default();
                        let sent = match &failures {
                            Some((sqs, url)) => sqs
                                .send_message()
                                .queue_url(url)
                                .message_body(stream_failure_record(&failed, &arn, attempts).to_string())
                                .send()
                                .await
                                .map(|_| url.clone())
                                .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()),
                            None => Err("the template names no on-failure destination".to_owned()),
                        };
                        match sent {
                            Ok(url) => logs.warn(&format!(
                                "stream record {seq} failed {attempts} times; sent to the on-failure destination {url}"
                            )),
                            Err(e) => logs.warn(&format!("stream record {seq} failed {attempts} times; dropped: {e}")),
                        }
                    }
                    attempts = 0;
                } else {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempts))).await;
                }
            }
        }
    }
}

/// Feeds a queue to its function: receive, invoke, delete what succeeded. What failed becomes
/// visible again, and the redrive policy moves it to the DLQ after maxReceiveCount tries.
async fn sqs_poller(
    environment: Arc<Environment>,
    source: EventSource,
    url: String,
    arn: String,
    function: Arc<LambdaFunction>,
    logs: Logs,
) {
    let sqs = aws_sdk_sqs::Client::new(&environment.sdk);
    loop {
        let received = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(source.batch_size.clamp(1, 10) as i32)
            .wait_time_seconds(1)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await;
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                logs.warn(&format!(
                    "receiving from {url}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                ));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let event = match crate::sources::sqs_event(&messages, &arn, LOCAL_REGION) {
            Ok(e) => serde_json::to_value(e).unwrap_or_default(),
            Err(e) => {
                logs.warn(&format!("building an SQS event: {e}"));
                continue;
            }
        };
        let ids: Vec<&str> = messages.iter().filter_map(|m| m.message_id.as_deref()).collect();
        let records = format!("messages {}", ids.join(","));
        let failed = match invoke_batch(&function, &event, messages.len(), &records, &logs).await {
            Some(failed) => failed,
            None => messages.iter().filter_map(|m| m.message_id.clone()).collect(),
        };
        for m in &messages {
            if m.message_id.as_ref().is_some_and(|id| failed.contains(id)) {
                // Retried in seconds, not after the whole visibility timeout.
                if let Some(handle) = &m.receipt_handle {
                    let _ = sqs
                        .change_message_visibility()
                        .queue_url(&url)
                        .receipt_handle(handle)
                        .visibility_timeout(FAILED_VISIBILITY_SECS as i32)
                        .send()
                        .await;
                }
                continue;
            }
            if let Some(handle) = &m.receipt_handle {
                let _ = sqs.delete_message().queue_url(&url).receipt_handle(handle).send().await;
            }
        }
    }
}

/// `wsfan invoke`: one invocation of one function against a throwaway environment, as
/// `sam local invoke` does, without Docker.
pub async fn invoke_once(config: &DevConfig, function: &str, event: &Value) -> Result<Value, DevError> {
    let logs = Logs::new(config.verbose);
    let environment = Environment::start(config).await?;
    let binary = environment
        .template
        .functions
        .iter()
        .find(|f| f.binary == function || f.logical_id == function)
        .map(|f| f.binary.clone())
        .ok_or_else(|| {
            let known: Vec<String> = environment
                .template
                .functions
                .iter()
                .map(|f| format!("{} ({})", f.logical_id, f.binary))
                .collect();
            DevError::Setup(format!(
                "no function {function:?} in the template; it has {}",
                known.join(", ")
            ))
        })?;
    // A recording @connections server, so the fanouts have somewhere to post.
    let connections = ConnectionsServer::start("127.0.0.1:0")
        .await
        .map_err(setup("starting @connections"))?;
    let lambda = environment
        .start_function(config, &binary, &connections.endpoint(&config.stage), &logs)
        .await?;
    let started = Instant::now();
    let result = lambda.invoke(event).await;
    match &result {
        Ok(_) => logs.invocation(&binary, "invoke", started.elapsed(), Outcome::Ok("")),
        Err(e) => logs.invocation(&binary, "invoke", started.elapsed(), Outcome::Failed(&e.to_string())),
    }
    Ok(result?)
}
