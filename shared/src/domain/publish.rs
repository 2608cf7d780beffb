//! The publish queue's message: a backend's chat message for any channel, which the `publish`
//! function numbers into the channel's sequence (so it is in `history` and recovery).
//!
//! `{"channel": "user:alice", "body": "…", "senderId": "billing", "clientMsgId": "invoice-42"}`;
//! `senderId` defaults to `system`. The same `senderId` and `clientMsgId` again is stored once.

use serde::{Deserialize, Serialize};

use crate::channel::{validate_id, ChannelId};
use crate::protocol::MAX_BODY_BYTES;

const MAX_CLIENT_MSG_ID_LEN: usize = 128;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublishRequest {
    pub channel: String,
    pub body: String,
    #[serde(default = "system")]
    pub sender_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

fn system() -> String {
    "system".to_owned()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid publish request: {0}")]
pub struct InvalidPublish(pub String);

/// A request that passed [`PublishRequest::parse`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Publish {
    pub channel: ChannelId,
    pub body: String,
    pub sender_id: String,
    pub client_msg_id: Option<String>,
}

impl PublishRequest {
    /// Parses and validates one queue message body.
    pub fn parse(body: &str) -> Result<Publish, InvalidPublish> {
        let request: PublishRequest = serde_json::from_str(body).map_err(|e| InvalidPublish(e.to_string()))?;
        request.validate()
    }

    pub fn validate(self) -> Result<Publish, InvalidPublish> {
        let channel: ChannelId = self
            .channel
            .parse()
            .map_err(|e| InvalidPublish(format!("channel: {e}")))?;
        if self.body.is_empty() {
            return Err(InvalidPublish("body must not be empty".into()));
        }
        if self.body.len() > MAX_BODY_BYTES {
            return Err(InvalidPublish(format!(
                "body is {} bytes; the limit is {MAX_BODY_BYTES}",
                self.body.len()
            )));
        }
        // The sender is part of the deduplication key (`DEDUPE#<sender>#<clientMsgId>`).
        validate_id(&self.sender_id).map_err(|e| InvalidPublish(format!("senderId: {e}")))?;
        if let Some(id) = &self.client_msg_id {
            let ok = !id.is_empty()
                && id.len() <= MAX_CLIENT_MSG_ID_LEN
                && id.bytes().all(|b| b.is_ascii_graphic() && b != b'#');
            if !ok {
                return Err(InvalidPublish(
                    "clientMsgId must be 1-128 printable ASCII characters without '#'".into(),
                ));
            }
        }
        Ok(Publish {
            channel,
            body: self.body,
            sender_id: self.sender_id,
            client_msg_id: self.client_msg_id,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_with_defaults_parses() {
        let p = PublishRequest::parse(r#"{"channel":"user:alice","body":"hi"}"#).unwrap();
        assert_eq!(p.channel.to_string(), "user:alice");
        assert_eq!((p.sender_id.as_str(), p.client_msg_id), ("system", None));
    }

    #[test]
    fn bad_requests_say_why() {
        for (body, why) in [
            (r#"{"channel":"nope","body":"hi"}"#, "channel"),
            (r#"{"channel":"user:a","body":""}"#, "empty"),
            (r#"{"channel":"user:a","body":"x","senderId":"a#b"}"#, "senderId"),
            (r#"{"channel":"user:a","body":"x","clientMsgId":"a#b"}"#, "clientMsgId"),
            (r#"{"channel":"user:a","body":"x","extra":1}"#, "unknown field"),
            (r#"{"channel":"user:a"}"#, "body"),
        ] {
            let e = PublishRequest::parse(body).unwrap_err();
            assert!(e.0.contains(why), "{body}: {e}");
        }
        let big = format!(r#"{{"channel":"user:a","body":"{}"}}"#, "x".repeat(MAX_BODY_BYTES + 1));
        assert!(PublishRequest::parse(&big).unwrap_err().0.contains("limit"));
    }
}
