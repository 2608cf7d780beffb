//! The canonical request, SigV4's normal form of what is signed, and the URI's parts in it.

use std::borrow::Cow;
use std::ops::Range;

use aws_smithy_runtime_api::client::orchestrator::HttpRequest;

/// Headers that proxies may change, so SigV4 signers leave them out (aws-sigv4's defaults).
const UNSIGNED_HEADERS: [&str; 4] = ["authorization", "user-agent", "x-amzn-trace-id", "transfer-encoding"];

/// The canonical request, in one buffer, and where in it the signed headers' names are.
pub(super) struct CanonicalRequest {
    pub(super) text: String,
    signed_headers: Range<usize>,
}

impl CanonicalRequest {
    /// `SignedHeaders`: the names of the signed headers, `;`-separated.
    pub(super) fn signed_headers(&self) -> &str {
        &self.text[self.signed_headers.clone()]
    }
}

pub(super) fn canonical_request(
    request: &HttpRequest,
    host: &str,
    path: &str,
    payload_hash: &[u8],
) -> CanonicalRequest {
    let path = without_empty_segments(path);
    let mut creq = String::with_capacity(512 + path.len());
    creq.push_str(request.method());
    creq.push('\n');
    if path.is_empty() {
        creq.push('/');
    }
    // Double encoding: the path is already encoded once, and SigV4 for every service but S3
    // encodes it again, as the SDK encodes a greedy path label.
    creq.push_str(&aws_smithy_http::label::fmt_string(
        &path,
        aws_smithy_http::label::EncodingStrategy::Greedy,
    ));
    creq.push_str("\n\n");
    let mut headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .filter(|(name, _)| *name != "host" && !UNSIGNED_HEADERS.contains(name))
        .collect();
    headers.push(("host", host));
    headers.sort_by(|a, b| a.0.cmp(b.0));
    push_headers(&mut creq, &headers);
    creq.push_str("\n\n");
    let signed_headers_at = creq.len();
    push_header_names(&mut creq, &headers);
    let signed_headers = signed_headers_at..creq.len();
    creq.push('\n');
    push_hex(&mut creq, payload_hash);
    CanonicalRequest {
        text: creq,
        signed_headers,
    }
}

/// `name:value` lines of the sorted headers, the values of a repeated name joined by commas.
fn push_headers(creq: &mut String, headers: &[(&str, &str)]) {
    let mut previous: Option<&str> = None;
    for (name, value) in headers {
        if previous == Some(*name) {
            creq.push(',');
        } else {
            if previous.is_some() {
                creq.push('\n');
            }
            creq.push_str(name);
            creq.push(':');
        }
        if *name == "x-amz-security-token" {
            // aws-sigv4 signs the session token as it is, untrimmed.
            creq.push_str(value);
        } else {
            push_trimmed(creq, value);
        }
        previous = Some(name);
    }
}

/// Each name of the sorted headers once, `;`-separated.
fn push_header_names(creq: &mut String, headers: &[(&str, &str)]) {
    let mut previous: Option<&str> = None;
    for (name, _) in headers {
        if previous != Some(*name) {
            if previous.is_some() {
                creq.push(';');
            }
            creq.push_str(name);
        }
        previous = Some(name);
    }
}
/// `host[:port]` of an absolute URI, without the scheme's default port, as aws-sigv4 signs it.
pub(super) fn host_of(uri: &str) -> Option<String> {
    let scheme = uri.split_once("://")?.0;
    let authority = authority_of(uri)?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let default_port = match scheme {
        "https" => Some(":443"),
        "http" => Some(":80"),
        _ => None,
    };
    Some(match default_port.and_then(|p| authority.strip_suffix(p)) {
        Some(host) => host.to_owned(),
        None => authority.to_owned(),
    })
}

/// The path as aws-sigv4 normalises it before signing (RFC 3986 5.2.4, as for every service but
/// S3): empty segments dropped, a trailing slash kept. Allocates only when there is one.
fn without_empty_segments(path: &str) -> Cow<'_, str> {
    if !path.contains("//") {
        return path.into();
    }
    let mut out = String::with_capacity(path.len());
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        out.push('/');
        out.push_str(segment);
    }
    if path.ends_with('/') {
        out.push('/');
    }
    out.into()
}

/// The `[userinfo@]host[:port]` of an absolute URI.
pub(super) fn authority_of(uri: &str) -> Option<&str> {
    let rest = uri.split_once("://")?.1;
    rest.split(['/', '?', '#']).next().filter(|a| !a.is_empty())
}

pub(super) fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|s| s == "." || s == "..")
}

/// A header value as SigV4 canonicalizes it: outer spaces trimmed, runs of spaces made one.
fn push_trimmed(out: &mut String, value: &str) {
    let mut last_space = false;
    for c in value.trim_matches(' ').chars() {
        if c == ' ' {
            if last_space {
                continue;
            }
            last_space = true;
        } else {
            last_space = false;
        }
        out.push(c);
    }
}

pub(super) fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
}
