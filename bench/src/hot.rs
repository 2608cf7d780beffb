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

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wsfan_local::per_second::{billed_messages, Second};

use crate::dev_log::{invocation, log_between, log_len};
use crate::local::{build_profile, connect_and_join_with, ms, percentile, DevProcess, Socket};

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

/// List prices (USD, us-east-1, x86 Lambda, DynamoDB on-demand), as on the providers' pricing
/// pages in 2026: API Gateway's first tier (up to a billion messages a month), no free tier.
mod price {
    /// API Gateway WebSocket: per million messages, each 32 KB or part of one.
    pub const APIGW_MESSAGES: f64 = 1.00;
    /// API Gateway WebSocket: per million connection-minutes.
    pub const APIGW_CONNECTION_MINUTES: f64 = 0.25;
    /// Lambda (x86): per GB-second.
    pub const LAMBDA_GB_SECOND: f64 = 0.000_016_666_7;
    /// Lambda: per million requests.
    pub const LAMBDA_REQUESTS: f64 = 0.20;
    /// DynamoDB on-demand: per million write request units.
    pub const DYNAMODB_WRU: f64 = 0.625;
    /// DynamoDB on-demand: per million read request units.
    pub const DYNAMODB_RRU: f64 = 0.125;
    /// SQS FIFO (the delivery queue): per million requests of up to 64 KB.
    pub const SQS_FIFO_REQUESTS: f64 = 0.50;
}

const CHANNEL: &str = "workspace:hot";
/// The `clientMsgId` prefix of the bench's own messages.
const TAG: &str = "hot-";

/// What one member saw; its reader task writes, the report reads.
#[derive(Default)]
struct Member {
    /// Whether it connected with `batch=1`.
    asked_for_batches: bool,
    /// `@connections` posts it received while measuring (WebSocket messages that are not route
    /// responses).
    posts: u64,
    /// The frames in those posts (a batch counts its frames).
    frames: u64,
    /// Posts that were batch frames.
    batch_posts: u64,
    /// Batch frames it received without having asked for them.
    unasked_batches: u64,
    /// Route responses (acks, error frames answering its own sends).
    route_responses: u64,
    /// API Gateway messages (32 KB each) it received and sent while measuring.
    billed_received: u64,
    billed_sent: u64,
    /// Text it could not read as a frame.
    malformed: u64,
    /// `message` frames of the bench: (messageId, clientMsgId, when read).
    messages: Vec<(String, String, Instant)>,
    /// Its sends' acks: clientMsgId -> messageId.
    acks: HashMap<String, String>,
    /// Its sends that were refused: clientMsgId and the error.
    refused: Vec<(String, String)>,
}

impl Member {
    /// Reads one WebSocket message that arrived `at`: a route response to its own send, one
    /// pushed frame, or a batch of them. Returns how many of the bench's `message` frames it held.
    fn read(&mut self, text: &str, measuring: bool, at: Instant) -> u64 {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            self.malformed += 1;
            return 0;
        };
        if measuring {
            self.billed_received += billed_messages(text.len());
        }
        match frame["type"].as_str() {
            Some("ack") => {
                if let (Some(c), Some(id)) = (frame["clientMsgId"].as_str(), frame["messageId"].as_str()) {
                    self.acks.insert(c.to_owned(), id.to_owned());
                }
                self.route_responses += u64::from(measuring);
                return 0;
            }
            Some("error") => {
                // Only the bench's own sends are answered with an error frame here.
                let c = frame["clientMsgId"].as_str().unwrap_or_default().to_owned();
                self.refused.push((c, frame.to_string()));
                self.route_responses += u64::from(measuring);
                return 0;
            }
            _ => {}
        }
        let frames = if frame["type"] == "batch" {
            // Asked for or not, at any time: a batch to a member that did not ask is a failure.
            self.unasked_batches += u64::from(!self.asked_for_batches);
            self.batch_posts += u64::from(measuring);
            match frame["frames"].as_array() {
                Some(frames) if !frames.is_empty() => frames.clone(),
                _ => {
                    self.malformed += 1;
                    return 0;
                }
            }
        } else {
            vec![frame]
        };
        if measuring {
            self.posts += 1;
            self.frames += frames.len() as u64;
        }
        let mut read = 0;
        for f in frames {
            let client_msg_id = f["clientMsgId"].as_str().unwrap_or_default();
            if f["type"] == "message" && client_msg_id.starts_with(TAG) {
                let id = f["messageId"].as_str().unwrap_or_default().to_owned();
                self.messages.push((id, client_msg_id.to_owned(), at));
                read += 1;
            }
        }
        read
    }
}

/// Shared by every member's tasks.
#[derive(Default)]
struct Shared {
    measuring: AtomicBool,
    /// Every bench `message` frame read by anyone (duplicates too): the drain's progress.
    message_frames: AtomicU64,
    /// clientMsgId -> when its sender wrote the frame to the socket.
    sent_at: Mutex<HashMap<String, Instant>>,
}

/// Reads one member's socket until it closes; writes what its outbox says, recording when.
fn run_member(
    socket: Socket,
    member: Arc<Mutex<Member>>,
    shared: Arc<Shared>,
) -> mpsc::UnboundedSender<(String, String)> {
    let (tx, mut outbox) = mpsc::unbounded_channel::<(String, String)>();
    let (mut sink, mut stream) = socket.split();
    let (writer_member, writer_shared) = (member.clone(), shared.clone());
    tokio::spawn(async move {
        while let Some((client_msg_id, text)) = outbox.recv().await {
            writer_shared
                .sent_at
                .lock()
                .unwrap()
                .insert(client_msg_id, Instant::now());
            let billed = billed_messages(text.len());
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
            if writer_shared.measuring.load(Ordering::Relaxed) {
                writer_member.lock().unwrap().billed_sent += billed;
            }
        }
        let _ = sink.close().await;
    });
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let Message::Text(text) = message else { continue };
            let measuring = shared.measuring.load(Ordering::Relaxed);
            let read = member.lock().unwrap().read(text.as_str(), measuring, Instant::now());
            shared.message_frames.fetch_add(read, Ordering::Relaxed);
        }
    });
    tx
}

/// `GET {base}{path}` as JSON (`base` is `http://host:port`, with or without a trailing `/`).
async fn get_json(base: &str, path: &str) -> Result<Value, String> {
    let authority = base
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| format!("not an http URL: {base}"))?;
    let what = format!("GET {authority}{path}");
    let mut tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.map_err(|e| format!("{what}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("{what}: {}", head.lines().next().unwrap_or_default()));
    }
    serde_json::from_str(body).map_err(|e| format!("{what}: {e}: {body}"))
}

/// What the stack's @connections answered, per second (`wsfan dev`'s `GET /dev/stats`).
pub(crate) async fn connections_stats(http_url: &str) -> Result<Value, String> {
    get_json(http_url, "/dev/stats").await
}

/// DynamoDB request units the stack's moto counted so far (scripts/moto_server.py).
pub(crate) async fn dynamodb_units(moto: &str) -> Result<Value, String> {
    get_json(moto, "/_wsfan/dynamodb-units").await
}

/// Merges the seconds of a `/dev/stats` answer into `seconds` (a later read of the same second
/// has counted at least as much).
fn merge_seconds(seconds: &mut BTreeMap<u64, Second>, stats: &Value) {
    let read: Vec<Second> = serde_json::from_value(stats["perSecond"].clone()).unwrap_or_default();
    for s in read {
        let kept = seconds.entry(s.unix).or_default();
        if s.requests >= kept.requests {
            *kept = s;
        }
    }
}

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

    let mut extra = Vec::new();
    if let Some(spec) = &bench.inject {
        extra.extend(["--inject".to_owned(), spec.clone()]);
    }
    if let Some(seed) = bench.inject_seed {
        extra.extend(["--inject-seed".to_owned(), seed.to_string()]);
    }
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

/// The members, in the order they joined.
struct Members {
    /// (index, what it saw): index < batching asked for batches.
    all: Vec<(usize, Arc<Mutex<Member>>)>,
    outboxes: HashMap<usize, mpsc::UnboundedSender<(String, String)>>,
}

/// Connects and joins every member, `batching` of them (the first) with `batch=1`.
async fn connect_members(
    bench: &HotBench,
    stack: &DevProcess,
    shared: &Arc<Shared>,
    batching: usize,
    failures: &mut Vec<String>,
) -> Members {
    let started = Instant::now();
    let joined: Vec<Result<(usize, Socket), String>> = futures::stream::iter(0..bench.members)
        .map(|i| {
            let url = stack.ws_url.clone();
            let query = if i < batching { "&batch=1" } else { "" };
            async move {
                connect_and_join_with(&url, &format!("hot-{i}"), CHANNEL, query)
                    .await
                    .map(|(s, _)| (i, s))
            }
        })
        .buffer_unordered(bench.connect_concurrency.max(1))
        .collect()
        .await;
    let mut members = Members {
        all: Vec::new(),
        outboxes: HashMap::new(),
    };
    let mut join_failures = Vec::new();
    for outcome in joined {
        match outcome {
            Ok((i, socket)) => {
                let member = Arc::new(Mutex::new(Member {
                    asked_for_batches: i < batching,
                    ..Member::default()
                }));
                members
                    .outboxes
                    .insert(i, run_member(socket, member.clone(), shared.clone()));
                members.all.push((i, member));
            }
            Err(e) => join_failures.push(e),
        }
    }
    println!(
        "connect and join: {} of {} members in {:.1} s; {} failed",
        members.all.len(),
        bench.members,
        started.elapsed().as_secs_f64(),
        join_failures.len()
    );
    for f in join_failures.iter().take(5) {
        println!("  {f}");
    }
    if !join_failures.is_empty() {
        failures.push(format!("{} members could not join", join_failures.len()));
    }
    members
}

/// Waits until @connections delivered nothing for 2 s (the joins' presence frames), at most
/// `limit`.
pub(crate) async fn settle(stack: &DevProcess, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    let mut last = u64::MAX;
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let delivered = connections_stats(&stack.http_url).await?["delivered"]
            .as_u64()
            .unwrap_or(0);
        if delivered != last {
            last = delivered;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(2) {
            println!(
                "presence settled {:.1} s after the last join ({last} posts delivered so far)",
                (quiet_since - started).as_secs_f64()
            );
            return Ok(());
        }
    }
    println!(
        "presence did NOT settle within {} s of the last join ({last} posts delivered so far): measuring anyway, with presence frames still being posted",
        limit.as_secs()
    );
    Ok(())
}

/// What the stack did from the first send to the end of the drain.
struct Window {
    messages: usize,
    sending: Duration,
    length: Duration,
    /// From the last send until every due delivery was read (`None`: not within the limit).
    drained: Option<Duration>,
    /// (seconds into the window, deliveries due and not yet read), each second.
    backlog: Vec<(f64, u64)>,
    /// @connections' counts of each second of the window.
    seconds: Vec<Second>,
    /// The stack's log of the window.
    log: String,
    /// moto's request units at its start and end.
    units: (Value, Value),
}

/// Sends `rate` messages a second for `seconds`, round robin over the senders, then waits for
/// the deliveries still due.
async fn drive(bench: &HotBench, stack: &DevProcess, shared: &Shared, members: &Members) -> Result<Window, String> {
    let log_start = log_len(&stack.log);
    let units_before = dynamodb_units(&stack.moto).await?;
    let mut seconds: BTreeMap<u64, Second> = BTreeMap::new();
    let first_second = wsfan_shared::clock::now_secs().max(0) as u64;
    shared.measuring.store(true, Ordering::Relaxed);
    let window = Instant::now();
    let recipients = members.all.len() as u64;
    let messages = (bench.rate * bench.seconds).round().max(1.0) as usize;
    let mut backlog = Vec::new();
    let mut last_sample = Instant::now();
    let mut last_poll = Instant::now();
    // Once a second: the backlog; every 30 s: @connections' seconds (it keeps a few minutes).
    let mut sample = |due: u64, last_sample: &mut Instant| {
        if last_sample.elapsed() >= Duration::from_secs(1) {
            *last_sample = Instant::now();
            let read = shared.message_frames.load(Ordering::Relaxed);
            backlog.push((window.elapsed().as_secs_f64(), due.saturating_sub(read)));
        }
    };

    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / bench.rate));
    // Behind schedule (a busy machine), catch up: the rate is what was asked.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for n in 0..messages {
        tick.tick().await;
        let client_msg_id = format!("{TAG}{n}");
        let frame = json!({"action": "sendMessage", "channel": CHANNEL, "body": format!("hot {n}"), "clientMsgId": client_msg_id});
        if let Some(outbox) = members.outboxes.get(&(n % bench.senders)) {
            let _ = outbox.send((client_msg_id, frame.to_string()));
        }
        sample((n as u64 + 1) * recipients, &mut last_sample);
        if last_poll.elapsed() >= Duration::from_secs(30) {
            last_poll = Instant::now();
            merge_seconds(&mut seconds, &connections_stats(&stack.http_url).await?);
        }
    }
    let sending = window.elapsed();
    let last_send = Instant::now();

    // Until every due delivery was read (then 2 s more, for duplicates), or the limit.
    let due = messages as u64 * recipients;
    let mut complete_at = None;
    while last_send.elapsed() < Duration::from_secs(bench.drain_secs) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sample(due, &mut last_sample);
        if last_poll.elapsed() >= Duration::from_secs(30) {
            last_poll = Instant::now();
            merge_seconds(&mut seconds, &connections_stats(&stack.http_url).await?);
        }
        match complete_at {
            None if shared.message_frames.load(Ordering::Relaxed) >= due => complete_at = Some(Instant::now()),
            Some(at) if at.elapsed() >= Duration::from_secs(2) => break,
            _ => {}
        }
    }
    shared.measuring.store(false, Ordering::Relaxed);
    merge_seconds(&mut seconds, &connections_stats(&stack.http_url).await?);
    let last_second = wsfan_shared::clock::now_secs().max(0) as u64;
    let log = log_between(&stack.log, log_start, Some(log_len(&stack.log)));
    let units_after = dynamodb_units(&stack.moto).await?;
    Ok(Window {
        messages,
        sending,
        length: window.elapsed(),
        drained: complete_at.map(|at| at.duration_since(last_send)),
        backlog,
        seconds: seconds.range(first_second..=last_second).map(|(_, s)| *s).collect(),
        log,
        units: (units_before, units_after),
    })
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

/// Every send acked, or refused (an error frame), or unanswered.
fn report_sends(all: &[(usize, Member)], messages: usize, failures: &mut Vec<String>) -> Value {
    let acked: usize = all.iter().map(|(_, m)| m.acks.len()).sum();
    let refused: Vec<&(String, String)> = all
        .iter()
        .flat_map(|(_, m)| m.refused.iter())
        .filter(|(c, _)| c.starts_with(TAG))
        .collect();
    let unanswered = messages.saturating_sub(acked + refused.len());
    println!(
        "sends: {acked} acked, {} refused, {unanswered} unanswered",
        refused.len()
    );
    for (c, e) in refused.iter().take(5) {
        println!("  refused {c}: {e}");
    }
    if !refused.is_empty() || unanswered > 0 {
        failures.push(format!("{} sends refused, {unanswered} unanswered", refused.len()));
    }
    json!({"acked": acked, "refused": refused.len(), "unanswered": unanswered})
}

/// Deliveries per member by `messageId`, the time from send to read, and the backlog.
fn report_deliveries(
    all: &[(usize, Member)],
    window: &Window,
    sent_at: &HashMap<String, Instant>,
    drain_secs: u64,
    failures: &mut Vec<String>,
) -> Value {
    let messages = window.messages;
    // A frame without its clientMsgId is matched to its send through the sender's ack.
    let client_msg_of: HashMap<&str, &str> = all
        .iter()
        .flat_map(|(_, m)| m.acks.iter().map(|(c, id)| (id.as_str(), c.as_str())))
        .collect();
    let mut latencies: Vec<Duration> = Vec::new();
    let (mut delivered, mut missing, mut duplicated, mut short) = (0usize, 0usize, 0usize, 0usize);
    let mut worst_p99 = Duration::ZERO;
    let mut per_member = Vec::new();
    for (index, m) in all {
        let mut first: HashMap<&str, Instant> = HashMap::new();
        let mut mine = Vec::new();
        let mut dup = 0usize;
        for (id, client_msg_id, at) in &m.messages {
            let key = if id.is_empty() {
                client_msg_id.as_str()
            } else {
                id.as_str()
            };
            if first.insert(key, *at).is_some() {
                dup += 1;
                continue;
            }
            let client_msg_id = Some(client_msg_id.as_str())
                .filter(|c| !c.is_empty())
                .or_else(|| client_msg_of.get(id.as_str()).copied());
            if let Some(sent) = client_msg_id.and_then(|c| sent_at.get(c)) {
                mine.push(at.saturating_duration_since(*sent));
            }
        }
        mine.sort();
        let p99 = percentile(&mine, 99.0);
        worst_p99 = worst_p99.max(p99);
        let got = first.len().min(messages);
        let lacking = messages - got;
        short += usize::from(lacking > 0);
        delivered += got;
        missing += lacking;
        duplicated += dup;
        per_member.push(json!({
            "member": index, "batch": m.asked_for_batches, "delivered": got, "missing": lacking,
            "duplicated": dup, "p50Ms": ms(percentile(&mine, 50.0)), "p99Ms": ms(p99),
            "posts": m.posts, "frames": m.frames, "batchPosts": m.batch_posts, "unaskedBatches": m.unasked_batches,
        }));
        latencies.extend(mine);
    }
    latencies.sort();
    let expected = messages * all.len();
    println!(
        "deliveries: {delivered} of {expected} ({messages} messages x {} members), {missing} missing ({short} members short), {duplicated} duplicated",
        all.len()
    );
    let max = latencies.last().copied().unwrap_or_default();
    println!(
        "send to delivery ({} deliveries): p50 {} ms, p99 {} ms, max {} ms; the worst member's p99 {} ms",
        latencies.len(),
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 99.0)),
        ms(max),
        ms(worst_p99)
    );
    let mut worst: Vec<&Value> = per_member
        .iter()
        .filter(|m| m["missing"] != 0 || m["duplicated"] != 0)
        .collect();
    worst
        .sort_by_key(|m| std::cmp::Reverse(m["missing"].as_u64().unwrap_or(0) + m["duplicated"].as_u64().unwrap_or(0)));
    for m in worst.iter().take(5) {
        println!(
            "  member {}: {} delivered, {} missing, {} duplicated, p99 {} ms",
            m["member"], m["delivered"], m["missing"], m["duplicated"], m["p99Ms"]
        );
    }
    let peak = window
        .backlog
        .iter()
        .copied()
        .max_by_key(|(_, b)| *b)
        .unwrap_or_default();
    match window.drained {
        Some(d) => println!(
            "backlog: at most {} deliveries due and not yet read ({:.0} s in); all read {:.1} s after the last send",
            peak.1,
            peak.0,
            d.as_secs_f64()
        ),
        None => println!(
            "backlog: at most {} deliveries due and not yet read ({:.0} s in); NOT all read {drain_secs} s after the last send",
            peak.1, peak.0
        ),
    }
    if missing > 0 {
        failures.push(format!("{missing} deliveries missing"));
    }
    json!({
        "deliveries": {"expected": expected, "delivered": delivered, "missing": missing, "duplicated": duplicated, "membersShort": short},
        "deliveryMs": {
            "p50": ms(percentile(&latencies, 50.0)),
            "p99": ms(percentile(&latencies, 99.0)),
            "max": ms(max),
            "worstMemberP99": ms(worst_p99),
        },
        "backlog": {"peak": peak.1, "peakAtSeconds": peak.0, "drainedSecondsAfterLastSend": window.drained.map(|d| d.as_secs_f64())},
        "perMember": per_member,
    })
}

/// Posts per delivered frame as the members counted them, for those that asked for batches and
/// those that did not; each of the latter must have got exactly one frame per post.
fn report_posts(all: &[(usize, Member)], failures: &mut Vec<String>) -> Value {
    let mut kinds = serde_json::Map::new();
    for (name, asked) in [("batching", true), ("plain", false)] {
        let mine: Vec<&Member> = all
            .iter()
            .map(|(_, m)| m)
            .filter(|m| m.asked_for_batches == asked)
            .collect();
        if mine.is_empty() {
            continue;
        }
        let sum = |f: fn(&Member) -> u64| mine.iter().map(|m| f(m)).sum::<u64>();
        let (posts, frames) = (sum(|m| m.posts), sum(|m| m.frames));
        let (batches, unasked) = (sum(|m| m.batch_posts), sum(|m| m.unasked_batches));
        let (route_responses, malformed) = (sum(|m| m.route_responses), sum(|m| m.malformed));
        let ratio = posts as f64 / frames.max(1) as f64;
        println!(
            "posts per delivered frame, {} {name} members: {ratio:.3} ({posts} posts carried {frames} frames; {batches} of the posts were batch frames)",
            mine.len()
        );
        if malformed > 0 {
            println!("  FAILED: {malformed} messages were not frames (not JSON, or a batch without frames)");
            failures.push(format!("{malformed} malformed messages reached {name} members"));
        }
        if !asked {
            if unasked > 0 || posts != frames {
                println!("  FAILED: {unasked} batch frames reached members that did not ask for them");
                failures.push(format!(
                    "{unasked} batch frames reached members without batch=1 ({posts} posts, {frames} frames)"
                ));
            } else {
                println!("  every post to them carried exactly one frame");
            }
        }
        kinds.insert(
            name.to_owned(),
            json!({
                "members": mine.len(), "posts": posts, "frames": frames, "batchPosts": batches,
                "unaskedBatches": unasked, "postsPerFrame": ratio, "routeResponses": route_responses,
                "malformed": malformed,
            }),
        );
    }
    Value::Object(kinds)
}

/// The calls by operation that moto counted (under `key`) between two reads.
pub(crate) fn calls_between(before: &Value, after: &Value, key: &str) -> BTreeMap<String, u64> {
    after[key]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(op, n)| {
            let n = n.as_u64().unwrap_or(0);
            (op.clone(), n.saturating_sub(before[key][op].as_u64().unwrap_or(0)))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// What the window would have cost on AWS at list prices, per million deliveries.
fn report_cost(all: &[(usize, Member)], window: &Window, memory_mb: &HashMap<String, u32>, delivered: u64) -> Value {
    let mut gb_seconds = 0.0;
    let mut requests = 0u64;
    let mut by_function: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for i in window.log.lines().filter_map(invocation) {
        let mb = memory_mb.get(&i.function).copied().unwrap_or(128);
        // Lambda bills each invocation's duration rounded up to the millisecond.
        gb_seconds += i.millis.max(1) as f64 / 1000.0 * f64::from(mb) / 1024.0;
        requests += 1;
        let entry = by_function.entry(i.function).or_default();
        entry.0 += 1;
        entry.1 += i.millis;
    }
    let received: u64 = all.iter().map(|(_, m)| m.billed_received).sum();
    let sent: u64 = all.iter().map(|(_, m)| m.billed_sent).sum();
    let apigw_messages = received + sent;
    let connection_minutes = all.len() as f64 * window.length.as_secs_f64() / 60.0;
    let (before, after) = &window.units;
    let delta = |k: &str| after[k].as_f64().unwrap_or(0.0) - before[k].as_f64().unwrap_or(0.0);
    let (wru, rru) = (delta("wru"), delta("rru"));
    let calls = calls_between(before, after, "calls");
    let sqs_requests = delta("sqsRequests");
    let sqs_calls = calls_between(before, after, "sqsCalls");
    let millions = delivered.max(1) as f64 / 1e6;
    let per_million = |dollars: f64| dollars / millions;
    let parts = [
        per_million(apigw_messages as f64 / 1e6 * price::APIGW_MESSAGES),
        per_million(connection_minutes / 1e6 * price::APIGW_CONNECTION_MINUTES),
        per_million(gb_seconds * price::LAMBDA_GB_SECOND),
        per_million(requests as f64 / 1e6 * price::LAMBDA_REQUESTS),
        per_million(wru / 1e6 * price::DYNAMODB_WRU),
        per_million(rru / 1e6 * price::DYNAMODB_RRU),
        per_million(sqs_requests / 1e6 * price::SQS_FIFO_REQUESTS),
    ];
    let total: f64 = parts.iter().sum();
    println!(
        "cost: ${total:.4} per million deliveries ({delivered} delivered) at list prices (us-east-1, 2026, no free tier):"
    );
    println!(
        "  API Gateway: {apigw_messages} messages of up to 32 KB ({received} to the members, {sent} from them) at ${:.2}/M: ${:.4}; {connection_minutes:.1} connection-minutes at ${:.2}/M: ${:.4}",
        price::APIGW_MESSAGES,
        parts[0],
        price::APIGW_CONNECTION_MINUTES,
        parts[1]
    );
    println!(
        "  Lambda: {gb_seconds:.3} GB-s at ${}/GB-s: ${:.4}; {requests} requests at ${:.2}/M: ${:.4} (invocations and ms by function, as wsfan dev measured them around each invocation, a wait for a free environment included: {by_function:?})",
        price::LAMBDA_GB_SECOND,
        parts[2],
        price::LAMBDA_REQUESTS,
        parts[3]
    );
    println!(
        "  DynamoDB on-demand: {wru:.0} WRU at ${:.3}/M: ${:.4}; {rru:.1} RRU at ${:.3}/M: ${:.4} (counted by moto per call: 1 KB written, 4 KB read of the wire JSON, so a little high; transactional items twice; Streams reads free: {calls:?})",
        price::DYNAMODB_WRU,
        parts[4],
        price::DYNAMODB_RRU,
        parts[5]
    );
    println!(
        "  SQS: {sqs_requests:.0} requests (per 64 KB) at ${:.2}/M, all priced as FIFO: ${:.4} (as the local pollers made them; Lambda's own pollers on AWS also poll an idle queue: {sqs_calls:?})",
        price::SQS_FIFO_REQUESTS,
        parts[6]
    );
    json!({
        "perMillionDeliveries": total,
        "parts": {
            "apigwMessages": parts[0], "apigwConnectionMinutes": parts[1],
            "lambdaGbSeconds": parts[2], "lambdaRequests": parts[3],
            "dynamodbWrites": parts[4], "dynamodbReads": parts[5], "sqsRequests": parts[6],
        },
        "counts": {
            "apigwMessages": apigw_messages, "connectionMinutes": connection_minutes,
            "lambdaGbSeconds": gb_seconds, "lambdaRequests": requests, "lambdaByFunction": by_function,
            "dynamodbWru": wru, "dynamodbRru": rru, "dynamodbCalls": calls,
            "sqsRequests": sqs_requests, "sqsCalls": sqs_calls,
        },
        "prices": {
            "apigwPerMillionMessages": price::APIGW_MESSAGES,
            "apigwPerMillionConnectionMinutes": price::APIGW_CONNECTION_MINUTES,
            "lambdaPerGbSecond": price::LAMBDA_GB_SECOND,
            "lambdaPerMillionRequests": price::LAMBDA_REQUESTS,
            "dynamodbPerMillionWru": price::DYNAMODB_WRU,
            "dynamodbPerMillionRru": price::DYNAMODB_RRU,
            "sqsFifoPerMillionRequests": price::SQS_FIFO_REQUESTS,
            "region": "us-east-1",
        },
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_member_unpacks_batches_and_a_plain_one_counts_a_batch_against_the_server() {
        let at = std::time::Instant::now();
        let message = |n: u32| serde_json::json!({"type": "message", "channel": "workspace:hot", "seq": n, "messageId": format!("m{n}"), "clientMsgId": format!("hot-{n}")});
        let batch = serde_json::json!({"type": "batch", "frames": [message(1), message(2), {"type": "presence", "channel": "workspace:hot"}]}).to_string();
        let mut batching = super::Member {
            asked_for_batches: true,
            ..Default::default()
        };
        assert_eq!(batching.read(&batch, true, at), 2);
        assert_eq!(batching.read(&message(3).to_string(), true, at), 1);
        assert_eq!((batching.posts, batching.frames, batching.batch_posts), (2, 4, 1));
        assert_eq!(batching.unasked_batches, 0);
        let ids: Vec<&str> = batching.messages.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2", "m3"]);

        let mut plain = super::Member::default();
        assert_eq!(plain.read(&message(1).to_string(), true, at), 1);
        assert_eq!(plain.read(&batch, true, at), 2);
        assert_eq!(plain.unasked_batches, 1);
        // Even outside the measured window.
        plain.read(&batch, false, at);
        assert_eq!(plain.unasked_batches, 2);

        // Route responses are not posts; an ack maps the send to its messageId.
        let ack = serde_json::json!({"type": "ack", "action": "sendMessage", "channel": "workspace:hot", "messageId": "m9", "clientMsgId": "hot-9", "duplicate": false});
        assert_eq!(plain.read(&ack.to_string(), true, at), 0);
        assert_eq!(plain.acks.get("hot-9").map(String::as_str), Some("m9"));
        assert_eq!((plain.posts, plain.route_responses), (2, 1));
        // An empty or broken batch is malformed, not a post.
        assert_eq!(plain.read(r#"{"type":"batch","frames":[]}"#, true, at), 0);
        assert_eq!(plain.read("not json", true, at), 0);
        assert_eq!(plain.malformed, 2);
    }

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
