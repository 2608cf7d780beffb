//! `wsfan-bench receipts`' short form, in CI: 10 members of one channel each send a read receipt
//! for the same message at once, through `wsfan dev` with the template's defaults. Every receipt
//! is acked, none takes a sequence number, and each writes one cursor, no transaction.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

#[test]
fn ten_members_reading_one_message_at_once_are_all_acked_and_never_move_the_head() {
    harness::require_lambda_binaries(Path::new(env!("CARGO_BIN_EXE_wsfan-bench")));
    let out = Command::new(env!("CARGO_BIN_EXE_wsfan-bench"))
        .args(["receipts", "--members", "10", "--settle-secs", "60"])
        .current_dir(harness::repo_root())
        .output()
        .expect("running wsfan");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let result: Value = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("RESULT "))
        .map(|r| serde_json::from_str(r).expect("RESULT is JSON"))
        .unwrap_or_else(|| panic!("the last line is not RESULT: {text}"));
    assert!(out.status.success(), "{text}");
    assert_eq!(
        (result["acked"].as_u64(), result["errors"].as_u64()),
        (Some(10), Some(0)),
        "{text}"
    );
    assert_eq!(result["head"]["before"], result["head"]["after"], "{text}");
    let calls = &result["dynamodbCalls"];
    assert_eq!(calls["PutItem"], 10, "one cursor per receipt: {text}");
    assert!(calls.get("TransactWriteItems").is_none(), "no transaction: {text}");
    assert!(result["ackMs"]["p99"].as_f64().is_some_and(|ms| ms > 0.0), "{text}");
}
