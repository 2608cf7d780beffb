//! The benchmarks' short forms: each runs for real, and each fails when its condition did not
//! happen, so a figure in BENCHMARKS.md cannot come from a run that measured nothing.

use std::path::PathBuf;
use std::process::{Command, Output};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wsfan-bench"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("running wsfan-bench")
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_lambdas_bench_cold_starts_every_function_and_costs_a_stream_record() {
    let out = bench(&["lambdas", "--starts", "2", "--records", "500"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let result: serde_json::Value = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .map(|r| serde_json::from_str(r).expect("RESULT is JSON"))
        .expect("a RESULT line");
    let template = wsfan_local::template::Template::load(&repo().join("sam/template.yaml")).expect("template");
    assert!(!template.functions.is_empty());
    for function in &template.functions {
        let figures = &result[&function.binary];
        assert!(
            figures["coldStartMs"]["median"].as_f64().is_some_and(|ms| ms > 0.0),
            "{}: {figures}",
            function.binary
        );
        // A process that reached /next has mapped its binary and runtime.
        assert!(
            figures["initPeakRssMb"].as_f64().is_some_and(|mb| mb > 1.0),
            "{}: {figures}",
            function.binary
        );
    }
    assert!(
        result["streamRecordCpuMicros"].as_f64().is_some_and(|us| us > 0.0),
        "{result}"
    );
}

fn fanout(bucket_rate: &str, bucket_burst: &str) -> Output {
    bench(&[
        "fanout",
        "--python",
        ".venv/bin/python",
        "--recipients",
        "1000",
        "--throttled-recipients",
        "1000",
        "--baseline-recipients",
        "20",
        "--rounds",
        "1",
        "--bucket-rate",
        bucket_rate,
        "--bucket-burst",
        bucket_burst,
    ])
}

#[test]
fn the_throttled_fanout_bench_counts_the_429s_it_rode_out_and_fails_without_any() {
    // Far below what even a debug build on a busy machine posts (about 900/s), well within the
    // broadcaster's 20 s deadline (1,000 posts at 200/s: 4.75 s at least).
    let out = fanout("200", "50");
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let line = stdout
        .lines()
        .find(|l| l.contains("token bucket"))
        .unwrap_or_else(|| panic!("no throttled line: {stdout}"));
    assert!(line.contains("delivered 1000, lost 0"), "{line}");
    let throttled: u64 = line
        .split(" with 429")
        .next()
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 429 count: {line}"));
    assert!(throttled > 0, "{line}");

    // A bucket the run never empties shows nothing about throttling: the bench says so and fails.
    let out = fanout("1000000", "1000000");
    let (stdout, stderr) = text(&out);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("NOT SHOWN: no 429 was answered"), "{stderr}");
}
