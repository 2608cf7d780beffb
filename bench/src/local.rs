//! `wsfan-bench local`: `wsfan dev` under load, driven as its users drive it.
//!
//! It starts the stack as `scripts/dev` does (`wsfan dev`, as a child process, with the Lambda
//! binaries beside it), opens real WebSocket clients, joins them to one channel, has some
//! of them send at a steady rate, and counts every delivery by `messageId`. Then, optionally, a
//! soak (one client sending frame after frame) and the read of a large channel's members through
//! the fanout's paged Query. Every figure is printed with the counts that show it happened, and
//! the last line is the whole report as JSON (`RESULT {...}`) for scripts and tests.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wsfan_shared::auth::{mint_hs256, Claims};
use wsfan_shared::channel::ChannelId;
use wsfan_shared::model::keys;
use wsfan_shared::store::{DynamoStore, Members};

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

/// The stack under test: a `wsfan dev` child process (`bench local`, `bench hot`).
pub(crate) struct DevProcess {
    child: Child,
    pub(crate) http_url: String,
    pub(crate) ws_url: String,
    pub(crate) moto: String,
    pub(crate) table: String,
    /// Its standard error: the invocation log.
    pub(crate) log: PathBuf,
}

/// The user's `wsfan` of the same build, whose `dev` the benchmarks drive.
fn wsfan_beside_me() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let wsfan = me.with_file_name("wsfan");
    if wsfan.exists() {
        Ok(wsfan)
    } else {
        Err(format!(
            "{} is missing: build it with the benchmark (cargo build --workspace --bins)",
            wsfan.display()
        ))
    }
}

impl DevProcess {
    /// Starts `wsfan dev` with the template's defaults and `extra` options (`--inject`); its log
    /// goes to `wsfan-bench-{name}-PID.log` in the temporary directory.
    pub(crate) fn start(repo: &Path, name: &str, extra: &[String]) -> Result<DevProcess, String> {
        let wsfan = wsfan_beside_me()?;
        let log = std::env::temp_dir().join(format!("wsfan-bench-{name}-{}.log", std::process::id()));
        let mut command = Command::new(wsfan);
        wsfan_local::children::die_with_parent(&mut command);
        let mut child = command
            .args(["dev", "--port", "0", "--moto-port", "0", "--repo"])
            .arg(repo)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("starting wsfan dev: {e}"))?;
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let ready = lines.next().and_then(Result::ok).unwrap_or_default();
        let env = lines.next().and_then(Result::ok).unwrap_or_default();
        if !ready.starts_with("wsfan dev ready:") {
            let _ = child.kill();
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            return Err(format!("wsfan dev did not start: {ready:?}\n{said}"));
        }
        let field = |name: &str| {
            env.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{name}=")))
                .unwrap_or_default()
                .to_owned()
        };
        Ok(DevProcess {
            http_url: ready.split_whitespace().nth(3).unwrap_or_default().to_owned(),
            ws_url: ready.split_whitespace().nth(4).unwrap_or_default().to_owned(),
            moto: field("moto"),
            table: field("table"),
            child,
            log,
        })
    }

    /// Every process of the stack, with its name, peak resident memory (VmHWM) in KiB and the
    /// CPU seconds it used.
    pub(crate) fn peak_rss(&self) -> Vec<(String, u32, u64, f64)> {
        let mut pids = vec![self.child.id()];
        pids.extend(wsfan_local::children::descendants(self.child.id()));
        pids.into_iter()
            .filter_map(|pid| {
                let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
                let field = |name: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                };
                let name = field("Name:")?;
                let hwm = field("VmHWM:")?.trim_end_matches("kB").trim().parse().ok()?;
                let cmdline = std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let name = if cmdline.contains("moto_server.py") {
                    "moto".to_owned()
                } else {
                    name
                };
                Some((name, pid, hwm, cpu_seconds(pid)))
            })
            .collect()
    }

    /// Invocations the stack's log reports as timed out, by function.
    pub(crate) fn timeouts(&self) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        // Only the invocation lines: a function's own warning may say "timed out" too.
        for line in std::fs::read_to_string(&self.log).unwrap_or_default().lines() {
            if let Some(invocation) = crate::dev_log::invocation(line).filter(|i| i.timed_out) {
                *counts.entry(invocation.function).or_default() += 1;
            }
        }
        counts
    }

    /// SIGTERM, as Ctrl-C would, and the wait for the stack to end.
    pub(crate) fn stop(mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// User and system CPU time of `pid`, in seconds.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    crate::process::cpu_time_of(&pid.to_string()).as_secs_f64()
}

pub(crate) fn token(sub: &str) -> String {
    let claims = Claims {
        sub: sub.into(),
        exp: wsfan_shared::clock::now_secs() + 6 * 3600,
        nbf: None,
        channels: vec!["workspace:*".into()],
        role: None,
        aud: None,
        iss: None,
    };
    mint_hs256(wsfan_local::dev::DEV_SECRET, &claims)
}

/// What the clients saw, shared by their tasks.
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

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a socket and joins `channel`, asking for batch frames if `batch`; returns the socket
/// once `joined` came back.
async fn connect_and_join(url: &str, sub: &str, channel: &str, batch: bool) -> Result<(Socket, Duration), String> {
    connect_and_join_with(url, sub, channel, if batch { "&batch=1" } else { "" }).await
}

/// [`connect_and_join`] with more query parameters on the upgrade (`&batch=1`).
pub(crate) async fn connect_and_join_with(
    url: &str,
    sub: &str,
    channel: &str,
    query: &str,
) -> Result<(Socket, Duration), String> {
    let started = Instant::now();
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("{url}?token={}{query}", token(sub)))
        .await
        .map_err(|e| format!("{sub}: connecting: {e}"))?;
    let connected = started.elapsed();
    let join = json!({"action": "join", "channel": channel}).to_string();
    socket
        .send(Message::Text(join.into()))
        .await
        .map_err(|e| format!("{sub}: {e}"))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(60), socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                match frame["type"].as_str() {
                    Some("joined") => return Ok((socket, connected)),
                    Some("error") => return Err(format!("{sub}: join refused: {frame}")),
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("{sub}: waiting for joined: {other:?}")),
        }
    }
}

/// Reads one client's socket until the end, recording what arrives; sends what `outbox` says.
fn run_client(index: usize, socket: Socket, seen: Arc<Seen>) -> mpsc::UnboundedSender<String> {
    let (tx, mut outbox) = mpsc::unbounded_channel::<String>();
    let (mut sink, mut stream) = socket.split();
    tokio::spawn(async move {
        while let Some(text) = outbox.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let Message::Text(text) = message else { continue };
            seen.frames.fetch_add(1, Ordering::Relaxed);
            seen.posts.fetch_add(1, Ordering::Relaxed);
            let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            // A batch frame carries several, in order; anything else is one.
            let frames = match frame["type"].as_str() {
                Some("batch") => match frame {
                    Value::Object(mut batch) => match batch.remove("frames") {
                        Some(Value::Array(frames)) => frames,
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                },
                _ => vec![frame],
            };
            let now = Instant::now();
            for frame in frames {
                match frame["type"].as_str() {
                    Some("message") => {
                        let id = frame["messageId"].as_str().unwrap_or_default().to_owned();
                        let client_id = frame["clientMsgId"].as_str().unwrap_or_default().to_owned();
                        seen.messages.lock().unwrap().push((index, id, client_id, now));
                    }
                    Some("presence") => {
                        seen.presence.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("error") => {
                        seen.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    });
    tx
}

/// Waits until no client has received a frame for `quiet`, at most `limit`.
async fn settle(seen: &Seen, quiet: Duration, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut last = seen.frames.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = seen.frames.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= quiet {
            break;
        }
    }
    still_since.duration_since(started)
}

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

pub async fn run(bench: LocalBench) -> Result<String, String> {
    let mut extra = Vec::new();
    if let Some(spec) = &bench.inject {
        extra.extend(["--inject".to_owned(), spec.clone()]);
    }
    if let Some(seed) = bench.inject_seed {
        extra.extend(["--inject-seed".to_owned(), seed.to_string()]);
    }
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
    let channel = "workspace:bench";

    // Connect and join, with a bounded number of upgrades in flight.
    let started = Instant::now();
    let joined: Vec<Result<(usize, Socket, Duration), String>> = futures::stream::iter(0..bench.clients)
        .map(|i| {
            let url = stack.ws_url.clone();
            let batch = !bench.no_batch;
            async move {
                connect_and_join(&url, &format!("bench-{i}"), channel, batch)
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
    let drained = settle(&seen, Duration::from_secs(2), Duration::from_secs(600)).await;
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

    // Senders: round robin over the first `senders` clients, at `rate` overall.
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
        let frame = json!({"action": "sendMessage", "channel": channel, "body": format!("message {n}"), "clientMsgId": client_msg_id});
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
    settle(&seen, Duration::from_secs(2), Duration::from_secs(10)).await;
    let send_time = send_started.elapsed();

    // Count by (client, messageId): the first arrival is the delivery, later ones duplicates.
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
        "fanout: {total} messages to {} clients in {:.1} s: {delivered} of {expected} deliveries, {missing} missing, {duplicates} duplicated ({unseen_messages} messages never seen by anyone)",
        outboxes.len(),
        send_time.as_secs_f64()
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

    // Close the fanout clients before the soak, as clients leave.
    let closing_from = crate::dev_log::log_len(&stack.log);
    let closed = outboxes.len();
    drop(outboxes);
    settle(&seen, Duration::from_secs(1), Duration::from_secs(60)).await;
    // Once they have gone, nothing of theirs may stay: when every `$disconnect` has run (read
    // from the stack's log, which costs moto nothing), one scan of the table.
    let disconnects = wait_for_disconnects(stack, closing_from, closed, Duration::from_secs(300)).await;
    let left_behind = left_behind(stack).await?;
    println!(
        "left behind once the clients had gone: {left_behind} ({} $disconnects ran, {} of them FAILED)",
        disconnects.0, disconnects.1
    );
    report["leftBehind"] = left_behind;
    report["disconnects"] = json!({"ran": disconnects.0, "failed": disconnects.1});

    if bench.soak > 0 {
        report["soak"] = soak(&stack.ws_url, bench.soak).await?;
    }
    if bench.flood > 0.0 {
        report["flood"] = flood(&stack.ws_url, bench.flood, Duration::from_secs(bench.flood_secs)).await?;
    }
    if bench.members > 0 {
        report["largeChannel"] = large_channel(stack, bench.members).await?;
    }
    Ok(report)
}

/// Waits until `count` `$disconnect` invocations are in the stack's log after byte `from`, or
/// `within` passes: (ran, failed).
async fn wait_for_disconnects(stack: &DevProcess, from: usize, count: usize, within: Duration) -> (usize, usize) {
    let deadline = Instant::now() + within;
    loop {
        let log = crate::dev_log::log_between(&stack.log, from, None);
        let disconnects: Vec<_> = log
            .lines()
            .filter(|line| line.contains("$disconnect"))
            .filter_map(crate::dev_log::invocation)
            .filter(|i| i.function == "ws-disconnect")
            .collect();
        let failed = disconnects.iter().filter(|i| i.failed).count();
        if disconnects.len() >= count || Instant::now() >= deadline {
            return (disconnects.len(), failed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the clients left in the table, by kind: what a connection writes that must go with it
/// (its connection item and limiter item under `CONN#`, its memberships, its place in a presence
/// item). Messages, heads, dedupe and budget items are the channel's, and an emptied presence
/// item stays until its TTL (docs/DESIGN-NOTES.md). 0, or the run fails with the counts.
async fn left_behind(stack: &DevProcess) -> Result<Value, String> {
    let sdk = wsfan_local::moto::sdk_config(&stack.moto).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut pages = client.scan().table_name(&stack.table).into_paginator().items().send();
    while let Some(item) = pages.next().await {
        let item = item.map_err(|e| format!("scanning for leftovers: {e}"))?;
        let text = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
                .unwrap_or("")
        };
        let kind = if text("pk").starts_with(keys::CONN_PREFIX) {
            "connection items"
        } else if text("sk").starts_with(keys::CONN_PREFIX) {
            "memberships"
        } else if text("sk").starts_with(keys::USER_PREFIX) && item.contains_key("connections") {
            "presence items still naming a connection"
        } else {
            continue;
        };
        *counts.entry(kind).or_default() += 1;
    }
    let total: u64 = counts.values().sum();
    if total > 0 {
        return Err(format!(
            "bench local failed: {total} items left behind once every client's $disconnect had run: {counts:?}"
        ));
    }
    Ok(json!(0))
}

/// Sends `frame` and waits, 30 s at most, for its ack, passing over other frames; the time from
/// the send to the ack. `what` names the send in errors; an `error` answer is one.
async fn send_until_ack(
    sink: &mut futures::stream::SplitSink<Socket, Message>,
    stream: &mut futures::stream::SplitStream<Socket>,
    frame: &Value,
    what: &str,
) -> Result<Duration, String> {
    let sent = Instant::now();
    sink.send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                match frame["type"].as_str() {
                    Some("ack") => return Ok(sent.elapsed()),
                    Some("error") => return Err(format!("{what} refused: {frame}")),
                    _ => {}
                }
            }
            Ok(Some(Ok(_))) => {}
            other => return Err(format!("{what}: no ack: {other:?}")),
        }
    }
}

/// A quiet client's ack latency (a message every 50 ms) for `length`, with or without a flooding
/// client in the same channel; the flooder's answers are counted by kind.
async fn flood(url: &str, rate: f64, length: Duration) -> Result<Value, String> {
    async fn quiet_run(url: &str, sub: &str, length: Duration) -> Result<Vec<Duration>, String> {
        let (socket, _) = connect_and_join(url, sub, "workspace:flood", false).await?;
        let (mut sink, mut stream) = socket.split();
        let mut acks = Vec::new();
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < length {
            let frame = json!({"action": "sendMessage", "channel": "workspace:flood", "body": format!("quiet {n}")});
            let took = send_until_ack(&mut sink, &mut stream, &frame, &format!("{sub}: send {n}")).await?;
            acks.push(took);
            n += 1;
            tokio::time::sleep(Duration::from_millis(50).saturating_sub(took)).await;
        }
        acks.sort();
        Ok(acks)
    }

    let baseline = quiet_run(url, "quiet-alone", length).await?;
    let (flooder, _) = connect_and_join(url, "flooder", "workspace:flood", false).await?;
    let (mut sink, mut stream) = flooder.split();
    let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let reader_counts = counts.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                let kind = match frame["type"].as_str() {
                    Some("error") => frame["code"].as_str().unwrap_or("error").to_owned(),
                    Some(other) => other.to_owned(),
                    None => "?".to_owned(),
                };
                *reader_counts.lock().unwrap().entry(kind).or_default() += 1;
            }
        }
    });
    let interval = Duration::from_secs_f64(1.0 / rate);
    let writer = tokio::spawn(async move {
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < length + Duration::from_secs(1) {
            let frame = json!({"action": "sendMessage", "channel": "workspace:flood", "body": format!("flood {sent}")});
            if sink.send(Message::Text(frame.to_string().into())).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep_until((started + interval.mul_f64(sent as f64)).into()).await;
        }
        (sent, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded = quiet_run(url, "quiet-flooded", length).await?;
    let (sent, took) = writer.await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    reader.abort();
    let counts = counts.lock().unwrap().clone();
    let (p99_alone, p99_flooded) = (percentile(&baseline, 99.0), percentile(&flooded, 99.0));
    let ratio = p99_flooded.as_secs_f64() / p99_alone.as_secs_f64().max(1e-9);
    println!(
        "flood: {sent} frames in {:.1} s ({:.0}/s) from one connection, answered {counts:?}",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64()
    );
    println!(
        "flood: the quiet client's ack p99 {} ms alone ({} acks), {} ms during the flood ({} acks): {ratio:.2}x",
        ms(p99_alone),
        baseline.len(),
        ms(p99_flooded),
        flooded.len()
    );
    Ok(json!({
        "floodSent": sent, "floodPerSecond": sent as f64 / took.as_secs_f64(), "floodAnswers": counts,
        "quietP99AloneMs": ms(p99_alone), "quietP99FloodedMs": ms(p99_flooded), "ratio": ratio,
        "quietAcksAlone": baseline.len(), "quietAcksFlooded": flooded.len(),
    }))
}

/// One client sends `count` messages one after another, each after the last one's ack.
async fn soak(url: &str, count: usize) -> Result<Value, String> {
    let (socket, _) = connect_and_join(url, "soaker", "workspace:soak", false).await?;
    let (mut sink, mut stream) = socket.split();
    let mut acks = Vec::with_capacity(count);
    let started = Instant::now();
    for n in 0..count {
        let frame = json!({"action": "sendMessage", "channel": "workspace:soak", "body": format!("soak {n}"), "clientMsgId": format!("soak-{n}")});
        acks.push(send_until_ack(&mut sink, &mut stream, &frame, &format!("soak send {n}")).await?);
        if (n + 1) % 1000 == 0 {
            println!(
                "  soak: {} sends, median ack of the last 1,000 {} ms",
                n + 1,
                ms(median(&acks[n + 1 - 1000..]))
            );
        }
    }
    let window = (count / 10).clamp(1, 1000);
    let head = median(&acks[..window]);
    let tail = median(&acks[count - window..]);
    let ratio = tail.as_secs_f64() / head.as_secs_f64().max(1e-9);
    println!(
        "soak: {count} sendMessage in a row in {:.1} s; median ack first {window}: {} ms, last {window}: {} ms ({ratio:.2}x)",
        started.elapsed().as_secs_f64(),
        ms(head),
        ms(tail)
    );
    Ok(json!({"sends": count, "window": window, "firstMedianMs": ms(head), "lastMedianMs": ms(tail), "ratio": ratio}))
}

fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    percentile(&sorted, 50.0)
}

/// Writes `count` memberships of one channel straight into the table, then reads them back as
/// stream-fanout does (the store's paged Query).
async fn large_channel(stack: &DevProcess, count: usize) -> Result<Value, String> {
    use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
    let sdk = wsfan_local::moto::sdk_config(&stack.moto).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let channel: ChannelId = "workspace:large".parse().map_err(|e| format!("{e:?}"))?;
    let written = Instant::now();
    let batches: Vec<Vec<WriteRequest>> = (0..count)
        .map(|i| {
            let item = HashMap::from([
                ("pk".to_owned(), AttributeValue::S(format!("CHAN#{channel}"))),
                ("sk".to_owned(), AttributeValue::S(format!("CONN#member{i:07}"))),
                ("userId".to_owned(), AttributeValue::S(format!("user{i}"))),
                ("role".to_owned(), AttributeValue::S("member".into())),
                ("joinedAt".to_owned(), AttributeValue::N("1".into())),
            ]);
            let put = PutRequest::builder().set_item(Some(item)).build().expect("item set");
            WriteRequest::builder().put_request(put).build()
        })
        .collect::<Vec<_>>()
        .chunks(25)
        .map(<[WriteRequest]>::to_vec)
        .collect();
    let results: Vec<Result<(), String>> = futures::stream::iter(batches)
        .map(|batch| {
            let (client, table) = (client.clone(), stack.table.clone());
            async move {
                let mut pending = HashMap::from([(table.clone(), batch)]);
                while !pending.is_empty() {
                    let out = client
                        .batch_write_item()
                        .set_request_items(Some(pending))
                        .send()
                        .await
                        .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
                    pending = out.unprocessed_items.unwrap_or_default();
                    pending.retain(|_, v| !v.is_empty());
                }
                Ok(())
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    let write_time = written.elapsed();
    let store = DynamoStore::new(client, &stack.table, Default::default());
    let read = Instant::now();
    let members = store.members(&channel).await.map_err(|e| e.to_string())?;
    let read_time = read.elapsed();
    println!(
        "large channel: {count} memberships written in {:.1} s; the fanout's paged Query read {} of them in {:.2} s",
        write_time.as_secs_f64(),
        members.len(),
        read_time.as_secs_f64()
    );
    Ok(json!({"members": count, "read": members.len(), "readSeconds": read_time.as_secs_f64()}))
}

pub(crate) fn build_profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}
