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

mod client;
mod connection;
mod pool;
mod replay;
mod request;
mod response;
#[cfg(test)]
mod tests;

use std::time::Duration;

pub use client::Http1Client;
pub use replay::{read_answer, ParsedAnswer};

tokio::task_local! {
    /// The wall-clock time (since the epoch) by which a request must be on the wire, or it is
    /// not sent at all ([`TooLate`]). A post's token of the shared `@connections` budget belongs
    /// to one second (domain/budget.rs), and the receiving end counts a post in the second it
    /// arrives: a post that took its token and then waited for a new connection (or for the CPU)
    /// past the second's end would be counted in the next one, over that second's cap.
    pub(crate) static SEND_BY: Duration;
}

/// Kept between the check and the server reading the request.
const SEND_MARGIN: Duration = Duration::from_millis(10);

/// A request not sent because its [`SEND_BY`] had passed when it could be written.
#[derive(Debug, thiserror::Error)]
#[error("not sent: it could not be written before the end of its second of the budget")]
pub(crate) struct TooLate;

fn too_late() -> bool {
    SEND_BY
        .try_with(|by| crate::clock::since_epoch() + SEND_MARGIN >= *by)
        .unwrap_or(false)
}
