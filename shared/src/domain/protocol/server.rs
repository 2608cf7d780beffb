//! What the server sends: answers to a client's frames and the frames the fanout pushes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ErrorCode, ProtocolError};

/// One entry of a history page, and the payload of a pushed chat event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatEvent {
    pub channel: String,
    pub message_id: String,
    /// The channel's sequence number (messages): gapless and in commit order, so a client that
    /// sees n+2 after n knows it missed n+1. Reactions and read receipts are not in the sequence
    /// (only those stored before they left it carry one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    pub sender_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The message a reaction or read receipt points at.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// A message's reactions (in `history`), or the reacted message's (a pushed `reaction`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reactions: Option<crate::reactions::Summary>,
    /// A receipt: the `seq` of the message the sender has now read up to (its read cursor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<u64>,
    pub sent_at: i64,
}

/// Frames the server sends. Route responses answer the caller; the fanout pushes the rest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerFrame {
    Joined {
        channel: String,
        /// The channel's last sequence number when the join committed (0: nothing posted yet).
        /// Everything after it is pushed; a client that saw less asks `history` with `after`.
        head: u64,
        /// Who is in the channel now (users with a connection in it, the caller included), so
        /// a newcomer starts from a full list; presence frames keep it current. At most
        /// MAX_PRESENT_USERS.
        present: Vec<String>,
        /// Each user's read cursor in the channel: the `seq` they have read up to (at most
        /// MAX_LISTED_READS users); `receipt` frames keep it current.
        #[serde(default)]
        reads: crate::reads::Reads,
    },
    #[serde(rename_all = "camelCase")]
    Left {
        channel: String,
        was_member: bool,
    },
    #[serde(rename_all = "camelCase")]
    Ack {
        action: String,
        channel: String,
        message_id: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        client_msg_id: Option<String>,
        /// The message's sequence number in its channel (absent for typing).
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        duplicate: bool,
    },
    /// The answer to `presence`: who is in the channel now, as in `joined`.
    Present {
        channel: String,
        present: Vec<String>,
    },
    #[serde(rename_all = "camelCase")]
    Subscribed {
        doc_id: String,
        snapshot: Option<Value>,
    },
    History {
        channel: String,
        /// Oldest first, each a `message` frame as pushed (with `type`, `seq` and `messageId`) and
        /// its reactions; a `reaction` or `receipt` stored in the sequence before they left it too.
        messages: Vec<ServerFrame>,
        /// Pass as `before` to get the page before this one; absent on the oldest page.
        #[serde(skip_serializing_if = "Option::is_none")]
        before: Option<u64>,
        /// Recovery only: pass as `after` for the next page; absent when this page reaches the
        /// newest message.
        #[serde(skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
        /// Recovery only: false when messages after the requested point are gone (past the
        /// retention) or the point is unknown (past the channel's head). The client cannot
        /// recover exactly and should reload from the latest page.
        #[serde(skip_serializing_if = "Option::is_none")]
        complete: Option<bool>,
        /// Recovery only: each user's read cursor now, as in `joined`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reads: Option<crate::reads::Reads>,
    },
    Pong {
        at: i64,
    },
    /// The answer to `auth`: the connection's identity from now on, and the channels it left
    /// because the new token no longer allows them (their members see a presence leave).
    #[serde(rename_all = "camelCase")]
    Authed {
        #[serde(skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
        role: String,
        /// The channel patterns the new token allows.
        channels: Vec<String>,
        /// The new token's `exp` (epoch seconds): refresh before it, or the connection is closed.
        exp: i64,
        left: Vec<String>,
    },
    Message(ChatEvent),
    Reaction(ChatEvent),
    Typing(ChatEvent),
    Receipt(ChatEvent),
    /// Several users' read cursors moved at once: each entry is what a `receipt` frame carries
    /// (without `type`), at most one per user, in the order they moved. The fanout pushes one of
    /// these per channel and stream batch instead of a `receipt` per user, so a thousand members
    /// reading the same message cost each member a few frames, not a thousand.
    Receipts {
        channel: String,
        receipts: Vec<ChatEvent>,
    },
    #[serde(rename_all = "camelCase")]
    Presence {
        channel: String,
        user_id: String,
        state: PresenceState,
    },
    #[serde(rename_all = "camelCase")]
    Error {
        code: ErrorCode,
        message: String,
        /// `rate_limited` only: a frame sent this many milliseconds from now is admitted.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceState {
    Join,
    Leave,
}

impl ServerFrame {
    pub fn error(e: &ProtocolError) -> Self {
        ServerFrame::Error {
            code: e.code,
            message: e.message.clone(),
            retry_after_ms: None,
        }
    }

    /// The answer to a frame over the connection's limit.
    pub fn rate_limited(retry_after_ms: u64, per_second: u32, burst: u32) -> Self {
        ServerFrame::Error {
            code: ErrorCode::RateLimited,
            message: format!(
                "this connection sent more than {per_second} frames a second (bursts of {burst}); \
                 the frame was not processed: send it again in {retry_after_ms} ms"
            ),
            retry_after_ms: Some(retry_after_ms),
        }
    }

    /// Pushed before the expiry sweep closes a connection whose token expired without `auth`.
    pub fn token_expired(exp: i64) -> Self {
        ServerFrame::Error {
            code: ErrorCode::TokenExpired,
            message: format!(
                "the connection's token expired at {exp} (epoch seconds) without a refresh; the connection \
                 is closed now: fetch a new token and reconnect (send {{\"action\":\"auth\",\"token\":…}} \
                 before exp to stay connected)"
            ),
            retry_after_ms: None,
        }
    }

    /// The error this frame carries, for a route that answers with it.
    pub fn into_error(self) -> ProtocolError {
        match self {
            ServerFrame::Error { code, message, .. } => ProtocolError { code, message },
            other => ProtocolError::new(ErrorCode::Internal, format!("not an error frame: {}", other.to_json())),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialise")
    }
}
