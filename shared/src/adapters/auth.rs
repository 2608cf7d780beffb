//! JWT verification for the `$connect` authorizer, and minting of dev tokens.
//!
//! HS256 with a shared secret, or RS256 / ES256 with keys from a JWKS URL (Cognito and most
//! identity providers). The JWKS is fetched once and kept for the life of the process; an unknown
//! `kid` refetches it, at most once a minute, so key rotation works without a redeploy.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::Mutex;

use crate::access::{parse_patterns, validate_user_id, Identity, Role};
use crate::config::{AuthConfig, KeySource};

const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("token rejected: {0}")]
    Invalid(String),
    #[error("signing keys unavailable: {0}")]
    Keys(String),
}

/// The claims wsfan reads. `channels` may be a JSON array or a comma-separated string.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, deserialize_with = "string_or_list", skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
}

fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Either {
        One(String),
        Many(Vec<String>),
    }
    Ok(match Either::deserialize(d)? {
        Either::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
        Either::Many(v) => v,
    })
}

impl Claims {
    /// The identity these claims grant; a claim that cannot be honoured refuses the token.
    pub fn identity(&self) -> Result<Identity, AuthError> {
        validate_user_id(&self.sub).map_err(AuthError::Invalid)?;
        let role = match &self.role {
            None => Role::Member,
            Some(r) => r.parse().map_err(AuthError::Invalid)?,
        };
        let channels = parse_patterns(&self.channels.join(",")).map_err(AuthError::Invalid)?;
        Ok(Identity {
            user_id: Some(self.sub.clone()),
            role,
            channels,
            expires: Some(self.exp),
        })
    }
}

/// What a verified token says about itself, beyond the identity: when it expires, when it was
/// issued and its id. Revocation (adapters/revocation.rs) refuses a token by its `jti`, or by an
/// `iat` at or before its user's not-before time.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct TokenFacts {
    #[serde(default)]
    pub exp: i64,
    #[serde(default)]
    pub iat: Option<i64>,
    #[serde(default)]
    pub jti: Option<String>,
}

/// The payload read once for both the identity and the facts.
#[derive(Deserialize)]
struct Payload {
    #[serde(flatten)]
    claims: Claims,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    jti: Option<String>,
}

struct CachedKeys {
    set: JwkSet,
    fetched: Instant,
}

pub struct JwtVerifier {
    config: AuthConfig,
    http: reqwest::Client,
    jwks: Mutex<Option<CachedKeys>>,
}

impl JwtVerifier {
    pub fn new(config: AuthConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("a plain HTTP client always builds");
        JwtVerifier {
            config,
            http,
            jwks: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.config.leeway_secs;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        match &self.config.audience {
            Some(aud) => v.set_audience(aud),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            v.set_issuer(iss);
        }
        v
    }

    /// Verifies a token and returns the identity it grants.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_with_facts(token).await.map(|(identity, _)| identity)
    }

    /// [`JwtVerifier::verify`], with the token's `exp`, `iat` and `jti`.
    pub(crate) async fn verify_with_facts(&self, token: &str) -> Result<(Identity, TokenFacts), AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing);
        }
        // decode_header refuses `alg: none` and anything else jsonwebtoken does not implement.
        let header = decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match &self.config.keys {
            KeySource::Secret(secret) => {
                if header.alg != Algorithm::HS256 {
                    return Err(AuthError::Invalid(format!(
                        "algorithm {:?} is not accepted; expected HS256",
                        header.alg
                    )));
                }
                DecodingKey::from_secret(secret.as_bytes())
            }
            KeySource::Jwks(url) => {
                if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
                    return Err(AuthError::Invalid(format!(
                        "algorithm {:?} is not accepted; expected RS256 or ES256",
                        header.alg
                    )));
                }
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| AuthError::Invalid("token has no kid".into()))?;
                self.jwks_key(url, kid).await?
            }
        };
        let data = decode::<Payload>(token, &key, &self.validation(header.alg)).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid(e.to_string()),
        })?;
        let Payload { claims, iat, jti } = data.claims;
        let facts = TokenFacts {
            exp: claims.exp,
            iat,
            jti,
        };
        Ok((claims.identity()?, facts))
    }

    async fn jwks_key(&self, url: &str, kid: &str) -> Result<DecodingKey, AuthError> {
        let mut cache = self.jwks.lock().await;
        let stale = cache
            .as_ref()
            .is_none_or(|c| c.fetched.elapsed() >= JWKS_REFRESH_INTERVAL);
        let known = cache.as_ref().and_then(|c| c.set.find(kid)).is_some();
        if cache.is_none() || (!known && stale) {
            let set = self.fetch_jwks(url).await?;
            *cache = Some(CachedKeys {
                set,
                fetched: Instant::now(),
            });
        }
        let jwk = cache
            .as_ref()
            .and_then(|c| c.set.find(kid))
            .ok_or_else(|| AuthError::Invalid(format!("no key with kid {kid:?} in the JWKS")))?;
        DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Keys(e.to_string()))
    }

    async fn fetch_jwks(&self, url: &str) -> Result<JwkSet, AuthError> {
        let response = self
            .http
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| AuthError::Keys(format!("fetching {url}: {e}")))?;
        response
            .json()
            .await
            .map_err(|e| AuthError::Keys(format!("parsing JWKS from {url}: {e}")))
    }
}

/// Mints an HS256 token: `wsfan token`, the local stack's demo page, and tests. It carries `iat`
/// (now, in seconds) and a fresh `jti`, as identity providers' tokens do, so
/// that revocation can refuse it by either.
pub fn mint_hs256(secret: &str, claims: &Claims) -> String {
    let mut payload = serde_json::to_value(claims).expect("claims serialise");
    payload["iat"] = serde_json::json!(crate::clock::now_secs());
    payload["jti"] = serde_json::json!(ulid::Ulid::generate().to_string());
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &payload,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

/// The `jti` and `exp` of a token, read without checking its signature: what `wsfan revoke
/// --token` needs to revoke a token it was handed (a forged one revokes nothing that exists).
pub fn unverified_facts(token: &str) -> Option<TokenFacts> {
    let payload = token.split('.').nth(1)?;
    // base64url without padding, as JWTs are, into the standard alphabet the decoder reads.
    let mut standard: String = payload
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect();
    let padding = (4 - standard.len() % 4) % 4;
    standard.extend(std::iter::repeat_n('=', padding));
    let bytes = aws_smithy_types::base64::decode(&standard).ok()?;
    serde_json::from_slice(&bytes).ok()
}
