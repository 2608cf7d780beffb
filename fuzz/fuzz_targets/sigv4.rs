//! The SigV4 signer of @connections posts (shared/src/transport/sigv4.rs), against aws-sigv4: for any post
//! it signs, its signature is the one aws-sigv4 computes with the SDK's settings; a post it cannot
//! sign exactly is refused, never signed wrong, and it never panics.
#![no_main]

use std::time::{Duration, SystemTime};

use arbitrary::Arbitrary;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;
use libfuzzer_sys::fuzz_target;
use wsfan_shared::sigv4::{CachedKeySigner, SERVICE};

#[derive(Arbitrary, Debug)]
struct Post {
    https: bool,
    host: String,
    port: Option<u16>,
    stage: String,
    connection_id: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    secs: u32,
    key_id: String,
    secret: String,
    token: Option<String>,
}

fn reference(request: &HttpRequest, creds: &Credentials, now: SystemTime) -> Option<String> {
    let identity: Identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-west-1")
        .name(SERVICE)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .ok()?
        .into();
    let signable = SignableRequest::new(
        request.method(),
        request.uri(),
        request.headers().iter(),
        SignableBody::Bytes(request.body().bytes()?),
    )
    .ok()?;
    let (instructions, _) = sign(signable, &params).ok()?.into_parts();
    let (headers, _) = instructions.into_parts();
    headers
        .iter()
        .find(|h| h.name() == "authorization")
        .map(|h| h.value().to_owned())
}

fuzz_target!(|post: Post| {
    let id = aws_smithy_http::label::fmt_string(&post.connection_id, aws_smithy_http::label::EncodingStrategy::Default);
    let stage = aws_smithy_http::label::fmt_string(&post.stage, aws_smithy_http::label::EncodingStrategy::Default);
    let scheme = if post.https { "https" } else { "http" };
    let port = post.port.map(|p| format!(":{p}")).unwrap_or_default();
    let uri = format!("{scheme}://{}{port}/{stage}/%40connections/{id}", post.host);
    let mut request = HttpRequest::new(SdkBody::from(post.body.clone()));
    if request.set_uri(uri.as_str()).is_err() {
        return;
    }
    request.set_method("POST").unwrap();
    for (name, value) in post.headers.iter().take(8) {
        let name = name.to_ascii_lowercase();
        // The SDK never sets these before signing; the signer adds them.
        if name == "x-amz-date" || name == "x-amz-security-token" {
            continue;
        }
        let _ = request.headers_mut().try_append(name, value.clone());
    }
    let creds = Credentials::new(&post.key_id, &post.secret, post.token.clone(), None, "fuzz");
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(post.secs));
    let Some(expected) = reference(&request, &creds, now) else {
        return;
    };
    let signer = CachedKeySigner::new("eu-west-1", SERVICE);
    if signer.sign(&mut request, &creds, now).is_ok() {
        assert_eq!(request.headers().get("authorization"), Some(expected.as_str()), "{uri}");
    }
});
