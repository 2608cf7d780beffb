//! The HTTP/1.1 answer parser of the @connections client (shared/src/transport/http1.rs): any bytes, read in
//! any pieces, are an answer or an error, never a panic or a body over the limit; and a well-formed
//! answer (content-length, chunked or until close) reads back as it was written, however split.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use wsfan_shared::http1::read_answer;

const MAX_BODY: usize = 1 << 20;

#[derive(Arbitrary, Debug)]
enum Framing {
    Length,
    Chunked(Vec<u16>),
    UntilClose,
}

#[derive(Arbitrary, Debug)]
struct Answer {
    status: u16,
    headers: Vec<(u8, String)>,
    body: Vec<u8>,
    framing: Framing,
}

fn write(answer: &Answer) -> Option<(u16, Vec<u8>)> {
    // 204 and 304 carry no body, whatever their headers say.
    let status = match 200 + answer.status % 400 {
        204 | 304 => 200,
        s => s,
    };
    let mut out = format!("HTTP/1.1 {status} X\r\n").into_bytes();
    for (i, (name, value)) in answer.headers.iter().take(8).enumerate() {
        let ok = value.bytes().all(|b| b == b' ' || b.is_ascii_graphic());
        if ok {
            out.extend_from_slice(format!("x-h{i}-{name}: {}\r\n", value.trim()).as_bytes());
        }
    }
    match &answer.framing {
        Framing::Length => {
            out.extend_from_slice(format!("content-length: {}\r\n\r\n", answer.body.len()).as_bytes());
            out.extend_from_slice(&answer.body);
        }
        Framing::Chunked(sizes) => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            let mut rest = &answer.body[..];
            let mut sizes = sizes.iter().map(|s| usize::from(*s).max(1));
            while !rest.is_empty() {
                let n = sizes.next().unwrap_or(rest.len()).min(rest.len());
                out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
                out.extend_from_slice(&rest[..n]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[n..];
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Framing::UntilClose => {
            out.extend_from_slice(b"connection: close\r\n\r\n");
            out.extend_from_slice(&answer.body);
        }
    }
    Some((status, out))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let (control, rest) = data.split_at(2);
    let reads: Vec<usize> = rest
        .iter()
        .take(usize::from(control[1] % 16))
        .map(|b| usize::from(*b))
        .collect();
    if control[0] & 1 == 0 {
        // Raw bytes, as a broken or hostile server might send them.
        if let Ok(answer) = read_answer(rest, &reads) {
            assert!(answer.body.len() <= MAX_BODY);
            assert!((100..1000).contains(&answer.status));
        }
    } else {
        let Ok(answer) = Answer::arbitrary(&mut Unstructured::new(rest)) else {
            return;
        };
        let Some((status, bytes)) = write(&answer) else {
            return;
        };
        let parsed =
            read_answer(&bytes, &reads).unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&bytes)));
        assert_eq!(parsed.status, status);
        assert_eq!(parsed.body, answer.body);
        assert_eq!(parsed.reusable, !matches!(answer.framing, Framing::UntilClose));
    }
});
