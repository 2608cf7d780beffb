//! A client's text frame to a [`ClientFrame`], or the [`ProtocolError`] that says what to send
//! instead.

use serde_json::{Map, Value};

use crate::channel::{validate_id, ChannelId};

use super::{
    ClientFrame, ErrorCode, HistoryCursor, ProtocolError, ACTIONS, DEFAULT_HISTORY_LIMIT, MAX_BODY_BYTES,
    MAX_CLIENT_MSG_ID_LEN, MAX_EMOJI_BYTES, MAX_FRAME_BYTES, MAX_HISTORY_LIMIT,
};

/// How a frame without `action` may look; said in every error about such a frame.
const ACTIONLESS_FORMS: &str = "{\"body\":…} (a message) or {\"type\":\"reaction\",\"emoji\":…,\"message_id\":…} \
     to the connection's one channel, or {\"type\":\"register\",\"sessionID\":…}";

/// The fields a `history` frame may carry; anything else is refused rather than silently ignored,
/// so a client asking for `since` learns that it is not a thing.
const HISTORY_FIELDS: &[&str] = &["action", "channel", "before", "after", "limit"];

impl ClientFrame {
    /// Parses one text frame. The size check comes first so a huge frame is never parsed.
    pub fn parse(text: &str) -> Result<ClientFrame, ProtocolError> {
        let obj = json_object(text)?;
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
            "read" => fields.read()?,
            "subscribe" | "progress" => fields.subscribe()?,
            "history" => fields.history()?,
            "ping" => ClientFrame::Ping,
            "auth" => fields.auth()?,
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

/// The frame's JSON object, refused unread when the frame is over [`MAX_FRAME_BYTES`].
fn json_object(text: &str) -> Result<Map<String, Value>, ProtocolError> {
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
    Ok(obj)
}

/// A frame's fields, read with the checks and messages every action shares.
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

    fn read(&self) -> Result<ClientFrame, ProtocolError> {
        Ok(ClientFrame::Read {
            channel: self.optional_channel()?,
            message_id: self.message_id("messageId")?,
            seq: match self.seq("seq")? {
                Some(0) => {
                    return Err(ProtocolError::invalid(
                        "seq",
                        "must be the seq of a message (1 or more)",
                    ))
                }
                seq => seq,
            },
        })
    }

    fn subscribe(&self) -> Result<ClientFrame, ProtocolError> {
        let doc_id = self.required_str("docId")?;
        validate_id(doc_id).map_err(|e| ProtocolError::invalid("docId", &e.to_string()))?;
        Ok(ClientFrame::Subscribe {
            doc_id: doc_id.to_owned(),
        })
    }

    fn history(&self) -> Result<ClientFrame, ProtocolError> {
        if let Some(unknown) = self.0.keys().find(|k| !HISTORY_FIELDS.contains(&k.as_str())) {
            return Err(ProtocolError::invalid(
                &unknown.chars().take(64).collect::<String>(),
                "is not a history field; history takes channel, limit, and before or after \
                 (a sequence number: after recovers everything since it, oldest first)",
            ));
        }
        let channel = self.channel()?;
        let cursor = match (self.seq("before")?, self.seq("after")?) {
            (None, None) => HistoryCursor::Latest,
            (Some(before), None) => HistoryCursor::Before(before),
            (None, Some(after)) => HistoryCursor::After(after),
            (Some(_), Some(_)) => return Err(ProtocolError::invalid("after", "cannot be combined with \"before\"")),
        };
        let limit = match self.0.get("limit") {
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
        Ok(ClientFrame::History { channel, cursor, limit })
    }

    fn auth(&self) -> Result<ClientFrame, ProtocolError> {
        let token = self.required_str("token")?.trim();
        if token.is_empty() {
            return Err(ProtocolError::invalid("token", "must not be empty"));
        }
        Ok(ClientFrame::Auth {
            token: token.to_owned(),
        })
    }
}
