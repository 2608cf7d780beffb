//! The SigV4 check of `@connections` requests, as API Gateway makes it: the signature is
//! recomputed with aws-sigv4 from the request as sent.

use axum::extract::{FromRequestParts, OriginalUri};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, Uri};

/// What the signature check needs of a request besides its body.
pub(super) struct RequestHead {
    pub(super) method: Method,
    pub(super) uri: Uri,
    pub(super) headers: HeaderMap,
}

impl<S: Send + Sync> FromRequestParts<S> for RequestHead {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        // The URI as sent: the local stack mounts these routes inside a router of its own.
        let uri = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.clone(), |o| o.0.clone());
        Ok(RequestHead {
            method: parts.method.clone(),
            uri,
            headers: parts.headers.clone(),
        })
    }
}

/// Recomputes the request's SigV4 signature with aws-sigv4 from the headers it says it signed,
/// and compares. `Err` says what is wrong, as API Gateway's 403 would.
pub(super) fn check_signature(r: &RequestHead, body: &[u8], access_key_id: &str, secret: &str) -> Result<(), String> {
    let authorization = r
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no authorization header")?;
    let fields = authorization
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let field = |name: &str| {
        fields
            .split(", ")
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('='))
            .ok_or(format!("no {name} in the authorization header"))
    };
    let (credential, signed_headers, signature) = (field("Credential")?, field("SignedHeaders")?, field("Signature")?);
    let scope: Vec<&str> = credential.split('/').collect();
    let [key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(format!("malformed credential scope {credential:?}"));
    };
    if key_id != access_key_id {
        return Err(format!("unknown access key {key_id:?}"));
    }
    let amz_date = r
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or("no x-amz-date header")?;
    let at = time::PrimitiveDateTime::parse(amz_date, wsfan_shared::sigv4::AMZ_DATE)
        .map_err(|e| format!("x-amz-date {amz_date:?}: {e}"))?
        .assume_utc();
    if !amz_date.starts_with(date) {
        return Err("the credential scope's date is not x-amz-date's".into());
    }
    let mut headers = Vec::new();
    for name in signed_headers.split(';') {
        let values = r.headers.get_all(name).iter().map(|v| v.to_str().unwrap_or_default());
        headers.extend(values.map(|v| (name, v)));
    }
    let host = r
        .headers
        .get("host")
        .and_then(|v| v.to_str().ok())
        .ok_or("no host header")?;
    let path = r.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri = format!("http://{host}{path}");
    let identity = aws_credential_types::Credentials::new(access_key_id, secret, None, None, "wsfan-local").into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(at.into())
        .settings(aws_sigv4::http_request::SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let signable = aws_sigv4::http_request::SignableRequest::new(
        r.method.as_str(),
        &uri,
        headers.into_iter(),
        aws_sigv4::http_request::SignableBody::Bytes(body),
    )
    .map_err(|e| e.to_string())?;
    let (_, expected) = aws_sigv4::http_request::sign(signable, &params)
        .map_err(|e| e.to_string())?
        .into_parts();
    if expected == signature {
        Ok(())
    } else {
        Err("the request signature does not match the signature of this request".into())
    }
}
