use serde_json::Value;

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
    let e = ClientFrame::parse(r#"{"action":"react","channel":"booking:1","messageId":7,"emoji":"x"}"#).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidField);
    let e =
        ClientFrame::parse(r#"{"type":"reaction","emoji":"x","body":"hi","message_id":"01JD0000000000000000000000"}"#)
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
