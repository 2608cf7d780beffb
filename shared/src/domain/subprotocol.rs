//! The `Sec-WebSocket-Protocol` offer of a client: `wsfan.v1, bearer.<token>`.
//!
//! A token in the URL ends up wherever URLs are recorded (proxy and load balancer logs, browser
//! history and tooling, crash reports). Browsers cannot set an `Authorization` header on a
//! WebSocket, but they can offer subprotocols, and a JWT (base64url parts joined by dots) is made
//! of characters a subprotocol may contain. AppSync Events carries its authorization the same way
//! (`header-<base64url>`). The server answers with [`SUBPROTOCOL`] only, never the bearer entry,
//! so the token is not echoed into response logs.

/// The protocol version the server chooses; a browser fails the handshake unless the server
/// answers with one of the protocols it offered.
pub const SUBPROTOCOL: &str = "wsfan.v1";
/// The prefix of the entry that carries the token.
pub(crate) const BEARER_PREFIX: &str = "bearer.";
/// Far above any JWT an identity provider issues, and under API Gateway's 10 KB of headers.
pub(crate) const MAX_HEADER_BYTES: usize = 10 * 1024;

/// What a client offered.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Offer<'a> {
    /// Every entry but the bearer one, in the client's order.
    pub protocols: Vec<&'a str>,
    /// The token of the `bearer.` entry.
    pub token: Option<&'a str>,
}

/// Why an offer is refused. The messages never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("Sec-WebSocket-Protocol is {0} bytes; the limit is {MAX_HEADER_BYTES}")]
    TooLong(usize),
    #[error("Sec-WebSocket-Protocol has an empty entry")]
    EmptyEntry,
    #[error("Sec-WebSocket-Protocol entry {0} has characters a subprotocol may not contain (RFC 6455: an HTTP token)")]
    BadCharacters(usize),
    #[error("Sec-WebSocket-Protocol has more than one bearer entry")]
    TwoTokens,
    #[error("Sec-WebSocket-Protocol has a bearer entry with no token")]
    EmptyToken,
    #[error("Sec-WebSocket-Protocol carries a token but does not offer {SUBPROTOCOL}; offer \"{SUBPROTOCOL}, bearer.<token>\"")]
    NoVersion,
}

/// RFC 7230 `tchar`: what an HTTP token, and so a subprotocol name, may contain.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses the header's value (several header lines joined with commas, as HTTP allows).
pub fn parse(header: &str) -> Result<Offer<'_>, OfferError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(OfferError::TooLong(header.len()));
    }
    let mut offer = Offer::default();
    for (i, entry) in header.split(',').map(|e| e.trim_matches([' ', '\t'])).enumerate() {
        if entry.is_empty() {
            return Err(OfferError::EmptyEntry);
        }
        if !entry.bytes().all(is_tchar) {
            return Err(OfferError::BadCharacters(i + 1));
        }
        match entry.strip_prefix(BEARER_PREFIX) {
            Some("") => return Err(OfferError::EmptyToken),
            Some(_) if offer.token.is_some() => return Err(OfferError::TwoTokens),
            Some(token) => offer.token = Some(token),
            None => offer.protocols.push(entry),
        }
    }
    if offer.token.is_some() && offer.chosen().is_none() {
        return Err(OfferError::NoVersion);
    }
    Ok(offer)
}

impl Offer<'_> {
    /// The protocol the server answers with, when the client offered ours.
    pub fn chosen(&self) -> Option<&'static str> {
        self.protocols.contains(&SUBPROTOCOL).then_some(SUBPROTOCOL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJlLV8";

    #[test]
    fn reads_the_version_and_the_token() {
        let header = format!("wsfan.v1, bearer.{JWT}");
        let offer = parse(&header).unwrap();
        assert_eq!(offer.token, Some(JWT));
        assert_eq!(offer.chosen(), Some(SUBPROTOCOL));
        let header = format!("graphql-ws,bearer.{JWT},\twsfan.v1");
        let offer = parse(&header).unwrap();
        assert_eq!(offer.protocols, vec!["graphql-ws", "wsfan.v1"]);
        assert_eq!(offer.token, Some(JWT));
    }

    #[test]
    fn without_a_token_only_the_version_is_chosen() {
        assert_eq!(parse("wsfan.v1").unwrap().token, None);
        assert_eq!(parse("wsfan.v1").unwrap().chosen(), Some(SUBPROTOCOL));
        assert_eq!(parse("chat").unwrap().chosen(), None);
    }

    #[test]
    fn refuses_malformed_offers_without_echoing_the_token() {
        assert_eq!(parse(&format!("bearer.{JWT}")), Err(OfferError::NoVersion));
        assert_eq!(parse("wsfan.v1, bearer."), Err(OfferError::EmptyToken));
        assert_eq!(parse("wsfan.v1, bearer.a, bearer.b"), Err(OfferError::TwoTokens));
        assert_eq!(parse("wsfan.v1,,x"), Err(OfferError::EmptyEntry));
        assert_eq!(parse(""), Err(OfferError::EmptyEntry));
        // Padding and spaces inside an entry are not token characters.
        let err = parse("wsfan.v1, bearer.secret=").unwrap_err();
        assert_eq!(err, OfferError::BadCharacters(2));
        assert!(!err.to_string().contains("secret"));
        let long = format!("wsfan.v1, bearer.{}", "a".repeat(MAX_HEADER_BYTES));
        assert!(matches!(parse(&long), Err(OfferError::TooLong(_))));
    }
}
