//! The client protocol: JSON text frames in both directions.
//!
//! Client frames are chosen by `action` (API Gateway's route selection expression is
//! `$request.body.action`). Frames without an action reach the `$default` route; three shapes of
//! them are understood, because clients written for the backends wsfan replaces send them:
//! `{"type":"register","sessionID":…}`, `{"body":…}` (a message) and
//! `{"type":"reaction","emoji":…,"message_id":…}`. A frame that names no channel goes to the
//! connection's default channel (see [`ClientFrame::default_channel`]). Every way a frame can be
//! wrong maps to a stable [`ErrorCode`] and a readable message that says what to send instead;
//! nothing is guessed. `docs/asyncapi.yaml` is the contract for all of it.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::channel::{validate_id, ChannelId};

/// API Gateway's limit for one WebSocket message (frames are 32 KB, a message up to 128 KB).
pub const MAX_FRAME_BYTES: usize = 128 * 1024;
/// Room left for the envelope (ids, timestamps) when a message body is fanned out again.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
pub const MAX_EMOJI_BYTES: usize = 64;
pub const MAX_CLIENT_MSG_ID_LEN: usize = 128;
pub const DEFAULT_HISTORY_LIMIT: u32 = 50;
/// How many present users a `joined` answer lists.
pub const MAX_PRESENT_USERS: usize = 200;
pub const MAX_HISTORY_LIMIT: u32 = 100;

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

/// How a frame without `action` may look; said in every error about such a frame.
const ACTIONLESS_FORMS: &str = "{\"body\":…} (a message) or {\"type\":\"reaction\",\"emoji\":…,\"message_id\":…} \
     to the connection's one channel, or {\"type\":\"register\",\"sessionID\":…}";

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

/// The fields a `history` frame may carry; anything else is refused rather than silently ignored,
/// so a client asking for `since` learns that it is not a thing.
const HISTORY_FIELDS: &[&str] = &["action", "channel", "before", "after", "limit"];

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

    /// Parses one text frame. The size check comes first so a huge frame is never parsed.
    pub fn parse(text: &str) -> Result<ClientFrame, ProtocolError> {
        if text.len() > MAX_FRAME_BYTES {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!("frame is {} bytes; the limit is {MAX_FRAME_BYTES}", text.len()),
            ));
        }
        let value: Value = serde_json::from_str(text)
            .map_err(|e| ProtocolError::new(ErrorCode::BadJson, format!("frame is not valid JSON: {e}")))?;
        let Value::Object(obj) = value else {
            return Err(ProtocolError::new(ErrorCode::BadJson, "frame must be a JSON object"));
        };
        let fields = Fields(&obj);
        let action = match obj.get("action") {
            Some(Value::String(a)) => a.as_str(),
            Some(_) => return Err(ProtocolError::invalid("action", "must be a string")),
            None => return Self::parse_without_action(&obj),
        };
        Ok(match action {
            "join" => ClientFrame::Join {
                channel: fields.channel()?,
            },
            "leave" => ClientFrame::Leave {
                channel: fields.channel()?,
            },
            "sendMessage" | "message" => fields.send_message()?,
            "react" => fields.react("messageId")?,
            "typing" => ClientFrame::Typing {
                channel: fields.optional_channel()?,
            },
            "presence" => ClientFrame::Presence {
                channel: fields.optional_channel()?,
            },
            "read" => ClientFrame::Read {
                channel: fields.optional_channel()?,
                message_id: fields.message_id("messageId")?,
                seq: match fields.seq("seq")? {
                    Some(0) => {
                        return Err(ProtocolError::invalid(
                            "seq",
                            "must be the seq of a message (1 or more)",
                        ))
                    }
                    seq => seq,
                },
            },
            "subscribe" | "progress" => {
                let doc_id = fields.required_str("docId")?;
                validate_id(doc_id).map_err(|e| ProtocolError::invalid("docId", &e.to_string()))?;
                ClientFrame::Subscribe {
                    doc_id: doc_id.to_owned(),
                }
            }
            "history" => {
                if let Some(unknown) = obj.keys().find(|k| !HISTORY_FIELDS.contains(&k.as_str())) {
                    return Err(ProtocolError::invalid(
                        &unknown.chars().take(64).collect::<String>(),
                        "is not a history field; history takes channel, limit, and before or after \
                         (a sequence number: after recovers everything since it, oldest first)",
                    ));
                }
                let channel = fields.channel()?;
                let cursor = match (fields.seq("before")?, fields.seq("after")?) {
                    (None, None) => HistoryCursor::Latest,
                    (Some(before), None) => HistoryCursor::Before(before),
                    (None, Some(after)) => HistoryCursor::After(after),
                    (Some(_), Some(_)) => {
                        return Err(ProtocolError::invalid("after", "cannot be combined with \"before\""))
                    }
                };
                let limit = match obj.get("limit") {
                    None | Some(Value::Null) => DEFAULT_HISTORY_LIMIT,
                    Some(v) => match v.as_u64() {
                        Some(n) if (1..=MAX_HISTORY_LIMIT as u64).contains(&n) => n as u32,
                        _ => {
                            return Err(ProtocolError::invalid(
                                "limit",
                                &format!("must be a whole number from 1 to {MAX_HISTORY_LIMIT}"),
                            ))
                        }
                    },
                };
                ClientFrame::History { channel, cursor, limit }
            }
            "ping" => ClientFrame::Ping,
            "auth" => {
                let token = fields.required_str("token")?.trim();
                if token.is_empty() {
                    return Err(ProtocolError::invalid("token", "must not be empty"));
                }
                ClientFrame::Auth {
                    token: token.to_owned(),
                }
            }
            other => {
                return Err(ProtocolError::new(
                    ErrorCode::UnknownAction,
                    format!(
                        "unknown action {:?}; expected one of {}",
                        other.chars().take(64).collect::<String>(),
                        ACTIONS.join(", ")
                    ),
                ))
            }
        })
    }
}

impl ClientFrame {
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

    /// A frame with no `action`: one of the shapes in [`ACTIONLESS_FORMS`], or a clear refusal.
    fn parse_without_action(obj: &Map<String, Value>) -> Result<ClientFrame, ProtocolError> {
        let fields = Fields(obj);
        let kind = fields.optional_str("type")?;
        let has_body = obj.contains_key("body");
        match kind {
            Some("register") => {
                let session = fields.required_str("sessionID")?;
                let channel = ChannelId::new(crate::channel::ChannelKind::Session, session)
                    .map_err(|e| ProtocolError::new(ErrorCode::InvalidChannel, e.to_string()))?;
                Ok(ClientFrame::Register { channel })
            }
            Some("reaction") if has_body => Err(ProtocolError::new(
                ErrorCode::Ambiguous,
                "a frame with both \"type\":\"reaction\" and \"body\" could be a reaction or a message; \
                 send {\"action\":\"react\",…} or {\"action\":\"sendMessage\",…}",
            )),
            Some("reaction") => {
                let name = match (obj.contains_key("message_id"), obj.contains_key("messageId")) {
                    (true, true) => {
                        return Err(ProtocolError::new(
                            ErrorCode::Ambiguous,
                            "the frame has both \"message_id\" and \"messageId\"; send one",
                        ))
                    }
                    (false, true) => "messageId",
                    _ => "message_id",
                };
                fields.react(name)
            }
            Some("message") => fields.send_message(),
            None if has_body => fields.send_message(),
            None => Err(ProtocolError::new(
                ErrorCode::MissingField,
                format!(
                    "frame needs an \"action\" ({}), or must be {ACTIONLESS_FORMS}",
                    ACTIONS.join(", ")
                ),
            )),
            Some(other) => Err(ProtocolError::new(
                ErrorCode::UnknownAction,
                format!(
                    "a frame without \"action\" cannot have type {:?}; send {ACTIONLESS_FORMS}, \
                     or a frame with an \"action\" ({})",
                    other.chars().take(64).collect::<String>(),
                    ACTIONS.join(", ")
                ),
            )),
        }
    }
}

struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    fn optional_str(&self, name: &str) -> Result<Option<&'a str>, ProtocolError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ProtocolError::invalid(name, "must be a string")),
        }
    }

    fn required_str(&self, name: &str) -> Result<&'a str, ProtocolError> {
        self.optional_str(name)?
            .ok_or_else(|| ProtocolError::new(ErrorCode::MissingField, format!("missing field \"{name}\"")))
    }

    fn channel(&self) -> Result<ChannelId, ProtocolError> {
        self.optional_channel()?
            .ok_or_else(|| ProtocolError::new(ErrorCode::MissingField, "missing field \"channel\""))
    }

    /// A sequence number cursor: a whole number, 0 meaning "before anything".
    fn seq(&self, name: &str) -> Result<Option<u64>, ProtocolError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                ProtocolError::invalid(
                    name,
                    "must be a sequence number (the \"seq\" of a message, or a cursor from a history answer)",
                )
            }),
        }
    }

    fn optional_channel(&self) -> Result<Option<ChannelId>, ProtocolError> {
        self.optional_str("channel")?
            .map(|c| {
                c.parse().map_err(|e: crate::channel::ChannelError| {
                    ProtocolError::new(ErrorCode::InvalidChannel, e.to_string())
                })
            })
            .transpose()
    }

    /// Message ids are ULIDs; anything else cannot name a message, so it is refused early. A
    /// number is what other backends used: say so, and what to send instead.
    fn message_id(&self, name: &str) -> Result<String, ProtocolError> {
        if let Some(Value::Number(n)) = self.0.get(name) {
            return Err(ProtocolError::invalid(
                name,
                &format!(
                    "is the number {n}, which cannot be a wsfan message id; send the \"messageId\" string \
                     (a ULID such as \"01JD0000000000000000000000\") of the message frame or ack"
                ),
            ));
        }
        let s = self.required_str(name)?;
        ulid::Ulid::from_string(s).map_err(|_| ProtocolError::invalid(name, "must be a message id (a ULID)"))?;
        Ok(s.to_owned())
    }

    fn send_message(&self) -> Result<ClientFrame, ProtocolError> {
        let channel = self.optional_channel()?;
        let body = self.required_str("body")?;
        if body.is_empty() {
            return Err(ProtocolError::invalid("body", "must not be empty"));
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!("body is {} bytes; the limit is {MAX_BODY_BYTES}", body.len()),
            ));
        }
        let client_msg_id = self.optional_str("clientMsgId")?.map(str::to_owned);
        if let Some(id) = &client_msg_id {
            let ok = !id.is_empty()
                && id.len() <= MAX_CLIENT_MSG_ID_LEN
                && id.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
            if !ok {
                return Err(ProtocolError::invalid(
                    "clientMsgId",
                    "must be 1-128 printable ASCII characters without '#'",
                ));
            }
        }
        Ok(ClientFrame::SendMessage {
            channel,
            body: body.to_owned(),
            client_msg_id,
        })
    }

    fn react(&self, message_id_field: &str) -> Result<ClientFrame, ProtocolError> {
        let channel = self.optional_channel()?;
        let message_id = self.message_id(message_id_field)?;
        let emoji = self.required_str("emoji")?;
        if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES || emoji.chars().any(char::is_control) {
            return Err(ProtocolError::invalid("emoji", "must be 1-64 bytes of printable text"));
        }
        Ok(ClientFrame::React {
            channel,
            message_id,
            emoji: emoji.to_owned(),
        })
    }
}

/// Stable error codes clients can switch on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    UnknownAction,
    MissingField,
    InvalidField,
    InvalidChannel,
    TooLarge,
    Forbidden,
    ReadOnly,
    NotMember,
    NotConnected,
    Unauthorized,
    Internal,
    /// The frame fits more than one form; the message says which to send.
    Ambiguous,
    /// The frame names no channel and the connection has not exactly one to default to.
    NoDefaultChannel,
    /// The connection is over its limit of frames per second; `retryAfterMs` says when to resend.
    RateLimited,
    /// The connection's token expired without a refresh (`auth`): the server closes the
    /// connection next; fetch a new token and reconnect.
    TokenExpired,
}

impl ErrorCode {
    /// Every code; `docs/asyncapi.yaml` documents each (checked in tests).
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownAction,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::InvalidChannel,
        ErrorCode::TooLarge,
        ErrorCode::Forbidden,
        ErrorCode::ReadOnly,
        ErrorCode::NotMember,
        ErrorCode::NotConnected,
        ErrorCode::Unauthorized,
        ErrorCode::Internal,
        ErrorCode::Ambiguous,
        ErrorCode::NoDefaultChannel,
        ErrorCode::RateLimited,
        ErrorCode::TokenExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownAction => "unknown_action",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidChannel => "invalid_channel",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::ReadOnly => "read_only",
            ErrorCode::NotMember => "not_member",
            ErrorCode::NotConnected => "not_connected",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
            ErrorCode::Ambiguous => "ambiguous",
            ErrorCode::NoDefaultChannel => "no_default_channel",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::TokenExpired => "token_expired",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }

    fn invalid(field: &str, why: &str) -> Self {
        ProtocolError::new(ErrorCode::InvalidField, format!("field \"{field}\" {why}"))
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        ClientFrame::parse(text).unwrap_err().code
    }

    #[test]
    fn parses_each_action() {
        let ulid = "01JD0000000000000000000000";
        let cases = [
            (r#"{"action":"join","channel":"workspace:1"}"#, "join"),
            (r#"{"action":"leave","channel":"workspace:1"}"#, "leave"),
            (
                r#"{"action":"sendMessage","channel":"workspace:1","body":"hi","clientMsgId":"c1"}"#,
                "sendMessage",
            ),
            (
                &format!(r#"{{"action":"react","channel":"workspace:1","messageId":"{ulid}","emoji":"👍"}}"#),
                "react",
            ),
            (r#"{"action":"typing","channel":"workspace:1"}"#, "typing"),
            (
                &format!(r#"{{"action":"read","channel":"workspace:1","messageId":"{ulid}"}}"#),
                "read",
            ),
            (r#"{"action":"subscribe","docId":"d1"}"#, "subscribe"),
            (r#"{"action":"progress","docId":"d1"}"#, "subscribe"),
            (r#"{"action":"history","channel":"workspace:1","limit":10}"#, "history"),
            (r#"{"action":"ping"}"#, "ping"),
            (r#"{"action":"auth","token":"a.b.c"}"#, "auth"),
            (r#"{"type":"register","sessionID":"s-1"}"#, "register"),
        ];
        for (text, action) in cases {
            assert_eq!(ClientFrame::parse(text).unwrap().action(), action, "{text}");
        }
        assert_eq!(
            ClientFrame::parse(r#"{"type":"register","sessionID":"s-1"}"#).unwrap(),
            ClientFrame::Register {
                channel: "session:s-1".parse().unwrap()
            }
        );
    }

    #[test]
    fn bad_input_gets_stable_codes() {
        assert_eq!(code("{"), ErrorCode::BadJson);
        assert_eq!(code("[1]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"action":"dance"}"#), ErrorCode::UnknownAction);
        assert_eq!(code(r#"{"hello":1}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"action":"join"}"#), ErrorCode::MissingField);
        assert_eq!(
            code(r#"{"action":"join","channel":"team:1"}"#),
            ErrorCode::InvalidChannel
        );
        assert_eq!(code(r#"{"action":"join","channel":7}"#), ErrorCode::InvalidField);
        assert_eq!(
            code(r#"{"action":"sendMessage","channel":"doc:1","body":""}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"action":"react","channel":"doc:1","messageId":"x","emoji":"a"}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"action":"history","channel":"doc:1","limit":0}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"action":"history","channel":"doc:1","limit":101}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(code(r#"{"action":"subscribe","docId":"a b"}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"action":"auth"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"action":"auth","token":" "}"#), ErrorCode::InvalidField);
        assert_eq!(code(r#"{"action":"auth","token":7}"#), ErrorCode::InvalidField);
        let big = format!(
            r#"{{"action":"sendMessage","channel":"doc:1","body":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES + 1)
        );
        assert_eq!(code(&big), ErrorCode::TooLarge);
        let huge = format!(r#"{{"action":"ping","pad":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES));
        assert_eq!(code(&huge), ErrorCode::TooLarge);
    }

    #[test]
    fn the_old_clients_frames_parse_without_action_or_channel() {
        let ulid = "01JD0000000000000000000000";
        assert_eq!(
            ClientFrame::parse(r#"{"body":"Hello!"}"#).unwrap(),
            ClientFrame::SendMessage {
                channel: None,
                body: "Hello!".into(),
                client_msg_id: None
            }
        );
        assert_eq!(
            ClientFrame::parse(&format!(r#"{{"type":"reaction","emoji":"❤️","message_id":"{ulid}"}}"#)).unwrap(),
            ClientFrame::React {
                channel: None,
                message_id: ulid.into(),
                emoji: "❤️".into()
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"action":"message","body":"hi"}"#)
                .unwrap()
                .action(),
            "sendMessage"
        );
        assert_eq!(
            ClientFrame::parse(r#"{"action":"typing"}"#).unwrap(),
            ClientFrame::Typing { channel: None }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"action":"presence"}"#).unwrap(),
            ClientFrame::Presence { channel: None }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"action":"presence","channel":"workspace:W"}"#).unwrap(),
            ClientFrame::Presence {
                channel: Some("workspace:W".parse().unwrap())
            }
        );
        // join and history still need their channel.
        assert_eq!(code(r#"{"action":"join"}"#), ErrorCode::MissingField);
        assert_eq!(code(r#"{"action":"history"}"#), ErrorCode::MissingField);
    }

    #[test]
    fn frames_that_could_mean_two_things_or_name_no_message_are_refused_with_advice() {
        let e = ClientFrame::parse(r#"{"type":"reaction","emoji":"❤️","message_id":123}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidField);
        assert!(
            e.message.contains("123") && e.message.contains("messageId"),
            "{}",
            e.message
        );
        let e =
            ClientFrame::parse(r#"{"action":"react","channel":"booking:1","messageId":7,"emoji":"x"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidField);
        let e = ClientFrame::parse(
            r#"{"type":"reaction","emoji":"x","body":"hi","message_id":"01JD0000000000000000000000"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Ambiguous);
        assert!(e.message.contains("\"action\":\"react\""), "{}", e.message);
        let e = ClientFrame::parse(
            r#"{"type":"reaction","emoji":"x","message_id":"01JD0000000000000000000000","messageId":"01JD0000000000000000000000"}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Ambiguous);
        let e = ClientFrame::parse(r#"{"type":"poke"}"#).unwrap_err();
        assert_eq!(e.code, ErrorCode::UnknownAction);
        assert!(e.message.contains("{\"body\":…}"), "{}", e.message);
        assert_eq!(code(r#"{"type":"message"}"#), ErrorCode::MissingField);
    }

    #[test]
    fn a_read_receipt_may_carry_the_seq_it_reads_up_to() {
        let ulid = "01JD0000000000000000000000";
        let read = |extra: &str| {
            ClientFrame::parse(&format!(
                r#"{{"action":"read","channel":"workspace:1","messageId":"{ulid}"{extra}}}"#
            ))
        };
        let seq_of = |frame: ClientFrame| match frame {
            ClientFrame::Read { seq, .. } => seq,
            other => panic!("not a read: {other:?}"),
        };
        assert_eq!(seq_of(read(r#","seq":12"#).unwrap()), Some(12));
        assert_eq!(seq_of(read("").unwrap()), None);
        assert_eq!(read(r#","seq":0"#).unwrap_err().code, ErrorCode::InvalidField);
        assert_eq!(read(r#","seq":"12""#).unwrap_err().code, ErrorCode::InvalidField);
    }

    #[test]
    fn the_default_channel_is_the_only_one_or_none() {
        assert_eq!(
            ClientFrame::default_channel(&["booking:1".into()]).unwrap().to_string(),
            "booking:1"
        );
        let none = ClientFrame::default_channel(&[]).unwrap_err();
        assert_eq!(none.code, ErrorCode::NoDefaultChannel);
        let two = ClientFrame::default_channel(&["booking:1".into(), "workspace:W".into()]).unwrap_err();
        assert_eq!(two.code, ErrorCode::NoDefaultChannel);
        assert!(two.message.contains("booking:1, workspace:W"), "{}", two.message);
    }

    #[test]
    fn server_frames_have_documented_shapes() {
        let f = ServerFrame::Error {
            code: ErrorCode::NotMember,
            message: "m".into(),
            retry_after_ms: None,
        };
        assert_eq!(f.to_json(), r#"{"type":"error","code":"not_member","message":"m"}"#);
        let f = ServerFrame::rate_limited(40, 25, 50);
        let v: Value = serde_json::from_str(&f.to_json()).unwrap();
        assert_eq!(
            (v["code"].as_str(), v["retryAfterMs"].as_u64()),
            (Some("rate_limited"), Some(40))
        );
        let f = ServerFrame::Presence {
            channel: "workspace:1".into(),
            user_id: "u".into(),
            state: PresenceState::Join,
        };
        assert_eq!(
            f.to_json(),
            r#"{"type":"presence","channel":"workspace:1","userId":"u","state":"join"}"#
        );
    }
}
