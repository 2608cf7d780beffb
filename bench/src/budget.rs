//! How the fanout used its budget, FanoutMaxRps: `@connections`' posts in each second against it
//! (`bench hot`, `bench channel`).

use serde_json::{json, Value};
use wsfan_local::per_second::Second;

/// The distribution of the posts per second, against the budget.
pub(crate) fn budget_report(seconds: &[Second], max_rps: u64) -> (Value, Vec<String>) {
    let mut posts: Vec<u64> = seconds.iter().map(|s| s.posts).collect();
    posts.sort_unstable();
    let at = |p: f64| -> u64 {
        if posts.is_empty() {
            return 0;
        }
        let rank = ((p / 100.0) * posts.len() as f64).ceil() as usize;
        posts[rank.clamp(1, posts.len()) - 1]
    };
    let max = posts.last().copied().unwrap_or(0);
    let over: Vec<&Second> = seconds.iter().filter(|s| s.posts > max_rps).collect();
    // Seconds by the share of the budget they used: <10%, 10-50%, 50-90%, 90-100%, over.
    let bands = [(0.0, 0.1), (0.1, 0.5), (0.5, 0.9), (0.9, 1.0)];
    let mut counts: Vec<usize> = bands
        .iter()
        .map(|(lo, hi)| {
            seconds
                .iter()
                .filter(|s| {
                    let share = s.posts as f64 / max_rps as f64;
                    share >= *lo && (share < *hi || (*hi == 1.0 && share <= 1.0))
                })
                .count()
        })
        .collect();
    counts.push(over.len());
    let mut lines = vec![format!(
        "budget: @connections posts per second over {} seconds with posts, against FanoutMaxRps {max_rps}: max {max} ({:.1}%), p50 {}, p90 {}, p99 {}; seconds using <10%: {}, 10-50%: {}, 50-90%: {}, 90-100%: {}, over: {}",
        seconds.len(),
        100.0 * max as f64 / max_rps as f64,
        at(50.0),
        at(90.0),
        at(99.0),
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
    )];
    for s in over.iter().take(10) {
        lines.push(format!(
            "  OVER BUDGET: second {} had {} posts ({} delivered, {} answered 429)",
            s.unix, s.posts, s.delivered, s.throttled
        ));
    }
    let throttled: u64 = seconds.iter().map(|s| s.throttled).sum();
    let report = json!({
        "fanoutMaxRps": max_rps,
        "seconds": seconds.len(),
        "maxPosts": max,
        "maxShare": max as f64 / max_rps as f64,
        "p50": at(50.0), "p90": at(90.0), "p99": at(99.0),
        "bands": {"under10": counts[0], "10to50": counts[1], "50to90": counts[2], "90to100": counts[3], "over": counts[4]},
        "secondsOver": over.len(),
        "throttled": throttled,
        "perSecond": seconds.iter().map(|s| json!([s.unix, s.posts])).collect::<Vec<_>>(),
    });
    (report, lines)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_budget_report_counts_each_second_over_the_budget() {
        let second = |unix, posts| wsfan_local::per_second::Second {
            unix,
            requests: posts,
            posts,
            ..Default::default()
        };
        let (report, lines) = super::budget_report(&[second(1, 100), second(2, 5000), second(3, 5001)], 5000);
        assert_eq!(report["secondsOver"], 1);
        assert_eq!(report["maxPosts"], 5001);
        assert_eq!(report["bands"]["90to100"], 1);
        assert_eq!(report["bands"]["under10"], 1);
        assert!(lines[1].contains("OVER BUDGET: second 3 had 5001 posts"), "{lines:?}");
    }
}
