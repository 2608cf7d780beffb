//! The items of wsfan's single table, and the key layout that ties them together.
//!
//! | item       | pk                | sk                        |
//! |------------|-------------------|---------------------------|
//! | connection | `CONN#<id>`       | `META`                    |
//! | membership | `CHAN#<channel>`  | `CONN#<id>`               |
//! | presence   | `CHAN#<channel>`  | `USER#<userId>`           |
//! | head       | `CHAN#<channel>`  | `HEAD` (`seq`: the channel's last sequence number) |
//! | message    | `CHAN#<channel>`  | `MSG#<seq, 20 digits>` (a message: kept, recovered; reactions and receipts stored before they left the sequence too) |
//! | reactions  | `CHAN#<channel>`  | `REACT#<messageId>` (one message's reaction summary: `domain/reactions.rs`) |
//! | read cursor | `CHAN#<channel>` | `READ#<userId>` (how far a user has read: `domain/reads.rs`) |
//! | event      | `CHAN#<channel>`  | `EVT#<ulid>` (typing: short-lived, never recovered) |
//! | dedupe     | `CHAN#<channel>`  | `DEDUPE#<sender>#<clientMsgId>` |
//! | progress   | `DOC#<docId>`     | `PROGRESS`                |
//! | expiry     | `EXP#<minute>`    | `CONN#<id>` (`tokenExp`: a connection whose token expires in that minute) |
//! | sweep      | `SWEEP`           | `CURSOR` (`minute`: the first minute the next sweep reads) |

use serde::{Deserialize, Serialize};

use crate::access::Role;
use crate::channel::ChannelId;
use crate::protocol::{ChatEvent, ServerFrame};

pub(crate) const PK: &str = "pk";
pub(crate) const SK: &str = "sk";
pub(crate) const TTL_ATTRIBUTE: &str = "expiresAt";

pub mod keys {
    use crate::channel::ChannelId;

    pub const META: &str = "META";
    pub const PROGRESS: &str = "PROGRESS";
    /// The per-channel item holding the last sequence number handed out.
    pub const HEAD: &str = "HEAD";
    pub const CONN_PREFIX: &str = "CONN#";
    /// Sorts right after every `CONN#` key ('$' follows '#'): the end of a channel's member list.
    pub(crate) const CONN_END: &str = "CONN$";
    pub const CHAN_PREFIX: &str = "CHAN#";
    pub const MSG_PREFIX: &str = "MSG#";
    pub const EVT_PREFIX: &str = "EVT#";
    pub const USER_PREFIX: &str = "USER#";
    pub(crate) const DEDUPE_PREFIX: &str = "DEDUPE#";
    pub(crate) const DOC_PREFIX: &str = "DOC#";
    /// A message's reaction summary (`domain/reactions.rs`), keyed by the message's id.
    pub const REACT_PREFIX: &str = "REACT#";
    /// A user's read cursor in a channel (`domain/reads.rs`).
    pub const READ_PREFIX: &str = "READ#";

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
    pub(crate) fn message_seq(sk: &str) -> Option<u64> {
        sk.strip_prefix(MSG_PREFIX)?.parse().ok()
    }
    pub(crate) fn read_cursor(user_id: &str) -> String {
        format!("{READ_PREFIX}{user_id}")
    }
    pub fn reactions(message_id: &str) -> String {
        format!("{REACT_PREFIX}{message_id}")
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

    pub(crate) const EXP_PREFIX: &str = "EXP#";
    /// The minute of an epoch second: what expiry buckets are keyed by.
    pub fn minute(epoch_secs: i64) -> i64 {
        epoch_secs.div_euclid(60)
    }
    /// The bucket of the connections whose tokens expire in `minute` (see [`minute`]).
    pub fn expiry(minute: i64) -> String {
        format!("{EXP_PREFIX}{minute}")
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
    /// The channels this connection named at connect or joined since, its personal `user:`
    /// channel and subscribed documents aside: with exactly one, frames may leave out `channel`.
    /// A string set in the table (`ADD` on join, `DELETE` on leave).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub joined: Vec<String>,
    /// Messages of history each channel named at connect asked for (`?history=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<u32>,
    /// The connection takes several frames in one post (`?batch=1`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
    /// When its token expires (epoch seconds), moved by each `auth`; the expiry sweep closes the
    /// connection after it. `None`: an anonymous listener.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exp: Option<i64>,
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
    /// Asks the stream fanout to push this many messages of the channel's history to this
    /// connection (only) once the membership is written; set by `?history=` at connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<u32>,
    /// The connection takes several frames in one post: the fanout reads it with the member.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub batch: bool,
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
            reactions: None,
            read_seq: None,
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

/// Why a message item written to the table cannot be pushed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unusable message item: {0}")]
pub struct UnusableItem(pub String);

impl Message {
    /// Reads a message item as the stream delivers it, including one a backend wrote by hand
    /// (the contract is in README's "Publishing from a backend"). What the keys say is filled in:
    /// `channel` from `pk`, `messageId` from `sk`, `kind` "message" under `MSG#`, `sentAt` from
    /// the id's ULID time; where an item states them too, they must agree with the keys.
    pub fn from_stream_item(mut item: serde_dynamo::Item) -> Result<Message, UnusableItem> {
        use serde_dynamo::AttributeValue as A;
        let bad = |why: String| UnusableItem(why);
        let key = |item: &serde_dynamo::Item, name: &str| match item.get(name) {
            Some(A::S(s)) => Ok(s.clone()),
            _ => Err(bad(format!("{name} is missing or not a string"))),
        };
        let pk = key(&item, "pk")?;
        let sk = key(&item, "sk")?;
        let channel: ChannelId = pk
            .strip_prefix(keys::CHAN_PREFIX)
            .ok_or_else(|| bad(format!("pk {pk:?} is not CHAN#<channel>")))?
            .parse()
            .map_err(|e| bad(format!("pk: {e}")))?;
        // Store::post keys history by the channel's sequence number (the id is an attribute);
        // a backend's own items are keyed by their ULID and stay outside the sequence.
        let seq = keys::message_seq(&sk).filter(|_| sk.len() == keys::message(0).len());
        let given_id = match item.get("messageId") {
            Some(A::S(s)) => Some(s.clone()),
            _ => None,
        };
        let (id, history) = match (
            seq,
            sk.strip_prefix(keys::MSG_PREFIX),
            sk.strip_prefix(keys::EVT_PREFIX),
        ) {
            (Some(_), ..) => (
                given_id.ok_or_else(|| bad(format!("{sk:?} is numbered but has no messageId")))?,
                true,
            ),
            (None, Some(id), _) => (id.to_owned(), true),
            (None, _, Some(id)) => (id.to_owned(), false),
            _ => return Err(bad(format!("sk {sk:?} is neither MSG#<ulid> nor EVT#<ulid>"))),
        };
        let id = id.as_str();
        let ulid = ulid::Ulid::from_string(id).map_err(|_| bad(format!("the id of {sk:?} is not a ULID")))?;
        let mut derive = |name: &str, value: A| match item.get(name) {
            None => {
                item.insert(name.to_owned(), value);
                Ok(())
            }
            Some(given) if *given == value => Ok(()),
            Some(given) => Err(bad(format!("{name} is {given:?}, but the keys say {value:?}"))),
        };
        derive("channel", A::S(channel.to_string()))?;
        derive("messageId", A::S(id.to_owned()))?;
        if let Some(seq) = seq {
            derive("seq", A::N(seq.to_string()))?;
        }
        item.entry("sentAt".to_owned())
            .or_insert_with(|| A::N(ulid.timestamp_ms().to_string()));
        // Not needed to push; the table's TTL is the writer's business.
        item.entry("expiresAt".to_owned())
            .or_insert_with(|| A::N("0".to_owned()));
        if history {
            item.entry("kind".to_owned())
                .or_insert_with(|| A::S("message".to_owned()));
        }
        let message: Message = serde_dynamo::from_item(item).map_err(|e| bad(e.to_string()))?;
        // Receipts are history when stored through the sequence; a backend may still write one as
        // a short-lived event.
        let fits = if history {
            message.kind.is_history()
        } else {
            matches!(message.kind, MessageKind::Typing | MessageKind::Receipt)
        };
        if !fits {
            return Err(bad(format!("kind {:?} does not belong under {sk:?}", message.kind)));
        }
        let missing = match message.kind {
            MessageKind::Message if message.body.is_none() => Some("body"),
            MessageKind::Reaction if message.emoji.is_none() => Some("emoji"),
            MessageKind::Reaction | MessageKind::Receipt if message.target_id.is_none() => Some("targetId"),
            _ => None,
        };
        match missing {
            Some(field) => Err(bad(format!("a {:?} needs {field}", message.kind))),
            None => Ok(message),
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

#[cfg(test)]
mod key_limits {
    use proptest::prelude::*;

    use super::keys;
    use crate::access::validate_user_id;
    use crate::channel::{ChannelId, ChannelKind};
    use crate::protocol::{ClientFrame, MAX_CLIENT_MSG_ID_LEN};

    /// DynamoDB's limits on a partition key and a sort key value.
    const MAX_PARTITION_KEY_BYTES: usize = 2048;
    const MAX_SORT_KEY_BYTES: usize = 1024;

    proptest! {
        /// Whatever `sub` the authorizer admits names its user channel, and every key built from
        /// it (with any `clientMsgId` a frame may carry) fits DynamoDB's key limits.
        #[test]
        fn keys_of_every_admitted_sub_fit(
            sub in "[A-Za-z0-9_.@-]{1,128}|\\PC{0,200}",
            client_msg_id in "[!-\"$-~]{1,128}",
            kind in 0..ChannelKind::ALL.len(),
        ) {
            if validate_user_id(&sub).is_err() {
                prop_assert!(ChannelId::user(&sub).is_err(), "a refused sub {sub:?} names no channel");
                return Ok(());
            }
            let user_channel = ChannelId::user(&sub).expect("an admitted sub names its channel");
            let frame = serde_json::json!({
                "action": "sendMessage", "channel": "workspace:1", "body": "x", "clientMsgId": client_msg_id,
            });
            prop_assert!(ClientFrame::parse(&frame.to_string()).is_ok(), "{client_msg_id:?} is a valid clientMsgId");
            prop_assert!(client_msg_id.len() <= MAX_CLIENT_MSG_ID_LEN);
            let any_channel = ChannelId::new(ChannelKind::ALL[kind], &sub).unwrap();
            prop_assert!(keys::channel(&user_channel).len() <= MAX_PARTITION_KEY_BYTES);
            prop_assert!(keys::channel(&any_channel).len() <= MAX_PARTITION_KEY_BYTES);
            prop_assert!(keys::presence(&sub).len() <= MAX_SORT_KEY_BYTES);
            prop_assert!(keys::dedupe(&sub, &client_msg_id).len() <= MAX_SORT_KEY_BYTES);
            // The `byConnection` index's sort key is the channel.
            prop_assert!(any_channel.to_string().len() <= MAX_SORT_KEY_BYTES);
        }
    }
}
