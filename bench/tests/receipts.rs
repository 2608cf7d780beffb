//! `wsfan-bench receipts`' short form, in CI: 10 members of one channel each send a read receipt
//! for the same message at once, through `wsfan dev` with the template's defaults. Every receipt
//! is acked, none takes a sequence number, and each writes one cursor, no transaction.

mod run;

#[test]
fn ten_members_reading_one_message_at_once_are_all_acked_and_never_move_the_head() {
    let run::BenchRun { out, text, result } = run::wsfan_bench(&["receipts", "--members", "10", "--settle-secs", "60"]);
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
