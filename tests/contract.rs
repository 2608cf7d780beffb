//! `docs/asyncapi.yaml`, the protocol contract, against the code and the README: valid AsyncAPI
//! (the AsyncAPI parser from npm, through scripts/contract.mjs), naming every action, error code,
//! query parameter and progress event the code has, accepting every frame the code serialises
//! and refusing wrong ones. The end-to-end tests (cli/tests/dev.rs) check real frames the same way.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};

use serde_json::{json, Value};
use wsfan_shared::connect::QUERY_PARAMETERS;
use wsfan_shared::model::{Message, MessageKind};
use wsfan_shared::progress::{ProgressEvent, ProgressKind};
use wsfan_shared::protocol::{ChatEvent, ErrorCode, PresenceState, ServerFrame, ACTIONS};

fn repo() -> PathBuf {
    harness::repo_root()
}

/// Runs scripts/contract.mjs; node and the npm packages come from scripts/setup.
fn contract(args: &[&str]) -> Output {
    assert!(
        repo().join("node_modules/@asyncapi/parser").exists(),
        "node_modules/@asyncapi/parser is missing: run scripts/setup (npm ci)"
    );
    Command::new("node")
        .arg(repo().join("scripts/contract.mjs"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("running node (scripts/setup checks that it is installed)")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn check_frames(frames: &[Value]) -> Output {
    let file = std::env::temp_dir().join(format!("wsfan-frames-{}.jsonl", ulid::Ulid::generate()));
    let lines: Vec<String> = frames.iter().map(Value::to_string).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = contract(&["frames", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    out
}

fn document() -> Value {
    let text = std::fs::read_to_string(repo().join("docs/asyncapi.yaml")).expect("reading docs/asyncapi.yaml");
    serde_norway::from_str(&text).expect("docs/asyncapi.yaml is YAML")
}

#[test]
fn the_contract_is_valid_asyncapi_and_a_broken_one_is_not() {
    let out = contract(&["validate"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("valid AsyncAPI 3"), "{}", text(&out));

    let broken = std::fs::read_to_string(repo().join("docs/asyncapi.yaml"))
        .unwrap()
        .replace("action: send", "action: push");
    let file = std::env::temp_dir().join(format!("wsfan-broken-{}.yaml", ulid::Ulid::generate()));
    std::fs::write(&file, broken).unwrap();
    let out = contract(&["validate", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    assert!(!out.status.success(), "a broken contract must fail: {}", text(&out));
    assert!(text(&out).contains("\"send\", \"receive\""), "{}", text(&out));
}

fn chat(kind: MessageKind) -> Message {
    Message {
        kind,
        channel: "booking:1".parse().unwrap(),
        message_id: "01JD0000000000000000000000".into(),
        seq: kind.is_history().then_some(7),
        sender_id: "alice".into(),
        body: (kind == MessageKind::Message).then(|| "hi".into()),
        client_msg_id: (kind == MessageKind::Message).then(|| "c-1".into()),
        target_id: matches!(kind, MessageKind::Reaction | MessageKind::Receipt)
            .then(|| "01JD0000000000000000000001".into()),
        emoji: (kind == MessageKind::Reaction).then(|| "❤️".into()),
        sent_at: 1_795_305_605_000,
        expires_at: 0,
    }
}

/// A message's reaction summary: two users with one emoji, one with another.
fn summary_item() -> wsfan_shared::reactions::SummaryItem {
    use wsfan_shared::reactions::entry;
    wsfan_shared::reactions::SummaryItem {
        target_id: "01JD0000000000000000000001".into(),
        reactions: vec![entry("alice", "❤️"), entry("bob", "❤️"), entry("bob", "👍")],
        message_id: "01JD0000000000000000000002".into(),
        sender_id: "bob".into(),
        emoji: "👍".into(),
        sent_at: 1_795_305_605_000,
    }
}

/// One of every frame the server sends, as the code serialises it.
fn every_server_frame() -> Vec<Value> {
    let event = |m: Message| -> ChatEvent { m.to_event() };
    let frames = vec![
        ServerFrame::Joined {
            channel: "workspace:42".into(),
            head: 17,
            present: vec!["alice".into()],
            reads: [("alice".to_owned(), 17), ("bob".to_owned(), 12)].into(),
        },
        ServerFrame::Left {
            channel: "workspace:42".into(),
            was_member: true,
        },
        ServerFrame::Ack {
            action: "sendMessage".into(),
            channel: "workspace:42".into(),
            message_id: "01JD0000000000000000000000".into(),
            client_msg_id: Some("c-1".into()),
            seq: Some(18),
            duplicate: false,
        },
        ServerFrame::Subscribed {
            doc_id: "report-1".into(),
            snapshot: None,
        },
        ServerFrame::Subscribed {
            doc_id: "report-1".into(),
            snapshot: Some(
                json!({"type": "progress", "docId": "report-1", "pagesProcessed": 3, "totalPages": 9, "updatedAt": 1}),
            ),
        },
        ServerFrame::Present {
            channel: "workspace:W".into(),
            present: vec!["ann".into(), "ben".into()],
        },
        ServerFrame::History {
            channel: "booking:1".into(),
            messages: vec![
                chat(MessageKind::Message).to_frame(),
                chat(MessageKind::Reaction).to_frame(),
            ],
            before: Some(2),
            after: None,
            complete: None,
            reads: None,
        },
        // A page whose message has reactions.
        ServerFrame::History {
            channel: "booking:1".into(),
            messages: vec![ServerFrame::Message(ChatEvent {
                reactions: Some(summary_item().summary()),
                ..event(chat(MessageKind::Message))
            })],
            before: None,
            after: None,
            complete: None,
            reads: None,
        },
        // A recovery page: everything after a point, whether complete, the next cursor.
        ServerFrame::History {
            channel: "booking:1".into(),
            messages: vec![
                chat(MessageKind::Message).to_frame(),
                chat(MessageKind::Reaction).to_frame(),
                chat(MessageKind::Receipt).to_frame(),
            ],
            before: None,
            after: Some(7),
            complete: Some(true),
            reads: Some([("alice".to_owned(), 7)].into()),
        },
        ServerFrame::Pong { at: 1 },
        // A refresh to a narrower token: what it left.
        ServerFrame::Authed {
            user_id: Some("alice".into()),
            role: "member".into(),
            channels: vec!["doc:*".into()],
            exp: 1_900_000_000,
            left: vec!["workspace:42".into()],
        },
        ServerFrame::Message(event(chat(MessageKind::Message))),
        ServerFrame::Reaction(event(chat(MessageKind::Reaction))),
        // A reaction as pushed now: off the sequence, with the reacted message's summary.
        ServerFrame::Reaction(summary_item().to_event(&"booking:1".parse().unwrap())),
        ServerFrame::Typing(event(chat(MessageKind::Typing))),
        ServerFrame::Receipt(event(chat(MessageKind::Receipt))),
        // A receipt as pushed now: the user's read cursor moved, off the sequence.
        ServerFrame::Receipt(
            wsfan_shared::reads::ReadCursor {
                channel: "booking:1".parse().unwrap(),
                user_id: "bob".into(),
                seq: 7,
                target_id: "01JD0000000000000000000001".into(),
                message_id: "01JD0000000000000000000003".into(),
                sent_at: 1_795_305_605_000,
                expires_at: 0,
            }
            .to_event(),
        ),
        // Several users' cursors moved in one stream batch: one frame for them all.
        ServerFrame::Receipts {
            channel: "booking:1".into(),
            receipts: ["bob", "carol"]
                .iter()
                .zip(1u8..)
                .map(|(user, n)| {
                    wsfan_shared::reads::ReadCursor {
                        channel: "booking:1".parse().unwrap(),
                        user_id: (*user).into(),
                        seq: 7,
                        target_id: "01JD0000000000000000000001".into(),
                        message_id: format!("01JD000000000000000000000{n}"),
                        sent_at: 1_795_305_605_000,
                        expires_at: 0,
                    }
                    .to_event()
                })
                .collect(),
        },
        ServerFrame::Presence {
            channel: "workspace:42".into(),
            user_id: "bob".into(),
            state: PresenceState::Leave,
        },
    ];
    // A new frame must get a sample here (and a schema): this match has no catch-all.
    for frame in &frames {
        match frame {
            ServerFrame::Joined { .. }
            | ServerFrame::Left { .. }
            | ServerFrame::Ack { .. }
            | ServerFrame::Subscribed { .. }
            | ServerFrame::Present { .. }
            | ServerFrame::History { .. }
            | ServerFrame::Pong { .. }
            | ServerFrame::Authed { .. }
            | ServerFrame::Message(_)
            | ServerFrame::Reaction(_)
            | ServerFrame::Typing(_)
            | ServerFrame::Receipt(_)
            | ServerFrame::Receipts { .. }
            | ServerFrame::Presence { .. }
            | ServerFrame::Error { .. } => {}
        }
    }
    let mut values: Vec<Value> = frames
        .iter()
        .map(|f| serde_json::from_str(&f.to_json()).unwrap())
        .collect();
    for code in ErrorCode::ALL {
        let frame = ServerFrame::Error {
            code,
            message: "why, and what to send instead".into(),
            retry_after_ms: None,
        };
        values.push(serde_json::from_str(&frame.to_json()).unwrap());
    }
    values.push(serde_json::from_str(&ServerFrame::rate_limited(40, 25, 50).to_json()).unwrap());
    values.push(serde_json::from_str(&ServerFrame::token_expired(1_900_000_000).to_json()).unwrap());
    let mut recoverable = ProgressEvent::error("report-1", "SLOW", "retrying", true);
    recoverable.pages_processed = Some(4);
    for event in [
        ProgressEvent::started("report-1", Some(9)),
        ProgressEvent::started("report-1", None),
        ProgressEvent::progress("report-1", 3, 9),
        ProgressEvent::complete("report-1", Some(9)),
        ProgressEvent::complete("report-1", None),
        ProgressEvent::error("report-1", "OCR_FAILED", "page 3 is unreadable", false),
        recoverable,
    ] {
        values.push(serde_json::to_value(&event).unwrap());
    }
    values
}

#[test]
fn every_frame_the_code_serialises_matches_the_contract() {
    let frames = every_server_frame();
    let out = check_frames(&frames);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{} frame(s) match", frames.len())),
        "{}",
        text(&out)
    );
}

#[test]
fn wrong_server_frames_fail_the_check_each_for_its_own_reason() {
    let good = every_server_frame();
    let message = good.iter().find(|f| f["type"] == "message").unwrap().clone();
    let mut wrong = Vec::new();
    let mut edit = |base: &Value, change: &dyn Fn(&mut Value)| {
        let mut v = base.clone();
        change(&mut v);
        wrong.push(v);
    };
    edit(&message, &|v| v["sentAt"] = json!("yesterday"));
    edit(&message, &|v| {
        v.as_object_mut().unwrap().remove("messageId");
    });
    edit(&message, &|v| v["channel"] = json!("team:1"));
    edit(&message, &|v| v["seq"] = json!(0)); // sequence numbers start at 1
    edit(&json!({"type": "error", "code": "oops", "message": "m"}), &|_| {});
    edit(
        &json!({"type": "presence", "channel": "workspace:1", "userId": "u", "state": "away"}),
        &|_| {},
    );
    edit(
        &json!({"type": "history", "channel": "booking:1", "messages": [{"body": "no type"}]}),
        &|_| {},
    );
    edit(
        &json!({"type": "progress", "docId": "d1", "pagesProcessed": 1}),
        &|_| {},
    );
    edit(&json!({"type": "wave"}), &|_| {});
    let out = check_frames(&wrong);
    assert!(!out.status.success(), "wrong frames must fail: {}", text(&out));
    assert!(
        text(&out).contains(&format!("{n} of {n} frame(s) break the contract", n = wrong.len())),
        "every wrong frame fails, not just some: {}",
        text(&out)
    );
}

fn consts_of(v: &Value, key: &str, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                if k == key {
                    if let Some(c) = v.get("const").and_then(Value::as_str) {
                        out.insert(c.to_owned());
                    }
                }
                consts_of(v, key, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|v| consts_of(v, key, out)),
        _ => {}
    }
}

#[test]
fn the_contract_names_every_action_error_code_query_parameter_and_progress_event() {
    let doc = document();
    let messages = &doc["components"]["messages"];
    let mut actions = BTreeSet::new();
    consts_of(messages, "action", &mut actions);
    // The ack frame's `action` is an enum, not a const: only client frames count here.
    let code: BTreeSet<String> = ACTIONS.iter().map(|a| a.to_string()).collect();
    assert_eq!(actions, code, "client frames with an action, against protocol::ACTIONS");

    let documented: BTreeSet<String> = doc["components"]["schemas"]["errorCode"]["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["const"].as_str().unwrap().to_owned())
        .collect();
    let codes: BTreeSet<String> = ErrorCode::ALL.iter().map(|c| c.as_str().to_owned()).collect();
    assert_eq!(documented, codes, "error codes");

    let query: BTreeSet<String> = doc["channels"]["socket"]["bindings"]["ws"]["query"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let read: BTreeSet<String> = QUERY_PARAMETERS.iter().map(|p| p.to_string()).collect();
    assert_eq!(query, read, "query parameters");

    let kinds: BTreeSet<String> = doc["components"]["schemas"]["progressEvent"]["properties"]["type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    let code_kinds: BTreeSet<String> = [
        ProgressKind::ProcessingStarted,
        ProgressKind::Progress,
        ProgressKind::ProcessingComplete,
        ProgressKind::Error,
    ]
    .iter()
    .map(|k| serde_json::to_value(k).unwrap().as_str().unwrap().to_owned())
    .collect();
    assert_eq!(kinds, code_kinds, "progress events");
}

#[test]
fn the_readmes_protocol_tables_come_from_the_contract() {
    let out = contract(&["readme"]);
    assert!(out.status.success(), "{}", text(&out));
    let generated = String::from_utf8(out.stdout).unwrap();
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    for block in generated.trim().split("\n\n") {
        assert!(
            readme.contains(block),
            "README.md is out of date with docs/asyncapi.yaml; replace its block with:\n{block}"
        );
    }
    for action in ACTIONS {
        assert!(
            readme.contains(&format!("\"action\":\"{action}\"")),
            "README's frame table does not show the action {action}"
        );
    }
}
