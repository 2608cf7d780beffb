//! Where a request goes, and its bytes on the wire.

use std::sync::Arc;

use aws_smithy_runtime_api::client::orchestrator::HttpRequest;

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Target {
    pub(super) tls: bool,
    /// As written in the URI, for the connection; IPv6 keeps its brackets.
    pub(super) host: String,
    pub(super) port: u16,
    /// `host[:port]` as the `host` header carries it: the port only when not the default.
    pub(super) host_header: String,
    pub(super) path_and_query: String,
    /// `scheme://host:port`: connections are pooled by it.
    pub(super) origin: Arc<str>,
}

impl Target {
    pub(super) fn parse(uri: &str) -> Result<Target, String> {
        let (scheme, rest) = uri.split_once("://").ok_or(format!("{uri:?} is not an absolute URI"))?;
        let (tls, default_port) = match scheme {
            "https" => (true, 443),
            "http" => (false, 80),
            other => return Err(format!("unsupported scheme {other:?}")),
        };
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("unsupported authority in {uri:?}"));
        }
        let (host, port) = match authority.rfind(':') {
            Some(i) if !authority[i..].contains(']') => {
                let port = authority[i + 1..]
                    .parse::<u16>()
                    .map_err(|_| format!("bad port in {uri:?}"))?;
                (&authority[..i], port)
            }
            _ => (authority, default_port),
        };
        let host_header = if port == default_port {
            host.to_owned()
        } else {
            format!("{host}:{port}")
        };
        let path_and_query = match path {
            "" => "/".to_owned(),
            p if p.starts_with('?') => format!("/{p}"),
            p => p.to_owned(),
        };
        Ok(Target {
            tls,
            origin: format!("{scheme}://{host}:{port}").into(),
            host: host.trim_start_matches('[').trim_end_matches(']').to_owned(),
            port,
            host_header,
            path_and_query,
        })
    }
}

/// The request as bytes on the wire, body included, so it goes out in one write.
pub(super) fn serialize(request: &HttpRequest, target: &Target) -> Result<Vec<u8>, String> {
    let body = request
        .body()
        .bytes()
        .ok_or("streaming request bodies are not supported by this client")?;
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(request.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.path_and_query.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let headers = request.headers();
    if !headers.contains_key("host") {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(target.host_header.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers.iter() {
        if name.eq_ignore_ascii_case("transfer-encoding") {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !headers.contains_key("content-length") && (!body.is_empty() || request.method() != "GET") {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(body.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    Ok(out)
}
