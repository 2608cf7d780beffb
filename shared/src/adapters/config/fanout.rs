//! What the functions that push to connections read: the stage's `@connections` endpoint, how
//! posts are paced, and the queues they hand work to.

use std::time::Duration;

use super::{millis, required, whole_number, ConfigError, FromEnv, Var};

/// The stage's own endpoint, never a custom domain: `@connections` is only served there.
const CONNECTIONS_ENDPOINT: Var = Var::required("CONNECTIONS_ENDPOINT", "https://api.example/prod");
const FANOUT_CONCURRENCY: Var = Var::optional("FANOUT_CONCURRENCY", "256");
const FANOUT_DEADLINE_MS: Var = Var::optional("FANOUT_DEADLINE_MS", "20000");
const FANOUT_MAX_RPS: Var = Var::optional("FANOUT_MAX_RPS", "5000");

/// How the broadcaster posts to `@connections`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BroadcastConfig {
    /// `https://{api-id}.execute-api.{region}.amazonaws.com/{stage}`.
    pub endpoint: String,
    /// Posts in flight at once.
    pub concurrency: usize,
    /// Total time one recipient may take, retries included.
    pub deadline: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
    /// Time limit of one attempt.
    pub attempt_timeout: Duration,
    /// `FANOUT_MAX_RPS`: the posts per second all fanout together may make (`None`: no governor).
    /// Environments lease it from the table second by second (crate::budget) once
    /// [`crate::broadcaster::Broadcaster::with_budget`] gives them the ledger.
    pub max_rps: Option<u64>,
}

impl BroadcastConfig {
    pub fn new(endpoint: impl Into<String>) -> Self {
        BroadcastConfig {
            endpoint: endpoint.into(),
            // Enough to reach 1,000 recipients at 20 ms of latency in about 0.1 s.
            concurrency: 256,
            deadline: Duration::from_secs(20),
            first_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(5),
            max_rps: None,
        }
    }
}

impl FromEnv for BroadcastConfig {
    fn vars() -> Vec<Var> {
        vec![
            CONNECTIONS_ENDPOINT,
            FANOUT_CONCURRENCY,
            FANOUT_DEADLINE_MS,
            FANOUT_MAX_RPS,
        ]
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let endpoint = required(&lookup, CONNECTIONS_ENDPOINT)?;
        let mut config = BroadcastConfig::new(endpoint.trim_end_matches('/'));
        if let Some(c) = whole_number(&lookup, FANOUT_CONCURRENCY, 1..=u64::MAX)? {
            config.concurrency = c as usize;
        }
        if let Some(ms) = whole_number(&lookup, FANOUT_DEADLINE_MS, 1..=u64::MAX)? {
            config.deadline = Duration::from_millis(ms);
        }
        config.max_rps = whole_number(&lookup, FANOUT_MAX_RPS, 1..=u64::MAX)?;
        Ok(config)
    }
}

/// The stage's `@connections` endpoint, for callers that close connections rather than post to
/// many (the expiry sweep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionsEndpoint(pub String);

impl FromEnv for ConnectionsEndpoint {
    fn vars() -> Vec<Var> {
        vec![CONNECTIONS_ENDPOINT]
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        required(&lookup, CONNECTIONS_ENDPOINT).map(ConnectionsEndpoint)
    }
}

/// The longest a busy channel's batch holds its stream lane (`FANOUT_COALESCE_MS`, 0 to never
/// hold; domain/cadence.rs). 1.25 s by default: a lane's batches come a poll (0.25 s) apart at
/// best, so a 1 s window gave a channel at 5 messages a second five a batch and, with the batches
/// at the start and end of a burst, 0.207 posts per frame (`bench hot`); 1.25 s gives about six,
/// and keeps such a channel's p99 under 2 s.
pub const DEFAULT_COALESCE_MS: u64 = 1250;

const FANOUT_COALESCE_MS: Var = Var::optional("FANOUT_COALESCE_MS", "1250");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceWindow(pub Duration);

impl FromEnv for CoalesceWindow {
    fn vars() -> Vec<Var> {
        vec![FANOUT_COALESCE_MS]
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        millis(&lookup, FANOUT_COALESCE_MS, DEFAULT_COALESCE_MS, 0..=10_000).map(CoalesceWindow)
    }
}

/// A queue's URL, read from the variable that names it.
macro_rules! queue_url {
    ($(#[$doc:meta])* $name:ident, $var:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(pub String);

        impl $name {
            const VAR: Var = Var::required($var, "https://sqs.example/000000000000/queue");
        }

        impl FromEnv for $name {
            fn vars() -> Vec<Var> {
                vec![Self::VAR]
            }

            fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
                required(&lookup, Self::VAR).map($name)
            }
        }
    };
}

queue_url!(
    /// Where stream-fanout sends a record that can never be used (the mapping's OnFailure queue).
    FailureQueueUrl,
    "FAILURE_QUEUE_URL"
);
queue_url!(
    /// The FIFO queue of shards for `deliver`.
    DeliveryQueueUrl,
    "DELIVERY_QUEUE_URL"
);
/// The delivery queue's dead-letter queue, where `deliver` parks a shard itself (only `deliver`
/// reads it; parking fails without it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryDeadLetterUrl(pub Option<String>);

const DELIVERY_DLQ_URL: Var = Var::optional("DELIVERY_DLQ_URL", "https://sqs.example/000000000000/dlq");

impl FromEnv for DeliveryDeadLetterUrl {
    fn vars() -> Vec<Var> {
        vec![DELIVERY_DLQ_URL]
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Ok(DeliveryDeadLetterUrl(super::optional(&lookup, DELIVERY_DLQ_URL)))
    }
}
