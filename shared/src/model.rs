//! The items of wsfan's single table, and the key layout that ties them together.
//!
//! | item       | pk                | sk                        |
//! |------------|-------------------|---------------------------|
//! | connection | `CONN#<id>`       | `META`                    |
//! | membership | `CHAN#<channel>`  | `CONN#<id>`               |
//! | presence   | `CHAN#<channel>`  | `USER#<userId>`           |
//! | head       | `CHAN#<channel>`  | `HEAD` (`seq`: the channel's last sequence number) |
//! | message    | `CHAN#<channel>`  | `MSG#<seq, 20 digits>` (message, reaction, read receipt: kept, recovered) |
//! | event      | `CHAN#<channel>`  | `EVT#<ulid>` (typing: short-lived, never recovered) |
//! | dedupe     | `CHAN#<channel>`  | `DEDUPE#<sender>#<clientMsgId>` |
//! | progress   | `DOC#<docId>`     | `PROGRESS`                |

use serde::{Deserialize, Serialize};

use crate::access::Role;
use crate::channel::ChannelId;
use crate::protocol::{ChatEvent, ServerFrame};

pub const PK: &str = "pk";
pub const SK: &str = "sk";
pub const TTL_ATTRIBUTE: &str = "expiresAt";

pub mod keys {
    use crate::channel::ChannelId;

    pub const META: &str = "META";
    pub const PROGRESS: &str = "PROGRESS";
    /// The per-channel item holding the last sequence number handed out.
    pub const HEAD: &str = "HEAD";
    pub const CONN_PREFIX: &str = "CONN#";
    pub const CHAN_PREFIX: &str = "CHAN#";
    pub const MSG_PREFIX: &str = "MSG#";
    pub const EVT_PREFIX: &str = "EVT#";
    pub const USER_PREFIX: &str = "USER#";
    pub const DEDUPE_PREFIX: &str = "DEDUPE#";
    pub const DOC_PREFIX: &str = "DOC#";

    pub fn connection(connection_id: &str) -> String {
        format!("{CONN_PREFIX}{connection_id}")
    }
    pub fn channel(channel: &ChannelId) -> String {
        format!("{CHAN_PREFIX}{channel}")
    }
    /// Zero-padded so that the sort key orders by sequence number.
    pub fn message(seq: u64) -> String {
        format!("{MSG_PREFIX}{seq:020}")
    }
    /// The sequence number back from a message sort key.
    pub fn message_seq(sk: &str) -> Option<u64> {
        sk.strip_prefix(MSG_PREFIX)?.parse().ok()
    }
    pub fn event(event_id: &str) -> String {
        format!("{EVT_PREFIX}{event_id}")
    }
    pub fn presence(user_id: &str) -> String {
        format!("{USER_PREFIX}{user_id}")
    }
    pub fn dedupe(sender_id: &str, client_msg_id: &str) -> String {
        format!("{DEDUPE_PREFIX}{sender_id}#{client_msg_id}")
    }
    pub fn doc(doc_id: &str) -> String {
        format!("{DOC_PREFIX}{doc_id}")
    }
}

/// One open WebSocket connection, written on `$connect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub connection_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub role: Role,
    /// The channel patterns the token allows, kept for audits and the admin view.
    #[serde(default)]
    pub channels: Vec<String>,
    pub connected_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<String>,
    /// Where this connection's @connections endpoint lives (custom domains differ from the API's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    pub expires_at: i64,
}

/// A connection's membership of a channel. `connectionId` + `channel` key the `byConnection` GSI.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Membership {
    pub channel: ChannelId,
    pub connection_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    pub role: Role,
    pub joined_at: i64,
    pub expires_at: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    Message,
    Reaction,
    Typing,
    Receipt,
}

impl MessageKind {
    /// Messages, reactions and read receipts are history: numbered in the channel's sequence,
    /// kept for the message retention and recovered after a reconnect. Typing is a short-lived
    /// signal that nobody needs to see late.
    pub fn is_history(self) -> bool {
        matches!(
            self,
            MessageKind::Message | MessageKind::Reaction | MessageKind::Receipt
        )
    }
}

/// Anything posted to a channel: a chat message, a reaction, a typing notice or a read receipt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    pub kind: MessageKind,
    pub channel: ChannelId,
    /// A ULID minted by the writer: unique, the id clients deduplicate on. Not the order: two
    /// writers can commit in the opposite order to their ids.
    pub message_id: String,
    /// The position in the channel's gapless sequence (history kinds only), given by the store
    /// when it commits the message; commit order is sequence order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub sender_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    pub sent_at: i64,
    pub expires_at: i64,
}

impl Message {
    /// History items are keyed by their sequence number, which the store sets before writing.
    pub fn sort_key(&self) -> String {
        match self.seq {
            Some(seq) if self.kind.is_history() => keys::message(seq),
            _ => keys::event(&self.message_id),
        }
    }

    pub fn to_event(&self) -> ChatEvent {
        ChatEvent {
            channel: self.channel.to_string(),
            message_id: self.message_id.clone(),
            seq: self.seq,
            sender_id: self.sender_id.clone(),
            body: self.body.clone(),
            client_msg_id: self.client_msg_id.clone(),
            target_id: self.target_id.clone(),
            emoji: self.emoji.clone(),
            sent_at: self.sent_at,
        }
    }

    /// The frame pushed to every member of the channel.
    pub fn to_frame(&self) -> ServerFrame {
        let event = self.to_event();
        match self.kind {
            MessageKind::Message => ServerFrame::Message(event),
            MessageKind::Reaction => ServerFrame::Reaction(event),
            MessageKind::Typing => ServerFrame::Typing(event),
            MessageKind::Receipt => ServerFrame::Receipt(event),
        }
    }
}

impl Connection {
    pub fn key(&self) -> (String, String) {
        (keys::connection(&self.connection_id), keys::META.to_owned())
    }
}

impl Membership {
    pub fn key(&self) -> (String, String) {
        (keys::channel(&self.channel), keys::connection(&self.connection_id))
    }
}

impl Message {
    pub fn key(&self) -> (String, String) {
        (keys::channel(&self.channel), self.sort_key())
    }
}
