//! `wsfan-bench hot`: one busy channel through `wsfan dev` with the template's defaults.
//!
//! N members (real WebSocket clients, joined to one channel), the first S of them sending R
//! messages a second together, evenly paced, for T seconds. Every member counts what it got by
//! `messageId`: delivered, missing, duplicated, and the time from the moment its sender wrote the
//! frame to the moment the member read it. Members connect with `batch=1` (unless `--batch
//! false`) and unpack `{"type":"batch","frames":[...]}`; with `--mixed F` a fraction F of them
//! does not ask, and must get exactly one frame per post. A server that does not batch yet simply
//! sends single frames, which count as batches of one.
//!
//! Besides the deliveries it reads from the stack: the invocations that timed out (its log), the
//! `@connections` posts of every second against `FanoutMaxRps` (`GET /dev/stats`), and the
//! functions' measured time, from which, with the messages the clients counted, it prices a
//! million deliveries. The run fails when a delivery is missing, an invocation timed out, a
//! second exceeded the budget, or a batch reached a client that did not ask for one. The last
//! line is `RESULT {json}`.

mod cost;
mod drive;
mod member;
mod report;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::budget::budget_report;
use crate::dev_log::{invocation, log_between};
use crate::dev_process::{dev_options, DevProcess};
use crate::figures::{build_profile, verdict};
use crate::stack_stats::settle;
use cost::report_cost;
use drive::drive;
use member::{connect_members, Member, Members, Shared};
use report::{report_deliveries, report_posts, report_sends};

/// What to run; see `wsfan-bench hot --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct HotBench {
    /// The repository (for sam/template.yaml, scripts/ and .venv).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Members of the channel: real WebSocket clients, each joined to it. The senders are among
    /// them (and so receive their own messages too).
    #[arg(long, default_value_t = 100)]
    pub members: usize,
    /// How many members send (the first ones), taking turns.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Messages per second, all senders together, evenly paced.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// Members connect with `batch=1` and unpack batch frames (`--batch false`: none asks).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub batch: bool,
    /// The fraction of members (the last ones) that connect without `batch=1` even with
    /// `--batch`: each of them must get exactly one frame per post.
    #[arg(long, default_value_t = 0.0)]
    pub mixed: f64,
    /// How long to wait, after the joins, for their presence frames to pass (no post for 2 s)
    /// before measuring; past it the run measures anyway, and says so.
    #[arg(long, default_value_t = 300)]
    pub settle_secs: u64,
    /// How long to wait after the last send for the deliveries still due.
    #[arg(long, default_value_t = 120)]
    pub drain_secs: u64,
    /// Upgrades in flight at once while the members connect.
    #[arg(long, default_value_t = 50)]
    pub connect_concurrency: usize,
    /// Passed to `wsfan dev --inject` (e.g. '429=0.05' or '410=0.2'): faults @connections answers
    /// during the run, to see what the fanout makes of them (the bench's own test uses 410s to
    /// show that a missing delivery fails the run).
    #[arg(long, value_name = "SPEC")]
    pub inject: Option<String>,
    /// Passed to `wsfan dev --inject-seed`.
    #[arg(long, requires = "inject")]
    pub inject_seed: Option<u64>,
}

const CHANNEL: &str = "workspace:hot";
/// The `clientMsgId` prefix of the bench's own messages.
const TAG: &str = "hot-";

pub async fn run(bench: HotBench) -> Result<String, String> {
    if bench.members == 0 || bench.senders == 0 || bench.senders > bench.members {
        return Err("--senders must be between 1 and --members".into());
    }
    if !(bench.rate > 0.0 && bench.seconds > 0.0) {
        return Err("--rate and --seconds must be positive".into());
    }
    if !(0.0..=1.0).contains(&bench.mixed) {
        return Err("--mixed is a fraction of the members, 0 to 1".into());
    }
    let template =
        wsfan_local::template::Template::load(&bench.repo.join("sam/template.yaml")).map_err(|e| e.to_string())?;
    let max_rps: u64 = template
        .parameter_defaults
        .get("FanoutMaxRps")
        .and_then(|v| v.parse().ok())
        .ok_or("sam/template.yaml has no numeric FanoutMaxRps default")?;
    let memory_mb: HashMap<String, u32> = template
        .functions
        .iter()
        .map(|f| (f.binary.clone(), f.memory_mb))
        .collect();

    let extra = dev_options(bench.inject.as_deref(), bench.inject_seed, None);
    let stack = DevProcess::start(&bench.repo, "hot", &extra)?;
    let result = measure(&bench, &stack, max_rps, &memory_mb).await;
    // Every invocation of the run, joins and leaves included: a timeout anywhere is a failure.
    let whole_log = log_between(&stack.log, 0, None);
    let log_path = stack.log.clone();
    stack.stop();
    let (mut report, mut failures) = result?;

    let mut timed_out: BTreeMap<String, usize> = BTreeMap::new();
    let mut failed: BTreeMap<String, usize> = BTreeMap::new();
    let mut invocations = 0usize;
    for i in whole_log.lines().filter_map(invocation) {
        invocations += 1;
        if i.timed_out {
            *timed_out.entry(i.function.clone()).or_default() += 1;
        }
        if i.failed {
            *failed.entry(i.function).or_default() += 1;
        }
    }
    let timeouts: usize = timed_out.values().sum();
    println!(
        "invocations: {invocations} in the whole run; {} FAILED {failed:?}; timed out: {timeouts} {timed_out:?} (log: {})",
        failed.values().sum::<usize>(),
        log_path.display()
    );
    if timeouts > 0 {
        failures.push(format!("{timeouts} invocations timed out: {timed_out:?}"));
    }
    report["invocations"] = json!({"total": invocations, "failed": failed, "timedOut": timed_out});
    report["failures"] = json!(failures);
    verdict("hot", &report, &failures)
}

async fn measure(
    bench: &HotBench,
    stack: &DevProcess,
    max_rps: u64,
    memory_mb: &HashMap<String, u32>,
) -> Result<(Value, Vec<String>), String> {
    let plain_members = if bench.batch {
        (bench.members as f64 * bench.mixed).round() as usize
    } else {
        bench.members
    };
    let batching = bench.members - plain_members;
    println!(
        "wsfan-bench hot ({} build): {} members in {CHANNEL} ({batching} with batch=1, {plain_members} without), the first {} of them sending {} messages/s together for {} s; FanoutMaxRps {max_rps}",
        build_profile(),
        bench.members,
        bench.senders,
        bench.rate,
        bench.seconds
    );
    let shared = Arc::new(Shared::default());
    let mut failures = Vec::new();
    let members = connect_members(bench, stack, &shared, batching, &mut failures).await;
    settle(stack, Duration::from_secs(bench.settle_secs)).await?;
    let window = drive(bench, stack, &shared, &members).await?;
    println!(
        "sent {} messages, paced over {:.1} s ({:.2}/s between the first and the last); measured for {:.1} s",
        window.messages,
        window.sending.as_secs_f64(),
        window.messages.saturating_sub(1) as f64 / window.sending.as_secs_f64().max(1e-9),
        window.length.as_secs_f64()
    );
    let Members { all, outboxes } = members;
    // Close the sockets: the members leave.
    drop(outboxes);
    let all: Vec<(usize, Member)> = all
        .into_iter()
        .map(|(i, m)| (i, std::mem::take(&mut *m.lock().unwrap())))
        .collect();
    let sent_at = std::mem::take(&mut *shared.sent_at.lock().unwrap());

    let mut report = json!({
        "build": build_profile(),
        "members": all.len(),
        "batching": batching,
        "plain": plain_members,
        "senders": bench.senders,
        "rate": bench.rate,
        "seconds": bench.seconds,
        "messages": window.messages,
        "sendingSeconds": window.sending.as_secs_f64(),
        "windowSeconds": window.length.as_secs_f64(),
    });
    report["sends"] = report_sends(&all, window.messages, &mut failures);
    let deliveries = report_deliveries(&all, &window, &sent_at, bench.drain_secs, &mut failures);
    let delivered = deliveries["deliveries"]["delivered"].as_u64().unwrap_or(0);
    // deliveries, deliveryMs, backlog and perMember.
    for (k, v) in deliveries.as_object().into_iter().flatten() {
        report[k] = v.clone();
    }
    report["postsPerFrame"] = report_posts(&all, &mut failures);

    let server_posts: u64 = window.seconds.iter().map(|s| s.posts).sum();
    let client_frames: u64 = all.iter().map(|(_, m)| m.frames).sum();
    println!(
        "@connections: {server_posts} posts in the window ({} delivered, {} answered 429), {:.3} per frame the members read ({client_frames})",
        window.seconds.iter().map(|s| s.delivered).sum::<u64>(),
        window.seconds.iter().map(|s| s.throttled).sum::<u64>(),
        server_posts as f64 / client_frames.max(1) as f64
    );
    report["connections"] = json!({
        "posts": server_posts,
        "billedMessages": window.seconds.iter().map(|s| s.billed_messages).sum::<u64>(),
        "postsPerFrame": server_posts as f64 / client_frames.max(1) as f64,
    });
    let (budget, lines) = budget_report(&window.seconds, max_rps);
    for l in &lines {
        println!("{l}");
    }
    let over = budget["secondsOver"].as_u64().unwrap_or(0);
    if over > 0 {
        failures.push(format!("{over} seconds exceeded FanoutMaxRps {max_rps}"));
    }
    report["budget"] = budget;
    report["cost"] = report_cost(&all, &window, memory_mb, delivered);
    Ok((report, failures))
}
