//! An emulated Lambda Runtime API, so the real `lambda_runtime` binaries run locally unchanged.
//!
//! Each function gets its own Runtime API server (the binary finds it through
//! `AWS_LAMBDA_RUNTIME_API`) and one process, which takes one invocation at a time as a Lambda
//! execution environment does. If the process dies, in-flight invocations fail and a new process
//! is started for the next one.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::logs::Logs;

/// What it takes to run one function.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    /// The name shown in logs and used as `AWS_LAMBDA_FUNCTION_NAME` (the binary's name).
    pub name: String,
    pub binary: PathBuf,
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
    pub memory_mb: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// The handler returned an error (`/invocation/{id}/error`).
    #[error("{error_type}: {message}")]
    Function { error_type: String, message: String },
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The process failed to start or initialise, or died mid-invocation.
    #[error("{0}")]
    Crashed(String),
    #[error("the response is not JSON: {0}")]
    BadResponse(String),
}

struct Invocation {
    id: String,
    payload: Bytes,
    deadline_ms: i64,
    reply: oneshot::Sender<Result<Bytes, InvokeError>>,
}

struct RuntimeState {
    name: String,
    queue: Mutex<mpsc::Receiver<Invocation>>,
    in_flight: Mutex<HashMap<String, oneshot::Sender<Result<Bytes, InvokeError>>>>,
    init_error: Mutex<Option<String>>,
}

/// A running function: its Runtime API server and its process.
pub struct LambdaFunction {
    spec: FunctionSpec,
    state: Arc<RuntimeState>,
    queue: mpsc::Sender<Invocation>,
    runtime_api: String,
    /// Invocations are served one at a time, in arrival order.
    turn: Mutex<()>,
    /// [`LambdaFunction::stop`] asks, the supervisor kills the process and answers.
    phase: tokio::sync::watch::Sender<Phase>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping,
    Stopped,
}

impl LambdaFunction {
    /// Starts the Runtime API server and the function's process.
    pub async fn start(spec: FunctionSpec, logs: Logs) -> std::io::Result<Arc<LambdaFunction>> {
        if !spec.binary.exists() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} is missing: run `cargo build --workspace --bins`",
                    spec.binary.display()
                ),
            ));
        }
        let (tx, rx) = mpsc::channel(64);
        let state = Arc::new(RuntimeState {
            name: spec.name.clone(),
            queue: Mutex::new(rx),
            in_flight: Mutex::new(HashMap::new()),
            init_error: Mutex::new(None),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let runtime_api = listener.local_addr()?.to_string();
        let app = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/response", post(respond))
            .route("/2018-06-01/runtime/invocation/{id}/error", post(fail))
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .with_state(state.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let function = Arc::new(LambdaFunction {
            spec,
            state,
            queue: tx,
            runtime_api,
            turn: Mutex::new(()),
            phase: tokio::sync::watch::channel(Phase::Running).0,
        });
        function.clone().supervise(logs);
        Ok(function)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Ends the function: kills its process, fails what is in flight, and restarts nothing.
    /// Returns once the process is gone.
    pub async fn stop(&self) {
        let mut phase = self.phase.subscribe();
        self.phase.send_if_modified(|p| {
            let running = *p == Phase::Running;
            if running {
                *p = Phase::Stopping;
            }
            running
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), phase.wait_for(|p| *p == Phase::Stopped)).await;
    }

    /// Keeps one process running; restarts it when it exits, as Lambda starts a new environment.
    fn supervise(self: Arc<Self>, logs: Logs) {
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            let mut phase = self.phase.subscribe();
            loop {
                let started = Instant::now();
                let status = match self.spawn(&logs) {
                    Ok(mut child) => tokio::select! {
                        status = child.wait() => status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                        _ = stop_requested(&mut phase) => {
                            let _ = child.kill().await;
                            for (_, reply) in self.state.in_flight.lock().await.drain() {
                                let _ = reply.send(Err(InvokeError::Crashed("the stack is shutting down".into())));
                            }
                            self.phase.send_replace(Phase::Stopped);
                            return;
                        }
                    },
                    Err(e) => format!("could not start: {e}"),
                };
                let reason = match self.state.init_error.lock().await.take() {
                    Some(init) => format!("init error: {init}"),
                    None => format!("process exited ({status})"),
                };
                logs.function_died(&self.spec.name, &reason);
                for (_, reply) in self.state.in_flight.lock().await.drain() {
                    let _ = reply.send(Err(InvokeError::Crashed(reason.clone())));
                }
                if self.queue.is_closed() || *self.phase.borrow() != Phase::Running {
                    self.phase.send_replace(Phase::Stopped);
                    return;
                }
                // A process that dies at once would otherwise spin.
                backoff = if started.elapsed() > Duration::from_secs(5) {
                    Duration::from_millis(200)
                } else {
                    (backoff * 2).min(Duration::from_secs(5))
                };
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop_requested(&mut phase) => {
                        self.phase.send_replace(Phase::Stopped);
                        return;
                    }
                }
            }
        });
    }

    fn spawn(&self, logs: &Logs) -> std::io::Result<tokio::process::Child> {
        let mut command = tokio::process::Command::new(&self.spec.binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", &self.runtime_api)
            .env("AWS_LAMBDA_FUNCTION_NAME", &self.spec.name)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", self.spec.memory_mb.to_string())
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{}", self.spec.name))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "local")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        crate::children::die_with_parent(command.as_std_mut());
        let mut child = command.spawn()?;
        if let Some(out) = child.stdout.take() {
            pipe_lines(out, logs.clone(), self.spec.name.clone());
        }
        if let Some(err) = child.stderr.take() {
            pipe_lines(err, logs.clone(), self.spec.name.clone());
        }
        Ok(child)
    }

    /// Invokes the function with `payload` and returns its JSON response.
    pub async fn invoke(&self, payload: &serde_json::Value) -> Result<serde_json::Value, InvokeError> {
        let bytes = self.invoke_raw(Bytes::from(payload.to_string())).await?;
        serde_json::from_slice(&bytes).map_err(|e| InvokeError::BadResponse(e.to_string()))
    }

    pub async fn invoke_raw(&self, payload: Bytes) -> Result<Bytes, InvokeError> {
        let _turn = self.turn.lock().await;
        let (reply, response) = oneshot::channel();
        let deadline_ms = wsfan_shared::clock::now_millis() + self.spec.timeout.as_millis() as i64;
        let invocation = Invocation {
            id: ulid::Ulid::generate().to_string().to_lowercase(),
            payload,
            deadline_ms,
            reply,
        };
        let id = invocation.id.clone();
        self.queue
            .send(invocation)
            .await
            .map_err(|_| InvokeError::Crashed("the function is shut down".into()))?;
        match tokio::time::timeout(self.spec.timeout, response).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(InvokeError::Crashed("the invocation was dropped".into())),
            Err(_) => {
                self.state.in_flight.lock().await.remove(&id);
                Err(InvokeError::Timeout(self.spec.timeout))
            }
        }
    }
}

/// Resolves once [`LambdaFunction::stop`] was called (the watch's guard is not held past it).
async fn stop_requested(phase: &mut tokio::sync::watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p != Phase::Running).await;
}

/// Forwards a child's output to the local logs, line by line.
fn pipe_lines<R: tokio::io::AsyncRead + Unpin + Send + 'static>(stream: R, logs: Logs, name: String) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            logs.function_line(&name, &line);
        }
    });
}

async fn next(State(state): State<Arc<RuntimeState>>) -> Response {
    let invocation = {
        let mut queue = state.queue.lock().await;
        match queue.recv().await {
            Some(i) => i,
            None => return StatusCode::GONE.into_response(),
        }
    };
    state
        .in_flight
        .lock()
        .await
        .insert(invocation.id.clone(), invocation.reply);
    let mut headers = HeaderMap::new();
    let header = |v: String| HeaderValue::from_str(&v).expect("ids and numbers are valid headers");
    headers.insert("lambda-runtime-aws-request-id", header(invocation.id.clone()));
    headers.insert("lambda-runtime-deadline-ms", header(invocation.deadline_ms.to_string()));
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        header(format!("arn:aws:lambda:us-east-1:000000000000:function:{}", state.name)),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        header(format!("Root=1-local-{}", invocation.id)),
    );
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    (StatusCode::OK, headers, invocation.payload).into_response()
}

async fn respond(State(state): State<Arc<RuntimeState>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    match state.in_flight.lock().await.remove(&id) {
        Some(reply) => {
            let _ = reply.send(Ok(body));
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn fail(State(state): State<Arc<RuntimeState>>, Path(id): Path<String>, body: Bytes) -> StatusCode {
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let err = InvokeError::Function {
        error_type: error["errorType"].as_str().unwrap_or("Unhandled").to_owned(),
        message: error["errorMessage"].as_str().unwrap_or("").to_owned(),
    };
    match state.in_flight.lock().await.remove(&id) {
        Some(reply) => {
            let _ = reply.send(Err(err));
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

async fn init_error(State(state): State<Arc<RuntimeState>>, body: Bytes) -> StatusCode {
    let error: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let message = error["errorMessage"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    *state.init_error.lock().await = Some(message);
    StatusCode::ACCEPTED
}
