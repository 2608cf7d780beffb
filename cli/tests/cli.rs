//! The `wsfan` binary, run as a user would, against moto.

use std::process::{Command, Output};

use harness::{s, TestQueue, TestTable, DEV_SECRET};
use wsfan_shared::config::{AuthConfig, KeySource};

fn wsfan(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsfan"))
        .args(args)
        .env("AWS_ENDPOINT_URL", &harness::moto::shared().endpoint)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env_remove("JWT_SECRET")
        .output()
        .expect("running wsfan")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "wsfan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap().trim().to_owned()
}

/// `wsfan` is the user's tool; the benchmarks are `wsfan-bench` (bench/, run by scripts/bench).
#[test]
fn the_help_lists_the_users_commands_and_no_benchmark() {
    let help = stdout(&wsfan(&["--help"]));
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        commands,
        ["publish", "token", "revoke", "dev", "invoke", "help"],
        "{help}"
    );
    assert!(!help.to_lowercase().contains("bench"), "{help}");
}

#[tokio::test]
async fn token_mints_a_token_the_authorizer_accepts() {
    let out = wsfan(&[
        "token",
        "--sub",
        "alice",
        "--channels",
        "workspace:42,doc:*",
        "--ttl",
        "600",
        "--secret",
        DEV_SECRET,
    ]);
    let token = stdout(&out);
    let verifier = wsfan_shared::auth::JwtVerifier::new(AuthConfig {
        keys: KeySource::Secret(DEV_SECRET.into()),
        audience: None,
        issuer: None,
        anonymous_channels: None,
        leeway_secs: 0,
    });
    let identity = verifier.verify(&token).await.unwrap();
    assert_eq!(identity.user_id.as_deref(), Some("alice"));
    assert_eq!(identity.channels.len(), 2);

    let bad = wsfan(&["token", "--sub", "alice", "--role", "wizard", "--secret", DEV_SECRET]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("wizard"));
    // Nor a token whose sub cannot name its user channel.
    let bad = wsfan(&["token", "--sub", "auth0|alice", "--secret", DEV_SECRET]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("sub must be 1-128 characters"));
}

#[tokio::test]
async fn publish_message_writes_one_message_item() {
    let table = TestTable::new().await;
    let args = [
        "publish",
        "message",
        "--table",
        &table.name,
        "--channel",
        "user:alice",
        "--body",
        "Your report is ready",
        "--sender",
        "reports",
        "--client-msg-id",
        "r-1",
    ];
    let first: serde_json::Value = serde_json::from_str(&stdout(&wsfan(&args))).unwrap();
    let again: serde_json::Value = serde_json::from_str(&stdout(&wsfan(&args))).unwrap();
    assert_eq!(first["messageId"], again["messageId"]);
    assert_eq!(again["duplicate"], true);
    let id = first["messageId"].as_str().unwrap();
    let item = table.message("CHAN#user:alice", id).await.expect("message item");
    assert_eq!(s(&item, "body"), "Your report is ready");
    assert_eq!(s(&item, "senderId"), "reports");

    let bad = wsfan(&[
        "publish",
        "message",
        "--table",
        &table.name,
        "--channel",
        "team:1",
        "--body",
        "x",
    ]);
    assert!(!bad.status.success(), "an invalid channel is refused");
}

#[tokio::test]
async fn publish_progress_forms_send_the_documented_events() {
    let queue = TestQueue::new(false, 3).await;
    let q = queue.url.as_str();
    for args in [
        vec![
            "publish",
            "started",
            "--queue-url",
            q,
            "--doc-id",
            "d1",
            "--total-pages",
            "100",
        ],
        vec![
            "publish",
            "progress",
            "--queue-url",
            q,
            "--doc-id",
            "d1",
            "--pages-processed",
            "50",
            "--total-pages",
            "100",
        ],
        vec![
            "publish",
            "error",
            "--queue-url",
            q,
            "--doc-id",
            "d1",
            "--error-code",
            "OCR",
            "--message",
            "page 51",
            "--recoverable",
        ],
        vec![
            "publish",
            "complete",
            "--queue-url",
            q,
            "--doc-id",
            "d1",
            "--total-pages",
            "100",
        ],
    ] {
        stdout(&wsfan(&args));
    }
    let mut kinds = Vec::new();
    loop {
        let (event, messages) = queue.receive_event().await;
        if messages.is_empty() {
            break;
        }
        for r in &event.records {
            let v: serde_json::Value = serde_json::from_str(r.body.as_deref().unwrap()).unwrap();
            kinds.push(v["type"].as_str().unwrap().to_owned());
        }
        queue.settle(&messages, &[]).await;
    }
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["error", "processing_complete", "processing_started", "progress"]
    );

    let bad = wsfan(&[
        "publish",
        "progress",
        "--queue-url",
        q,
        "--doc-id",
        "d1",
        "--pages-processed",
        "9",
        "--total-pages",
        "3",
    ]);
    assert!(!bad.status.success(), "an invalid event is refused before sending");
}
