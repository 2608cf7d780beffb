//! The 410 policy: what a post that answers "gone" does to the recipient.

use std::future::Future;

use crate::store::Connections;

/// Cleans up after a recipient that answered 410 Gone.
pub trait GoneCleanup: Send + Sync {
    /// What the 410 meant: the connection is gone (cleaned up), or it is still connecting (kept).
    fn connection_gone(&self, connection_id: &str) -> impl Future<Output = Gone> + Send;
}

/// What [`GoneCleanup`] made of a 410.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gone {
    /// The connection is gone; its items are removed (or left to its TTL).
    Removed,
    /// The connection is younger than [`ESTABLISHING_MILLIS`]: still connecting, kept.
    Connecting,
}

/// How long after `$connect` stored a connection a 410 for it may mean "not established yet"
/// rather than "gone". API Gateway answers 410 to posts to a connection whose `$connect` has not
/// returned (or whose handshake has not finished), and `$connect` writes the connection's
/// memberships first: a fanout that reads them meanwhile posts too early. Deleting the connection
/// then would leave a client that is about to be connected with no channels, silently. 30 s is
/// API Gateway's integration timeout, the longest `$connect` can take.
pub const ESTABLISHING_MILLIS: i64 = 30_000;

impl<S: Connections> GoneCleanup for S {
    async fn connection_gone(&self, connection_id: &str) -> Gone {
        if let Ok(Some(connection)) = self.connection(connection_id).await {
            let age = crate::clock::now_millis() - connection.connected_at;
            if age < ESTABLISHING_MILLIS {
                tracing::info!(
                    connection = connection_id,
                    age_ms = age,
                    "410 from a connection that may still be connecting; kept (its $disconnect or TTL removes it if gone)"
                );
                return Gone::Connecting;
            }
        }
        match self.disconnect(connection_id).await {
            Ok(c) => tracing::info!(
                connection = connection_id,
                memberships = c.memberships_removed,
                "removed gone connection"
            ),
            Err(e) => {
                tracing::warn!(connection = connection_id, error = %e, "could not remove gone connection; TTL will")
            }
        }
        Gone::Removed
    }
}
