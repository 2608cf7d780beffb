//! The frames that write to a channel: messages, reactions, read receipts and typing, each
//! acknowledged (but typing) with the stored item's id.

use wsfan_shared::access::Identity;
use wsfan_shared::channel::ChannelId;
use wsfan_shared::clock;
use wsfan_shared::model::{Message, MessageKind};
use wsfan_shared::protocol::{ErrorCode, ProtocolError, ServerFrame};
use wsfan_shared::reactions::Reaction;
use wsfan_shared::reads::ReadCursor;
use wsfan_shared::revocation::TokenVerifier;
use wsfan_shared::store::{IdentityStore, PostOutcome, Store, StoreError, SEQ_LOOKUP_DEPTH};

use crate::refusals::{require_write, store_error};
use crate::Route;

impl<S: Store + IdentityStore, V: TokenVerifier> Route<'_, S, V> {
    pub(crate) async fn send_message(
        &self,
        identity: &Identity,
        channel: Option<ChannelId>,
        body: String,
        client_msg_id: Option<String>,
    ) -> Result<ServerFrame, ProtocolError> {
        let mut message = self.draft(identity, MessageKind::Message, channel).await?;
        message.body = Some(body);
        message.client_msg_id = client_msg_id;
        self.post("sendMessage", message).await
    }

    pub(crate) async fn react(
        &self,
        identity: &Identity,
        channel: Option<ChannelId>,
        message_id: String,
        emoji: String,
    ) -> Result<ServerFrame, ProtocolError> {
        // Not a message of its own: the reacted message's summary changes.
        let shape = self.draft(identity, MessageKind::Reaction, channel).await?;
        let reaction = Reaction {
            channel: shape.channel,
            target_id: message_id,
            message_id: shape.message_id,
            sender_id: shape.sender_id,
            emoji,
            sent_at: shape.sent_at,
            expires_at: shape.expires_at,
        };
        let stored = self.store.react(&reaction, &self.request.connection_id).await;
        acked("react", &reaction.channel, stored, None)
    }

    /// `read`: the user has read up to `message_id`.
    pub(crate) async fn mark_read(
        &self,
        identity: &Identity,
        channel: Option<ChannelId>,
        message_id: String,
        seq: Option<u64>,
    ) -> Result<ServerFrame, ProtocolError> {
        // Not a message of its own: the user's read cursor moves forward.
        let shape = self.draft(identity, MessageKind::Receipt, channel).await?;
        let channel = shape.channel;
        let seq = match seq {
            Some(seq) => seq,
            None => self
                .store
                .seq_of(&channel, &message_id)
                .await
                .map_err(|e| store_error(&channel, e))?
                .ok_or_else(|| {
                    ProtocolError::new(
                        ErrorCode::InvalidField,
                        format!(
                            "messageId is not among the last {SEQ_LOOKUP_DEPTH} messages of {channel}; \
                             send the message's \"seq\" with it"
                        ),
                    )
                })?,
        };
        let cursor = ReadCursor {
            channel,
            user_id: shape.sender_id,
            seq,
            target_id: message_id,
            message_id: shape.message_id,
            sent_at: shape.sent_at,
            expires_at: clock::now_secs() + self.retention.message_secs,
        };
        let stored = self.store.read(&cursor, &self.request.connection_id).await;
        acked("read", &cursor.channel, stored, None)
    }

    pub(crate) async fn typing(&self, identity: &Identity, channel: Option<ChannelId>) -> Result<(), ProtocolError> {
        // Typing is fire-and-forget: no ack, to keep the chatter down.
        let message = self.draft(identity, MessageKind::Typing, channel).await?;
        self.post("typing", message).await?;
        Ok(())
    }

    /// The item a frame writes, in the channel it named or else the connection's default one,
    /// once the token allows writing there.
    async fn draft(
        &self,
        identity: &Identity,
        kind: MessageKind,
        channel: Option<ChannelId>,
    ) -> Result<Message, ProtocolError> {
        let channel = self.channel_or_default(channel).await?;
        self.message(identity, kind, &channel)
    }

    fn message(&self, identity: &Identity, kind: MessageKind, channel: &ChannelId) -> Result<Message, ProtocolError> {
        require_write(identity, channel)?;
        let now = clock::now_millis();
        let ttl = if kind.is_history() {
            self.retention.message_secs
        } else {
            self.retention.event_secs
        };
        Ok(Message {
            kind,
            channel: channel.clone(),
            message_id: ulid::Ulid::generate().to_string(),
            seq: None,
            sender_id: identity.sender_id().to_owned(),
            body: None,
            client_msg_id: None,
            target_id: None,
            emoji: None,
            sent_at: now,
            expires_at: now / 1000 + ttl,
        })
    }

    async fn post(&self, action: &str, message: Message) -> Result<ServerFrame, ProtocolError> {
        let stored = self.store.post(&message, Some(&self.request.connection_id)).await;
        acked(action, &message.channel, stored, message.client_msg_id)
    }
}

/// The `ack` of an item the store wrote (or already had), or the refusal its error comes to.
fn acked(
    action: &str,
    channel: &ChannelId,
    stored: Result<PostOutcome, StoreError>,
    client_msg_id: Option<String>,
) -> Result<ServerFrame, ProtocolError> {
    let outcome = stored.map_err(|e| store_error(channel, e))?;
    Ok(ack(action, channel, outcome, client_msg_id))
}

fn ack(action: &str, channel: &ChannelId, outcome: PostOutcome, client_msg_id: Option<String>) -> ServerFrame {
    ServerFrame::Ack {
        action: action.to_owned(),
        channel: channel.to_string(),
        message_id: outcome.message_id,
        client_msg_id,
        seq: outcome.seq,
        duplicate: outcome.duplicate,
    }
}
