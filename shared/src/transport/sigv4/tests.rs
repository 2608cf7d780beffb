use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_smithy_runtime_api::client::identity::Identity;
use aws_smithy_runtime_api::client::orchestrator::HttpRequest;
use aws_smithy_types::body::SdkBody;

use super::signer::amz_date;
use super::{CachedKeySigner, SigningError, SERVICE};

fn post(uri: &str, body: &'static [u8], extra: &[(&str, &str)]) -> HttpRequest {
    let mut request = HttpRequest::new(SdkBody::from(body));
    request.set_uri(uri).unwrap();
    request.set_method("POST").unwrap();
    // What the SDK's interceptors put on a PostToConnection before it is signed.
    request.headers_mut().insert("content-type", "application/octet-stream");
    request.headers_mut().insert("content-length", body.len().to_string());
    request.headers_mut().insert(
        "x-amz-user-agent",
        "aws-sdk-rust/1.3.9 api/apigatewaymanagement/1.120.0 os/linux lang/rust/1.95.0",
    );
    request
        .headers_mut()
        .insert("user-agent", "aws-sdk-rust/1.3.9 os/linux lang/rust/1.95.0");
    request
        .headers_mut()
        .insert("amz-sdk-invocation-id", "0f6e5d9c-4a44-4fd2-9a36-2f1e6c4b8a11");
    request.headers_mut().insert("amz-sdk-request", "attempt=1; max=1");
    for (k, v) in extra {
        request.headers_mut().append(k.to_string(), v.to_string());
    }
    request
}

/// The authorization header aws-sigv4 computes for the same request, with the settings the
/// SDK's own SigV4 signer uses for execute-api.
fn reference(request: &HttpRequest, creds: &Credentials, region: &str, now: SystemTime) -> String {
    let identity: Identity = creds.clone().into();
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(SERVICE)
        .time(now)
        .settings(SigningSettings::default())
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(
        request.method(),
        request.uri(),
        request.headers().iter(),
        SignableBody::Bytes(request.body().bytes().unwrap()),
    )
    .unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let (headers, _) = instructions.into_parts();
    headers
        .iter()
        .find(|h| h.name() == "authorization")
        .map(|h| h.value().to_owned())
        .expect("aws-sigv4 signs in headers")
}

fn ours(signer: &CachedKeySigner, mut request: HttpRequest, creds: &Credentials, now: SystemTime) -> HttpRequest {
    signer.sign(&mut request, creds, now).unwrap();
    request
}

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

#[test]
fn signatures_match_aws_sigv4() {
    let creds = Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        None,
        None,
        "test",
    );
    let token_creds = Credentials::new(
        "ASIAEXAMPLE",
        "secret/with+chars",
        Some("FwoGZXIvYXdzE//token==".into()),
        None,
        "test",
    );
    let signer = CachedKeySigner::new("eu-west-1", SERVICE);
    let cases = [
        // As the SDK builds a post's URI: `@` as it is, the connection id encoded.
        (
            "https://abc123.execute-api.eu-west-1.amazonaws.com/prod/@connections/L0SM9cOFvHcCIhw%3D",
            &creds,
        ),
        // The execute-api endpoint with a stage; a connection id as API Gateway makes them.
        (
            "https://abc123.execute-api.eu-west-1.amazonaws.com/prod/%40connections/L0SM9cOFvHcCIhw%3D",
            &creds,
        ),
        // The local server: a port, plain http, no stage.
        ("http://127.0.0.1:3001/%40connections/Conn00000001AAA%3D", &creds),
        (
            "https://abc123.execute-api.eu-west-1.amazonaws.com:443/dev/%40connections/a-b_c~d",
            &token_creds,
        ),
    ];
    // 2026-11-22 07:41:05Z, then the last second of that day and the first of the next, so
    // the cached key has to change with the date.
    for now in [at(1_795_333_265), at(1_795_391_999), at(1_795_392_000)] {
        for (uri, creds) in cases {
            let request = post(
                uri,
                b"{\"type\":\"message\",\"body\":\"hi  there\"}",
                &[("x-custom", "  a   b  ")],
            );
            let expected = reference(&request, creds, "eu-west-1", now);
            let signed = ours(&signer, request, creds, now);
            assert_eq!(
                signed.headers().get("authorization"),
                Some(expected.as_str()),
                "{uri} at {now:?}"
            );
        }
    }
}

#[test]
fn the_key_follows_rotated_credentials() {
    let signer = CachedKeySigner::new("us-east-1", SERVICE);
    let now = at(1_795_333_265);
    let uri = "https://x.execute-api.us-east-1.amazonaws.com/prod/%40connections/abc%3D";
    for secret in ["first-secret", "second-secret", "first-secret"] {
        let creds = Credentials::new("AKID", secret, None, None, "test");
        let request = post(uri, b"x", &[]);
        let expected = reference(&request, &creds, "us-east-1", now);
        assert_eq!(
            ours(&signer, request, &creds, now).headers().get("authorization"),
            Some(expected.as_str())
        );
    }
}

#[test]
fn stamps_are_utc_calendar_dates() {
    assert_eq!(amz_date(at(0)).unwrap(), "19700101T000000Z");
    assert_eq!(amz_date(at(951_782_400)).unwrap(), "20000229T000000Z");
    assert_eq!(amz_date(at(1_795_391_999)).unwrap(), "20261122T235959Z");
    assert_eq!(amz_date(at(4_107_542_400)).unwrap(), "21000301T000000Z");
}

#[test]
fn requests_it_cannot_sign_exactly_are_refused() {
    let signer = CachedKeySigner::new("us-east-1", SERVICE);
    let creds = Credentials::new("AKID", "s", None, None, "test");
    let mut request = post("https://h/prod/%40connections/../x", b"x", &[]);
    assert!(matches!(
        signer.sign(&mut request, &creds, at(0)),
        Err(SigningError::UnsupportedPath(_))
    ));
    let mut request = post("https://h/prod/%40connections/x?a=b", b"x", &[]);
    assert!(matches!(
        signer.sign(&mut request, &creds, at(0)),
        Err(SigningError::UnsupportedPath(_))
    ));
    // Found by the `sigv4` fuzz target: aws-sigv4 signs user info into the host when the
    // port is not the scheme's, which no server would check; such a URI is refused.
    // And one with several host headers, which aws-sigv4 signs as a list.
    let mut request = post("https://h/prod/%40connections/x", b"x", &[("host", "a"), ("host", "b")]);
    assert!(matches!(
        signer.sign(&mut request, &creds, at(0)),
        Err(SigningError::SeveralHosts)
    ));
    for uri in [
        "https://u@h:8443/prod/%40connections/x",
        "https://@:65535//%40connections/",
    ] {
        let mut request = post(uri, b"x", &[]);
        assert!(matches!(
            signer.sign(&mut request, &creds, at(0)),
            Err(SigningError::UserInfo(_))
        ));
    }
}

/// Found by the `sigv4` fuzz target: aws-sigv4 (and so API Gateway) drops empty path segments
/// before signing, and an endpoint with an empty stage or a trailing slash makes one.
#[test]
fn empty_path_segments_are_signed_as_aws_sigv4_normalises_them() {
    let signer = CachedKeySigner::new("eu-west-1", SERVICE);
    let creds = Credentials::new("AKID", "s", None, None, "test");
    for uri in [
        "https://h//%40connections/x",
        "https://h/prod//%40connections/x",
        "https://h/prod/%40connections//x",
        "https://h/prod/%40connections/x//",
        "https://h//",
        "https://h/prod/%40connections/",
    ] {
        let expected = reference(&post(uri, b"x", &[]), &creds, "eu-west-1", at(0));
        let signed = ours(&signer, post(uri, b"x", &[]), &creds, at(0));
        assert_eq!(signed.headers().get("authorization"), Some(expected.as_str()), "{uri}");
    }
}

/// Found by the `sigv4` fuzz target: credentials with a control character made the header
/// insert panic, which would abort a fanout (panic = "abort" in release).
#[test]
fn credentials_a_header_cannot_carry_are_an_error() {
    let signer = CachedKeySigner::new("eu-west-1", SERVICE);
    let uri = "https://h/prod/%40connections/x";
    for (key, token) in [("AKID\u{7f}", None), ("AKID", Some("tok\nen".to_owned()))] {
        let creds = Credentials::new(key, "s", token, None, "test");
        assert!(matches!(
            signer.sign(&mut post(uri, b"x", &[]), &creds, at(0)),
            Err(SigningError::UnwritableCredentials(_))
        ));
    }
}

/// Found by the `sigv4` fuzz target: aws-sigv4 signs the session token untrimmed, where this
/// signer trimmed it like any header value.
#[test]
fn session_tokens_are_signed_untrimmed_as_aws_sigv4_does() {
    let signer = CachedKeySigner::new("eu-west-1", SERVICE);
    let uri = "https://h/prod/%40connections/x";
    for token in [" ", " t ", "a  b"] {
        let creds = Credentials::new("AKID", "s", Some(token.to_owned()), None, "test");
        let expected = reference(&post(uri, b"x", &[]), &creds, "eu-west-1", at(0));
        let signed = ours(&signer, post(uri, b"x", &[]), &creds, at(0));
        assert_eq!(
            signed.headers().get("authorization"),
            Some(expected.as_str()),
            "{token:?}"
        );
    }
}
