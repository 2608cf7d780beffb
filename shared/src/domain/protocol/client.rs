//! What a client sends, once parsed (parse.rs reads it from the frame's JSON).

use crate::channel::ChannelId;

use super::{ErrorCode, ProtocolError};

/// Every action a client can send; the SAM template has a route for each.
pub const ACTIONS: &[&str] = &[
    "join",
    "leave",
    "sendMessage",
    "react",
    "typing",
    "read",
    "subscribe",
    "progress",
    "history",
    "ping",
    "auth",
    // The names other backends used: `message` is `sendMessage`; `presence` lists who is there.
    "message",
    "presence",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Join {
        channel: ChannelId,
    },
    Leave {
        channel: ChannelId,
    },
    /// `channel: None` (here and below): the connection's default channel.
    SendMessage {
        channel: Option<ChannelId>,
        body: String,
        client_msg_id: Option<String>,
    },
    React {
        channel: Option<ChannelId>,
        message_id: String,
        emoji: String,
    },
    Typing {
        channel: Option<ChannelId>,
    },
    /// The user has read up to this message: `seq` is its number (clients have it from the
    /// message frame); without it, the store looks the number up among the latest messages.
    Read {
        channel: Option<ChannelId>,
        message_id: String,
        seq: Option<u64>,
    },
    /// Who is present in a channel.
    Presence {
        channel: Option<ChannelId>,
    },
    Subscribe {
        doc_id: String,
    },
    /// Without a cursor: the newest page. `before`: the page before that sequence number.
    /// `after`: recovery, everything after that sequence number, oldest first.
    History {
        channel: ChannelId,
        cursor: HistoryCursor,
        limit: u32,
    },
    Ping,
    /// A fresh token for this connection, before its current one expires: same `sub`; what the
    /// new token no longer allows is left.
    Auth {
        token: String,
    },
    /// Legacy `{"type":"register","sessionID":…}`: joins `session:<sessionID>`.
    Register {
        channel: ChannelId,
    },
}

/// Where a history page starts. Both cursors are channel sequence numbers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryCursor {
    Latest,
    Before(u64),
    After(u64),
}

impl ClientFrame {
    pub fn action(&self) -> &'static str {
        match self {
            ClientFrame::Join { .. } => "join",
            ClientFrame::Leave { .. } => "leave",
            ClientFrame::SendMessage { .. } => "sendMessage",
            ClientFrame::React { .. } => "react",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::History { .. } => "history",
            ClientFrame::Ping => "ping",
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Presence { .. } => "presence",
            ClientFrame::Register { .. } => "register",
        }
    }

    /// The channel a frame without `channel` goes to: the one channel the connection named at
    /// connect or joined (its personal `user:` channel and `subscribe`d documents aside). With
    /// none or several, the frame is refused with the list, never sent to a guess.
    pub fn default_channel(joined: &[String]) -> Result<ChannelId, ProtocolError> {
        match joined {
            [one] => one
                .parse()
                .map_err(|e: crate::channel::ChannelError| ProtocolError::new(ErrorCode::Internal, e.to_string())),
            [] => Err(ProtocolError::new(
                ErrorCode::NoDefaultChannel,
                "this connection has no channel to default to; add \"channel\", or join exactly one \
                 channel (or name it at connect: ?channels=…)",
            )),
            many => {
                let mut names = many.to_vec();
                names.sort();
                Err(ProtocolError::new(
                    ErrorCode::NoDefaultChannel,
                    format!(
                        "this connection is in {} channels ({}); add \"channel\" to say which",
                        names.len(),
                        names.join(", ")
                    ),
                ))
            }
        }
    }
}
