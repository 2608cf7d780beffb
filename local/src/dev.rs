//! `wsfan dev` and `wsfan invoke`: the stack, assembled from the SAM template. The parts are
//! each in their own module: the AWS side ([`Environment`]), the functions
//! ([`crate::runtime`]), the gateway, the event source mappings, the schedules and the demo page.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::connections::ConnectionsServer;
use crate::dynamo_proxy::DynamoProxy;
use crate::faults::Faults;
use crate::gateway::{Gateway, Limits, Routes, Sockets};
use crate::logs::{Logs, Outcome};
use crate::runtime::{InvokeError, LambdaFunction};

pub use crate::environment::Environment;

/// The HS256 secret of the local stack; the demo page's tokens are signed with it.
pub const DEV_SECRET: &str = "wsfan-local-dev-secret";

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
    /// Execution environments per function (see [`crate::runtime::FunctionSpec::concurrency`]).
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

pub(crate) fn setup<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> DevError + '_ {
    move |e| DevError::Setup(format!("{what}: {e}"))
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

pub async fn start(config: DevConfig) -> Result<DevStack, DevError> {
    let logs = Logs::new(config.verbose);
    let mut environment = Environment::start(&config).await?;
    environment.dynamo_proxy = start_dynamo_proxy(&config, &environment, &logs).await?;
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
    let sockets = Arc::new(Sockets::default());
    let gateway = Arc::new(Gateway {
        routes: routes(&environment, &functions)?,
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
    inject_faults(&config, &connections, &environment, &logs);
    crate::demo::serve(
        listener,
        crate::demo::App {
            gateway,
            connections: connections.clone(),
            environment: environment.clone(),
            logs: logs.clone(),
            ws_url: ws_url.clone(),
        },
    );

    crate::event_sources::spawn_pollers(&environment, &functions, &config, &logs)?;
    crate::schedules::spawn_schedules(&environment, &functions, &config, &logs)?;

    Ok(DevStack {
        http_url,
        ws_url,
        environment,
        functions,
        connections,
        logs,
    })
}

/// The proxy the functions' DynamoDB calls go through when `--inject` names DynamoDB faults.
async fn start_dynamo_proxy(
    config: &DevConfig,
    environment: &Environment,
    logs: &Logs,
) -> Result<Option<DynamoProxy>, DevError> {
    let Some((faults, seed)) = config.inject.as_ref().filter(|(f, _)| !f.dynamo().is_empty()) else {
        return Ok(None);
    };
    let proxy = DynamoProxy::start(&environment.moto.endpoint, *faults.dynamo(), *seed, Some(logs.clone()))
        .await
        .map_err(setup("starting the DynamoDB fault proxy"))?;
    Ok(Some(proxy))
}

/// The gateway's routes and `$connect` authorizer, to the functions the template names.
fn routes(environment: &Environment, functions: &HashMap<String, Arc<LambdaFunction>>) -> Result<Routes, DevError> {
    let mut by_key = HashMap::new();
    for route in &environment.template.routes {
        by_key.insert(route.route_key.clone(), function_named(functions, &route.binary)?);
    }
    let authorizer = environment
        .template
        .authorizer
        .as_deref()
        .map(|binary| function_named(functions, binary))
        .transpose()?;
    Ok(Routes { authorizer, by_key })
}

/// The running function the template names as `binary`.
pub(crate) fn function_named(
    functions: &HashMap<String, Arc<LambdaFunction>>,
    binary: &str,
) -> Result<Arc<LambdaFunction>, DevError> {
    functions
        .get(binary)
        .cloned()
        .ok_or_else(|| DevError::Setup(format!("the template names {binary}, which is not a function")))
}

/// `--inject`: @connections draws its faults, and what was injected is logged as it goes.
fn inject_faults(config: &DevConfig, connections: &ConnectionsServer, environment: &Environment, logs: &Logs) {
    let Some((faults, seed)) = &config.inject else {
        return;
    };
    connections.inject(faults.clone(), *seed, Some(logs.clone()));
    logs.warn(&format!(
        "injecting {faults} (seed {seed}; --inject-seed {seed} draws the same faults)"
    ));
    let (server, counted, server_logs) = (connections.clone(), connections.clone(), logs.clone());
    tokio::spawn(summarise_injected(
        move || server.injected(),
        move |injected| {
            let requests = counted.stats().requests.load(std::sync::atomic::Ordering::Relaxed);
            server_logs.injected_summary(injected, requests)
        },
    ));
    if let Some(proxy) = environment.dynamo_proxy.clone() {
        let (reader, logs) = (proxy.clone(), logs.clone());
        tokio::spawn(summarise_injected(
            move || reader.injected(),
            move |_| log_dynamo_injected(&proxy, &logs),
        ));
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
    crate::event_sources::spawn_pollers(&environment, &functions, config, &logs)?;
    Ok((environment, functions))
}

fn log_dynamo_injected(proxy: &DynamoProxy, logs: &Logs) {
    let counts: Vec<(&str, u64)> = proxy.injected().iter().map(|(f, n)| (f.as_str(), *n)).collect();
    logs.dynamo_injected_summary(&counts, proxy.requests());
}

/// Every few seconds while faults are being injected, how many of each so far: `show`s the counts
/// `injected` reads whenever they have changed.
async fn summarise_injected<T: PartialEq + Default>(injected: impl Fn() -> T, show: impl Fn(&T)) {
    let mut shown = T::default();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = injected();
        if now != shown {
            show(&now);
            shown = now;
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
