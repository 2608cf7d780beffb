//! Client frames (shared/src/domain/protocol.rs): any text gets a frame or a stable error, never a panic;
//! a parsed frame written back as JSON parses to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::{json, Value};
use wsfan_shared::protocol::{ClientFrame, HistoryCursor, ServerFrame, ACTIONS};

/// The frame as a client would send it.
fn encode(frame: &ClientFrame) -> Value {
    match frame {
        ClientFrame::Join { channel } => json!({"action": "join", "channel": channel}),
        ClientFrame::Leave { channel } => json!({"action": "leave", "channel": channel}),
        ClientFrame::SendMessage {
            channel,
            body,
            client_msg_id,
        } => json!({"action": "sendMessage", "channel": channel, "body": body, "clientMsgId": client_msg_id}),
        ClientFrame::React {
            channel,
            message_id,
            emoji,
        } => json!({"action": "react", "channel": channel, "messageId": message_id, "emoji": emoji}),
        ClientFrame::Typing { channel } => json!({"action": "typing", "channel": channel}),
        ClientFrame::Read {
            channel,
            message_id,
            seq,
        } => json!({"action": "read", "channel": channel, "messageId": message_id, "seq": seq}),
        ClientFrame::Subscribe { doc_id } => json!({"action": "subscribe", "docId": doc_id}),
        ClientFrame::Presence { channel } => json!({"action": "presence", "channel": channel}),
        ClientFrame::History { channel, cursor, limit } => {
            let (before, after) = match cursor {
                HistoryCursor::Latest => (None, None),
                HistoryCursor::Before(seq) => (Some(*seq), None),
                HistoryCursor::After(seq) => (None, Some(*seq)),
            };
            json!({"action": "history", "channel": channel, "before": before, "after": after, "limit": limit})
        }
        ClientFrame::Ping => json!({"action": "ping"}),
        ClientFrame::Auth { token } => json!({"action": "auth", "token": token}),
        ClientFrame::Register { channel } => json!({"type": "register", "sessionID": channel.id()}),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match ClientFrame::parse(text) {
        Ok(frame) => {
            assert!(frame.action() == "register" || ACTIONS.contains(&frame.action()));
            let again = ClientFrame::parse(&encode(&frame).to_string()).expect("an encoded frame parses");
            assert_eq!(again, frame);
        }
        Err(e) => {
            // The error frame the client gets is JSON with a code and a message.
            let answer: Value = serde_json::from_str(&ServerFrame::error(&e).to_json()).unwrap();
            assert_eq!(answer["type"], "error");
            assert!(answer["code"].is_string() && answer["message"].as_str().is_some_and(|m| !m.is_empty()));
        }
    }
});
