//! Read receipts as one cursor per user and channel, instead of one history item per receipt.
//!
//! A user's cursor (`READ#<userId>` in the channel's partition) holds the `seq` of the latest
//! message they have read. A receipt moves it forward only (`seq < :new` is the write's
//! condition), so a thousand receipts of one user are one item, a late or repeated receipt changes
//! nothing, and receipts never touch the channel's head. `joined` and recovery carry every
//! user's cursor; the stream pushes each move as a `receipt` frame. Pure: the store and the
//! fanout use it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::channel::ChannelId;
use crate::protocol::ChatEvent;

/// How many users' cursors `joined` and recovery carry: like `present`, enough for a room and
/// small enough for a frame.
pub const MAX_LISTED_READS: usize = 200;

/// Each user's read cursor: user id to the `seq` read up to.
pub type Reads = BTreeMap<String, u64>;

/// A user's read cursor, as stored (and as the stream's images carry it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReadCursor {
    pub channel: ChannelId,
    pub user_id: String,
    /// The `seq` of the message read up to.
    pub seq: u64,
    /// That message's id.
    pub target_id: String,
    /// The receipt that moved the cursor here (a ULID): what clients dedupe the pushed frame on.
    pub message_id: String,
    pub sent_at: i64,
    pub expires_at: i64,
}

impl ReadCursor {
    /// The `receipt` frame pushed when the cursor moved. It has no `seq` (receipts are not in the
    /// channel's sequence); `readSeq` is the cursor.
    pub fn to_event(&self) -> ChatEvent {
        ChatEvent {
            channel: self.channel.to_string(),
            message_id: self.message_id.clone(),
            seq: None,
            sender_id: self.user_id.clone(),
            body: None,
            client_msg_id: None,
            target_id: Some(self.target_id.clone()),
            emoji: None,
            reactions: None,
            read_seq: Some(self.seq),
            sent_at: self.sent_at,
        }
    }
}
