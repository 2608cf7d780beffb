//! `wsfan-bench sends`: committed sends per second on one channel, closed loop, through
//! `wsfan dev` with the template's defaults.
//!
//! The largest `--senders` count of members (real WebSocket clients) and one listener join one
//! channel. Each round takes the first N of them: each sends the next message as soon as the last
//! is acked, for `--secs` seconds. A round reports the committed sends per second (acks with a
//! `seq`), the error answers, p50/p99 of the acks, the DynamoDB calls per committed send from
//! moto's per-operation counts (`/_wsfan/dynamodb-units`, every caller: ws-message and the
//! fanout's reads), and whether the listener got every acked message. Every round pushes to the
//! same members, so the rounds differ only in the senders.
//!
//! One connection is capped by the per-connection rate limit (25 frames a second, bursts of 50):
//! a `rate_limited` answer is counted, waited out (`retryAfterMs`) and the same frame (same
//! `clientMsgId`) sent again. It fails on any other error answer or an acked message the listener
//! did not get. The last line is `RESULT {json}`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect_and_join_with, Socket};
use crate::dev_process::{dev_options, DevProcess};
use crate::figures::{build_profile, ms, percentile, verdict};
use crate::stack_stats::{calls_between, dynamodb_units, settle};

const CHANNEL: &str = "workspace:sends";

/// What to run; see `wsfan-bench sends --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct SendsBench {
    /// The repository (for sam/template.yaml, scripts/ and .venv).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Concurrent senders of each round, in order (the largest count of members join).
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    pub senders: Vec<usize>,
    /// Seconds each round sends for.
    #[arg(long, default_value_t = 20)]
    pub secs: u64,
    /// Members connect with `batch=1` as the JS client does (`--batch false`: none asks).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub batch: bool,
    /// Upgrades in flight at once while the members connect.
    #[arg(long, default_value_t = 50)]
    pub connect_concurrency: usize,
    /// How long to wait, after the joins, for their presence frames to pass before measuring.
    #[arg(long, default_value_t = 120)]
    pub settle_secs: u64,
    /// How long a sender waits for its ack, and the listener for a round's last message.
    #[arg(long, default_value_t = 60)]
    pub ack_secs: u64,
    /// Passed to `wsfan dev --concurrency`: execution environments per function.
    #[arg(long)]
    pub concurrency: Option<u16>,
}

/// What one sender saw in a round.
#[derive(Default)]
struct Sent {
    /// Each committed send's ack time.
    latencies: Vec<Duration>,
    /// The committed messages' ids.
    acked: Vec<String>,
    rate_limited: u64,
    errors: Vec<String>,
}

/// A member: its socket's sending half, and the answers (acks, errors) its reader passes on.
/// The reader runs all the time, so a member that is not sending still takes its pushes as a
/// client would (nothing backs up in front of the stack's @connections).
struct Member {
    sink: futures::stream::SplitSink<Socket, Message>,
    answers: mpsc::UnboundedReceiver<Value>,
}

impl Member {
    fn new(socket: Socket) -> Member {
        let (sink, mut stream) = socket.split();
        let (tx, answers) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(Ok(message)) = stream.next().await {
                let Message::Text(text) = message else { continue };
                let f: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                // Answers come alone; pushed frames (and batches of them) are passed over.
                if (f["type"] == "ack" || f["type"] == "error") && tx.send(f).is_err() {
                    return;
                }
            }
        });
        Member { sink, answers }
    }

    /// Sends `frame` and waits for its ack or an error answer.
    async fn ask(&mut self, frame: &str, client_msg_id: &str, limit: Duration) -> Result<Value, String> {
        self.sink
            .send(Message::Text(frame.to_owned().into()))
            .await
            .map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.answers.recv()).await {
                // One send in flight per connection: an error answer is this send's.
                Ok(Some(f)) if f["type"] == "error" || f["clientMsgId"] == client_msg_id => return Ok(f),
                Ok(Some(_)) => {}
                Ok(None) => return Err("the socket ended".into()),
                Err(_) => return Err(format!("no answer within {} s", limit.as_secs())),
            }
        }
    }
}

/// One sender's closed loop until `until`.
async fn send_until(member: &mut Member, sender: usize, round: usize, until: Instant, limit: Duration) -> Sent {
    let mut sent = Sent::default();
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let id = format!("r{round}-s{sender}-{n}");
        let frame = json!({"action": "sendMessage", "channel": CHANNEL, "body": id, "clientMsgId": id}).to_string();
        let at = Instant::now();
        loop {
            match member.ask(&frame, &id, limit).await {
                Ok(f) if f["type"] == "ack" && f["seq"].is_u64() => {
                    sent.latencies.push(at.elapsed());
                    sent.acked.push(f["messageId"].as_str().unwrap_or_default().to_owned());
                }
                Ok(f) if f["code"] == "rate_limited" => {
                    sent.rate_limited += 1;
                    let wait = f["retryAfterMs"].as_u64().unwrap_or(40);
                    tokio::time::sleep(Duration::from_millis(wait)).await;
                    continue;
                }
                Ok(f) => sent.errors.push(f.to_string()),
                Err(e) => {
                    sent.errors.push(e);
                    return sent;
                }
            }
            break;
        }
    }
    sent
}

/// The listener: every `message` frame's id (batches unpacked), as it comes.
fn listen(mut socket: Socket) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = socket.next().await {
            let Message::Text(text) = message else { continue };
            let f: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            let frames = match f["type"].as_str() {
                Some("batch") => f["frames"].as_array().cloned().unwrap_or_default(),
                _ => vec![f],
            };
            for f in frames.iter().filter(|f| f["type"] == "message") {
                if tx.send(f["messageId"].as_str().unwrap_or_default().to_owned()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

pub async fn run(bench: SendsBench) -> Result<String, String> {
    if bench.senders.is_empty() || bench.senders.contains(&0) {
        return Err("--senders takes counts of at least 1, e.g. 1,10,100".into());
    }
    let extra = dev_options(None, None, bench.concurrency);
    let stack = DevProcess::start(&bench.repo, "sends", &extra)?;
    let result = measure(&bench, &stack).await;
    stack.stop();
    let (report, failures) = result?;
    verdict("sends", &report, &failures)
}

async fn measure(bench: &SendsBench, stack: &DevProcess) -> Result<(Value, Vec<String>), String> {
    let count = bench.senders.iter().copied().max().unwrap_or(1);
    let (mut heard, mut members) = join(bench, stack, count).await?;
    settle(stack, Duration::from_secs(bench.settle_secs)).await?;

    let limit = Duration::from_secs(bench.ack_secs);
    let mut heard_ids: HashSet<String> = HashSet::new();
    let mut rounds = Vec::new();
    let mut failures = Vec::new();
    for (round, &n) in bench.senders.iter().enumerate() {
        let units_before = dynamodb_units(&stack.moto).await?;
        let started = Instant::now();
        let mut all = send_round(&mut members, n, round, started + Duration::from_secs(bench.secs), limit).await?;
        let window = started.elapsed();
        let units_after = dynamodb_units(&stack.moto).await?;

        // Every acked message reaches the listener.
        let drain = tokio::time::Instant::now() + limit;
        let missing = |heard: &HashSet<String>| all.acked.iter().filter(|id| !heard.contains(*id)).count();
        while missing(&heard_ids) > 0 {
            match tokio::time::timeout_at(drain, heard.recv()).await {
                Ok(Some(id)) => {
                    heard_ids.insert(id);
                }
                _ => break,
            }
        }
        let undelivered = missing(&heard_ids);

        all.latencies.sort();
        let calls = calls_between(&units_before, &units_after, "calls");
        let outcome = Round {
            senders: n,
            window,
            sent: all,
            calls,
            undelivered,
        };
        rounds.push(outcome.report(limit, &mut failures));
    }
    let report = json!({
        "build": build_profile(),
        "concurrency": bench.concurrency,
        "batch": bench.batch,
        "members": count + 1,
        "secs": bench.secs,
        "rounds": rounds,
    });
    Ok((report, failures))
}

/// Joins the listener and then `count` members to the channel: what the listener hears, and the
/// members in the order they joined.
async fn join(
    bench: &SendsBench,
    stack: &DevProcess,
    count: usize,
) -> Result<(mpsc::UnboundedReceiver<String>, Vec<Member>), String> {
    let query = if bench.batch { "&batch=1" } else { "" };
    let (listener, _) = connect_and_join_with(&stack.ws_url, "listener", CHANNEL, query).await?;
    let heard = listen(listener);
    let joined: Vec<Result<(Socket, Duration), String>> = futures::stream::iter(0..count)
        .map(|i| {
            let url = stack.ws_url.clone();
            async move { connect_and_join_with(&url, &format!("sender-{i}"), CHANNEL, query).await }
        })
        .buffered(bench.connect_concurrency.max(1))
        .collect()
        .await;
    let members = joined
        .into_iter()
        .map(|r| r.map(|(s, _)| Member::new(s)))
        .collect::<Result<_, _>>()?;
    Ok((heard, members))
}

/// The first `n` members each send in a closed loop until `until`: what they saw, together.
/// They go back in front of `members`, for the next round.
async fn send_round(
    members: &mut Vec<Member>,
    n: usize,
    round: usize,
    until: Instant,
    limit: Duration,
) -> Result<Sent, String> {
    let tasks: Vec<_> = members
        .drain(..n)
        .enumerate()
        .map(|(i, mut member)| {
            tokio::spawn(async move {
                let sent = send_until(&mut member, i, round, until, limit).await;
                (sent, member)
            })
        })
        .collect();
    let mut all = Sent::default();
    let mut used = Vec::new();
    for task in tasks {
        let (sent, socket) = task.await.map_err(|e| e.to_string())?;
        used.push(socket);
        all.latencies.extend(sent.latencies);
        all.acked.extend(sent.acked);
        all.rate_limited += sent.rate_limited;
        all.errors.extend(sent.errors);
    }
    used.append(members);
    *members = used;
    Ok(all)
}

/// One round's outcome: `senders` sent for `window`, moto counted `calls`.
struct Round {
    senders: usize,
    window: Duration,
    /// Every sender's, its latencies sorted.
    sent: Sent,
    calls: std::collections::BTreeMap<String, u64>,
    /// Acked messages the listener did not get.
    undelivered: usize,
}

impl Round {
    /// Prints the round's line and returns its part of the report; a failure for any error answer
    /// or undelivered message.
    fn report(&self, limit: Duration, failures: &mut Vec<String>) -> Value {
        let (n, all, undelivered) = (self.senders, &self.sent, self.undelivered);
        let committed = all.acked.len();
        let per_second = committed as f64 / self.window.as_secs_f64();
        let per_send: serde_json::Map<String, Value> = self
            .calls
            .iter()
            .map(|(op, c)| (op.clone(), json!(round2(*c as f64 / committed.max(1) as f64))))
            .collect();
        let total_per_send = round2(self.calls.values().sum::<u64>() as f64 / committed.max(1) as f64);
        println!(
            "{n} senders ({} build): {committed} committed in {:.1} s = {per_second:.1} sends/s; ack p50 {:.1} ms, p99 {:.1} ms; {} errors, {} rate-limited; DynamoDB calls per send {total_per_send} {per_send:?}; {undelivered} acked but not delivered",
            build_profile(),
            self.window.as_secs_f64(),
            ms(percentile(&all.latencies, 50.0)),
            ms(percentile(&all.latencies, 99.0)),
            all.errors.len(),
            all.rate_limited,
        );
        if !all.errors.is_empty() {
            failures.push(format!(
                "{n} senders: {} error answers, e.g. {:?}",
                all.errors.len(),
                all.errors.iter().take(3).collect::<Vec<_>>()
            ));
        }
        if undelivered > 0 {
            failures.push(format!(
                "{n} senders: {undelivered} acked messages did not reach the listener within {} s",
                limit.as_secs()
            ));
        }
        json!({
            "senders": n,
            "seconds": self.window.as_secs_f64(),
            "committed": committed,
            "sendsPerSecond": round2(per_second),
            "ackMs": {
                "p50": ms(percentile(&all.latencies, 50.0)),
                "p99": ms(percentile(&all.latencies, 99.0)),
                "max": ms(all.latencies.last().copied().unwrap_or_default()),
            },
            "errors": all.errors.len(),
            "rateLimited": all.rate_limited,
            "dynamodbCallsPerSend": total_per_send,
            "dynamodbCallsPerSendByOperation": per_send,
            "undelivered": undelivered,
        })
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
