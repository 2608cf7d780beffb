//! One connection, and one request and its answer on it.

use std::io;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_types::body::SdkBody;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::response::{parse_head, read_body, Framing, MAX_RESPONSE_BYTES};

/// Plain TCP or TLS over it.
pub(super) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Stream for T {}

pub(super) struct Connection {
    pub(super) io: Box<dyn Stream>,
    /// Bytes read and not yet parsed; kept for the next answer's allocation.
    pub(super) buf: Vec<u8>,
}

pub(super) enum Failure {
    /// The connection failed or closed before any byte of an answer arrived.
    Closed(io::Error),
    Io(io::Error),
    Protocol(String),
}

/// Writes `request`, reads one answer; `bool`: whether the connection can carry another.
pub(super) async fn exchange(c: &mut Connection, request: &[u8]) -> Result<(HttpResponse, bool), Failure> {
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
pub(super) async fn fill(c: &mut Connection) -> Result<usize, Failure> {
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
