//! How the short forms run `wsfan-bench`: from the repository, against the real binaries of
//! this build, keeping what it printed and its `RESULT` report.

// Each test file compiles this module on its own, and not every one uses both functions.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

/// `wsfan-bench local` with a dozen clients, three of them sending four messages each: small
/// enough for CI, with every delivery (144) counted.
pub const LOCAL_DOZEN: &[&str] = &[
    "local",
    "--repo",
    ".",
    "--clients",
    "12",
    "--senders",
    "3",
    "--messages",
    "4",
];

pub struct BenchRun {
    pub out: Output,
    /// Standard output, then standard error: what every failed assertion shows.
    pub text: String,
    /// The report on the last line (`RESULT {json}`).
    pub result: Value,
}

/// Runs `wsfan-bench` with `args`; fails unless its last line is the `RESULT` report.
pub fn wsfan_bench(args: &[&str]) -> BenchRun {
    harness::require_lambda_binaries(Path::new(env!("CARGO_BIN_EXE_wsfan-bench")));
    let out = Command::new(env!("CARGO_BIN_EXE_wsfan-bench"))
        .args(args)
        .current_dir(harness::repo_root())
        .output()
        .expect("running wsfan-bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let text = format!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let result = stdout
        .lines()
        .last()
        .and_then(|l| l.strip_prefix("RESULT "))
        .map(|r| serde_json::from_str(r).expect("RESULT is JSON"))
        .unwrap_or_else(|| panic!("the last line is not RESULT: {text}"));
    BenchRun { out, text, result }
}

/// [`wsfan_bench`] for a run that must succeed: its report.
pub fn report(args: &[&str]) -> Value {
    let run = wsfan_bench(args);
    assert!(run.out.status.success(), "{}", run.text);
    run.result
}
