//! A lean HTTP/1.1 client for the SDK's `@connections` posts.
//!
//! The SDK's default client (hyper-util's pooled client over hyper) spends, per post, a pool
//! checkout, a channel hop to a spawned connection task and back, and about 45 KB per open
//! connection (BENCHMARKS.md). A fanout sends thousands of small requests with bodies in memory
//! to one host, so this client does only that: a pool of keep-alive connections (TLS with rustls
//! for https), each request written with one write, the response read and parsed (httparse) in
//! the task that asked for it. Answers framed by `content-length`, chunked or by closing the
//! connection all work. A reused connection that the server closed while idle is replaced and the
//! request sent again once, when nothing of an answer had arrived.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept, over all hosts: enough for every post in flight.
const MAX_IDLE: usize = 1024;
/// Answers larger than this are refused; @connections answers with a few hundred bytes.
const MAX_RESPONSE_BYTES: usize = 1 << 20;
const MAX_HEADERS: usize = 64;
/// How long a host's addresses are reused. A fanout opens hundreds of connections at once, and
/// each would otherwise ask the system resolver on a blocking thread of its own.
const DNS_TTL: Duration = Duration::from_secs(30);

tokio::task_local! {
    /// The wall-clock time (since the epoch) by which a request must be on the wire, or it is
    /// not sent at all ([`TooLate`]). A post's token of the shared `@connections` budget belongs
    /// to one second (domain/budget.rs), and the receiving end counts a post in the second it
    /// arrives: a post that took its token and then waited for a new connection (or for the CPU)
    /// past the second's end would be counted in the next one, over that second's cap.
    pub static SEND_BY: Duration;
}

/// Kept between the check and the server reading the request.
const SEND_MARGIN: Duration = Duration::from_millis(10);

/// A request not sent because its [`SEND_BY`] had passed when it could be written.
#[derive(Debug, thiserror::Error)]
#[error("not sent: it could not be written before the end of its second of the budget")]
pub struct TooLate;

fn too_late() -> bool {
    SEND_BY
        .try_with(|by| crate::clock::since_epoch() + SEND_MARGIN >= *by)
        .unwrap_or(false)
}

/// Plain TCP or TLS over it.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

struct Connection {
    io: Box<dyn Stream>,
    /// Bytes read and not yet parsed; kept for the next answer's allocation.
    buf: Vec<u8>,
}

struct Idle {
    origin: Arc<str>,
    connection: Connection,
    since: Instant,
}

struct Pool {
    idle: Mutex<Vec<Idle>>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    /// Trusted besides the system's certificates (tests).
    extra_roots: Vec<CertificateDer<'static>>,
    /// Resolved addresses by origin; the lock makes concurrent connects share one lookup.
    addresses: tokio::sync::Mutex<HashMap<Arc<str>, Resolved>>,
    /// Spreads new connections over a host's addresses.
    next_address: AtomicUsize,
}

/// A host's addresses, and when they were looked up.
type Resolved = (Vec<SocketAddr>, Instant);

/// The HTTP client to give `config::Builder::http_client`; clones share one pool.
#[derive(Clone)]
pub struct Http1Client {
    pool: Arc<Pool>,
    connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for Http1Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Client").finish_non_exhaustive()
    }
}

impl Default for Http1Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Http1Client {
    pub fn new() -> Self {
        Self::with_roots(Vec::new())
    }

    /// A client that also trusts `roots`, for servers with certificates of their own.
    pub fn with_roots(roots: Vec<CertificateDer<'static>>) -> Self {
        Http1Client {
            pool: Arc::new(Pool {
                idle: Mutex::new(Vec::new()),
                tls: OnceLock::new(),
                extra_roots: roots,
                addresses: Default::default(),
                next_address: AtomicUsize::new(0),
            }),
            connect_timeout: None,
        }
    }

    /// Idle connections in the pool (tests).
    pub fn idle_connections(&self) -> usize {
        self.pool.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Sends `request` and reads the whole answer.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, ConnectorError> {
        let target = Target::parse(request.uri()).map_err(|e| ConnectorError::user(e.into()))?;
        let bytes = serialize(&request, &target).map_err(|e| ConnectorError::user(e.into()))?;
        let (mut connection, reused) = match self.checkout(&target.origin) {
            Some(c) => (c, true),
            None => (self.connect(&target).await?, false),
        };
        if too_late() {
            self.checkin(target.origin, connection);
            return Err(ConnectorError::other(Box::new(TooLate), None));
        }
        let answer = match exchange(&mut connection, &bytes).await {
            // The server closed a kept-alive connection before this request reached it.
            Err(Failure::Closed(_)) if reused => {
                connection = self.connect(&target).await?;
                exchange(&mut connection, &bytes).await
            }
            other => other,
        };
        match answer {
            Ok((response, keep_alive)) => {
                if keep_alive {
                    self.checkin(target.origin, connection);
                }
                Ok(response)
            }
            Err(Failure::Closed(e) | Failure::Io(e)) => Err(ConnectorError::io(e.into())),
            Err(Failure::Protocol(why)) => Err(ConnectorError::other(why.into(), None)),
        }
    }

    fn checkout(&self, origin: &str) -> Option<Connection> {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        idle.retain(|c| now.duration_since(c.since) < IDLE_TIMEOUT);
        let at = idle.iter().rposition(|c| &*c.origin == origin)?;
        Some(idle.swap_remove(at).connection)
    }

    fn checkin(&self, origin: Arc<str>, connection: Connection) {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                origin,
                connection,
                since: Instant::now(),
            });
        }
    }

    /// The host's addresses, looked up at most once per [`DNS_TTL`], rotated by one for each
    /// new connection.
    async fn addresses(&self, target: &Target) -> io::Result<Vec<SocketAddr>> {
        let mut cache = self.pool.addresses.lock().await;
        let mut addresses = match cache.get(&target.origin) {
            Some((addresses, at)) if at.elapsed() < DNS_TTL => addresses.clone(),
            _ => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
                    .await?
                    .collect();
                if found.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} has no address", target.host),
                    ));
                }
                cache.insert(target.origin.clone(), (found.clone(), Instant::now()));
                found
            }
        };
        drop(cache);
        let turn = self.pool.next_address.fetch_add(1, Ordering::Relaxed);
        let len = addresses.len();
        addresses.rotate_left(turn % len);
        Ok(addresses)
    }

    async fn connect(&self, target: &Target) -> Result<Connection, ConnectorError> {
        let connect = async {
            let addresses = self.addresses(target).await?;
            TcpStream::connect(&addresses[..]).await
        };
        let tcp = match self.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connect).await.map_err(|_| {
                ConnectorError::timeout(format!("connecting to {} took over {limit:?}", target.origin).into())
            })?,
            None => connect.await,
        }
        .map_err(|e| ConnectorError::io(e.into()))?;
        // Requests and answers are small: send them at once.
        tcp.set_nodelay(true).map_err(|e| ConnectorError::io(e.into()))?;
        let io: Box<dyn Stream> = if target.tls {
            let config = self
                .pool
                .tls
                .get_or_init(|| tls_config(&self.pool.extra_roots))
                .clone()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let name = ServerName::try_from(target.host.clone()).map_err(|e| ConnectorError::user(e.into()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| ConnectorError::io(e.into()))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        Ok(Connection {
            io,
            buf: Vec::with_capacity(1024),
        })
    }
}

impl HttpConnector for Http1Client {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.clone();
        HttpConnectorFuture::new(async move { client.send(request).await })
    }
}

impl HttpClient for Http1Client {
    fn http_connector(&self, settings: &HttpConnectorSettings, _components: &RuntimeComponents) -> SharedHttpConnector {
        let mut client = self.clone();
        client.connect_timeout = settings.connect_timeout();
        SharedHttpConnector::new(client)
    }
}

fn tls_config(extra_roots: &[CertificateDer<'static>]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    roots.add_parsable_certificates(extra_roots.iter().cloned());
    if roots.is_empty() {
        return Err(format!(
            "no trusted CA certificates: the system store had none ({:?})",
            native.errors
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    tls: bool,
    /// As written in the URI, for the connection; IPv6 keeps its brackets.
    host: String,
    port: u16,
    /// `host[:port]` as the `host` header carries it: the port only when not the default.
    host_header: String,
    path_and_query: String,
    /// `scheme://host:port`: connections are pooled by it.
    origin: Arc<str>,
}

impl Target {
    fn parse(uri: &str) -> Result<Target, String> {
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
fn serialize(request: &HttpRequest, target: &Target) -> Result<Vec<u8>, String> {
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

enum Failure {
    /// The connection failed or closed before any byte of an answer arrived.
    Closed(io::Error),
    Io(io::Error),
    Protocol(String),
}

/// Writes `request`, reads one answer; `bool`: whether the connection can carry another.
async fn exchange(c: &mut Connection, request: &[u8]) -> Result<(HttpResponse, bool), Failure> {
    c.buf.clear();
    c.io.write_all(request).await.map_err(Failure::Closed)?;
    c.io.flush().await.map_err(Failure::Closed)?;
    let is_head = request.starts_with(b"HEAD ");
    loop {
        let (status, head_len, keep_alive, framing, headers) = match parse_head(&c.buf)? {
            Some(head) => head,
            None => {
                if fill(c).await? == 0 {
                    return Err(if c.buf.is_empty() {
                        Failure::Closed(io::ErrorKind::UnexpectedEof.into())
                    } else {
                        Failure::Protocol("the connection closed in the middle of an answer's head".into())
                    });
                }
                continue;
            }
        };
        c.buf.drain(..head_len);
        // 1xx answers precede the real one.
        if (100..200).contains(&status) && status != 101 {
            continue;
        }
        let framing = if is_head || status == 204 || status == 304 {
            Framing::Length(0)
        } else {
            framing
        };
        let (body, reusable) = read_body(c, framing).await?;
        let mut response = HttpResponse::new(
            status
                .try_into()
                .map_err(|_| Failure::Protocol(format!("bad status {status}")))?,
            SdkBody::from(body),
        );
        for (name, value) in headers {
            response.headers_mut().append(name, value);
        }
        return Ok((response, keep_alive && reusable && c.buf.is_empty()));
    }
}

/// Reads more bytes into the buffer; 0 at the end of the stream.
async fn fill(c: &mut Connection) -> Result<usize, Failure> {
    if c.buf.len() >= MAX_RESPONSE_BYTES {
        return Err(Failure::Protocol(format!("answer over {MAX_RESPONSE_BYTES} bytes")));
    }
    c.buf.reserve(2048);
    let received_before = !c.buf.is_empty();
    match c.io.read_buf(&mut c.buf).await {
        Ok(n) => Ok(n),
        Err(e) if received_before => Err(Failure::Io(e)),
        Err(e) => Err(Failure::Closed(e)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

type Head = (u16, usize, bool, Framing, Vec<(String, String)>);

/// The status line and headers, once complete: status, their length, keep-alive, body framing.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, Failure> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut slots);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(Failure::Protocol(format!("unparseable answer: {e}"))),
    };
    let status = response.code.unwrap_or(0);
    let http11 = response.version == Some(1);
    let mut keep_alive = http11;
    let mut framing = Framing::UntilClose;
    let mut headers = Vec::with_capacity(response.headers.len());
    for h in response.headers.iter() {
        let value = std::str::from_utf8(h.value)
            .map_err(|_| Failure::Protocol(format!("header {} is not UTF-8", h.name)))?
            .trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .parse::<usize>()
                .map_err(|_| Failure::Protocol(format!("bad content-length {value:?}")))?;
            if framing == Framing::UntilClose {
                framing = Framing::Length(n);
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked wins over content-length (RFC 9112 6.3).
            if value.to_ascii_lowercase().split(',').any(|t| t.trim() == "chunked") {
                framing = Framing::Chunked;
            }
        } else if h.name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if value.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        }
        headers.push((h.name.to_ascii_lowercase(), value.to_owned()));
    }
    Ok(Some((status, len, keep_alive, framing, headers)))
}

/// The body, and whether the connection ended cleanly after it.
async fn read_body(c: &mut Connection, framing: Framing) -> Result<(Vec<u8>, bool), Failure> {
    match framing {
        Framing::Length(n) => {
            if n > MAX_RESPONSE_BYTES {
                return Err(Failure::Protocol(format!("answer over {MAX_RESPONSE_BYTES} bytes")));
            }
            while c.buf.len() < n {
                if fill(c).await? == 0 {
                    return Err(Failure::Protocol(
                        "the connection closed in the middle of a body".into(),
                    ));
                }
            }
            let rest = c.buf.split_off(n);
            Ok((std::mem::replace(&mut c.buf, rest), true))
        }
        Framing::UntilClose => {
            while fill(c).await? > 0 {}
            Ok((std::mem::take(&mut c.buf), false))
        }
        Framing::Chunked => {
            let mut body = Vec::new();
            loop {
                let line_end = loop {
                    if let Some(i) = c.buf.windows(2).position(|w| w == b"\r\n") {
                        break i;
                    }
                    if fill(c).await? == 0 {
                        return Err(Failure::Protocol("the connection closed in a chunk".into()));
                    }
                };
                let line = std::str::from_utf8(&c.buf[..line_end]).unwrap_or("");
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .map_err(|_| Failure::Protocol(format!("bad chunk size {line:?}")))?;
                c.buf.drain(..line_end + 2);
                if size == 0 {
                    // Trailers, if any, end with an empty line.
                    loop {
                        if let Some(i) = c.buf.windows(2).position(|w| w == b"\r\n") {
                            c.buf.drain(..i + 2);
                            if i == 0 {
                                return Ok((body, true));
                            }
                            continue;
                        }
                        if fill(c).await? == 0 {
                            return Err(Failure::Protocol("the connection closed in trailers".into()));
                        }
                    }
                }
                // body.len() never exceeds the limit, so this cannot overflow (a chunk size of
                // ffffffffffffffff after a first chunk made `body.len() + size` wrap).
                if size > MAX_RESPONSE_BYTES - body.len() {
                    return Err(Failure::Protocol(format!("answer over {MAX_RESPONSE_BYTES} bytes")));
                }
                while c.buf.len() < size + 2 {
                    if fill(c).await? == 0 {
                        return Err(Failure::Protocol("the connection closed in a chunk".into()));
                    }
                }
                if &c.buf[size..size + 2] != b"\r\n" {
                    return Err(Failure::Protocol("a chunk does not end with CRLF".into()));
                }
                body.extend_from_slice(&c.buf[..size]);
                c.buf.drain(..size + 2);
            }
        }
    }
}

/// An answer as [`read_answer`] parsed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection could carry another request.
    pub reusable: bool,
}

/// Reads one answer from `answer` exactly as a post reads it from a socket, with the socket
/// handing out at most `reads[i]` bytes on its i-th read (then the rest at once): the fuzzers'
/// way into the parser, with no network.
#[doc(hidden)]
pub fn read_answer(answer: &[u8], reads: &[usize]) -> Result<ParsedAnswer, String> {
    let mut c = Connection {
        io: Box::new(Replay {
            data: answer.to_vec(),
            at: 0,
            reads: reads.to_vec(),
            next: 0,
        }),
        buf: Vec::new(),
    };
    match futures::executor::block_on(exchange(&mut c, b"POST / HTTP/1.1\r\n\r\n")) {
        Ok((mut response, reusable)) => Ok(ParsedAnswer {
            status: response.status().as_u16(),
            headers: response
                .headers()
                .iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
            body: response.take_body().bytes().unwrap_or_default().to_vec(),
            reusable,
        }),
        Err(Failure::Closed(e) | Failure::Io(e)) => Err(e.to_string()),
        Err(Failure::Protocol(e)) => Err(e),
    }
}

/// A socket that replays bytes in reads of chosen sizes and swallows what is written to it.
struct Replay {
    data: Vec<u8>,
    at: usize,
    reads: Vec<usize>,
    next: usize,
}

impl AsyncRead for Replay {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = &mut *self;
        let limit = this.reads.get(this.next).copied().unwrap_or(usize::MAX).max(1);
        this.next += 1;
        let n = limit.min(this.data.len() - this.at).min(buf.remaining());
        buf.put_slice(&this.data[this.at..this.at + n]);
        this.at += n;
        std::task::Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::PrivateKeyDer;

    const CERT: &[u8] = include_bytes!("../../tests/certs/localhost.pem");
    const KEY: &[u8] = include_bytes!("../../tests/certs/localhost.key");

    fn post(uri: &str, body: &'static [u8]) -> HttpRequest {
        let mut request = HttpRequest::new(SdkBody::from(body));
        request.set_uri(uri).unwrap();
        request.set_method("POST").unwrap();
        request.headers_mut().insert("x-test", "1");
        request
    }

    /// Reads one request (head and `content-length` body) from `io`; `None` at a clean close.
    async fn read_request(io: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<String> {
        loop {
            let mut slots = [httparse::EMPTY_HEADER; 32];
            let mut request = httparse::Request::new(&mut slots);
            if let httparse::Status::Complete(head) = request.parse(buf).unwrap() {
                let length: usize = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse().unwrap())
                    .unwrap_or(0);
                if buf.len() >= head + length {
                    let text = String::from_utf8_lossy(&buf[..head + length]).into_owned();
                    buf.drain(..head + length);
                    return Some(text);
                }
            }
            if io.read_buf(buf).await.unwrap() == 0 {
                return None;
            }
        }
    }

    /// A server that answers the n-th request on each connection with `answers(n)`, and counts
    /// connections and requests. An empty answer closes the connection without a word.
    struct Scripted {
        uri: String,
        connections: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
    }

    async fn scripted(answers: fn(usize) -> Vec<u8>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/prod/@connections/abc%3D", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (count, seen) = (connections.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let (mut tcp, _) = listener.accept().await.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut n = 0;
                    while let Some(request) = read_request(&mut tcp, &mut buf).await {
                        seen.lock().unwrap().push(request);
                        let answer = answers(n);
                        n += 1;
                        if answer.is_empty() {
                            return;
                        }
                        tcp.write_all(&answer).await.unwrap();
                    }
                });
            }
        });
        Scripted {
            uri,
            connections,
            requests,
        }
    }

    fn body(response: &HttpResponse) -> &str {
        std::str::from_utf8(response.body().bytes().unwrap()).unwrap()
    }

    #[test]
    fn targets_split_into_connection_and_request_parts() {
        let t = Target::parse("https://abc.execute-api.eu-west-1.amazonaws.com/prod/@connections/x%3D").unwrap();
        assert!(t.tls);
        assert_eq!(
            (t.host.as_str(), t.port),
            ("abc.execute-api.eu-west-1.amazonaws.com", 443)
        );
        assert_eq!(t.host_header, "abc.execute-api.eu-west-1.amazonaws.com");
        assert_eq!(t.path_and_query, "/prod/@connections/x%3D");
        let t = Target::parse("http://[::1]:3001?a=b").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.host_header.as_str()),
            ("::1", 3001, "[::1]:3001")
        );
        assert_eq!(t.path_and_query, "/?a=b");
        assert_eq!(&*t.origin, "http://[::1]:3001");
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("http://user@x/").is_err());
        assert!(Target::parse("http://x:99999/").is_err());
    }

    #[tokio::test]
    async fn keep_alive_reuses_one_connection_and_reads_each_framing() {
        let server = scripted(|n| match n {
            0 => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
            1 => b"HTTP/1.1 410 Gone\r\nx-amzn-errortype: GoneException\r\ncontent-length: 13\r\n\r\n{\"message\":1}".to_vec(),
            2 => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n".to_vec(),
            _ => b"HTTP/1.1 429 Too Many Requests\r\ncontent-length: 2\r\n\r\nno".to_vec(),
        })
        .await;
        let client = Http1Client::new();
        let ok = client.send(post(&server.uri, b"payload")).await.unwrap();
        assert_eq!((ok.status().as_u16(), body(&ok)), (200, ""));
        let gone = client.send(post(&server.uri, b"payload")).await.unwrap();
        assert_eq!(gone.status().as_u16(), 410);
        assert_eq!(gone.headers().get("x-amzn-errortype"), Some("GoneException"));
        assert_eq!(body(&gone), "{\"message\":1}");
        let chunked = client.send(post(&server.uri, b"")).await.unwrap();
        assert_eq!((chunked.status().as_u16(), body(&chunked)), (200, "hello world"));
        let throttled = client.send(post(&server.uri, b"x")).await.unwrap();
        assert_eq!((throttled.status().as_u16(), body(&throttled)), (429, "no"));
        assert_eq!(
            server.connections.load(Ordering::SeqCst),
            1,
            "one kept-alive connection"
        );
        assert_eq!(client.idle_connections(), 1);

        let requests = server.requests.lock().unwrap();
        let first = &requests[0];
        let host = server.uri.trim_start_matches("http://").split('/').next().unwrap();
        assert!(
            first.starts_with("POST /prod/@connections/abc%3D HTTP/1.1\r\n"),
            "{first}"
        );
        assert!(first.contains(&format!("host: {host}\r\n")), "{first}");
        assert!(
            first.contains("x-test: 1\r\n") && first.contains("content-length: 7\r\n"),
            "{first}"
        );
        assert!(first.ends_with("\r\n\r\npayload"), "{first}");
    }

    #[tokio::test]
    async fn a_request_past_its_send_by_is_not_sent_and_its_connection_is_kept() {
        let server = scripted(|_| b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec()).await;
        let client = Http1Client::new();
        let epoch = crate::clock::since_epoch();
        // Its second ended a moment ago (or ends within the margin): refused, nothing written.
        let err = SEND_BY
            .scope(epoch + Duration::from_millis(5), client.send(post(&server.uri, b"x")))
            .await
            .unwrap_err();
        let source = std::error::Error::source(&err).expect("the cause");
        assert!(source.is::<TooLate>(), "{err:?}");
        assert!(server.requests.lock().unwrap().is_empty());
        assert_eq!(
            client.idle_connections(),
            1,
            "the connection it opened waits for the next"
        );
        // With time left, or outside any scope, it goes.
        let ok = SEND_BY
            .scope(epoch + Duration::from_secs(60), client.send(post(&server.uri, b"x")))
            .await
            .unwrap();
        assert_eq!(ok.status().as_u16(), 200);
        client.send(post(&server.uri, b"x")).await.unwrap();
        assert_eq!(server.requests.lock().unwrap().len(), 2);
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_server_closes_is_not_reused() {
        let server =
            scripted(|_| b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec()).await;
        let client = Http1Client::new();
        for _ in 0..3 {
            let r = client.send(post(&server.uri, b"x")).await.unwrap();
            assert_eq!(body(&r), "ok");
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 3);
        assert_eq!(client.idle_connections(), 0);

        // HTTP/1.0 without keep-alive and without a length: the body runs to the close.
        let server = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let uri = format!("http://{}/x", listener.local_addr().unwrap());
            tokio::spawn(async move {
                let (mut tcp, _) = listener.accept().await.unwrap();
                let mut buf = Vec::new();
                read_request(&mut tcp, &mut buf).await.unwrap();
                tcp.write_all(b"HTTP/1.0 200 OK\r\n\r\nuntil the end").await.unwrap();
            });
            uri
        };
        let r = client.send(post(&server, b"x")).await.unwrap();
        assert_eq!(body(&r), "until the end");
        assert_eq!(client.idle_connections(), 0);
    }

    #[tokio::test]
    async fn a_kept_connection_closed_while_idle_is_replaced_once() {
        // Every connection answers one request, then closes without a word at the next.
        let server = scripted(|n| match n {
            0 => b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n".to_vec(),
            _ => Vec::new(),
        })
        .await;
        let client = Http1Client::new();
        for _ in 0..3 {
            let r = client.send(post(&server.uri, b"x")).await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
        // Three answers; the second and third each found the kept connection dead and sent again.
        assert_eq!(server.connections.load(Ordering::SeqCst), 3);
        assert_eq!(server.requests.lock().unwrap().len(), 5);

        // A fresh connection that closes is an error, not an endless loop.
        let server = scripted(|_| Vec::new()).await;
        let err = Http1Client::new().send(post(&server.uri, b"x")).await.unwrap_err();
        assert!(err.is_io(), "{err:?}");
        assert_eq!(server.connections.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn names_are_resolved_once_and_every_address_is_tried() {
        let server = scripted(|_| b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n".to_vec()).await;
        // `localhost` may resolve to ::1 first, where nothing listens: connects go on to 127.0.0.1.
        let uri = server.uri.replace("127.0.0.1", "localhost");
        let client = Http1Client::new();
        for _ in 0..4 {
            assert_eq!(client.send(post(&uri, b"x")).await.unwrap().status().as_u16(), 200);
        }
        assert_eq!(server.connections.load(Ordering::SeqCst), 4);
        let cache = client.pool.addresses.lock().await;
        let origin = format!(
            "http://localhost:{}",
            uri.split(':').nth(2).unwrap().split('/').next().unwrap()
        );
        assert!(
            cache[origin.as_str()].0.iter().any(|a| a.ip().is_loopback()),
            "{cache:?}"
        );
        assert_eq!(cache.len(), 1);
    }

    #[tokio::test]
    async fn garbage_answers_are_errors() {
        let server = scripted(|_| b"SMTP ready\r\n\r\n".to_vec()).await;
        let err = Http1Client::new().send(post(&server.uri, b"x")).await.unwrap_err();
        assert!(err.is_other(), "{err:?}");
        let server = scripted(|_| b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n".to_vec()).await;
        let err = Http1Client::new().send(post(&server.uri, b"x")).await.unwrap_err();
        assert!(format!("{err:?}").contains("chunk size"), "{err:?}");
    }

    /// Found while writing the `http1_response` fuzz target (which had not reached it in 12
    /// million inputs): a chunk size near usize::MAX after a first chunk overflowed the size
    /// check, and in a release build (no overflow checks, panic = abort) the slice after it
    /// aborted the fanout. It is now an answer over the limit, like any other.
    #[test]
    fn a_huge_chunk_size_after_a_chunk_is_refused() {
        for size in ["ffffffffffffffff", "fffffffffffffffe", "100001"] {
            let answer =
                format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n{size}\r\nb\r\n0\r\n\r\n");
            let err = read_answer(answer.as_bytes(), &[]).unwrap_err();
            assert!(err.contains("answer over"), "{size}: {err}");
        }
        let ok = "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n2\r\nbc\r\n0\r\n\r\n";
        assert_eq!(read_answer(ok.as_bytes(), &[3, 1, 7]).unwrap().body, b"abc");
    }

    #[tokio::test]
    async fn https_with_rustls() {
        let cert = CertificateDer::from_pem_slice(CERT).unwrap();
        let key = PrivateKeyDer::from_pem_slice(KEY).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handshakes = Arc::new(AtomicUsize::new(0));
        let count = handshakes.clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    continue;
                };
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while let Some(request) = read_request(&mut tls, &mut buf).await {
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}",
                            request.len(),
                            request
                        );
                        tls.write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });

        let uri = format!("https://127.0.0.1:{port}/prod/@connections/abc");
        let client = Http1Client::with_roots(vec![cert]);
        for _ in 0..2 {
            let r = client.send(post(&uri, b"secret")).await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            assert!(body(&r).ends_with("\r\n\r\nsecret"), "{}", body(&r));
        }
        assert_eq!(handshakes.load(Ordering::SeqCst), 1, "the TLS connection is kept alive");

        // Without our certificate among the roots, the server is not trusted.
        let err = Http1Client::new().send(post(&uri, b"x")).await.unwrap_err();
        assert!(format!("{err:?}").to_lowercase().contains("certificate"), "{err:?}");
    }
}
