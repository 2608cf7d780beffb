use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_types::body::SdkBody;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::PrivateKeyDer;

use super::request::Target;
use super::{read_answer, Http1Client, TooLate, SEND_BY};

const CERT: &[u8] = include_bytes!("../../../tests/certs/localhost.pem");
const KEY: &[u8] = include_bytes!("../../../tests/certs/localhost.key");

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
    let server = scripted(|_| b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".to_vec()).await;
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
        let answer = format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\na\r\n{size}\r\nb\r\n0\r\n\r\n");
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
