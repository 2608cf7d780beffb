//! `wsfan-bench local`'s short form, in CI: a few real clients through `wsfan dev` with the
//! template's defaults, every delivery counted. It fails when a delivery goes missing or an
//! invocation times out, so a change that undoes the local figure (as the throttle governor once
//! turned 200,000 of 200,000 deliveries into 0) cannot land silently.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

#[test]
fn a_short_local_run_delivers_everything_to_batching_clients_and_nothing_times_out() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_wsfan-bench"))
        .args([
            "local",
            "--repo",
            ".",
            "--clients",
            "12",
            "--senders",
            "3",
            "--messages",
            "4",
            "--rate",
            "6",
        ])
        .current_dir(&repo)
        .output()
        .expect("running wsfan");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let result: Value = stdout
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|json| serde_json::from_str(json).expect("RESULT is JSON"))
        .unwrap_or_else(|| panic!("no RESULT line: {stdout}"));
    assert_eq!(result["joined"], 12, "{stdout}");
    assert_eq!(result["deliveries"]["expected"], 12 * 12, "{stdout}");
    assert_eq!(result["deliveries"]["missing"], 0, "{stdout}");
    assert_eq!(result["timeouts"], serde_json::json!({}), "{stdout}");
    assert_eq!(result["batch"], true, "{stdout}");
    // Once the clients have gone, nothing of theirs stays in the table.
    assert_eq!(result["leftBehind"], 0, "{stdout}");
}
