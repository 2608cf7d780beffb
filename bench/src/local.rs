//! `wsfan-bench local`: `wsfan dev` under load, driven as its users drive it.
//!
//! It starts the stack as `scripts/dev` does (`wsfan dev`, as a child process, with the Lambda
//! binaries beside it), opens real WebSocket clients, joins them to one channel, has some
//! of them send at a steady rate, and counts every delivery by `messageId`. Then, optionally, a
//! soak (one client sending frame after frame) and the read of a large channel's members through
//! the fanout's paged Query. Every figure is printed with the counts that show it happened, and
//! the last line is the whole report as JSON (`RESULT {...}`) for scripts and tests.

mod clients;
mod flood;
mod large_channel;
mod leftovers;
mod soak;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::client::{connect_and_join, Socket};
use crate::dev_process::{cpu_seconds, dev_options, DevProcess};
use crate::figures::{build_profile, ms, percentile};
use clients::{run_client, settle};

/// The channel the clients join.
const CHANNEL: &str = "workspace:bench";

/// What the clients saw, shared by their tasks (local/clients.rs writes it).
#[derive(Default)]
struct Seen {
    /// Every frame any client received (for the quiet-period check).
    frames: AtomicU64,
    /// WebSocket messages received (a batch frame is one).
    posts: AtomicU64,
    presence: AtomicU64,
    /// `error` frames: answers that refused a frame.
    errors: AtomicU64,
    /// (client, messageId, clientMsgId, when) for every `message` frame.
    messages: Mutex<Vec<(usize, String, String, Instant)>>,
}

/// What to run; see `wsfan-bench local --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalBench {
    /// The repository (for sam/template.yaml, scripts/ and .venv).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// WebSocket clients, all joined to one channel.
    #[arg(long, default_value_t = 1000)]
    pub clients: usize,
    /// How many of them send.
    #[arg(long, default_value_t = 10)]
    pub senders: usize,
    /// Messages each sender sends.
    #[arg(long, default_value_t = 20)]
    pub messages: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 2.0)]
    pub rate: f64,
    /// sendMessage frames in a row from one client, each after the last one's ack (0: none). The
    /// soak measures the pipeline, so the stack runs without the limit per connection.
    #[arg(long, default_value_t = 0, conflicts_with = "flood")]
    pub soak: usize,
    /// The limit per connection under a flood: one client sends this many frames a second while
    /// another, in the same channel, sends a message every 50 ms; its acks' p99 is compared with
    /// a run without the flood (0: none). The stack keeps the template's limit.
    #[arg(long, default_value_t = 0.0)]
    pub flood: f64,
    /// How long each of the two flood runs lasts. 30 s gives each p99 about 600 acks; runs of
    /// 10 s (200 acks) put the same commit anywhere from 1.9x to 2.6x (BENCHMARKS.md, "flood").
    #[arg(long, default_value_t = 30)]
    pub flood_secs: u64,
    /// Memberships of one channel to write, then read through the fanout's paged Query (0: none).
    #[arg(long, default_value_t = 0)]
    pub members: usize,
    /// Upgrades in flight at once while the clients connect.
    #[arg(long, default_value_t = 50)]
    pub connect_concurrency: usize,
    /// Clients connect without `?batch=1`, and get one frame a post (as the seeds' pages do)
    /// instead of the batch frames the JS client asks for.
    #[arg(long)]
    pub no_batch: bool,
    /// Faults for `wsfan dev --inject` (e.g. 'ddb-conflict=0.05,ddb-throttle=0.02'): the run
    /// then also counts error answers, which must stay 0.
    #[arg(long, value_name = "SPEC")]
    pub inject: Option<String>,
    /// The seed of the fault draws (`wsfan dev --inject-seed`).
    #[arg(long, requires = "inject")]
    pub inject_seed: Option<u64>,
}

pub async fn run(bench: LocalBench) -> Result<String, String> {
    let mut extra = dev_options(bench.inject.as_deref(), bench.inject_seed, None);
    // The soak sends frame after frame from one client as fast as the acks come: it measures the
    // pipeline, not the limit per connection (`--flood` does).
    if bench.flood <= 0.0 {
        extra.extend(["--rate-limit".to_owned(), "0:1".to_owned()]);
    }
    let stack = DevProcess::start(&bench.repo, "local", &extra)?;
    let result = measure(&bench, &stack).await;
    let peaks = stack.peak_rss();
    let timeouts = stack.timeouts();
    stack.stop();
    let mut report = result?;

    println!("peak RSS (VmHWM) and CPU time of every process of the stack:");
    for (name, pid, kib, cpu) in &peaks {
        println!(
            "  {name:<16} pid {pid:<7} {:>8.1} MB {cpu:>8.1} s CPU",
            *kib as f64 / 1024.0
        );
    }
    println!(
        "  this harness (the clients)      {:>8.1} s CPU",
        cpu_seconds(std::process::id())
    );
    println!("invocations that timed out: {timeouts:?}");
    report["peakRssMb"] = json!(peaks
        .iter()
        .map(
            |(name, pid, kib, cpu)| json!({"process": name, "pid": pid, "mb": *kib as f64 / 1024.0, "cpuSeconds": cpu})
        )
        .collect::<Vec<_>>());
    report["timeouts"] = json!(timeouts);
    // A figure counts only if nothing was lost and nothing ran into its timeout on the way.
    let missing = report["deliveries"]["missing"].as_u64().unwrap_or(0);
    let timed_out: usize = timeouts.values().sum();
    if missing > 0 || timed_out > 0 {
        println!("RESULT {report}");
        return Err(format!(
            "bench local failed: {missing} deliveries missing, {timed_out} invocations timed out"
        ));
    }
    Ok(format!("RESULT {report}"))
}

async fn measure(bench: &LocalBench, stack: &DevProcess) -> Result<Value, String> {
    let mut report = json!({"clients": bench.clients, "build": build_profile()});
    println!(
        "wsfan-bench local ({} build): {} clients, {} senders x {} messages at {}/s, soak {}, members {}",
        build_profile(),
        bench.clients,
        bench.senders,
        bench.messages,
        bench.rate,
        bench.soak,
        bench.members
    );
    let seen = Arc::new(Seen::default());
    let outboxes = connect_clients(bench, stack, &seen, &mut report).await;
    let sends = send(bench, &seen, &outboxes).await;
    count_deliveries(&seen, &sends, outboxes.len(), &mut report);
    leave(stack, &seen, outboxes, &mut report).await?;

    if bench.soak > 0 {
        report["soak"] = soak::soak(&stack.ws_url, bench.soak).await?;
    }
    if bench.flood > 0.0 {
        report["flood"] = flood::flood(&stack.ws_url, bench.flood, Duration::from_secs(bench.flood_secs)).await?;
    }
    if bench.members > 0 {
        report["largeChannel"] = large_channel::large_channel(stack, bench.members).await?;
    }
    Ok(report)
}

/// Connects and joins every client, with a bounded number of upgrades in flight, and waits for
/// their presence frames to pass: each client's outbox, by index.
async fn connect_clients(
    bench: &LocalBench,
    stack: &DevProcess,
    seen: &Arc<Seen>,
    report: &mut Value,
) -> HashMap<usize, mpsc::UnboundedSender<String>> {
    let started = Instant::now();
    let joined: Vec<Result<(usize, Socket, Duration), String>> = futures::stream::iter(0..bench.clients)
        .map(|i| {
            let url = stack.ws_url.clone();
            let batch = !bench.no_batch;
            async move {
                connect_and_join(&url, &format!("bench-{i}"), CHANNEL, batch)
                    .await
                    .map(|(s, c)| (i, s, c))
            }
        })
        .buffer_unordered(bench.connect_concurrency.max(1))
        .collect()
        .await;
    let join_time = started.elapsed();
    let mut outboxes = HashMap::new();
    let mut connect_times = Vec::new();
    let mut failures = Vec::new();
    for outcome in joined {
        match outcome {
            Ok((i, socket, connected)) => {
                connect_times.push(connected);
                outboxes.insert(i, run_client(i, socket, seen.clone()));
            }
            Err(e) => failures.push(e),
        }
    }
    connect_times.sort();
    println!(
        "connect and join: {} of {} clients in {:.2} s (upgrade p50 {} ms, p99 {} ms); {} failed",
        outboxes.len(),
        bench.clients,
        join_time.as_secs_f64(),
        ms(percentile(&connect_times, 50.0)),
        ms(percentile(&connect_times, 99.0)),
        failures.len()
    );
    for f in failures.iter().take(5) {
        println!("  {f}");
    }
    let drained = settle(seen, Duration::from_secs(2), Duration::from_secs(600)).await;
    println!(
        "presence fanout settled {:.2} s after the last join ({} presence frames in {} posts; clients {})",
        drained.as_secs_f64(),
        seen.presence.load(Ordering::Relaxed),
        seen.posts.load(Ordering::Relaxed),
        if bench.no_batch {
            "one frame a post"
        } else {
            "asked for batches"
        }
    );
    report["connectJoinSeconds"] = json!(join_time.as_secs_f64());
    report["joined"] = json!(outboxes.len());
    report["joinFailures"] = json!(failures.len());
    report["presenceSettledSeconds"] = json!(drained.as_secs_f64());
    report["presenceFrames"] = json!(seen.presence.load(Ordering::Relaxed));
    report["batch"] = json!(!bench.no_batch);
    outboxes
}

/// The messages sent, and when.
struct Sends {
    total: usize,
    /// clientMsgId -> when it went to its sender's outbox.
    sent_at: HashMap<String, Instant>,
    /// From the first send until every delivery was in (or the wait gave up).
    took: Duration,
}

/// Senders: round robin over the first `senders` clients, at `rate` overall; then the wait for
/// every delivery (two minutes at most).
async fn send(bench: &LocalBench, seen: &Seen, outboxes: &HashMap<usize, mpsc::UnboundedSender<String>>) -> Sends {
    let total = bench.senders.min(outboxes.len()) * bench.messages;
    let mut sent_at: HashMap<String, Instant> = HashMap::new();
    let interval = Duration::from_secs_f64(1.0 / bench.rate.max(0.001));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let send_started = Instant::now();
    for n in 0..total {
        tick.tick().await;
        let sender = n % bench.senders.max(1);
        let client_msg_id = format!("bench-{n}");
        let frame = json!({"action": "sendMessage", "channel": CHANNEL, "body": format!("message {n}"), "clientMsgId": client_msg_id});
        sent_at.insert(client_msg_id, Instant::now());
        if let Some(outbox) = outboxes.get(&sender) {
            let _ = outbox.send(frame.to_string());
        }
    }
    let expected = total * outboxes.len();
    let deadline = Instant::now() + Duration::from_secs(120);
    while seen.messages.lock().unwrap().len() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    settle(seen, Duration::from_secs(2), Duration::from_secs(10)).await;
    Sends {
        total,
        sent_at,
        took: send_started.elapsed(),
    }
}

/// Counts by (client, messageId): the first arrival is the delivery, later ones duplicates.
fn count_deliveries(seen: &Seen, sends: &Sends, clients: usize, report: &mut Value) {
    let (total, sent_at) = (sends.total, &sends.sent_at);
    let expected = total * clients;
    let mut first: HashMap<(usize, String), Instant> = HashMap::new();
    let mut duplicates = 0usize;
    let mut ids_by_client_msg: HashMap<String, String> = HashMap::new();
    for (client, id, client_msg_id, at) in seen.messages.lock().unwrap().iter() {
        if !client_msg_id.starts_with("bench-") {
            continue;
        }
        ids_by_client_msg.insert(client_msg_id.clone(), id.clone());
        match first.entry((*client, id.clone())) {
            std::collections::hash_map::Entry::Occupied(_) => duplicates += 1,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(*at);
            }
        }
    }
    let sent_by_id: HashMap<&String, &Instant> = ids_by_client_msg
        .iter()
        .filter_map(|(c, id)| sent_at.get(c).map(|at| (id, at)))
        .collect();
    let mut latencies: Vec<Duration> = first
        .iter()
        .filter_map(|((_, id), at)| sent_by_id.get(id).map(|sent| at.saturating_duration_since(**sent)))
        .collect();
    latencies.sort();
    let delivered = first.len();
    let missing = expected.saturating_sub(delivered);
    let unseen_messages = total.saturating_sub(ids_by_client_msg.len());
    println!(
        "fanout: {total} messages to {clients} clients in {:.1} s: {delivered} of {expected} deliveries, {missing} missing, {duplicates} duplicated ({unseen_messages} messages never seen by anyone)",
        sends.took.as_secs_f64()
    );
    println!(
        "send to delivery: p50 {} ms, p99 {} ms, max {} ms",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default())
    );
    report["messages"] = json!(total);
    report["errorAnswers"] = json!(seen.errors.load(Ordering::Relaxed));
    report["deliveries"] =
        json!({"expected": expected, "delivered": delivered, "missing": missing, "duplicated": duplicates});
    report["deliveryMs"] = json!({"p50": ms(percentile(&latencies, 50.0)), "p99": ms(percentile(&latencies, 99.0))});
    // Every WebSocket message the clients got, presence and all: with batches, several frames each.
    report["posts"] = json!(seen.posts.load(Ordering::Relaxed));
}

/// Closes the fanout clients (before the soak, as clients leave); once they have gone, nothing
/// of theirs may stay: when every `$disconnect` has run (read from the stack's log, which costs
/// moto nothing), one scan of the table.
async fn leave(
    stack: &DevProcess,
    seen: &Seen,
    outboxes: HashMap<usize, mpsc::UnboundedSender<String>>,
    report: &mut Value,
) -> Result<(), String> {
    let closing_from = crate::dev_log::log_len(&stack.log);
    let closed = outboxes.len();
    drop(outboxes);
    settle(seen, Duration::from_secs(1), Duration::from_secs(60)).await;
    let disconnects = leftovers::wait_for_disconnects(stack, closing_from, closed, Duration::from_secs(300)).await;
    let left_behind = leftovers::left_behind(stack).await?;
    println!(
        "left behind once the clients had gone: {left_behind} ({} $disconnects ran, {} of them FAILED)",
        disconnects.0, disconnects.1
    );
    report["leftBehind"] = left_behind;
    report["disconnects"] = json!({"ran": disconnects.0, "failed": disconnects.1});
    Ok(())
}
