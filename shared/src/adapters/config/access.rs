//! Who may connect and how fast they may send: token verification and the limit per connection.

use super::{list, optional, seconds, whole_number, ConfigError, FromEnv, Var};
use crate::access::parse_patterns;
use crate::channel::ChannelPattern;
use crate::rate::RateLimit;

/// Where token signatures are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// HS256 with a shared secret (`JWT_SECRET`).
    Secret(String),
    /// RS256 / ES256 keys from a JWKS document (`JWKS_URL`), e.g. a Cognito user pool's.
    Jwks(String),
}

// Exactly one of the two key sources is set; the template sets both, one of them empty.
const JWT_SECRET: Var = Var::optional("JWT_SECRET", "wsfan-example-secret");
const JWKS_URL: Var = Var::optional("JWKS_URL", "");
const JWT_AUDIENCE: Var = Var::optional("JWT_AUDIENCE", "wsfan");
const JWT_ISSUER: Var = Var::optional("JWT_ISSUER", "https://issuer.example");
const JWT_LEEWAY_SECONDS: Var = Var::optional("JWT_LEEWAY_SECONDS", "30");
const ANONYMOUS_CHANNELS: Var = Var::optional("ANONYMOUS_CHANNELS", "doc:*");

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub keys: KeySource,
    pub audience: Option<Vec<String>>,
    pub issuer: Option<Vec<String>>,
    /// Channels an anonymous listener may read; `None` refuses connections without a token.
    pub anonymous_channels: Option<Vec<ChannelPattern>>,
    pub leeway_secs: u64,
}

impl FromEnv for AuthConfig {
    fn vars() -> Vec<Var> {
        vec![
            JWT_SECRET,
            JWKS_URL,
            JWT_AUDIENCE,
            JWT_ISSUER,
            JWT_LEEWAY_SECONDS,
            ANONYMOUS_CHANNELS,
        ]
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let keys = match (optional(&lookup, JWT_SECRET), optional(&lookup, JWKS_URL)) {
            (Some(secret), None) => KeySource::Secret(secret),
            (None, Some(url)) => KeySource::Jwks(url),
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    name: JWT_SECRET.name,
                    why: "set JWT_SECRET or JWKS_URL, not both".into(),
                })
            }
            (None, None) => return Err(ConfigError::Missing("JWT_SECRET (or JWKS_URL)")),
        };
        let anonymous_channels = optional(&lookup, ANONYMOUS_CHANNELS)
            .map(|v| parse_patterns(&v))
            .transpose()
            .map_err(|why| ConfigError::Invalid {
                name: ANONYMOUS_CHANNELS.name,
                why,
            })?;
        Ok(AuthConfig {
            keys,
            audience: list(optional(&lookup, JWT_AUDIENCE)),
            issuer: list(optional(&lookup, JWT_ISSUER)),
            anonymous_channels,
            leeway_secs: seconds(&lookup, JWT_LEEWAY_SECONDS, 30)? as u64,
        })
    }
}

const RATE_LIMIT_PER_SECOND: Var = Var::optional("RATE_LIMIT_PER_SECOND", "25");
const RATE_LIMIT_BURST: Var = Var::optional("RATE_LIMIT_BURST", "50");

/// The limit per connection (`RATE_LIMIT_PER_SECOND`, 0 to turn it off, and
/// `RATE_LIMIT_BURST`), defaults in [`crate::rate::RateLimit`].
impl FromEnv for RateLimit {
    fn vars() -> Vec<Var> {
        vec![RATE_LIMIT_PER_SECOND, RATE_LIMIT_BURST]
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let d = RateLimit::default();
        Ok(RateLimit {
            // Within u32 by their ranges.
            per_second: whole_number(&lookup, RATE_LIMIT_PER_SECOND, 0..=1_000_000)?.map_or(d.per_second, |n| n as u32),
            burst: whole_number(&lookup, RATE_LIMIT_BURST, 1..=1_000_000)?.map_or(d.burst, |n| n as u32),
        })
    }
}
