//! An answer's head and body as they arrive: status, keep-alive, framing, chunks.

use super::connection::{fill, Connection, Failure};

/// Answers larger than this are refused; @connections answers with a few hundred bytes.
pub(super) const MAX_RESPONSE_BYTES: usize = 1 << 20;
const MAX_HEADERS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

pub(super) type Head = (u16, usize, bool, Framing, Vec<(String, String)>);

/// The status line and headers, once complete: status, their length, keep-alive, body framing.
pub(super) fn parse_head(buf: &[u8]) -> Result<Option<Head>, Failure> {
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
pub(super) async fn read_body(c: &mut Connection, framing: Framing) -> Result<(Vec<u8>, bool), Failure> {
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
