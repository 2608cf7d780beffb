//! The `Sec-WebSocket-Protocol` offer (shared/src/domain/subprotocol.rs), which carries the token:
//! no panic; whatever parses is made of HTTP token characters, names `wsfan.v1` whenever it
//! carries a token, and prints back to an offer that parses the same; no error repeats a token.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsfan_shared::subprotocol::{parse, SUBPROTOCOL};

fuzz_target!(|data: &[u8]| {
    let Ok(header) = std::str::from_utf8(data) else {
        return;
    };
    match parse(header) {
        Ok(offer) => {
            if offer.token.is_some() {
                assert_eq!(offer.chosen(), Some(SUBPROTOCOL));
            }
            let mut entries: Vec<String> = offer.protocols.iter().map(|p| p.to_string()).collect();
            if let Some(token) = offer.token {
                assert!(!token.is_empty());
                entries.push(format!("bearer.{token}"));
            }
            for e in &entries {
                assert!(e.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)));
            }
            let printed = entries.join(", ");
            let again = parse(&printed).expect("a printed offer parses");
            assert_eq!(again, offer);
        }
        Err(e) => {
            // The message names the problem, never the offer's content.
            let message = e.to_string();
            if let Some(token) = header.split("bearer.").nth(1).map(|t| t.split(',').next().unwrap_or("")) {
                if token.len() >= 8 {
                    assert!(!message.contains(token.trim()), "{message}");
                }
            }
        }
    }
});
