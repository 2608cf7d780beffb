//! The signature itself: the day's key, the string to sign, the `authorization` header.

use std::fmt;
use std::sync::Mutex;
use std::time::SystemTime;

use aws_credential_types::Credentials;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::auth::{AuthSchemeEndpointConfig, Sign};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use hmac::{KeyInit, Mac};
use sha2::{Digest, Sha256};

use super::canonical::{authority_of, canonical_request, has_dot_segment, host_of, push_hex};
use super::AMZ_DATE;

type HmacSha256 = hmac::Hmac<Sha256>;

/// The signing key of one day, region and service, for one secret.
struct DayKey {
    date: [u8; 8],
    secret: String,
    key: [u8; 32],
}

pub struct CachedKeySigner {
    region: String,
    service: &'static str,
    /// `{region}/{service}/aws4_request`: the tail of every credential scope.
    scope_tail: String,
    key: Mutex<Option<DayKey>>,
}

impl fmt::Debug for CachedKeySigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedKeySigner")
            .field("region", &self.region)
            .field("service", &self.service)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("the identity holds no AWS credentials")]
    NoCredentials,
    #[error("the client has no time source")]
    NoTimeSource,
    #[error("the request body is a stream; only in-memory bodies are signed here")]
    StreamingBody,
    #[error("the request URI {0:?} has no host")]
    NoHost(String),
    #[error("the request path {0:?} has dot segments or a query, which posts never have")]
    UnsupportedPath(String),
    #[error("the request has several host headers")]
    SeveralHosts,
    #[error("the request URI {0:?} carries user info, which posts never have")]
    UserInfo(String),
    #[error("the time {0:?} cannot be written as x-amz-date")]
    Clock(SystemTime),
    #[error("the credentials' {0} has characters a header cannot carry")]
    UnwritableCredentials(&'static str),
}

impl CachedKeySigner {
    pub fn new(region: impl Into<String>, service: &'static str) -> Self {
        let region = region.into();
        CachedKeySigner {
            scope_tail: format!("{region}/{service}/aws4_request"),
            region,
            service,
            key: Mutex::new(None),
        }
    }

    /// Adds `x-amz-date`, the session token if any, and `authorization` to `request`.
    pub fn sign(&self, request: &mut HttpRequest, creds: &Credentials, now: SystemTime) -> Result<(), SigningError> {
        let amz_date = stamp(request, creds, now)?;
        let amz_date = amz_date.as_str();
        let date = &amz_date[..8];
        let payload_hash = Sha256::digest(request.body().bytes().ok_or(SigningError::StreamingBody)?);
        let (host, path) = signed_host_and_path(request)?;
        let creq = canonical_request(request, &host, &path, &payload_hash);
        let signature = self.signature(creds, amz_date, date, &creq.text);
        let authorization = self.authorization(creds, date, creq.signed_headers(), &signature);
        // An access key id that cannot be written in a header is an error, not a panic (it
        // would abort the fanout).
        request
            .headers_mut()
            .try_insert("authorization", authorization)
            .map_err(|_| SigningError::UnwritableCredentials("access key id"))?;
        Ok(())
    }

    /// The string to sign, then the signature, with the day's key.
    fn signature(&self, creds: &Credentials, amz_date: &str, date: &str, creq: &str) -> [u8; 32] {
        let mut sts = String::with_capacity(128 + self.scope_tail.len());
        sts.push_str("AWS4-HMAC-SHA256\n");
        sts.push_str(amz_date);
        sts.push('\n');
        sts.push_str(date);
        sts.push('/');
        sts.push_str(&self.scope_tail);
        sts.push('\n');
        push_hex(&mut sts, &Sha256::digest(creq.as_bytes()));
        let mut mac = HmacSha256::new_from_slice(&self.day_key(creds, date)).expect("HMAC takes any key length");
        mac.update(sts.as_bytes());
        mac.finalize().into_bytes().into()
    }

    /// The `authorization` header's value.
    fn authorization(&self, creds: &Credentials, date: &str, signed_headers: &str, signature: &[u8]) -> String {
        let mut authorization = String::with_capacity(160 + signed_headers.len() + self.scope_tail.len());
        authorization.push_str("AWS4-HMAC-SHA256 Credential=");
        authorization.push_str(creds.access_key_id());
        authorization.push('/');
        authorization.push_str(date);
        authorization.push('/');
        authorization.push_str(&self.scope_tail);
        authorization.push_str(", SignedHeaders=");
        authorization.push_str(signed_headers);
        authorization.push_str(", Signature=");
        push_hex(&mut authorization, signature);
        authorization
    }

    /// kSigning = HMAC(HMAC(HMAC(HMAC("AWS4" + secret, date), region), service), "aws4_request"),
    /// derived once per day and secret.
    fn day_key(&self, creds: &Credentials, date: &str) -> [u8; 32] {
        let mut cached = self.key.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(k) = cached.as_ref() {
            if k.date == date.as_bytes() && k.secret == creds.secret_access_key() {
                return k.key;
            }
        }
        let hmac = |key: &[u8], data: &[u8]| -> [u8; 32] {
            let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
            mac.update(data);
            mac.finalize().into_bytes().into()
        };
        let k_date = hmac(format!("AWS4{}", creds.secret_access_key()).as_bytes(), date.as_bytes());
        let k_region = hmac(&k_date, self.region.as_bytes());
        let k_service = hmac(&k_region, self.service.as_bytes());
        let key = hmac(&k_service, b"aws4_request");
        let mut day = [0u8; 8];
        day.copy_from_slice(date.as_bytes());
        *cached = Some(DayKey {
            date: day,
            secret: creds.secret_access_key().to_owned(),
            key,
        });
        key
    }
}

impl Sign for CachedKeySigner {
    fn sign_http_request(
        &self,
        request: &mut HttpRequest,
        identity: &Identity,
        _endpoint_config: AuthSchemeEndpointConfig<'_>,
        components: &RuntimeComponents,
        _config: &ConfigBag,
    ) -> Result<(), BoxError> {
        let creds = identity.data::<Credentials>().ok_or(SigningError::NoCredentials)?;
        let now = components.time_source().ok_or(SigningError::NoTimeSource)?.now();
        Ok(self.sign(request, creds, now)?)
    }
}

/// Adds `x-amz-date` and the session token, if any, to `request`; the `x-amz-date` written.
fn stamp(request: &mut HttpRequest, creds: &Credentials, now: SystemTime) -> Result<String, SigningError> {
    let amz_date = amz_date(now)?;
    request.headers_mut().insert("x-amz-date", amz_date.clone());
    if let Some(token) = creds.session_token() {
        request
            .headers_mut()
            .try_insert("x-amz-security-token", token.to_owned())
            .map_err(|_| SigningError::UnwritableCredentials("session token"))?;
    }
    Ok(amz_date)
}

/// The host and the path to sign, refusing the requests this signer would not sign exactly as
/// aws-sigv4 does (posts never are such requests).
fn signed_host_and_path(request: &mut HttpRequest) -> Result<(String, String), SigningError> {
    let uri = request.uri().to_owned();
    if authority_of(&uri).is_some_and(|a| a.contains('@')) {
        return Err(SigningError::UserInfo(uri));
    }
    if request.headers().get_all("host").count() > 1 {
        return Err(SigningError::SeveralHosts);
    }
    let host = match request.headers().get("host") {
        Some(h) => h.to_owned(),
        None => host_of(&uri).ok_or_else(|| SigningError::NoHost(uri.clone()))?,
    };
    let path = request.uri_mut().path().to_owned();
    if request.uri_mut().query().is_some_and(|q| !q.is_empty()) || has_dot_segment(&path) {
        return Err(SigningError::UnsupportedPath(uri));
    }
    Ok((host, path))
}

/// `now` as `x-amz-date` carries it, in UTC.
pub(super) fn amz_date(now: SystemTime) -> Result<String, SigningError> {
    time::OffsetDateTime::from(now)
        .format(AMZ_DATE)
        .map_err(|_| SigningError::Clock(now))
}
