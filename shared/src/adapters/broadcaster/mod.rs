//! The broadcaster: the one way anything in wsfan posts to `@connections`.
//!
//! One SDK client (connections kept alive), many posts in flight on one runtime, jittered
//! exponential backoff on throttling and 5xx under a total deadline, and a 410 deletes the
//! *recipient* that is gone (its connection item and memberships). Counters go out as CloudWatch
//! Embedded Metric Format.
//!
//! By job: `post` (posting and retry), `gone` (the 410 policy), `client` (the SDK client),
//! `pacer` (the governor and the shared budget), `parcel` (a recipient's frames, packed) and
//! `metrics` (the counters). This file is the port ([`Broadcast`]) and the type that implements it.

use std::future::Future;
use std::time::Instant;

use aws_sdk_apigatewaymanagement::Client;
use futures::stream::Stream;

use crate::store::BudgetLedger;

mod client;
mod gone;
mod metrics;
mod pacer;
mod parcel;
mod post;

pub use gone::{Gone, GoneCleanup, ESTABLISHING_MILLIS};
pub use metrics::Counters;
pub use parcel::{pack, Parcel, ParcelReport, BATCH_OPEN};
pub use post::{Posted, THROTTLED_MAX_BACKOFF};

use pacer::Pacer;

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
pub enum RecipientOutcome {
    Delivered,
    /// 410: the connection is gone and has been cleaned up.
    Gone,
    /// 410 from a connection stored less than [`ESTABLISHING_MILLIS`] ago: most likely still in
    /// `$connect` or its handshake, so it is kept, and a post after it opens will land.
    Connecting,
    /// Not delivered: retries ran out, or the error is not worth retrying.
    Failed(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub outcomes: Vec<(String, RecipientOutcome)>,
    pub counters: Counters,
}

impl Report {
    pub fn undelivered(&self) -> impl Iterator<Item = (&str, &str)> {
        self.outcomes.iter().filter_map(|(id, d)| match d {
            RecipientOutcome::Failed(why) => Some((id.as_str(), why.as_str())),
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
pub trait Broadcast: Send + Sync {
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

pub struct Broadcaster<G> {
    client: Client,
    config: BroadcastConfig,
    gone: G,
    governor: Option<Pacer>,
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
    pub(crate) fn with_http_client(
        sdk: &aws_config::SdkConfig,
        config: BroadcastConfig,
        gone: G,
        http: impl aws_smithy_runtime_api::client::http::HttpClient + 'static,
    ) -> Self {
        let client = client::sdk_client(sdk, &config, http);
        Broadcaster {
            client,
            governor: config.max_rps.map(Pacer::new),
            config,
            gone,
        }
    }

    pub fn config(&self) -> &BroadcastConfig {
        &self.config
    }

    /// Leases `FANOUT_MAX_RPS` second by second from `ledger`, shared with every other
    /// environment that posts (crate::budget). Without it, this environment alone keeps under it.
    pub fn with_budget(mut self, ledger: impl BudgetLedger + 'static) -> Self {
        if let (Some(pacer), Some(cap)) = (&mut self.governor, self.config.max_rps) {
            pacer.share(cap, Box::new(ledger));
        }
        self
    }

    /// Leases of the shared budget so far, and the posts they granted.
    pub fn leases(&self) -> (u64, u64) {
        self.governor.as_ref().map_or((0, 0), Pacer::leases)
    }

    /// How many times 429s lowered this environment's rate so far (0 without a governor).
    pub fn backoffs(&self) -> u64 {
        self.governor.as_ref().map_or(0, Pacer::backoffs)
    }
}

#[cfg(test)]
mod tests;
