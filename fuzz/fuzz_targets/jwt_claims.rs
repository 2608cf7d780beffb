//! JWT claims (shared/src/adapters/auth.rs): any payload, signed with the right key, is an identity or a
//! refusal, never a panic; an admitted identity has a valid `sub` and survives the trip through
//! the authorizer context that API Gateway hands to every later event.
#![no_main]

use hmac::{KeyInit, Mac};
use libfuzzer_sys::fuzz_target;
use wsfan_shared::access::{validate_user_id, Identity};
use wsfan_shared::auth::{Claims, JwtVerifier};
use wsfan_shared::config::{AuthConfig, KeySource};

const SECRET: &str = "fuzz-secret";

fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// An HS256 token over exactly these payload bytes.
fn token(payload: &[u8]) -> String {
    let signing_input = format!(
        "{}.{}",
        base64url(br#"{"alg":"HS256","typ":"JWT"}"#),
        base64url(payload)
    );
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(signing_input.as_bytes());
    format!("{signing_input}.{}", base64url(&mac.finalize().into_bytes()))
}

fn check(identity: &Identity) {
    validate_user_id(identity.user_id.as_deref().expect("a token always names a user")).unwrap();
    let context: serde_json::Map<String, serde_json::Value> = identity.to_context().into_iter().collect();
    assert_eq!(&Identity::from_context(&context).unwrap(), identity);
}

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static VERIFIER: JwtVerifier = JwtVerifier::new(AuthConfig {
            keys: KeySource::Secret(SECRET.into()),
            audience: None,
            issuer: None,
            anonymous_channels: None,
            leeway_secs: 0,
        });
    }
    if let Ok(claims) = serde_json::from_slice::<Claims>(data) {
        if let Ok(identity) = claims.identity() {
            check(&identity);
        }
    }
    // The whole verification, as the authorizer runs it.
    VERIFIER.with(|verifier| {
        if let Ok(identity) = futures::executor::block_on(verifier.verify(&token(data))) {
            check(&identity);
        }
    });
});
