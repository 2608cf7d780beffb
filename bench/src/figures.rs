//! How the benchmarks state their figures: percentiles and milliseconds, the build they were
//! taken with, and the report's last line.

use std::time::Duration;

use serde_json::Value;

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

pub(crate) fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

pub(crate) fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    percentile(&sorted, 50.0)
}

pub(crate) fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// A bench's last line, `RESULT {report}`: its answer when nothing failed; otherwise printed (the
/// figures say what went wrong) before the error that names the failures.
pub(crate) fn verdict(bench: &str, report: &Value, failures: &[String]) -> Result<String, String> {
    for f in failures {
        eprintln!("FAILED: {f}");
    }
    let line = format!("RESULT {report}");
    if failures.is_empty() {
        Ok(line)
    } else {
        println!("{line}");
        Err(format!("bench {bench} failed: {}", failures.join("; ")))
    }
}
