//! `wsfan-bench local`'s short form, in CI: a few real clients through `wsfan dev` with the
//! template's defaults, every delivery counted. It fails when a delivery goes missing or an
//! invocation times out, so a change that undoes the local figure (as the throttle governor once
//! turned 200,000 of 200,000 deliveries into 0) cannot land silently.

mod run;

#[test]
fn a_short_local_run_delivers_everything_to_batching_clients_and_nothing_times_out() {
    let run::BenchRun { out, text, result } = run::wsfan_bench(&[run::LOCAL_DOZEN, &["--rate", "6"]].concat());
    assert!(out.status.success(), "{text}");
    assert_eq!(result["joined"], 12, "{text}");
    assert_eq!(result["deliveries"]["expected"], 12 * 12, "{text}");
    assert_eq!(result["deliveries"]["missing"], 0, "{text}");
    assert_eq!(result["timeouts"], serde_json::json!({}), "{text}");
    assert_eq!(result["batch"], true, "{text}");
    // Once the clients have gone, nothing of theirs stays in the table.
    assert_eq!(result["leftBehind"], 0, "{text}");
}
