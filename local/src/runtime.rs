//! An emulated Lambda Runtime API, so the real `lambda_runtime` binaries run locally unchanged.
//!
//! A function scales out as Lambda does: each execution environment is one process, which takes
//! one invocation at a time, and a new environment is started when an invocation arrives while
//! every started one is busy, up to the function's concurrency. Each environment has its own
//! Runtime API server (the binary finds it through `AWS_LAMBDA_RUNTIME_API`), so the emulator knows
//! which process holds which invocation. If a process dies, its in-flight invocation fails and a
//! new process is started for the next one; an invocation that times out ends its process, as
//! Lambda resets an environment after a timeout.

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
    /// How many execution environments may run at once (at least 1).
    pub concurrency: usize,
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

type Reply = oneshot::Sender<Result<Bytes, InvokeError>>;

/// One execution environment's side of the Runtime API: the invocation its process holds.
struct RuntimeState {
    name: String,
    /// Shared by every environment of the function: whichever process asks `/next` first gets
    /// the oldest invocation.
    queue: Arc<Mutex<mpsc::Receiver<Invocation>>>,
    in_flight: Mutex<HashMap<String, Reply>>,
    init_error: Mutex<Option<String>>,
}

/// One execution environment: a Runtime API server and the process behind it.
struct Environment {
    state: Arc<RuntimeState>,
    runtime_api: String,
    /// Set when an invocation of this environment timed out: the supervisor kills the process.
    reset: tokio::sync::Notify,
}

/// A running function: its execution environments, started as invocations need them.
pub struct LambdaFunction {
    spec: FunctionSpec,
    queue: mpsc::Sender<Invocation>,
    receiver: Arc<Mutex<mpsc::Receiver<Invocation>>>,
    environments: std::sync::Mutex<Vec<Arc<Environment>>>,
    /// One permit per environment the function may have: an invocation holds one from the moment
    /// it is queued, so no more are queued than there are environments to serve them.
    permits: tokio::sync::Semaphore,
    /// Held while deciding whether to start another environment, so two invocations arriving
    /// together start one each at most up to the concurrency.
    scaling: Mutex<()>,
    logs: Logs,
    /// [`LambdaFunction::stop`] asks, each supervisor kills its process and answers.
    phase: tokio::sync::watch::Sender<Phase>,
    stopped: tokio::sync::watch::Sender<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    Stopping,
}

impl LambdaFunction {
    /// Starts the function with its first execution environment.
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
        let concurrency = spec.concurrency.max(1);
        let (tx, rx) = mpsc::channel(concurrency);
        let function = Arc::new(LambdaFunction {
            spec,
            queue: tx,
            receiver: Arc::new(Mutex::new(rx)),
            environments: std::sync::Mutex::new(Vec::new()),
            permits: tokio::sync::Semaphore::new(concurrency),
            scaling: Mutex::new(()),
            logs,
            phase: tokio::sync::watch::channel(Phase::Running).0,
            stopped: tokio::sync::watch::channel(0).0,
        });
        function.clone().add_environment().await?;
        Ok(function)
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// How many execution environments have been started.
    pub fn environments(&self) -> usize {
        self.environments.lock().expect("not poisoned").len()
    }

    /// Ends the function: kills its processes, fails what is in flight, and restarts nothing.
    /// Returns once the processes are gone.
    pub async fn stop(&self) {
        self.phase.send_replace(Phase::Stopping);
        let started = self.environments();
        let mut stopped = self.stopped.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), stopped.wait_for(|n| *n >= started)).await;
    }

    async fn add_environment(self: Arc<Self>) -> std::io::Result<()> {
        let state = Arc::new(RuntimeState {
            name: self.spec.name.clone(),
            queue: self.receiver.clone(),
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
        let environment = Arc::new(Environment {
            state,
            runtime_api,
            reset: tokio::sync::Notify::new(),
        });
        self.environments
            .lock()
            .expect("not poisoned")
            .push(environment.clone());
        self.supervise(environment);
        Ok(())
    }

    /// Keeps the environment's process running; restarts it when it exits, as Lambda starts a
    /// new environment.
    fn supervise(self: Arc<Self>, environment: Arc<Environment>) {
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            let mut phase = self.phase.subscribe();
            let fail_in_flight = |reason: String| {
                let environment = environment.clone();
                async move {
                    for (_, reply) in environment.state.in_flight.lock().await.drain() {
                        let _ = reply.send(Err(InvokeError::Crashed(reason.clone())));
                    }
                }
            };
            loop {
                let started = Instant::now();
                let status = match self.spawn(&environment.runtime_api) {
                    Ok(mut child) => tokio::select! {
                        status = child.wait() => status.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()),
                        _ = environment.reset.notified() => {
                            let _ = child.kill().await;
                            "ended after a timeout".to_owned()
                        }
                        _ = stop_requested(&mut phase) => {
                            let _ = child.kill().await;
                            fail_in_flight("the stack is shutting down".into()).await;
                            self.stopped.send_modify(|n| *n += 1);
                            return;
                        }
                    },
                    Err(e) => format!("could not start: {e}"),
                };
                let reason = match environment.state.init_error.lock().await.take() {
                    Some(init) => format!("init error: {init}"),
                    None => format!("process exited ({status})"),
                };
                self.logs.function_died(&self.spec.name, &reason);
                fail_in_flight(reason).await;
                if self.queue.is_closed() || *self.phase.borrow() != Phase::Running {
                    self.stopped.send_modify(|n| *n += 1);
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
                        self.stopped.send_modify(|n| *n += 1);
                        return;
                    }
                }
            }
        });
    }

    fn spawn(&self, runtime_api: &str) -> std::io::Result<tokio::process::Child> {
        let mut command = tokio::process::Command::new(&self.spec.binary);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", runtime_api)
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
            pipe_lines(out, self.logs.clone(), self.spec.name.clone());
        }
        if let Some(err) = child.stderr.take() {
            pipe_lines(err, self.logs.clone(), self.spec.name.clone());
        }
        Ok(child)
    }

    /// Invokes the function with `payload` and returns its JSON response.
    pub async fn invoke(self: &Arc<Self>, payload: &serde_json::Value) -> Result<serde_json::Value, InvokeError> {
        let bytes = self.invoke_raw(Bytes::from(payload.to_string())).await?;
        serde_json::from_slice(&bytes).map_err(|e| InvokeError::BadResponse(e.to_string()))
    }

    pub async fn invoke_raw(self: &Arc<Self>, payload: Bytes) -> Result<Bytes, InvokeError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| InvokeError::Crashed("the function is shut down".into()))?;
        // Every started environment may be busy: scale out, as Lambda does, up to the concurrency.
        let scaling = self.scaling.lock().await;
        let busy = self.spec.concurrency.max(1) - self.permits.available_permits();
        if busy > self.environments() && *self.phase.borrow() == Phase::Running {
            if let Err(e) = self.clone().add_environment().await {
                self.logs
                    .function_died(&self.spec.name, &format!("could not start another environment: {e}"));
            }
        }
        drop(scaling);
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
                let environments: Vec<_> = self.environments.lock().expect("not poisoned").clone();
                for environment in environments {
                    if environment.state.in_flight.lock().await.remove(&id).is_some() {
                        environment.reset.notify_one();
                    }
                }
                Err(InvokeError::Timeout(self.spec.timeout))
            }
        }
    }
}

/// Resolves once [`LambdaFunction::stop`] was called (the watch's guard is not held past it).
async fn stop_requested(phase: &mut tokio::sync::watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p == Phase::Stopping).await;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A Lambda runtime client in Python: each invocation names a barrier directory and a number
    /// of parties; it leaves its process id there and answers once that many invocations are
    /// in progress at once, or after 20 s without them.
    const BARRIER_FUNCTION: &str = r#"
import json, os, time, urllib.request
base = "http://%s/2018-06-01/runtime/invocation" % os.environ["AWS_LAMBDA_RUNTIME_API"]
while True:
    with urllib.request.urlopen(base + "/next") as r:
        request_id = r.headers["lambda-runtime-aws-request-id"]
        event = json.loads(r.read())
    open(os.path.join(event["barrier"], str(os.getpid())), "w").close()
    deadline = time.time() + 20
    while len(os.listdir(event["barrier"])) < event["parties"] and time.time() < deadline:
        time.sleep(0.01)
    met = len(os.listdir(event["barrier"])) >= event["parties"]
    body = json.dumps({"pid": os.getpid(), "met": met}).encode()
    urllib.request.urlopen(urllib.request.Request(base + "/%s/response" % request_id, data=body, method="POST")).read()
"#;

    struct Scratch(PathBuf);

    impl Scratch {
        fn new() -> Scratch {
            let dir = std::env::temp_dir().join(format!("wsfan-runtime-{}", ulid::Ulid::generate()));
            std::fs::create_dir_all(&dir).expect("temp dir");
            Scratch(dir)
        }

        fn barrier(&self, name: &str) -> String {
            let dir = self.0.join(name);
            std::fs::create_dir_all(&dir).expect("barrier dir");
            dir.display().to_string()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    async fn barrier_function(scratch: &Scratch, concurrency: usize, timeout: Duration) -> Arc<LambdaFunction> {
        let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
        assert!(python.exists(), "{} is missing: run scripts/setup", python.display());
        let binary = scratch.0.join("function");
        std::fs::write(
            &binary,
            format!(
                "#!{}\n{BARRIER_FUNCTION}",
                python.canonicalize().expect("python").display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&binary, std::os::unix::fs::PermissionsExt::from_mode(0o755)).expect("chmod");
        let spec = FunctionSpec {
            name: "barrier".into(),
            binary,
            env: vec![],
            timeout,
            memory_mb: 128,
            concurrency,
        };
        LambdaFunction::start(spec, Logs::new(false)).await.expect("start")
    }

    #[tokio::test]
    async fn invocations_that_arrive_together_run_in_as_many_environments_as_the_concurrency_allows() {
        let scratch = Scratch::new();
        let function = barrier_function(&scratch, 3, Duration::from_secs(30)).await;
        assert_eq!(function.environments(), 1, "one environment until a second is needed");
        let event = serde_json::json!({"barrier": scratch.barrier("three"), "parties": 3});
        let answers = futures::future::join_all((0..3).map(|_| function.invoke(&event))).await;
        let mut pids = Vec::new();
        for answer in answers {
            let answer = answer.expect("invocation");
            assert_eq!(answer["met"], true, "all three ran at once: {answer}");
            pids.push(answer["pid"].as_i64().expect("pid"));
        }
        pids.sort();
        pids.dedup();
        assert_eq!(pids.len(), 3, "three processes: {pids:?}");
        assert_eq!(function.environments(), 3);

        // A fourth invocation alongside three more finds no fourth environment: it waits its turn.
        let event = serde_json::json!({"barrier": scratch.barrier("one"), "parties": 1});
        let answers = futures::future::join_all((0..4).map(|_| function.invoke(&event))).await;
        assert!(
            answers.iter().all(|a| a.as_ref().is_ok_and(|a| a["met"] == true)),
            "{answers:?}"
        );
        assert_eq!(
            function.environments(),
            3,
            "never more environments than the concurrency"
        );
        function.stop().await;
    }

    #[tokio::test]
    async fn an_invocation_that_times_out_ends_its_environment_and_the_next_gets_a_fresh_one() {
        let scratch = Scratch::new();
        // 3 s, not less: the timeout counts from when an invocation is queued, so it covers the
        // fresh process's start after the kill, which a loaded 2-core machine can make slow.
        const TIMEOUT: Duration = Duration::from_secs(3);
        let function = barrier_function(&scratch, 1, TIMEOUT).await;
        // A warm process, so that the one that gets stuck has written its pid before it times out.
        function
            .invoke(&serde_json::json!({"barrier": scratch.barrier("warm"), "parties": 1}))
            .await
            .expect("the warm-up invocation is served");
        let stuck = scratch.barrier("stuck");
        let answer = function
            .invoke(&serde_json::json!({"barrier": stuck, "parties": 2}))
            .await;
        assert_eq!(answer, Err(InvokeError::Timeout(TIMEOUT)));
        let stuck_pid: i32 = std::fs::read_dir(&stuck)
            .expect("barrier")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
            .next()
            .expect("the stuck process left its pid");

        let answer = function
            .invoke(&serde_json::json!({"barrier": scratch.barrier("after"), "parties": 1}))
            .await
            .expect("the next invocation is served");
        assert_ne!(answer["pid"].as_i64(), Some(i64::from(stuck_pid)), "a fresh process");
        assert!(
            !std::path::Path::new(&format!("/proc/{stuck_pid}")).exists(),
            "the timed-out process is gone"
        );
        function.stop().await;
    }
}
