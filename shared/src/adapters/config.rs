//! Configuration, read once from the environment at start-up into typed structs.
//! Each reader takes a lookup function so tests can feed it a map instead of the process env.

use crate::access::parse_patterns;
use crate::channel::ChannelPattern;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {why}")]
    Invalid { name: &'static str, why: String },
}

fn required(lookup: &impl Fn(&str) -> Option<String>, name: &'static str) -> Result<String, ConfigError> {
    lookup(name)
        .filter(|v| !v.trim().is_empty())
        .ok_or(ConfigError::Missing(name))
}

fn optional(lookup: &impl Fn(&str) -> Option<String>, name: &'static str) -> Option<String> {
    lookup(name).filter(|v| !v.trim().is_empty())
}

fn seconds(lookup: &impl Fn(&str) -> Option<String>, name: &'static str, default: i64) -> Result<i64, ConfigError> {
    match optional(lookup, name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| ConfigError::Invalid {
                name,
                why: format!("{v:?} is not a positive number of seconds"),
            }),
    }
}

/// Milliseconds within `range` (inclusive), or `default` when unset.
fn millis(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<std::time::Duration, ConfigError> {
    let ms = match optional(lookup, name) {
        None => default,
        Some(v) => v
            .trim()
            .parse::<u64>()
            .ok()
            .filter(|n| range.contains(n))
            .ok_or_else(|| ConfigError::Invalid {
                name,
                why: match *range.end() {
                    u64::MAX => format!("{v:?} is not a number of milliseconds of at least {}", range.start()),
                    end => format!("{v:?} is not a number of milliseconds from {} to {end}", range.start()),
                },
            })?,
    };
    Ok(std::time::Duration::from_millis(ms))
}

fn list(value: Option<String>) -> Option<Vec<String>> {
    value.map(|v| {
        v.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

pub fn from_process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The stage's `@connections` endpoint (`CONNECTIONS_ENDPOINT`), for callers that close
/// connections rather than post to many (the expiry sweep).
pub fn connections_endpoint_from_env() -> Result<String, ConfigError> {
    required(&from_process_env, "CONNECTIONS_ENDPOINT")
}

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

impl StoreConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(from_process_env)
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = Retention::default();
        Ok(StoreConfig {
            table_name: required(&lookup, "TABLE_NAME")?,
            retention: Retention {
                connection_secs: seconds(&lookup, "CONNECTION_TTL_SECONDS", d.connection_secs)?,
                message_secs: seconds(&lookup, "MESSAGE_TTL_SECONDS", d.message_secs)?,
                event_secs: seconds(&lookup, "EVENT_TTL_SECONDS", d.event_secs)?,
                dedupe_secs: seconds(&lookup, "DEDUPE_TTL_SECONDS", d.dedupe_secs)?,
            },
            operation_timeout: millis(
                &lookup,
                "DYNAMODB_TIMEOUT_MS",
                DEFAULT_DYNAMODB_TIMEOUT_MS,
                1..=u64::MAX,
            )?,
        })
    }
}

/// The limit per connection (`RATE_LIMIT_PER_SECOND`, 0 to turn it off, and
/// `RATE_LIMIT_BURST`), defaults in [`crate::rate::RateLimit`].
pub fn rate_limit_from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<crate::rate::RateLimit, ConfigError> {
    let d = crate::rate::RateLimit::default();
    let number = |name: &'static str, default: u32, min: u32| match optional(&lookup, name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= min && *n <= 1_000_000)
            .ok_or_else(|| ConfigError::Invalid {
                name,
                why: format!("{v:?} is not a whole number from {min} to 1000000"),
            }),
    };
    Ok(crate::rate::RateLimit {
        per_second: number("RATE_LIMIT_PER_SECOND", d.per_second, 0)?,
        burst: number("RATE_LIMIT_BURST", d.burst, 1)?,
    })
}

pub fn rate_limit_from_env() -> Result<crate::rate::RateLimit, ConfigError> {
    rate_limit_from_lookup(from_process_env)
}

/// The longest a busy channel's batch holds its stream lane (`FANOUT_COALESCE_MS`, 0 to never
/// hold; domain/cadence.rs). 1.25 s by default: a lane's batches come a poll (0.25 s) apart at
/// best, so a 1 s window gave a channel at 5 messages a second five a batch and, with the batches
/// at the start and end of a burst, 0.207 posts per frame (`bench hot`); 1.25 s gives about six,
/// and keeps such a channel's p99 under 2 s.
pub const DEFAULT_COALESCE_MS: u64 = 1250;

pub fn coalesce_window_from_lookup(
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<std::time::Duration, ConfigError> {
    millis(&lookup, "FANOUT_COALESCE_MS", DEFAULT_COALESCE_MS, 0..=10_000)
}

pub fn coalesce_window_from_env() -> Result<std::time::Duration, ConfigError> {
    coalesce_window_from_lookup(from_process_env)
}

/// Where token signatures are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// HS256 with a shared secret (`JWT_SECRET`).
    Secret(String),
    /// RS256 / ES256 keys from a JWKS document (`JWKS_URL`), e.g. a Cognito user pool's.
    Jwks(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub keys: KeySource,
    pub audience: Option<Vec<String>>,
    pub issuer: Option<Vec<String>>,
    /// Channels an anonymous listener may read; `None` refuses connections without a token.
    pub anonymous_channels: Option<Vec<ChannelPattern>>,
    pub leeway_secs: u64,
}

impl AuthConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(from_process_env)
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let keys = match (optional(&lookup, "JWT_SECRET"), optional(&lookup, "JWKS_URL")) {
            (Some(secret), None) => KeySource::Secret(secret),
            (None, Some(url)) => KeySource::Jwks(url),
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    name: "JWT_SECRET",
                    why: "set JWT_SECRET or JWKS_URL, not both".into(),
                })
            }
            (None, None) => return Err(ConfigError::Missing("JWT_SECRET (or JWKS_URL)")),
        };
        let anonymous_channels = optional(&lookup, "ANONYMOUS_CHANNELS")
            .map(|v| parse_patterns(&v))
            .transpose()
            .map_err(|why| ConfigError::Invalid {
                name: "ANONYMOUS_CHANNELS",
                why,
            })?;
        Ok(AuthConfig {
            keys,
            audience: list(optional(&lookup, "JWT_AUDIENCE")),
            issuer: list(optional(&lookup, "JWT_ISSUER")),
            anonymous_channels,
            leeway_secs: seconds(&lookup, "JWT_LEEWAY_SECONDS", 30)? as u64,
        })
    }
}

/// Loads the AWS SDK configuration once; `AWS_ENDPOINT_URL` points it at a local emulator.
pub async fn aws() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn store_config_defaults_and_overrides() {
        let c = StoreConfig::from_lookup(lookup(&[("TABLE_NAME", "t"), ("EVENT_TTL_SECONDS", "60")])).unwrap();
        assert_eq!(c.table_name, "t");
        assert_eq!(c.retention.event_secs, 60);
        assert_eq!(c.retention.connection_secs, 10_800);
        assert_eq!(
            StoreConfig::from_lookup(lookup(&[])),
            Err(ConfigError::Missing("TABLE_NAME"))
        );
        assert!(StoreConfig::from_lookup(lookup(&[("TABLE_NAME", "t"), ("MESSAGE_TTL_SECONDS", "-1")])).is_err());
        assert_eq!(c.operation_timeout.as_millis(), 5000);
        let c = StoreConfig::from_lookup(lookup(&[("TABLE_NAME", "t"), ("DYNAMODB_TIMEOUT_MS", "2500")])).unwrap();
        assert_eq!(c.operation_timeout.as_millis(), 2500);
        assert!(StoreConfig::from_lookup(lookup(&[("TABLE_NAME", "t"), ("DYNAMODB_TIMEOUT_MS", "0")])).is_err());
    }

    #[test]
    fn the_coalescing_window_defaults_to_a_second_and_a_quarter_and_zero_turns_it_off() {
        let window = |pairs: &[(&str, &str)]| coalesce_window_from_lookup(lookup(pairs));
        assert_eq!(window(&[]).unwrap().as_millis(), 1250);
        assert_eq!(window(&[("FANOUT_COALESCE_MS", "250")]).unwrap().as_millis(), 250);
        assert!(window(&[("FANOUT_COALESCE_MS", "0")]).unwrap().is_zero());
        assert!(window(&[("FANOUT_COALESCE_MS", "-1")]).is_err());
        assert!(window(&[("FANOUT_COALESCE_MS", "60000")]).is_err());
    }

    #[test]
    fn auth_config_needs_exactly_one_key_source() {
        let c = AuthConfig::from_lookup(lookup(&[("JWT_SECRET", "s"), ("ANONYMOUS_CHANNELS", "doc:*")])).unwrap();
        assert_eq!(c.keys, KeySource::Secret("s".into()));
        assert_eq!(c.anonymous_channels.unwrap().len(), 1);
        assert!(AuthConfig::from_lookup(lookup(&[])).is_err());
        assert!(AuthConfig::from_lookup(lookup(&[("JWT_SECRET", "s"), ("JWKS_URL", "http://x")])).is_err());
        let c = AuthConfig::from_lookup(lookup(&[("JWKS_URL", "http://x"), ("JWT_AUDIENCE", "a, b")])).unwrap();
        assert_eq!(c.audience, Some(vec!["a".to_owned(), "b".to_owned()]));
        assert!(c.anonymous_channels.is_none());
        assert!(AuthConfig::from_lookup(lookup(&[("JWT_SECRET", "s"), ("ANONYMOUS_CHANNELS", "bad")])).is_err());
    }
}
