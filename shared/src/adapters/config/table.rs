//! What every function that touches the table reads.

use super::{millis, required, seconds, ConfigError, FromEnv, Var};

/// How long items live before DynamoDB's TTL may remove them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Connections and memberships: past API Gateway's 2-hour connection limit, because
    /// `$disconnect` is best effort.
    pub connection_secs: i64,
    /// Messages (history, and how far back recovery reaches), reaction summaries and read cursors.
    pub message_secs: i64,
    /// Typing notices.
    pub event_secs: i64,
    /// How long a `clientMsgId` is remembered for idempotent retries.
    pub dedupe_secs: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            connection_secs: 3 * 3600,
            message_secs: 30 * 86_400,
            event_secs: 300,
            dedupe_secs: 86_400,
        }
    }
}

/// How long one DynamoDB operation (all its attempts) may take when `DYNAMODB_TIMEOUT_MS` is unset.
pub const DEFAULT_DYNAMODB_TIMEOUT_MS: u64 = 5000;

const TABLE_NAME: Var = Var::required("TABLE_NAME", "wsfan");
const CONNECTION_TTL_SECONDS: Var = Var::optional("CONNECTION_TTL_SECONDS", "10800");
const MESSAGE_TTL_SECONDS: Var = Var::optional("MESSAGE_TTL_SECONDS", "2592000");
const EVENT_TTL_SECONDS: Var = Var::optional("EVENT_TTL_SECONDS", "300");
const DEDUPE_TTL_SECONDS: Var = Var::optional("DEDUPE_TTL_SECONDS", "86400");
const DYNAMODB_TIMEOUT_MS: Var = Var::optional("DYNAMODB_TIMEOUT_MS", "3000");

/// What every function that touches the table needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    pub table_name: String,
    pub retention: Retention,
    /// The SDK's operation timeout: a store that does not answer gives a clear error well
    /// inside the function's own timeout instead of a Lambda timeout (the template sets it
    /// below each function's `Timeout`; tests/template.rs checks that).
    pub operation_timeout: std::time::Duration,
}

impl FromEnv for StoreConfig {
    fn vars() -> Vec<Var> {
        vec![
            TABLE_NAME,
            CONNECTION_TTL_SECONDS,
            MESSAGE_TTL_SECONDS,
            EVENT_TTL_SECONDS,
            DEDUPE_TTL_SECONDS,
            DYNAMODB_TIMEOUT_MS,
        ]
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = Retention::default();
        Ok(StoreConfig {
            table_name: required(&lookup, TABLE_NAME)?,
            retention: Retention {
                connection_secs: seconds(&lookup, CONNECTION_TTL_SECONDS, d.connection_secs)?,
                message_secs: seconds(&lookup, MESSAGE_TTL_SECONDS, d.message_secs)?,
                event_secs: seconds(&lookup, EVENT_TTL_SECONDS, d.event_secs)?,
                dedupe_secs: seconds(&lookup, DEDUPE_TTL_SECONDS, d.dedupe_secs)?,
            },
            operation_timeout: millis(&lookup, DYNAMODB_TIMEOUT_MS, DEFAULT_DYNAMODB_TIMEOUT_MS, 1..=u64::MAX)?,
        })
    }
}
