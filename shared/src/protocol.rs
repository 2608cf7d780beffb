//! The client protocol: JSON text frames in both directions.
//!
//! Client frames are chosen by `action` (API Gateway's route selection expression is
//! `$request.body.action`); the legacy `{"type":"register","sessionID":…}` frame has no action.
//! Every way a frame can be wrong maps to a stable [`ErrorCode`] and a readable message.

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
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Join {
        channel: ChannelId,
    },
    Leave {
        channel: ChannelId,
    },
    SendMessage {
        channel: ChannelId,
        body: String,
        client_msg_id: Option<String>,
    },
    React {
        channel: ChannelId,
        message_id: String,
        emoji: String,
    },
    Typing {
        channel: ChannelId,
    },
    Read {
        channel: ChannelId,
        message_id: String,
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
            None if obj.get("type").and_then(Value::as_str) == Some("register") => {
                let session = fields.required_str("sessionID")?;
                let channel = ChannelId::new(crate::channel::ChannelKind::Session, session)
                    .map_err(|e| ProtocolError::new(ErrorCode::InvalidChannel, e.to_string()))?;
                return Ok(ClientFrame::Register { channel });
            }
            None => return Err(ProtocolError::new(
                ErrorCode::MissingField,
                "frame needs an \"action\" (join, leave, sendMessage, react, typing, read, subscribe, history, ping)",
            )),
        };
        Ok(match action {
            "join" => ClientFrame::Join {
                channel: fields.channel()?,
            },
            "leave" => ClientFrame::Leave {
                channel: fields.channel()?,
            },
            "sendMessage" => {
                let channel = fields.channel()?;
                let body = fields.required_str("body")?;
                if body.is_empty() {
                    return Err(ProtocolError::invalid("body", "must not be empty"));
                }
                if body.len() > MAX_BODY_BYTES {
                    return Err(ProtocolError::new(
                        ErrorCode::TooLarge,
                        format!("body is {} bytes; the limit is {MAX_BODY_BYTES}", body.len()),
                    ));
                }
                let client_msg_id = fields.optional_str("clientMsgId")?.map(str::to_owned);
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
                ClientFrame::SendMessage {
                    channel,
                    body: body.to_owned(),
                    client_msg_id,
                }
            }
            "react" => {
                let channel = fields.channel()?;
                let message_id = fields.message_id("messageId")?;
                let emoji = fields.required_str("emoji")?;
                if emoji.is_empty() || emoji.len() > MAX_EMOJI_BYTES || emoji.chars().any(char::is_control) {
                    return Err(ProtocolError::invalid("emoji", "must be 1-64 bytes of printable text"));
                }
                ClientFrame::React {
                    channel,
                    message_id,
                    emoji: emoji.to_owned(),
                }
            }
            "typing" => ClientFrame::Typing {
                channel: fields.channel()?,
            },
            "read" => ClientFrame::Read {
                channel: fields.channel()?,
                message_id: fields.message_id("messageId")?,
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
        self.required_str("channel")?
            .parse()
            .map_err(|e: crate::channel::ChannelError| ProtocolError::new(ErrorCode::InvalidChannel, e.to_string()))
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

    /// Message ids are ULIDs; anything else cannot name a message, so it is refused early.
    fn message_id(&self, name: &str) -> Result<String, ProtocolError> {
        let s = self.required_str(name)?;
        ulid::Ulid::from_string(s).map_err(|_| ProtocolError::invalid(name, "must be a message id (a ULID)"))?;
        Ok(s.to_owned())
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
}

impl ErrorCode {
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
    /// The channel's sequence number (messages, reactions, receipts): gapless and in commit
    /// order, so a client that sees n+2 after n knows it missed n+1.
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
    #[serde(rename_all = "camelCase")]
    Subscribed {
        doc_id: String,
        snapshot: Option<Value>,
    },
    History {
        channel: String,
        /// Oldest first, each a `message`, `reaction` or `receipt` frame exactly as pushed (with
        /// `type`, `seq` and `messageId`).
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
    },
    Pong {
        at: i64,
    },
    Message(ChatEvent),
    Reaction(ChatEvent),
    Typing(ChatEvent),
    Receipt(ChatEvent),
    #[serde(rename_all = "camelCase")]
    Presence {
        channel: String,
        user_id: String,
        state: PresenceState,
    },
    Error {
        code: ErrorCode,
        message: String,
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
        let big = format!(
            r#"{{"action":"sendMessage","channel":"doc:1","body":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES + 1)
        );
        assert_eq!(code(&big), ErrorCode::TooLarge);
        let huge = format!(r#"{{"action":"ping","pad":"{}"}}"#, "x".repeat(MAX_FRAME_BYTES));
        assert_eq!(code(&huge), ErrorCode::TooLarge);
    }

    #[test]
    fn server_frames_have_documented_shapes() {
        let f = ServerFrame::Error {
            code: ErrorCode::NotMember,
            message: "m".into(),
        };
        assert_eq!(f.to_json(), r#"{"type":"error","code":"not_member","message":"m"}"#);
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
