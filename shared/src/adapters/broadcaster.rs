//! The broadcaster: the one way anything in wsfan posts to `@connections`.
//!
//! One SDK client (connections kept alive), many posts in flight on one runtime, jittered
//! exponential backoff on throttling and 5xx under a total deadline, and a 410 deletes the
//! *recipient* that is gone (its connection item and memberships). Counters go out as CloudWatch
//! Embedded Metric Format.

use std::future::Future;
use std::time::{Duration, Instant};

use aws_sdk_apigatewaymanagement::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_apigatewaymanagement::operation::post_to_connection::PostToConnectionError;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use aws_sdk_apigatewaymanagement::Client;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::context::{
    BeforeSerializationInterceptorContextRef, BeforeTransmitInterceptorContextMut,
};
use aws_smithy_runtime_api::client::interceptors::{disable_interceptor, Intercept};
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use futures::stream::{self, Stream, StreamExt};

use crate::budget::{Lease, Take};
use crate::governor::Governor;
use crate::store::{BudgetLedger, Store, StoreError};

/// API Gateway's limit for one message posted to a connection.
pub const MAX_PAYLOAD_BYTES: usize = 128 * 1024;

pub use crate::config::BroadcastConfig;

/// The @connections endpoint for a request that arrived on `domain_name` / `stage`.
///
/// With a custom domain, `requestContext.domainName` is the custom domain, whose base path
/// mapping need not be the stage name, so posting there fails (simple-websockets-chat-app #40,
/// #51). The execute-api domain always works, so build that one from the API id.
pub fn callback_endpoint(domain_name: &str, stage: &str, api_id: &str, region: &str) -> String {
    if domain_name.ends_with(".amazonaws.com") || api_id.is_empty() {
        format!("https://{domain_name}/{stage}")
    } else {
        format!("https://{api_id}.execute-api.{region}.amazonaws.com/{stage}")
    }
}

/// What happened to one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    /// 410: the connection is gone and has been cleaned up.
    Gone,
    /// 410 from a connection stored less than [`ESTABLISHING_MILLIS`] ago: most likely still in
    /// `$connect` or its handshake, so it is kept, and a post after it opens will land.
    Connecting,
    /// Not delivered: retries ran out, or the error is not worth retrying.
    Failed(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    pub delivered: u64,
    pub gone: u64,
    pub retried: u64,
    /// Of the retries, those @connections asked for with 429: the alarm for throttling.
    pub throttled: u64,
    pub failed: u64,
    /// Attempts made (posts and their retries): what was drawn from the `@connections` budget.
    pub posts: u64,
    /// Time posts waited for the governor's budget, summed over posts.
    pub paced_ms: u64,
    /// How many times a 429 made the governor lower its rate.
    pub backoffs: u64,
}

impl Counters {
    pub fn add(&mut self, other: &Counters) {
        self.delivered += other.delivered;
        self.gone += other.gone;
        self.retried += other.retried;
        self.throttled += other.throttled;
        self.failed += other.failed;
        self.posts += other.posts;
        self.paced_ms += other.paced_ms;
        self.backoffs += other.backoffs;
    }

    /// One CloudWatch Embedded Metric Format document.
    pub fn emf(&self, function: &str) -> String {
        serde_json::json!({
            "_aws": {
                "Timestamp": crate::clock::now_millis(),
                "CloudWatchMetrics": [{
                    "Namespace": "wsfan",
                    "Dimensions": [["Function"]],
                    "Metrics": [
                        {"Name": "Delivered", "Unit": "Count"},
                        {"Name": "Gone", "Unit": "Count"},
                        {"Name": "Retried", "Unit": "Count"},
                        {"Name": "Throttled", "Unit": "Count"},
                        {"Name": "Failed", "Unit": "Count"},
                        {"Name": "Posts", "Unit": "Count"},
                        {"Name": "PacedMs", "Unit": "Milliseconds"},
                        {"Name": "Backoffs", "Unit": "Count"},
                    ],
                }],
            },
            "Function": function,
            "Delivered": self.delivered,
            "Gone": self.gone,
            "Retried": self.retried,
            "Throttled": self.throttled,
            "Failed": self.failed,
            "Posts": self.posts,
            "PacedMs": self.paced_ms,
            "Backoffs": self.backoffs,
        })
        .to_string()
    }

    /// EMF must be a log line of its own, so it bypasses the tracing formatter.
    pub fn log_emf(&self, function: &str) {
        println!("{}", self.emf(function));
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub outcomes: Vec<(String, Delivery)>,
    pub counters: Counters,
}

impl Report {
    pub fn undelivered(&self) -> impl Iterator<Item = (&str, &str)> {
        self.outcomes.iter().filter_map(|(id, d)| match d {
            Delivery::Failed(why) => Some((id.as_str(), why.as_str())),
            _ => None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BroadcastError {
    #[error("payload is {0} bytes; @connections accepts at most {MAX_PAYLOAD_BYTES}")]
    PayloadTooLarge(usize),
}

/// What fanout handlers need from a broadcaster; tests may substitute their own.
pub trait Deliver: Send + Sync {
    /// Posts `payload` to every recipient; the report has every recipient's outcome.
    fn deliver(
        &self,
        recipients: Vec<String>,
        payload: &[u8],
    ) -> impl Future<Output = Result<Report, BroadcastError>> + Send;

    /// Posts `payload` to recipients that arrive a page at a time (a group's member read), with
    /// the posts in flight topped up across pages: a page's slowest recipient (one backing off
    /// after a 429 or 5xx) holds back nobody on the next page. Memory stays flat however many
    /// pass through: the report's outcomes are only the recipients not delivered.
    fn deliver_pages<P: Stream<Item = Vec<String>> + Send>(
        &self,
        pages: P,
        payload: &[u8],
    ) -> impl Future<Output = Result<Report, BroadcastError>> + Send;

    /// Posts each recipient its own frames, in their order, and the recipients in parallel: no
    /// recipient waits for another's frames. A recipient that takes batches gets its frames
    /// coalesced into as few posts as fit ([`pack`]). No attempt starts after `stop_at` (the
    /// invocation's hand-off time): the report hands back every frame not delivered, in order,
    /// for the delivery queue.
    fn deliver_parcels(
        &self,
        parcels: Vec<Parcel>,
        stop_at: Option<Instant>,
    ) -> impl Future<Output = ParcelReport> + Send;

    /// The posts per second this deliverer may make at most (`FANOUT_MAX_RPS`), if it is bounded.
    fn posts_per_second(&self) -> Option<u64> {
        None
    }
}

/// The frames one recipient is due, in the order it must get them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parcel {
    pub connection_id: String,
    /// Each a server frame's JSON text.
    pub frames: Vec<std::sync::Arc<str>>,
    /// The connection asked for several frames in one post (`{"type":"batch"}`).
    pub batch: bool,
}

/// What [`Deliver::deliver_parcels`] came to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParcelReport {
    pub counters: Counters,
    /// The frames not delivered, per recipient and in order: failed at the recipient's deadline,
    /// or not started before `stop_at`. A recipient that is gone (410) is not here.
    pub undelivered: Vec<Parcel>,
    /// Of the undelivered recipients, those stopped by `stop_at` rather than by failing.
    pub handed_on: u64,
    /// Recipients that answered 410 while still connecting ([`Delivery::Connecting`]), with
    /// their frames from the one refused on: a caller that knows the connection is about to open
    /// (it asked for these frames at connect) may post them again.
    pub connecting: Vec<Parcel>,
}

/// The start of a batch frame; its frames follow, comma-separated, then [`BATCH_CLOSE`].
pub const BATCH_OPEN: &str = r#"{"type":"batch","frames":["#;
const BATCH_CLOSE: &str = "]}";

/// Packs `frames` into the posts that carry them, in order, each with how many frames it holds.
/// Without `batch`, a post a frame. With it, as many frames as fit in one post of at most
/// [`MAX_PAYLOAD_BYTES`] go in a `{"type":"batch","frames":[...]}`, and a post of one frame is that
/// frame alone. API Gateway bills a post per 32 KB, so the posts cost no more than the frames
/// would, and far fewer posts draw on the rate.
pub fn pack(frames: &[std::sync::Arc<str>], batch: bool) -> Vec<(Vec<u8>, usize)> {
    if !batch {
        return frames.iter().map(|f| (f.as_bytes().to_vec(), 1)).collect();
    }
    let mut posts = Vec::new();
    let mut i = 0;
    while i < frames.len() {
        let mut end = i + 1;
        let mut size = BATCH_OPEN.len() + frames[i].len() + BATCH_CLOSE.len();
        while end < frames.len() && size + 1 + frames[end].len() <= MAX_PAYLOAD_BYTES {
            size += 1 + frames[end].len();
            end += 1;
        }
        let body = if end - i == 1 {
            frames[i].as_bytes().to_vec()
        } else {
            let mut body = Vec::with_capacity(size);
            body.extend_from_slice(BATCH_OPEN.as_bytes());
            for (k, frame) in frames[i..end].iter().enumerate() {
                if k > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(frame.as_bytes());
            }
            body.extend_from_slice(BATCH_CLOSE.as_bytes());
            body
        };
        posts.push((body, end - i));
        i = end;
    }
    posts
}

/// Cleans up after a recipient that answered 410 Gone.
pub trait GoneCleanup: Send + Sync {
    /// What the 410 meant: the connection is gone (cleaned up), or it is still connecting (kept).
    fn connection_gone(&self, connection_id: &str) -> impl Future<Output = Gone> + Send;
}

/// What [`GoneCleanup`] made of a 410.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// The connection is gone; its items are removed (or left to its TTL).
    Removed,
    /// The connection is younger than [`ESTABLISHING_MILLIS`]: still connecting, kept.
    Connecting,
}

/// How long after `$connect` stored a connection a 410 for it may mean "not established yet"
/// rather than "gone". API Gateway answers 410 to posts to a connection whose `$connect` has not
/// returned (or whose handshake has not finished), and `$connect` writes the connection's
/// memberships first: a fanout that reads them meanwhile posts too early. Deleting the connection
/// then would leave a client that is about to be connected with no channels, silently. 30 s is
/// API Gateway's integration timeout, the longest `$connect` can take.
pub const ESTABLISHING_MILLIS: i64 = 30_000;

impl<S: Store> GoneCleanup for S {
    async fn connection_gone(&self, connection_id: &str) -> Gone {
        if let Ok(Some(connection)) = self.connection(connection_id).await {
            let age = crate::clock::now_millis() - connection.connected_at;
            if age < ESTABLISHING_MILLIS {
                tracing::info!(
                    connection = connection_id,
                    age_ms = age,
                    "410 from a connection that may still be connecting; kept (its $disconnect or TTL removes it if gone)"
                );
                return Gone::Connecting;
            }
        }
        match self.disconnect(connection_id).await {
            Ok(c) => tracing::info!(
                connection = connection_id,
                memberships = c.memberships_removed,
                "removed gone connection"
            ),
            Err(e) => {
                tracing::warn!(connection = connection_id, error = %e, "could not remove gone connection; TTL will")
            }
        }
        Gone::Removed
    }
}

pub struct Broadcaster<G> {
    client: Client,
    config: BroadcastConfig,
    gone: G,
    governor: Option<Pacer>,
}

/// This environment's pace, on the clock: the AIMD governor that answers 429s, and the lease of
/// the budget all fanout shares.
struct Pacer {
    governor: std::sync::Mutex<Governor>,
    epoch: Instant,
    budget: Option<SharedBudget>,
}

/// An object-safe face of [`BudgetLedger`], so the broadcaster's type does not name the store.
trait Ledger: Send + Sync {
    fn lease(&self, second: u64, want: u64, cap: u64) -> futures::future::BoxFuture<'_, Result<u64, StoreError>>;
}

impl<L: BudgetLedger> Ledger for L {
    fn lease(&self, second: u64, want: u64, cap: u64) -> futures::future::BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(BudgetLedger::lease(self, second, want, cap))
    }
}

/// The posts this environment holds of the shared per-second budget (crate::budget).
struct SharedBudget {
    lease: std::sync::Mutex<Lease>,
    /// One lease in flight at a time: the posts waiting for it all take from its grant.
    leasing: tokio::sync::Mutex<()>,
    ledger: Box<dyn Ledger>,
}

/// When the table cannot be reached for a lease, posts go on at this fraction of the cap per
/// lease asked for: slowly, rather than not at all, and far under the cap even with every
/// environment doing the same.
const UNLEASED_FRACTION: f64 = 1.0 / 200.0;

impl SharedBudget {
    /// Waits until this environment holds a post of the current second; returns that second's
    /// end (wall clock), by which the post must be sent.
    async fn take(&self) -> Duration {
        loop {
            let now = crate::clock::since_epoch();
            let step = self.lease.lock().unwrap().take(now);
            match step {
                Take::Go => return Duration::from_secs(now.as_secs() + 1),
                // A millisecond past the boundary: the next second has surely begun.
                Take::Wait(wait) => tokio::time::sleep(wait + Duration::from_millis(1)).await,
                Take::Lease { .. } => {
                    let _leasing = self.leasing.lock().await;
                    // Another post may have leased while this one waited for the lock.
                    let now = crate::clock::since_epoch();
                    let step = self.lease.lock().unwrap().take(now);
                    let Take::Lease { second, want } = step else {
                        if step == Take::Go {
                            return Duration::from_secs(now.as_secs() + 1);
                        }
                        continue;
                    };
                    let cap = self.lease.lock().unwrap().cap();
                    let granted = match self.ledger.lease(second, want, cap).await {
                        Ok(granted) => granted,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not lease @connections budget; posting slowly meanwhile");
                            ((cap as f64 * UNLEASED_FRACTION).ceil() as u64).clamp(1, want)
                        }
                    };
                    self.lease.lock().unwrap().granted(second, want, granted);
                }
            }
        }
    }
}

impl Pacer {
    /// Waits for this post's turn; returns how long that took, and with a shared budget the
    /// end of the second its token belongs to (the post must be sent before it).
    async fn wait_turn(&self) -> (Duration, Option<Duration>) {
        let started = Instant::now();
        let wait = self.governor.lock().unwrap().reserve(self.epoch.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let send_by = match &self.budget {
            Some(budget) => Some(budget.take().await),
            None => None,
        };
        (started.elapsed(), send_by)
    }

    fn throttled(&self) {
        self.governor.lock().unwrap().throttled(self.epoch.elapsed());
    }
}

/// What posting to one connection came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub delivery: Delivery,
    pub retries: u64,
    /// Of the retries, those that followed a 429.
    pub throttled: u64,
    pub paced: Duration,
}

enum Attempt {
    Done(Delivery),
    /// Not sent: its budget second ended before it could be written (transport::http1::TooLate).
    /// It takes a token of the new second and goes again; no retry is counted.
    Late,
    Retry(String),
    /// A retry because @connections answered 429.
    Throttled(String),
}

impl Broadcaster<crate::store::DynamoStore> {
    /// What the fanout Lambdas run on: a broadcaster that cleans gone connections out of the
    /// store, and leases `FANOUT_MAX_RPS` from it second by second.
    pub fn governed(sdk: &aws_config::SdkConfig, config: BroadcastConfig, store: &crate::store::DynamoStore) -> Self {
        Broadcaster::new(sdk, config, store.clone()).with_budget(store.clone())
    }
}

impl<G: GoneCleanup> Broadcaster<G> {
    /// Builds the one client all posts share. The SDK's own retries are off: this type retries,
    /// so it can count retries and honour one deadline per recipient.
    pub fn new(sdk: &aws_config::SdkConfig, config: BroadcastConfig, gone: G) -> Self {
        Self::with_http_client(sdk, config, gone, crate::http1::Http1Client::new())
    }

    /// [`Broadcaster::new`] over another HTTP client than [`crate::http1::Http1Client`].
    pub fn with_http_client(
        sdk: &aws_config::SdkConfig,
        config: BroadcastConfig,
        gone: G,
        http: impl aws_smithy_runtime_api::client::http::HttpClient + 'static,
    ) -> Self {
        let mut builder = aws_sdk_apigatewaymanagement::config::Builder::from(sdk);
        // Sign with the day's key instead of deriving it for every post (crate::sigv4). Without a
        // region the SDK's own signer stays, and reports the missing region itself.
        if let Some(region) = sdk.region() {
            builder = builder
                .push_auth_scheme(crate::sigv4::CachedKeySigV4::new(region.as_ref()))
                .auth_scheme_resolver(crate::sigv4::PostAuthResolver);
        }
        let client_config = builder
            .interceptor(LeanPosts)
            .http_client(http)
            .endpoint_url(&config.endpoint)
            // The broadcaster retries by itself, and the HTTP client keeps a connection only
            // when the server keeps it alive. Left on, the SDK's connection poisoning logs an
            // ERROR on every 5xx, because our client has no connection for it to poison.
            .retry_config(
                aws_sdk_apigatewaymanagement::config::retry::RetryConfig::disabled().with_reconnect_mode(
                    aws_sdk_apigatewaymanagement::config::retry::ReconnectMode::ReuseAllConnections,
                ),
            )
            // Bodies are at most 128 KB and every attempt has a timeout, so the per-request
            // throughput timer of stalled-stream protection only costs CPU here.
            .stalled_stream_protection(aws_sdk_apigatewaymanagement::config::StalledStreamProtectionConfig::disabled())
            .timeout_config(
                aws_sdk_apigatewaymanagement::config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(config.attempt_timeout)
                    .build(),
            )
            .build();
        // Alone, an environment may take the whole budget: its lease of the shared budget is
        // what keeps every environment together under it.
        let governor = config.max_rps.map(|max| Pacer {
            governor: std::sync::Mutex::new(Governor::new(max as f64, Duration::ZERO)),
            epoch: Instant::now(),
            budget: None,
        });
        Broadcaster {
            client: Client::from_conf(client_config),
            config,
            gone,
            governor,
        }
    }

    pub fn config(&self) -> &BroadcastConfig {
        &self.config
    }

    /// Leases `FANOUT_MAX_RPS` second by second from `ledger`, shared with every other
    /// environment that posts (crate::budget). Without it, this environment alone keeps under it.
    pub fn with_budget(mut self, ledger: impl BudgetLedger + 'static) -> Self {
        if let (Some(pacer), Some(cap)) = (&mut self.governor, self.config.max_rps) {
            pacer.budget = Some(SharedBudget {
                lease: std::sync::Mutex::new(Lease::new(cap)),
                leasing: tokio::sync::Mutex::new(()),
                ledger: Box::new(ledger),
            });
        }
        self
    }

    /// Leases of the shared budget so far, and the posts they granted.
    pub fn leases(&self) -> (u64, u64) {
        self.governor
            .as_ref()
            .and_then(|p| p.budget.as_ref())
            .map_or((0, 0), |b| {
                let lease = b.lease.lock().unwrap();
                (lease.leases, lease.leased)
            })
    }

    /// How many times 429s lowered this environment's rate so far (0 without a governor).
    pub fn backoffs(&self) -> u64 {
        self.governor
            .as_ref()
            .map_or(0, |p| p.governor.lock().unwrap().decreases())
    }

    async fn attempt(&self, connection_id: &str, payload: &[u8]) -> Attempt {
        let result = self
            .client
            .post_to_connection()
            .connection_id(connection_id)
            .data(Blob::new(payload))
            .send()
            .await;
        let err = match result {
            Ok(_) => return Attempt::Done(Delivery::Delivered),
            Err(e) => e,
        };
        let late = match &err {
            SdkError::DispatchFailure(failure) => failure
                .as_connector_error()
                .and_then(std::error::Error::source)
                .is_some_and(|source| source.is::<crate::http1::TooLate>()),
            _ => false,
        };
        if late {
            return Attempt::Late;
        }
        let status = err.raw_response().map(|r| r.status().as_u16());
        match &err {
            SdkError::ServiceError(service) => match service.err() {
                PostToConnectionError::GoneException(_) => Attempt::Done(Delivery::Gone),
                PostToConnectionError::LimitExceededException(_) => Attempt::Throttled("throttled (429)".into()),
                PostToConnectionError::PayloadTooLargeException(_) | PostToConnectionError::ForbiddenException(_) => {
                    Attempt::Done(Delivery::Failed(describe(&err)))
                }
                _ if status == Some(410) => Attempt::Done(Delivery::Gone),
                _ if status == Some(429) => Attempt::Throttled(describe(&err)),
                _ if status.is_some_and(|s| s >= 500) => Attempt::Retry(describe(&err)),
                _ => Attempt::Done(Delivery::Failed(describe(&err))),
            },
            // Timeouts, dropped connections, and unparseable responses are transient.
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                Attempt::Retry(describe(&err))
            }
            _ => Attempt::Done(Delivery::Failed(describe(&err))),
        }
    }

    /// Posts to one connection, within the governor's budget, retrying throttling and 5xx
    /// until the deadline.
    pub async fn post(&self, connection_id: &str, payload: &[u8]) -> Posted {
        self.post_within(connection_id, payload, self.config.deadline).await
    }

    /// [`Broadcaster::post`] with a deadline of `limit` for this recipient's attempts.
    async fn post_within(&self, connection_id: &str, payload: &[u8], limit: Duration) -> Posted {
        let started = Instant::now();
        let mut backoff = self.config.first_backoff;
        let mut posted = Posted {
            delivery: Delivery::Delivered,
            retries: 0,
            throttled: 0,
            paced: Duration::ZERO,
        };
        loop {
            let mut send_by = None;
            if let Some(pacer) = &self.governor {
                let (paced, by) = pacer.wait_turn().await;
                (posted.paced, send_by) = (posted.paced + paced, by);
            }
            // The deadline is for the recipient's own attempts and backoff: time waiting for
            // the budget is the whole channel's, and counting it would give up on recipients
            // that were never tried.
            let mut throttled = false;
            let attempt = self.attempt(connection_id, payload);
            let attempt = match send_by {
                Some(by) => crate::http1::SEND_BY.scope(by, attempt).await,
                None => attempt.await,
            };
            let why = match attempt {
                Attempt::Late => continue,
                Attempt::Done(Delivery::Gone) => {
                    posted.delivery = match self.gone.connection_gone(connection_id).await {
                        Gone::Removed => Delivery::Gone,
                        Gone::Connecting => Delivery::Connecting,
                    };
                    return posted;
                }
                Attempt::Done(d) => {
                    posted.delivery = d;
                    return posted;
                }
                Attempt::Retry(why) => why,
                Attempt::Throttled(why) => {
                    if let Some(pacer) = &self.governor {
                        pacer.throttled();
                    }
                    posted.throttled += 1;
                    throttled = true;
                    why
                }
            };
            // Full jitter: sleep a random time up to the bound.
            let sleep = sleep_bound(backoff, throttled, self.governor.is_some()).mul_f64(fastrand::f64());
            if started.elapsed().saturating_sub(posted.paced) + sleep >= limit {
                posted.delivery = Delivery::Failed(format!("gave up after {} retries: {why}", posted.retries));
                return posted;
            }
            tokio::time::sleep(sleep).await;
            posted.retries += 1;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }
}

/// The longest wait between a recipient's attempts after a 429 when a governor paces every
/// attempt. The governor has already slowed the whole environment for that 429, and every retry
/// waits for its budget, so a long wait per recipient protects nobody: it only leaves that
/// recipient behind the posts that came after it (a small channel's frame behind a broadcast,
/// which measured up to 1.8 s with the 2 s cap).
pub const THROTTLED_MAX_BACKOFF: Duration = Duration::from_millis(250);

/// How long a recipient may wait before its next attempt, at most: the backoff, but after a 429
/// under a governor no more than [`THROTTLED_MAX_BACKOFF`]. Without a governor nothing else
/// slows the posts down, and 429s back off as far as 5xx do.
fn sleep_bound(backoff: Duration, throttled: bool, governed: bool) -> Duration {
    if throttled && governed {
        backoff.min(THROTTLED_MAX_BACKOFF)
    } else {
        backoff
    }
}

/// Turns off SDK work that a post does not need and that costs CPU on every one of them: the
/// user-agent strings the SDK formats per request (a fixed one is sent instead), the invocation
/// id and attempt headers (this broadcaster retries by itself, with the SDK's retries off), and
/// clock-skew tracking (the signer reads the clock itself).
#[derive(Debug)]
struct LeanPosts;

const USER_AGENT: &str = concat!("wsfan/", env!("CARGO_PKG_VERSION"));

impl Intercept for LeanPosts {
    fn name(&self) -> &'static str {
        "wsfan::LeanPosts"
    }

    fn read_before_execution(
        &self,
        _context: &BeforeSerializationInterceptorContextRef<'_>,
        cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let why = "not needed for @connections posts";
        let state = cfg.interceptor_state();
        state.store_put(disable_interceptor::<aws_runtime::user_agent::UserAgentInterceptor>(
            why,
        ));
        state.store_put(disable_interceptor::<aws_runtime::invocation_id::InvocationIdInterceptor>(why));
        state.store_put(disable_interceptor::<aws_runtime::request_info::RequestInfoInterceptor>(why));
        state.store_put(disable_interceptor::<
            aws_runtime::service_clock_skew::ServiceClockSkewInterceptor,
        >(why));
        Ok(())
    }

    fn modify_before_transmit(
        &self,
        context: &mut BeforeTransmitInterceptorContextMut<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        context.request_mut().headers_mut().insert("user-agent", USER_AGENT);
        Ok(())
    }
}

type PostError = SdkError<PostToConnectionError, aws_sdk_apigatewaymanagement::config::http::HttpResponse>;

fn describe(err: &PostError) -> String {
    let status = err
        .raw_response()
        .map(|r| format!("HTTP {} ", r.status().as_u16()))
        .unwrap_or_default();
    match err.code() {
        Some(code) => format!("{status}{code}: {}", err.message().unwrap_or("")),
        None => format!(
            "{status}{}",
            aws_sdk_apigatewaymanagement::error::DisplayErrorContext(err)
        ),
    }
}

impl<G: GoneCleanup> Deliver for Broadcaster<G> {
    async fn deliver(&self, recipients: Vec<String>, payload: &[u8]) -> Result<Report, BroadcastError> {
        self.post_all(stream::iter(recipients), payload, true).await
    }

    async fn deliver_pages<P: Stream<Item = Vec<String>> + Send>(
        &self,
        pages: P,
        payload: &[u8],
    ) -> Result<Report, BroadcastError> {
        self.post_all(pages.flat_map(stream::iter), payload, false).await
    }

    fn posts_per_second(&self) -> Option<u64> {
        self.config.max_rps
    }

    async fn deliver_parcels(&self, parcels: Vec<Parcel>, stop_at: Option<Instant>) -> ParcelReport {
        let backoffs_before = self.backoffs();
        let mut done = std::pin::pin!(stream::iter(parcels)
            .map(|parcel| self.post_parcel(parcel, stop_at))
            .buffer_unordered(self.config.concurrency.max(1)));
        let mut report = ParcelReport::default();
        while let Some((counters, rest)) = done.next().await {
            report.counters.add(&counters);
            match rest {
                None => {}
                Some(Unsent::Failed(rest)) => report.undelivered.push(rest),
                Some(Unsent::HandedOn(rest)) => {
                    report.handed_on += 1;
                    report.undelivered.push(rest);
                }
                Some(Unsent::Connecting(rest)) => report.connecting.push(rest),
            }
        }
        report.counters.backoffs = self.backoffs().saturating_sub(backoffs_before);
        report
    }
}

/// A recipient's frames left when [`Broadcaster::post_parcel`] stopped, and why.
enum Unsent {
    /// A post failed (retries ran out, or not worth retrying).
    Failed(Parcel),
    /// `stop_at` came first.
    HandedOn(Parcel),
    /// 410 from a connection still connecting.
    Connecting(Parcel),
}

impl<G: GoneCleanup> Broadcaster<G> {
    /// Posts one recipient its frames in order; what is left when a post fails, the recipient
    /// is still connecting, or `stop_at` comes.
    async fn post_parcel(&self, parcel: Parcel, stop_at: Option<Instant>) -> (Counters, Option<Unsent>) {
        let mut counters = Counters::default();
        let mut sent = 0;
        for (body, count) in pack(&parcel.frames, parcel.batch) {
            let limit = match stop_at {
                None => self.config.deadline,
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return (counters, Some(Unsent::HandedOn(parcel.rest(sent))));
                    }
                    left.min(self.config.deadline)
                }
            };
            let posted = self.post_within(&parcel.connection_id, &body, limit).await;
            counters.retried += posted.retries;
            counters.throttled += posted.throttled;
            counters.posts += posted.retries + 1;
            counters.paced_ms += posted.paced.as_millis() as u64;
            match posted.delivery {
                Delivery::Delivered => {
                    counters.delivered += count as u64;
                    sent += count;
                }
                Delivery::Gone => {
                    counters.gone += 1;
                    return (counters, None);
                }
                Delivery::Connecting => {
                    counters.gone += 1;
                    return (counters, Some(Unsent::Connecting(parcel.rest(sent))));
                }
                Delivery::Failed(why) => {
                    // Stopped by the hand-off rather than failing: handed on, not failed.
                    if stop_at.is_some_and(|at| Instant::now() >= at) {
                        return (counters, Some(Unsent::HandedOn(parcel.rest(sent))));
                    }
                    counters.failed += 1;
                    tracing::warn!(connection = %parcel.connection_id, reason = %why, frames = parcel.frames.len() - sent, "not delivered");
                    return (counters, Some(Unsent::Failed(parcel.rest(sent))));
                }
            }
        }
        (counters, None)
    }
}

impl Parcel {
    /// The same recipient's frames after the first `sent`.
    fn rest(&self, sent: usize) -> Parcel {
        Parcel {
            connection_id: self.connection_id.clone(),
            frames: self.frames[sent..].to_vec(),
            batch: self.batch,
        }
    }
}

impl<G: GoneCleanup> Broadcaster<G> {
    /// Posts to every recipient `recipients` yields, `concurrency` at a time, counting each
    /// outcome as it comes; the delivered ones are kept in the report only if `keep_delivered`.
    async fn post_all(
        &self,
        recipients: impl Stream<Item = String> + Send,
        payload: &[u8],
        keep_delivered: bool,
    ) -> Result<Report, BroadcastError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(BroadcastError::PayloadTooLarge(payload.len()));
        }
        let backoffs_before = self.backoffs();
        let mut posts = std::pin::pin!(recipients
            .map(|id| async move {
                let posted = self.post(&id, payload).await;
                (id, posted)
            })
            .buffer_unordered(self.config.concurrency.max(1)));
        let mut report = Report::default();
        while let Some((id, posted)) = posts.next().await {
            let Posted {
                delivery,
                retries,
                throttled,
                paced,
            } = posted;
            report.counters.retried += retries;
            report.counters.throttled += throttled;
            report.counters.posts += retries + 1;
            report.counters.paced_ms += paced.as_millis() as u64;
            match &delivery {
                Delivery::Delivered => report.counters.delivered += 1,
                Delivery::Gone | Delivery::Connecting => report.counters.gone += 1,
                Delivery::Failed(why) => {
                    report.counters.failed += 1;
                    tracing::warn!(connection = %id, reason = %why, "not delivered");
                }
            }
            if keep_delivered || delivery != Delivery::Delivered {
                report.outcomes.push((id, delivery));
            }
        }
        // Other deliveries of this environment may run at once; this one's share is close enough.
        report.counters.backoffs = self.backoffs().saturating_sub(backoffs_before);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_governed_429_waits_briefly_while_5xx_and_ungoverned_429s_back_off_in_full() {
        let long = Duration::from_secs(2);
        assert_eq!(sleep_bound(long, true, true), THROTTLED_MAX_BACKOFF);
        assert_eq!(
            sleep_bound(Duration::from_millis(50), true, true),
            Duration::from_millis(50)
        );
        assert_eq!(sleep_bound(long, false, true), long);
        assert_eq!(sleep_bound(long, true, false), long);
    }

    #[test]
    fn callback_endpoint_survives_custom_domains() {
        assert_eq!(
            callback_endpoint("abc.execute-api.eu-west-1.amazonaws.com", "prod", "abc", "eu-west-1"),
            "https://abc.execute-api.eu-west-1.amazonaws.com/prod"
        );
        assert_eq!(
            callback_endpoint("chat.example.com", "prod", "abc", "eu-west-1"),
            "https://abc.execute-api.eu-west-1.amazonaws.com/prod"
        );
    }

    /// An HTTP client that keeps each request it is given, and answers the statuses it was
    /// given in order, then 200.
    #[derive(Debug, Clone, Default)]
    struct Capture {
        requests: std::sync::Arc<std::sync::Mutex<Vec<aws_smithy_runtime_api::client::orchestrator::HttpRequest>>>,
        statuses: std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<u16>>>,
    }

    impl Capture {
        fn answering(statuses: &[u16]) -> Capture {
            let capture = Capture::default();
            capture.statuses.lock().unwrap().extend(statuses);
            capture
        }
    }

    impl aws_smithy_runtime_api::client::http::HttpConnector for Capture {
        fn call(
            &self,
            request: aws_smithy_runtime_api::client::orchestrator::HttpRequest,
        ) -> aws_smithy_runtime_api::client::http::HttpConnectorFuture {
            self.requests.lock().unwrap().push(request);
            let status = self.statuses.lock().unwrap().pop_front().unwrap_or(200);
            let answer = aws_smithy_runtime_api::client::orchestrator::HttpResponse::new(
                status.try_into().unwrap(),
                aws_smithy_types::body::SdkBody::empty(),
            );
            aws_smithy_runtime_api::client::http::HttpConnectorFuture::ready(Ok(answer))
        }
    }

    impl aws_smithy_runtime_api::client::http::HttpClient for Capture {
        fn http_connector(
            &self,
            _settings: &aws_smithy_runtime_api::client::http::HttpConnectorSettings,
            _components: &RuntimeComponents,
        ) -> aws_smithy_runtime_api::client::http::SharedHttpConnector {
            aws_smithy_runtime_api::client::http::SharedHttpConnector::new(self.clone())
        }
    }

    /// A broadcaster for API Gateway in eu-west-1 whose posts go to `http`.
    fn broadcaster_over(http: Capture) -> Broadcaster<NoCleanup> {
        let sdk = aws_config::SdkConfig::builder()
            .region(aws_config::Region::new("eu-west-1"))
            .credentials_provider(aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_credential_types::Credentials::new("AKID", "secret", None, None, "test"),
            ))
            .behavior_version(aws_config::BehaviorVersion::latest())
            .build();
        Broadcaster::with_http_client(
            &sdk,
            BroadcastConfig::new("https://abc.execute-api.eu-west-1.amazonaws.com/prod"),
            NoCleanup,
            http,
        )
    }

    struct NoCleanup;

    impl GoneCleanup for NoCleanup {
        async fn connection_gone(&self, _connection_id: &str) -> Gone {
            Gone::Removed
        }
    }

    #[tokio::test]
    async fn a_post_carries_only_what_api_gateway_needs() {
        let capture = Capture::default();
        let broadcaster = broadcaster_over(capture.clone());
        let report = broadcaster
            .deliver(vec!["L0SM9cOFvHcCIhw=".into()], b"hello")
            .await
            .unwrap();
        assert_eq!(report.counters.delivered, 1);
        let requests = capture.requests.lock().unwrap();
        let headers = requests[0].headers();
        assert_eq!(
            requests[0].uri(),
            "https://abc.execute-api.eu-west-1.amazonaws.com/prod/@connections/L0SM9cOFvHcCIhw%3D"
        );
        assert_eq!(headers.get("user-agent"), Some(USER_AGENT));
        let authorization = headers.get("authorization").expect("signed");
        assert!(
            authorization.starts_with("AWS4-HMAC-SHA256 Credential=AKID/")
                && authorization.contains("/eu-west-1/execute-api/aws4_request"),
            "{authorization}"
        );
        for dropped in ["x-amz-user-agent", "amz-sdk-invocation-id", "amz-sdk-request"] {
            assert_eq!(headers.get(dropped), None, "{dropped}");
        }
        assert_eq!(requests[0].body().bytes(), Some(&b"hello"[..]));
    }

    /// Log lines, kept for the test to read.
    #[derive(Clone, Default)]
    struct Lines(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_retried_5xx_logs_no_error() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .finish();
        let _logging = tracing::subscriber::set_default(subscriber);
        let broadcaster = broadcaster_over(Capture::answering(&[500]));
        let report = broadcaster
            .deliver(vec!["L0SM9cOFvHcCIhw=".into()], b"hello")
            .await
            .unwrap();
        assert_eq!((report.counters.retried, report.counters.delivered), (1, 1));
        let logged = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert!(
            !logged.contains("ERROR"),
            "a 5xx that was retried is not an error: {logged}"
        );
    }

    #[test]
    fn emf_is_one_document_with_every_counter() {
        let c = Counters {
            delivered: 3,
            gone: 1,
            retried: 2,
            throttled: 1,
            failed: 0,
            posts: 6,
            paced_ms: 40,
            backoffs: 1,
        };
        let v: serde_json::Value = serde_json::from_str(&c.emf("stream-fanout")).unwrap();
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "wsfan");
        assert_eq!(v["Delivered"], 3);
        assert_eq!(v["Gone"], 1);
        assert_eq!(v["Retried"], 2);
        assert_eq!(v["Throttled"], 1);
        assert_eq!(v["Failed"], 0);
        assert_eq!(v["Posts"], 6);
        assert_eq!(v["PacedMs"], 40);
        assert_eq!(v["Backoffs"], 1);
        assert_eq!(v["Function"], "stream-fanout");
    }
}
