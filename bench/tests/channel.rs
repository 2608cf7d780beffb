//! `wsfan-bench channel`'s short form, in CI: a channel above the direct path's size goes over
//! the real path (stream-fanout, shards, deliver in two environments) to an @connections bucket
//! that answers 429, and every member is reached exactly once.

use std::path::PathBuf;
use std::process::Command;

/// Runs `wsfan-bench channel` on 1,500 members with these options; asserts it succeeded and
/// reached each member exactly once, and returns its report.
fn bench_channel(options: &[&str]) -> String {
    bench_channels(1500, options)
}

/// One bench at a time: each runs a stack on the 2 cores. Three at once (in scripts/test) once
/// made the 429 run count 23 duplicates: 23 requests beyond the retries of its 429s, posts the
/// server had delivered and the broadcaster tried again, as it does when an answer is late or
/// lost (at least once, as designed, but not what this file measures). Alone, it counts none.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn bench_channels(members: usize, options: &[&str]) -> String {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_wsfan-bench"))
        .args(["channel", "--moto-port", "0", "--timeout-secs", "120"])
        .arg(format!("--members={members}"))
        .args(options)
        .current_dir(&repo)
        .output()
        .expect("running wsfan");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("lost 0, duplicated 0, posts {members}")),
        "{stdout}"
    );
    assert!(stdout.contains("all reached in"), "{stdout}");
    stdout
}

#[test]
fn a_sharded_channel_behind_a_throttling_bucket_loses_and_duplicates_nothing() {
    bench_channel(&[
        "--concurrency",
        "2",
        // A budget above the bucket, so the bucket answers 429 and the retries must cope. A
        // small bucket: a debug build's deliver posts only ~1,000/s, which once stayed under
        // a 1,000/s bucket and was rightly refused as a throttled figure without a 429.
        "--bucket-rate",
        "250",
        "--bucket-burst",
        "50",
        "--max-rps",
        "5000",
        "--require-throttled",
        "1",
    ]);
}

/// Four large channels at once, each over the sharded path, every deliver and stream-fanout
/// environment leasing from one FANOUT_MAX_RPS: @connections' own per-second counts never exceed
/// it. The budget is low enough that a debug build on a busy machine still wants more: 300/s
/// against the ~1,000/s one debug deliver posts (the run takes about 15 s).
#[test]
fn four_large_channels_at_once_never_post_more_than_the_budget_in_a_second() {
    let stdout = bench_channels(
        4400,
        &[
            "--channels",
            "4",
            "--concurrency",
            "2",
            "--no-bucket",
            "--max-rps",
            "300",
        ],
    );
    assert!(
        stdout.contains("4400 members in 4 channels, one message each at once"),
        "{stdout}"
    );
    assert!(stdout.contains("over: 0"), "{stdout}");
    assert!(stdout.contains("whole seconds of the broadcast:"), "{stdout}");
}

/// Run M's form (BENCHMARKS.md): the functions on one core, moto and the @connections server on
/// the other, as `bench fanout` measures the single channel, and that single-channel figure
/// taken just before and just after the broadcast. The bench reads the pinning back from /proc
/// before it reports, so a figure labelled pinned was measured pinned.
#[test]
fn the_pinned_form_runs_the_functions_and_the_emulated_aws_side_on_cores_of_their_own() {
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        eprintln!("skipped: pinning needs two cores");
        return;
    }
    let stdout = bench_channel(&[
        "--concurrency",
        "1",
        "--no-bucket",
        "--functions-core",
        "0",
        "--aws-core",
        "1",
        // A debug build's broadcaster: rounds of 1,000 keep the figure's two runs short.
        "--single-channel-recipients",
        "1000",
    ]);
    // stream-fanout and deliver, one environment each.
    assert!(
        stdout.contains("pinned: the functions on core 0 (2 processes,"),
        "{stdout}"
    );
    assert!(
        stdout.contains("and the @connections server's thread on core 1"),
        "{stdout}"
    );
    assert!(stdout.contains("on core 1 meanwhile: moto"), "{stdout}");
    // The figure to compare with, measured on the same cores beside the broadcast.
    assert!(
        stdout.contains(
            "the single channel on the same cores (bench fanout --throughput-only), just before and just after:"
        ),
        "{stdout}"
    );
    assert!(stdout.contains("% of their mean's"), "{stdout}");
}
