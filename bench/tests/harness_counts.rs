//! The load harnesses count right: `wsfan-bench local` and `sends` in short, deterministic forms
//! through `wsfan dev` and the real binaries.

mod run;

use serde_json::json;

/// Runs `wsfan-bench <bench> --repo . <args>`; its `RESULT` report.
fn bench_report(bench: &str, args: &[&str]) -> serde_json::Value {
    let mut all = vec![bench, "--repo", "."];
    all.extend_from_slice(args);
    run::report(&all)
}

/// The short, deterministic form of `scripts/bench local`: the harness itself must count right.
#[test]
fn the_load_harness_counts_every_delivery() {
    let report = run::report(&[run::LOCAL_DOZEN, &["--rate", "10", "--soak", "60", "--members", "1200"]].concat());
    assert_eq!(report["joined"], 12, "{report}");
    assert_eq!(report["messages"], 12, "{report}");
    assert_eq!(
        report["deliveries"],
        json!({"expected": 144, "delivered": 144, "missing": 0, "duplicated": 0}),
        "{report}"
    );
    assert_eq!(report["soak"]["sends"], 60, "{report}");
    assert_eq!(report["largeChannel"]["read"], 1200, "{report}");
    assert_eq!(report["timeouts"], json!({}), "{report}");
    let processes: Vec<&str> = report["peakRssMb"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["process"].as_str())
        .collect();
    assert!(processes.contains(&"moto"), "{processes:?}");
    assert!(processes.contains(&"ws-message"), "{processes:?}");
}

/// The short form of `scripts/bench sends`: closed-loop senders, every ack counted, the calls per
/// send read from moto, every acked message seen by the listener.
#[test]
fn the_closed_loop_send_harness_counts_sends_calls_and_deliveries() {
    let report = bench_report("sends", &["--senders", "1,3", "--secs", "2", "--settle-secs", "30"]);
    assert_eq!(report["members"], 4, "{report}");
    let rounds = report["rounds"].as_array().unwrap();
    assert_eq!(
        rounds.iter().map(|r| &r["senders"]).collect::<Vec<_>>(),
        [1, 3],
        "{report}"
    );
    for round in rounds {
        let committed = round["committed"].as_u64().unwrap();
        assert!(committed >= round["senders"].as_u64().unwrap(), "{round}");
        assert_eq!(
            (&round["errors"], &round["undelivered"]),
            (&json!(0), &json!(0)),
            "{round}"
        );
        // A send is a transaction on the channel's head (and its dedupe item): moto counted it.
        let transactions = round["dynamodbCallsPerSendByOperation"]["TransactWriteItems"]
            .as_f64()
            .unwrap_or(0.0);
        assert!(transactions >= 1.0, "{round}");
        assert!(round["sendsPerSecond"].as_f64().unwrap() > 0.0, "{round}");
    }
}
