//! The parser without a network, for the fuzzers: an answer replayed from memory.

use std::io;

use tokio::io::{AsyncRead, AsyncWrite};

use super::connection::{exchange, Connection, Failure};

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
