//! The frames about channels: join, leave, subscribe, presence and history, and the membership
//! and reads they share.

use wsfan_shared::access::Identity;
use wsfan_shared::channel::ChannelId;
use wsfan_shared::clock;
use wsfan_shared::model::Membership;
use wsfan_shared::protocol::{ClientFrame, ErrorCode, HistoryCursor, ProtocolError, ServerFrame, MAX_PRESENT_USERS};
use wsfan_shared::reads::{Reads, MAX_LISTED_READS};
use wsfan_shared::revocation::TokenVerifier;
use wsfan_shared::store::{IdentityStore, Store};

use crate::refusals::{not_connected, require_read, store_error};
use crate::Route;

impl<S: Store + IdentityStore, V: TokenVerifier> Route<'_, S, V> {
    /// `join` (and the legacy `register`): the membership, then who is there, the channel's head
    /// and its read cursors.
    pub(crate) async fn joined(&self, identity: &Identity, channel: ChannelId) -> Result<ServerFrame, ProtocolError> {
        self.join(identity, &channel).await?;
        let present = self
            .store
            .present(&channel, MAX_PRESENT_USERS)
            .await
            .map_err(|e| store_error(&channel, e))?;
        // Read after the membership committed: everything after it is pushed to us.
        let head = self.store.head(&channel).await.map_err(|e| store_error(&channel, e))?;
        let reads = self.reads(&channel).await?;
        Ok(ServerFrame::Joined {
            channel: channel.to_string(),
            head,
            present,
            reads,
        })
    }

    pub(crate) async fn leave(&self, identity: &Identity, channel: ChannelId) -> Result<ServerFrame, ProtocolError> {
        let was_member = self
            .store
            .leave(&channel, &self.request.connection_id, identity.user_id.as_deref())
            .await
            .map_err(|e| store_error(&channel, e))?;
        Ok(ServerFrame::Left {
            channel: channel.to_string(),
            was_member,
        })
    }

    /// `subscribe`: a membership of the document's channel, and its progress snapshot.
    pub(crate) async fn subscribe(&self, identity: &Identity, doc_id: String) -> Result<ServerFrame, ProtocolError> {
        let channel =
            ChannelId::doc(&doc_id).map_err(|e| ProtocolError::new(ErrorCode::InvalidField, e.to_string()))?;
        self.join(identity, &channel).await?;
        let snapshot = self
            .store
            .progress(&doc_id)
            .await
            .map_err(|e| store_error(&channel, e))?;
        Ok(ServerFrame::Subscribed { doc_id, snapshot })
    }

    pub(crate) async fn history(
        &self,
        identity: &Identity,
        channel: ChannelId,
        cursor: HistoryCursor,
        limit: u32,
    ) -> Result<ServerFrame, ProtocolError> {
        require_read(identity, &channel)?;
        let page = self
            .store
            .history(&channel, cursor, limit)
            .await
            .map_err(|e| store_error(&channel, e))?;
        // Recovery brings the read cursors up to date too.
        let reads = match cursor {
            HistoryCursor::After(_) => Some(self.reads(&channel).await?),
            _ => None,
        };
        Ok(ServerFrame::History {
            channel: channel.to_string(),
            messages: page.frames(),
            before: page.before,
            after: page.after,
            complete: page.complete,
            reads,
        })
    }

    pub(crate) async fn presence(
        &self,
        identity: &Identity,
        channel: Option<ChannelId>,
    ) -> Result<ServerFrame, ProtocolError> {
        let channel = self.channel_or_default(channel).await?;
        require_read(identity, &channel)?;
        let present = self
            .store
            .present(&channel, MAX_PRESENT_USERS)
            .await
            .map_err(|e| store_error(&channel, e))?;
        Ok(ServerFrame::Present {
            channel: channel.to_string(),
            present,
        })
    }

    /// The users' read cursors in a channel, as `joined` and recovery carry them.
    async fn reads(&self, channel: &ChannelId) -> Result<Reads, ProtocolError> {
        self.store
            .reads(channel, MAX_LISTED_READS)
            .await
            .map_err(|e| store_error(channel, e))
    }

    /// The channel a frame named, or else the connection's default channel (one read).
    pub(crate) async fn channel_or_default(&self, named: Option<ChannelId>) -> Result<ChannelId, ProtocolError> {
        if let Some(channel) = named {
            return Ok(channel);
        }
        let connection = self
            .store
            .connection(&self.request.connection_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "reading the connection item");
                ProtocolError::new(ErrorCode::Internal, "the connection could not be read; try again")
            })?
            .ok_or_else(not_connected)?;
        ClientFrame::default_channel(&connection.joined)
    }

    async fn join(&self, identity: &Identity, channel: &ChannelId) -> Result<(), ProtocolError> {
        require_read(identity, channel)?;
        let connected_secs = if self.request.connected_at > 0 {
            self.request.connected_at / 1000
        } else {
            clock::now_secs()
        };
        let membership = Membership {
            channel: channel.clone(),
            connection_id: self.request.connection_id.clone(),
            user_id: identity.user_id.clone(),
            role: identity.role,
            joined_at: clock::now_millis(),
            // A membership lives as long as its connection can.
            expires_at: connected_secs + self.retention.connection_secs,
            history: None,
            batch: self.request.batch,
        };
        self.store.join(&membership).await.map_err(|e| store_error(channel, e))
    }
}
