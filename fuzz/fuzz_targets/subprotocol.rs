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
                assert!(e
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)));
            }
            let printed = entries.join(", ");
            let again = parse(&printed).expect("a printed offer parses");
            assert_eq!(again, offer);
        }
        Err(e) => {
            // The message names the problem, never the offer's content. A "token" the fuzzer
            // copied from the parser's own words may appear in it; so a message that contains the
            // token must still contain it when the token's letters and digits are changed, since
            // then the parser wrote it, not the input. (Trimmed first: a run of blanks is no token,
            // and every message contains the empty string.)
            let message = e.to_string();
            if let Some(token) = header
                .split("bearer.")
                .nth(1)
                .map(|t| t.split(',').next().unwrap_or("").trim())
            {
                if token.len() >= 8 && message.contains(token) {
                    let other: String = token.chars().map(another_of_its_kind).collect();
                    if let Err(again) = parse(&header.replacen(token, &other, 1)) {
                        assert!(again.to_string().contains(token), "{message}");
                    }
                }
            }
        }
    }
});

/// The next letter or digit of the same kind (z to a), so an entry stays as valid as it was.
fn another_of_its_kind(c: char) -> char {
    match c {
        'z' => 'a',
        'Z' => 'A',
        '9' => '0',
        'a'..='y' | 'A'..='Y' | '0'..='8' => (c as u8 + 1) as char,
        other => other,
    }
}
