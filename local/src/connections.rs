//! A real HTTP server that speaks the API Gateway Management API (`@connections`), for tests,
//! benchmarks and the local stack.
//!
//! `POST`, `GET` and `DELETE /@connections/{id}`, with or without a stage prefix. It accepts the
//! real SDK client's SigV4-signed requests and checks each signature against the local
//! credentials with aws-sigv4, as API Gateway would. It records what each connection received,
//! and can be told to misbehave: answer 410, 429 or 500 for a connection or at a rate, add
//! latency, or enforce a token bucket, or draw [`Faults`] per request (`wsfan dev --inject`).
//! With a [`Sink`] it delivers to real sockets instead, answering 410 for connections the sink
//! does not know.

mod behaviour;
mod signature;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;

use crate::faults::Faults;
use crate::logs::Logs;
use crate::per_second::{Event, PerSecond, Second};
use behaviour::{Behaviour, Injection, Rule, TokenBucket};
use signature::RequestHead;

/// API Gateway's limit on the data of one post (128 KB), answered with 413 above it; the
/// broadcaster refuses larger payloads before posting.
use wsfan_shared::broadcaster::MAX_PAYLOAD_BYTES as MAX_POST_BYTES;

/// Where posted data goes when the server fronts real connections (the local stack).
pub trait Sink: Send + Sync + 'static {
    /// Delivers `data`; `false` when the connection does not exist (answered with 410).
    fn send(&self, connection_id: &str, data: Bytes) -> bool;
    /// Closes the connection; `false` when it does not exist.
    fn close(&self, connection_id: &str) -> bool;
    /// Whether the connection exists.
    fn exists(&self, connection_id: &str) -> bool;
    /// Drops a connection that was answered 410: API Gateway answers 410 only for a connection
    /// that is gone, so the socket must go too.
    fn drop_gone(&self, connection_id: &str) {
        self.close(connection_id);
    }
    /// Whether the connection's upgrade is being held (`upgrade-delay`): `$connect` accepted it
    /// and its socket is not open yet, so every request for it is answered 410, as API Gateway
    /// answers for a connection whose handshake has not finished.
    fn upgrading(&self, _connection_id: &str) -> bool {
        false
    }
}

/// Counts of what the server answered.
#[derive(Debug, Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub delivered: AtomicU64,
    pub gone: AtomicU64,
    pub throttled: AtomicU64,
    pub errors: AtomicU64,
    pub unsigned: AtomicU64,
    /// Signed, but not with the expected key, or the signature does not match the request.
    pub bad_signatures: AtomicU64,
}

/// The key requests must be signed with; `None` checks only that they are signed.
type SigningSecret = Option<(String, String)>;

#[derive(Default)]
struct Inner {
    /// Off for benchmarks, which only count.
    forget: std::sync::atomic::AtomicBool,
    received: Mutex<HashMap<String, Vec<Bytes>>>,
    deleted: Mutex<Vec<String>>,
    behaviour: Mutex<Behaviour>,
    stats: Stats,
    sink: Option<Arc<dyn Sink>>,
    signing_secret: std::sync::RwLock<SigningSecret>,
    /// Faults injected by [`ConnectionsServer::inject`], by status, and `upgrade-410`: the
    /// requests answered 410 because `upgrade-delay` held that connection's upgrade.
    injected: Mutex<BTreeMap<String, u64>>,
    /// The same counts by wall-clock second: the fanouts' budget is per second.
    per_second: PerSecond,
}

/// A handle to a running server; cheap to clone.
#[derive(Clone)]
pub struct ConnectionsServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

/// The name of [`ConnectionsServer::start_on_own_thread`]'s thread (benchmarks read its CPU time).
pub const SERVER_THREAD: &str = "@connections";

/// Serves `app` on `listener` until the listener fails.
async fn serve(listener: tokio::net::TcpListener, app: Router) {
    // Answers are tiny: send them at once rather than let Nagle wait for the client's ACK.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(error = %e, "@connections server stopped");
    }
}

impl ConnectionsServer {
    /// Starts a recording server on `addr` (use `127.0.0.1:0` for a free port).
    pub async fn start(addr: &str) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let server = ConnectionsServer::new(listener.local_addr()?, None);
        tokio::spawn(serve(listener, server.router()));
        Ok(server)
    }

    /// Starts a server that delivers to `sink` on a thread and a one-thread runtime of its own,
    /// as `wsfan-bench serve-connections` serves in a process of its own. On a runtime shared with
    /// other work its connection tasks hop between worker threads: in `bench channel` it spent
    /// about 30 µs of CPU per post there, against 12 on its own thread, and that CPU came out of
    /// the cores the functions being measured run on. The thread serves until the process ends.
    pub fn start_on_own_thread(addr: &str, sink: Option<Arc<dyn Sink>>) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let server = ConnectionsServer::new(listener.local_addr()?, sink);
        let app = server.router();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new()
            .name(SERVER_THREAD.to_owned())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => serve(listener, app).await,
                        Err(e) => tracing::error!(error = %e, "@connections server did not start"),
                    }
                })
            })?;
        Ok(server)
    }

    /// A server state whose routes the caller mounts (the local stack shares one port).
    pub fn new(addr: SocketAddr, sink: Option<Arc<dyn Sink>>) -> Self {
        ConnectionsServer {
            addr,
            inner: Arc::new(Inner {
                sink,
                signing_secret: std::sync::RwLock::new(Some((
                    crate::moto::LOCAL_ACCESS_KEY_ID.to_owned(),
                    crate::moto::LOCAL_SECRET_ACCESS_KEY.to_owned(),
                ))),
                ..Default::default()
            }),
        }
    }

    pub fn router<S>(&self) -> Router<S> {
        Router::new()
            .route(
                "/@connections/{id}",
                post(post_data).get(get_info).delete(delete_connection),
            )
            .route(
                "/{stage}/@connections/{id}",
                post(post_staged).get(get_staged).delete(delete_staged),
            )
            .with_state(self.inner.clone())
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint to give the SDK client, e.g. `http://127.0.0.1:PORT/prod`.
    pub fn endpoint(&self, stage: &str) -> String {
        format!("http://{}/{stage}", self.addr)
    }

    pub fn stats(&self) -> &Stats {
        &self.inner.stats
    }

    /// What was answered in each second of the last few minutes (see [`PerSecond`]).
    pub fn per_second(&self) -> Vec<Second> {
        self.inner.per_second.recent(now_unix())
    }

    /// The totals and the seconds, as `wsfan dev` serves them at `GET /dev/stats`.
    pub fn stats_json(&self) -> serde_json::Value {
        let s = &self.inner.stats;
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "now": now_unix(),
            "requests": load(&s.requests),
            "delivered": load(&s.delivered),
            "gone": load(&s.gone),
            "throttled": load(&s.throttled),
            "errors": load(&s.errors),
            "secondsKept": crate::per_second::SECONDS_KEPT,
            "perSecond": self.per_second(),
        })
    }

    /// Everything `connection_id` was sent, as text.
    pub fn received(&self, connection_id: &str) -> Vec<String> {
        self.inner
            .received
            .lock()
            .unwrap()
            .get(connection_id)
            .map(|v| v.iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect())
            .unwrap_or_default()
    }

    /// Every connection that received anything.
    pub fn recipients(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.received.lock().unwrap().keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Connections deleted through `DELETE /@connections/{id}`.
    pub fn deleted(&self) -> Vec<String> {
        self.inner.deleted.lock().unwrap().clone()
    }

    /// Answers `status` for `connection_id`: forever, or for the next `times` requests.
    pub fn fail(&self, connection_id: &str, status: u16, times: Option<u32>) {
        self.inner.behaviour.lock().unwrap().rules.insert(
            connection_id.to_owned(),
            Rule::Status {
                status,
                remaining: times,
            },
        );
    }

    /// The connection is gone: 410 from now on.
    pub fn gone(&self, connection_id: &str) {
        self.fail(connection_id, 410, None);
    }

    /// Answers `status` to a random `fraction` of requests.
    pub fn fail_randomly(&self, fraction: f64, status: u16) {
        self.inner.behaviour.lock().unwrap().random_failure = Some((fraction, status));
    }

    /// Answers each request with a status drawn from `faults` (seeded with `seed`) and adds its
    /// latency. An injected 410 makes that connection gone for good: its socket is dropped (with
    /// a [`Sink`]) and every later request for it is answered 410, as API Gateway does.
    pub fn inject(&self, faults: Faults, seed: u64, logs: Option<Logs>) {
        self.inner.behaviour.lock().unwrap().injection = Some(Injection {
            faults,
            rng: fastrand::Rng::with_seed(seed),
            logs,
        });
    }

    /// Whether [`ConnectionsServer::inject`] was called.
    pub fn injecting(&self) -> bool {
        self.inner.behaviour.lock().unwrap().injection.is_some()
    }

    /// How many faults of each status [`ConnectionsServer::inject`] injected so far, and how
    /// many requests a held upgrade answered 410 (`upgrade-410`).
    pub fn injected(&self) -> BTreeMap<String, u64> {
        self.inner.injected.lock().unwrap().clone()
    }

    /// Adds `latency` before every answer.
    pub fn set_latency(&self, latency: Duration) {
        self.inner.behaviour.lock().unwrap().latency = latency;
    }

    /// Allows `rate` requests per second with bursts of `burst`; the rest get 429.
    pub fn set_token_bucket(&self, rate: f64, burst: f64) {
        self.inner.behaviour.lock().unwrap().bucket = Some(TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        });
    }

    /// Checks signatures against this key instead of the local credentials.
    pub fn verify_signatures_with(&self, access_key_id: &str, secret_access_key: &str) {
        *self.inner.signing_secret.write().unwrap() = Some((access_key_id.to_owned(), secret_access_key.to_owned()));
    }

    /// Checks only that requests are signed (benchmarks, whose clients use their own keys and
    /// whose server core should measure serving, not verifying).
    pub fn trust_signatures(&self) {
        *self.inner.signing_secret.write().unwrap() = None;
    }

    /// Count deliveries but keep no bodies (benchmarks).
    pub fn keep_nothing(&self) {
        self.inner.forget.store(true, Ordering::Relaxed);
    }

    pub fn reset(&self) {
        *self.inner.behaviour.lock().unwrap() = Behaviour::default();
        self.inner.received.lock().unwrap().clear();
        self.inner.deleted.lock().unwrap().clear();
    }
}

fn error(status: StatusCode, kind: &'static str, message: &str) -> Response {
    let mut response = (status, axum::Json(serde_json::json!({ "message": message }))).into_response();
    // The SDK reads the error type from this header (restJson1).
    response
        .headers_mut()
        .insert("x-amzn-errortype", HeaderValue::from_static(kind));
    response
}

fn status_response(status: u16) -> Response {
    match status {
        410 => error(StatusCode::GONE, "GoneException", "the connection is gone"),
        429 => error(StatusCode::TOO_MANY_REQUESTS, "LimitExceededException", "rate exceeded"),
        403 => error(StatusCode::FORBIDDEN, "ForbiddenException", "forbidden"),
        other => {
            let code = StatusCode::from_u16(other).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            error(code, "InternalServerError", "injected failure")
        }
    }
}

/// The name [`ConnectionsServer::injected`] counts a held upgrade's 410s under.
pub const UPGRADE_410: &str = "upgrade-410";

async fn post_data(
    State(inner): State<Arc<Inner>>,
    Path(id): Path<String>,
    head: RequestHead,
    body: Bytes,
) -> Response {
    if let Some(answer) = inner.gate(&head, &body, &id).await {
        return answer;
    }
    if body.len() > MAX_POST_BYTES {
        inner.stats.errors.fetch_add(1, Ordering::Relaxed);
        let message = format!(
            "the data is {} bytes; a post carries at most {MAX_POST_BYTES}",
            body.len()
        );
        return error(StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLargeException", &message);
    }
    let len = body.len();
    if let Some(sink) = &inner.sink {
        if !sink.send(&id, body.clone()) {
            inner.stats.gone.fetch_add(1, Ordering::Relaxed);
            return status_response(410);
        }
    }
    if !inner.forget.load(Ordering::Relaxed) {
        inner.received.lock().unwrap().entry(id).or_default().push(body);
    }
    inner.stats.delivered.fetch_add(1, Ordering::Relaxed);
    inner.per_second.record(now_unix(), Event::Delivered { len });
    StatusCode::OK.into_response()
}

async fn get_info(State(inner): State<Arc<Inner>>, Path(id): Path<String>, head: RequestHead) -> Response {
    if let Some(answer) = inner.gate(&head, &[], &id).await {
        return answer;
    }
    if inner.sink.as_ref().is_some_and(|s| !s.exists(&id)) {
        return status_response(410);
    }
    let now = wsfan_shared::clock::now_millis();
    let at = serde_json::Value::String(format_time(now));
    axum::Json(serde_json::json!({
        "connectedAt": at,
        "lastActiveAt": at,
        "identity": {"sourceIp": "127.0.0.1", "userAgent": "wsfan-local"},
    }))
    .into_response()
}

async fn delete_connection(State(inner): State<Arc<Inner>>, Path(id): Path<String>, head: RequestHead) -> Response {
    if let Some(answer) = inner.gate(&head, &[], &id).await {
        return answer;
    }
    if inner.sink.as_ref().is_some_and(|s| !s.close(&id)) {
        return status_response(410);
    }
    inner.deleted.lock().unwrap().push(id);
    StatusCode::NO_CONTENT.into_response()
}

async fn post_staged(
    state: State<Arc<Inner>>,
    Path((_, id)): Path<(String, String)>,
    head: RequestHead,
    body: Bytes,
) -> Response {
    post_data(state, Path(id), head, body).await
}

async fn get_staged(state: State<Arc<Inner>>, Path((_, id)): Path<(String, String)>, head: RequestHead) -> Response {
    get_info(state, Path(id), head).await
}

async fn delete_staged(state: State<Arc<Inner>>, Path((_, id)): Path<(String, String)>, head: RequestHead) -> Response {
    delete_connection(state, Path(id), head).await
}

fn now_unix() -> u64 {
    wsfan_shared::clock::now_secs().max(0) as u64
}

/// ISO 8601 in UTC, as the Management API returns timestamps.
fn format_time(millis: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(millis.div_euclid(1000))
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_iso_times() {
        assert_eq!(super::format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_time(1_795_305_600_000), "2026-11-22T00:00:00Z");
    }
}
