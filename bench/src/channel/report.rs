//! `bench channel`'s report: deliveries lost and duplicated, the small channel's latency, the
//! CPU used, and how the broadcast used FANOUT_MAX_RPS.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wsfan_local::connections::ConnectionsServer;
use wsfan_local::per_second::Second;

use super::counter::Counter;
use super::{Broadcast, ChannelBench};

/// What the report is written from.
pub(crate) struct Report<'a> {
    pub(crate) bench: &'a ChannelBench,
    /// Environments per function.
    pub(crate) concurrency: usize,
    pub(crate) max_rps: u64,
    pub(crate) counter: &'a Counter,
    pub(crate) server: &'a ConnectionsServer,
    pub(crate) broadcast: &'a Broadcast,
}

impl Report<'_> {
    /// The report: its text when the run passed, otherwise the text and why it failed.
    pub(crate) fn write(&self) -> Result<String, String> {
        let (b, counter, run) = (self.bench, self.counter, self.broadcast);
        let counts = counter.big.lock().unwrap().clone();
        let reached = counts.len();
        let duplicated: u64 = counts.values().map(|c| u64::from(c.saturating_sub(1))).sum();
        let lost = b.members - reached;
        let small = SmallChannel::of(counter, &run.small_sent, run.sent, b.small_members);
        let throttled = self.server.stats().throttled.load(Ordering::Relaxed) - run.throttled_before;
        let requests = self.server.stats().requests.load(Ordering::Relaxed) - run.requests_before;
        let first_attempts = (reached + small.posts) as u64;
        let mut out = String::new();
        self.write_run(&mut out);
        let _ = writeln!(
            out,
            "  lost {lost}, duplicated {duplicated}, posts {}",
            counter.big_posts.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "  429s answered {throttled}, requests {requests}, retries run {}",
            requests.saturating_sub(first_attempts)
        );
        small.write(&mut out, b.small_members);
        self.write_cpu(&mut out);
        let budget = BudgetUse::of(
            &self.server.per_second(),
            counter.first_big_unix.load(Ordering::Relaxed),
            counter.last_big_unix.load(Ordering::Relaxed),
            self.max_rps,
        );
        for line in &budget.lines {
            let _ = writeln!(out, "  {line}");
        }
        let share_met = b.require_budget_share.is_none_or(|share| budget.whole_share >= share);
        let ok = lost == 0
            && small.latencies.len() == small.expected
            && throttled >= b.require_throttled
            && budget.seconds_over == 0
            && share_met;
        if !ok {
            return Err(format!(
                "{out}bench channel failed: lost {lost}, small deliveries {} of {}, 429s {throttled} (required {}), \
                 seconds over FANOUT_MAX_RPS {}, whole seconds' share of it {:.1}% (required {})",
                small.latencies.len(),
                small.expected,
                b.require_throttled,
                budget.seconds_over,
                100.0 * budget.whole_share,
                b.require_budget_share
                    .map_or("none".to_owned(), |s| format!("{:.1}%", 100.0 * s))
            ));
        }
        Ok(out)
    }

    /// What ran: the channels, the bucket, the budget, the pinning, and when all were reached.
    fn write_run(&self, out: &mut String) {
        let (b, run) = (self.bench, self.broadcast);
        let _ = writeln!(
            out,
            "bench channel: {} members{}, bucket {}",
            b.members,
            match b.channels {
                1 => String::new(),
                n => format!(" in {n} channels, one message each at once"),
            },
            if b.no_bucket {
                "none".to_owned()
            } else {
                format!("{}/s burst {}", b.bucket_rate, b.bucket_burst)
            }
        );
        let _ = writeln!(
            out,
            "  FANOUT_MAX_RPS {} (leased per second from the table), environments per function {}",
            self.max_rps, self.concurrency
        );
        if let Some(pinned) = &run.pinned {
            let _ = writeln!(out, "  {pinned}");
        }
        let first_post = self
            .counter
            .first_big
            .get()
            .map_or(0.0, |at| at.duration_since(run.sent).as_secs_f64());
        match run.done_at {
            Some(t) => _ = writeln!(
                out,
                "  all reached in {:.2} s (write of the message to the last member's post; the first post after {first_post:.2} s)",
                t.as_secs_f64()
            ),
            None => _ = writeln!(out, "  NOT all reached within {} s", b.timeout_secs),
        }
    }

    /// The CPU the functions and the emulated AWS side used, the single-channel figure beside it,
    /// and the functions' peak memory.
    fn write_cpu(&self, out: &mut String) {
        let (b, run) = (self.bench, self.broadcast);
        let function_cpu: Duration = run.cpu.iter().map(|(_, c)| *c).sum();
        let big_posts = self.counter.big_posts.load(Ordering::Relaxed);
        let per_post_us = function_cpu.as_secs_f64() * 1e6 / (big_posts.max(1) as f64);
        let _ = writeln!(
            out,
            "  functions' CPU during the broadcast: {} = {:.2} s, {:.0}% of its wall time; {:.0} posts per CPU-second ({:.1} µs per post of the broadcast)",
            run.cpu
                .iter()
                .map(|(n, c)| format!("{n} {:.2} s", c.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", "),
            function_cpu.as_secs_f64(),
            100.0 * function_cpu.as_secs_f64() / run.done_at.unwrap_or(run.sent.elapsed()).as_secs_f64().max(1e-9),
            big_posts as f64 / function_cpu.as_secs_f64().max(1e-9),
            per_post_us
        );
        let _ = writeln!(
            out,
            "  on {} meanwhile: moto {:.2} s, the @connections server {:.2} s ({:.1} µs per post)",
            match &b.aws_core {
                Some(core) => format!("core {core}"),
                None => "the same cores".to_owned(),
            },
            run.moto_cpu.as_secs_f64(),
            run.server_cpu.as_secs_f64(),
            run.server_cpu.as_secs_f64() * 1e6 / (big_posts.max(1) as f64)
        );
        if let (Some(before), Some(after)) = run.single {
            let single = (before + after) / 2.0;
            let _ = writeln!(
                out,
                "  the single channel on the same cores (bench fanout --throughput-only), just before and just after: \
                 {before:.1} and {after:.1} µs per post; this run's posts per CPU-second are {:.0}% of their mean's",
                100.0 * single / per_post_us.max(1e-9)
            );
        }
        for (name, kb) in &run.rss {
            let _ = writeln!(out, "  peak RSS {name}: {:.1} MB", *kb as f64 / 1024.0);
        }
    }
}

/// The small channel's deliveries during the broadcast.
struct SmallChannel {
    /// Posts to its members.
    posts: usize,
    /// Each delivery's time from the message's write, sorted.
    latencies: Vec<Duration>,
    /// The three slowest messages: (latency, when sent, from the broadcast's start).
    slowest: Vec<(Duration, Duration)>,
    messages: usize,
    expected: usize,
}

impl SmallChannel {
    fn of(counter: &Counter, small_sent: &HashMap<String, Instant>, sent: Instant, members: usize) -> SmallChannel {
        let small_posts = counter.small.lock().unwrap().clone();
        let mut latencies: Vec<Duration> = small_posts
            .iter()
            .filter_map(|(_, body, at)| Some(at.duration_since(*small_sent.get(body)?)))
            .collect();
        latencies.sort();
        // The slowest messages, by when they were sent: where a high p99 comes from.
        let mut slowest: Vec<(Duration, Duration)> = small_posts
            .iter()
            .filter_map(|(_, body, at)| {
                let sent_at = *small_sent.get(body)?;
                Some((at.duration_since(sent_at), sent_at.duration_since(sent)))
            })
            .collect();
        slowest.sort_by(|a, b| b.cmp(a));
        slowest.dedup_by_key(|(_, offset)| *offset);
        slowest.truncate(3);
        SmallChannel {
            posts: small_posts.len(),
            latencies,
            slowest,
            messages: small_sent.len(),
            expected: small_sent.len() * members,
        }
    }

    fn write(&self, out: &mut String, members: usize) {
        let p = |q: f64| {
            self.latencies
                .get(((self.latencies.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .map(|d| d.as_millis())
                .unwrap_or(0)
        };
        let _ = writeln!(
            out,
            "  small channel ({members} members, {} messages during the broadcast): {} of {} deliveries, p50 {} ms, p99 {} ms, max {} ms",
            self.messages,
            self.latencies.len(),
            self.expected,
            p(0.5),
            p(0.99),
            p(1.0)
        );
        let _ = writeln!(
            out,
            "    slowest: {}",
            self.slowest
                .iter()
                .map(|(latency, offset)| format!("{} ms (sent {:.1} s in)", latency.as_millis(), offset.as_secs_f64()))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

/// How the broadcast used FANOUT_MAX_RPS, from @connections' own per-second counts: every
/// second from its first post to its last (the small channel's posts in them count too: the
/// budget is the whole fanout's).
struct BudgetUse {
    lines: Vec<String>,
    seconds_over: usize,
    /// The mean share of FANOUT_MAX_RPS posted in the seconds wholly inside the broadcast
    /// (0 when it took under three seconds, as then none is whole).
    whole_share: f64,
}

impl BudgetUse {
    fn of(seconds: &[Second], first: u64, last: u64, max_rps: u64) -> Self {
        let mut during: Vec<Second> = seconds
            .iter()
            .filter(|s| s.unix >= first && s.unix <= last)
            .copied()
            .collect();
        during.sort_by_key(|s| s.unix);
        let (report, mut lines) = crate::budget::budget_report(&during, max_rps);
        let whole: Vec<u64> = during
            .iter()
            .filter(|s| s.unix > first && s.unix < last)
            .map(|s| s.posts)
            .collect();
        let mean = whole.iter().sum::<u64>() as f64 / whole.len().max(1) as f64;
        let whole_share = mean / max_rps as f64;
        lines.push(format!(
            "  whole seconds of the broadcast: {}, posts per second mean {mean:.0} ({:.1}% of {max_rps}), min {}; each second: {}",
            whole.len(),
            100.0 * whole_share,
            whole.iter().min().copied().unwrap_or(0),
            during.iter().map(|s| s.posts.to_string()).collect::<Vec<_>>().join(" ")
        ));
        BudgetUse {
            lines,
            seconds_over: report["secondsOver"].as_u64().unwrap_or(0) as usize,
            whole_share,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::BudgetUse;
    use wsfan_local::per_second::Second;

    fn second(unix: u64, posts: u64) -> Second {
        Second {
            unix,
            requests: posts,
            posts,
            ..Second::default()
        }
    }

    #[test]
    fn the_budget_share_counts_only_the_broadcasts_whole_seconds() {
        // Seconds 10 and 14 are the broadcast's partial first and last; 9 and 15 are outside it.
        let seconds = [
            second(9, 5000),
            second(10, 300),
            second(11, 4600),
            second(12, 4800),
            second(13, 4700),
            second(14, 100),
            second(15, 5001),
        ];
        let used = BudgetUse::of(&seconds, 10, 14, 5000);
        assert_eq!(used.seconds_over, 0, "second 15 is after the broadcast");
        assert!((used.whole_share - 0.94).abs() < 1e-9, "{}", used.whole_share);
        let over = BudgetUse::of(&[second(1, 10), second(2, 5001), second(3, 10)], 1, 3, 5000);
        assert_eq!(over.seconds_over, 1);
        assert!(BudgetUse::of(&[second(1, 10), second(2, 10)], 1, 2, 5000).whole_share == 0.0);
    }
}
