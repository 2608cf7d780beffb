//! `wsfan bench channel`'s short form, in CI: a channel above the direct path's size goes over
//! the real path (stream-fanout, shards, deliver in two environments) to an @connections bucket
//! that answers 429, and every member is reached exactly once.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn a_sharded_channel_behind_a_throttling_bucket_loses_and_duplicates_nothing() {
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(env!("CARGO_BIN_EXE_wsfan"))
        .args([
            "bench",
            "channel",
            "--moto-port",
            "0",
            "--members",
            "1500",
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
            "--timeout-secs",
            "120",
        ])
        .current_dir(&repo)
        .output()
        .expect("running wsfan");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("lost 0, duplicated 0, posts 1500"), "{stdout}");
    assert!(stdout.contains("all reached in"), "{stdout}");
}
