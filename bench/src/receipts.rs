//! `wsfan-bench receipts`: every member of one channel sends a read receipt for the same message
//! at once, through `wsfan dev` with the template's defaults.
//!
//! N members (real WebSocket clients) join one channel; once their presence frames have passed,
//! the first posts a message, and then every member sends `{"action":"read",…,"seq":…}` for it at
//! the same moment and times its own ack. Moto's per-operation counts (`/_wsfan/dynamodb-units`)
//! before and after say what the receipts wrote; the channel's head before and after (from
//! `joined`) says whether they took sequence numbers. The `@connections` posts from the first
//! receipt until the stack is quiet again (`GET /dev/stats`) say what pushing them cost. Members
//! connect with `batch=1` as the JS client does (`--batch false`: as older clients, a frame a
//! post). It fails when a receipt is not acked or is answered with an error, or when the head
//! moved. The last line is `RESULT {json}`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect_and_join_with, Socket};
use crate::dev_process::{dev_options, DevProcess};
use crate::figures::{build_profile, ms, percentile, verdict};
use crate::stack_stats::{calls_between, connections_stats, dynamodb_units, settle};

const CHANNEL: &str = "workspace:receipts";

/// What to run; see `wsfan-bench receipts --help`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReceiptsBench {
    /// The repository (for sam/template.yaml, scripts/ and .venv).
    #[arg(long, default_value = ".")]
    pub repo: PathBuf,
    /// Members of the channel, each sending one receipt.
    #[arg(long, default_value_t = 1000)]
    pub members: usize,
    /// Upgrades in flight at once while the members connect.
    #[arg(long, default_value_t = 50)]
    pub connect_concurrency: usize,
    /// How long to wait, after the joins, for their presence frames to pass before measuring.
    #[arg(long, default_value_t = 300)]
    pub settle_secs: u64,
    /// How long a member waits for its ack.
    #[arg(long, default_value_t = 60)]
    pub ack_secs: u64,
    /// Members connect with `batch=1` as the JS client does (`--batch false`: none asks, as older
    /// clients, and each gets a frame a post).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pub batch: bool,
    /// Passed to `wsfan dev --concurrency`: execution environments per function. Lambda scales
    /// ws-message out far beyond `wsfan dev`'s default of 4; with 4, the acks queue for them.
    #[arg(long)]
    pub concurrency: Option<u16>,
}

/// Sends `frame` and reads until the answer that `is_answer` picks (or an error frame).
async fn ask(
    socket: &mut Socket,
    frame: Value,
    is_answer: impl Fn(&Value) -> bool,
    limit: Duration,
) -> Result<Value, String> {
    socket
        .send(Message::Text(frame.to_string().into()))
        .await
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                // A batch carries pushed frames only; answers come alone.
                if frame["type"] == "error" || is_answer(&frame) {
                    return Ok(frame);
                }
            }
            Ok(Some(Ok(_))) => {}
            Ok(other) => return Err(format!("the socket ended: {other:?}")),
            Err(_) => return Err(format!("no answer within {} s", limit.as_secs())),
        }
    }
}

fn is_read_ack(frame: &Value) -> bool {
    frame["type"] == "ack" && frame["action"] == "read"
}

fn head_of(joined: &Value) -> Option<u64> {
    (joined["type"] == "joined").then(|| joined["head"].as_u64()).flatten()
}

pub async fn run(bench: ReceiptsBench) -> Result<String, String> {
    if bench.members == 0 {
        return Err("--members must be at least 1".into());
    }
    let extra = dev_options(None, None, bench.concurrency);
    let stack = DevProcess::start(&bench.repo, "receipts", &extra)?;
    let result = measure(&bench, &stack).await;
    stack.stop();
    let (report, failures) = result?;
    verdict("receipts", &report, &failures)
}

async fn measure(bench: &ReceiptsBench, stack: &DevProcess) -> Result<(Value, Vec<String>), String> {
    let mut sockets = join(bench, stack).await?;
    settle(stack, Duration::from_secs(bench.settle_secs)).await?;

    let limit = Duration::from_secs(bench.ack_secs);
    let first = &mut sockets[0];
    let sent = ask(
        first,
        json!({"action": "sendMessage", "channel": CHANNEL, "body": "read me"}),
        |f| f["type"] == "ack",
        limit,
    )
    .await?;
    let (Some(message_id), Some(seq)) = (sent["messageId"].as_str().map(str::to_owned), sent["seq"].as_u64()) else {
        return Err(format!("the message was not acked: {sent}"));
    };
    let join = || json!({"action": "join", "channel": CHANNEL});
    let head_before = head_of(&ask(first, join(), |f| f["type"] == "joined", limit).await?);
    let units_before = dynamodb_units(&stack.moto).await?;
    let posts_before = posts_delivered(stack).await?;
    let mut read = read_at_once(sockets, &message_id, seq, limit).await?;
    let units_after = dynamodb_units(&stack.moto).await?;
    // The pushes go on after the last ack: count them once the stack is quiet.
    settle(stack, Duration::from_secs(bench.settle_secs)).await?;
    let posts = posts_delivered(stack).await?.saturating_sub(posts_before);
    let head_after = head_of(&ask(&mut read.sockets[0], join(), |f| f["type"] == "joined", limit).await?);
    read.latencies.sort();
    let calls = calls_between(&units_before, &units_after, "calls");
    let latencies = &read.latencies;
    let acked = latencies.len();
    println!(
        "{acked} of {} receipts acked in {:.2} s ({} build): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; head {head_before:?} -> {head_after:?}; @connections posts {posts} (batch={}); DynamoDB calls {calls:?}",
        bench.members,
        read.window.as_secs_f64(),
        build_profile(),
        ms(percentile(latencies, 50.0)),
        ms(percentile(latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        bench.batch,
    );
    let mut failures = Vec::new();
    if acked != bench.members {
        failures.push(format!(
            "{} of {} receipts not acked: {:?}",
            bench.members - acked,
            bench.members,
            read.errors.iter().take(3).collect::<Vec<_>>()
        ));
    }
    if head_before.is_none() || head_before != head_after {
        failures.push(format!(
            "the receipts moved the channel's head: {head_before:?} -> {head_after:?}"
        ));
    }
    let report = json!({
        "build": build_profile(),
        "concurrency": bench.concurrency,
        "members": bench.members,
        "batch": bench.batch,
        "posts": posts,
        "acked": acked,
        "errors": read.errors.len(),
        "seconds": read.window.as_secs_f64(),
        "ackMs": {
            "p50": ms(percentile(latencies, 50.0)),
            "p99": ms(percentile(latencies, 99.0)),
            "max": ms(latencies.last().copied().unwrap_or_default()),
        },
        "head": {"before": head_before, "after": head_after},
        "dynamodbCalls": calls,
    });
    Ok((report, failures))
}

/// Connects and joins every member.
async fn join(bench: &ReceiptsBench, stack: &DevProcess) -> Result<Vec<Socket>, String> {
    let started = Instant::now();
    let joined: Vec<Result<(Socket, Duration), String>> = futures::stream::iter(0..bench.members)
        .map(|i| {
            let url = stack.ws_url.clone();
            let query = if bench.batch { "&batch=1" } else { "" };
            async move { connect_and_join_with(&url, &format!("reader-{i}"), CHANNEL, query).await }
        })
        .buffer_unordered(bench.connect_concurrency.max(1))
        .collect()
        .await;
    let sockets: Vec<Socket> = joined
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    println!(
        "connect and join: {} members in {:.1} s",
        sockets.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(sockets)
}

/// What the members' receipts were answered.
struct Receipts {
    /// Each acked receipt's time to its ack.
    latencies: Vec<Duration>,
    /// Every other answer, and every wait that ended without one.
    errors: Vec<String>,
    /// From the go to the last answer.
    window: Duration,
    /// The members' sockets, back.
    sockets: Vec<Socket>,
}

/// Every member sends its receipt for the message at the same moment and times its ack.
async fn read_at_once(sockets: Vec<Socket>, message_id: &str, seq: u64, limit: Duration) -> Result<Receipts, String> {
    // Everyone at once: each member's task is ready before the first receipt goes out.
    let go = std::sync::Arc::new(tokio::sync::Barrier::new(sockets.len()));
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|mut socket| {
            let (go, message_id) = (go.clone(), message_id.to_owned());
            tokio::spawn(async move {
                let frame = json!({"action": "read", "channel": CHANNEL, "messageId": message_id, "seq": seq});
                go.wait().await;
                let at = Instant::now();
                let answer = ask(&mut socket, frame, is_read_ack, limit).await;
                (answer, at.elapsed(), socket)
            })
        })
        .collect();
    let window = Instant::now();
    let mut read = Receipts {
        latencies: Vec::new(),
        errors: Vec::new(),
        window: Duration::ZERO,
        sockets: Vec::new(),
    };
    for task in tasks {
        let (answer, took, socket) = task.await.map_err(|e| e.to_string())?;
        read.sockets.push(socket);
        match answer {
            Ok(frame) if is_read_ack(&frame) => read.latencies.push(took),
            Ok(frame) => read.errors.push(frame.to_string()),
            Err(e) => read.errors.push(e),
        }
    }
    read.window = window.elapsed();
    Ok(read)
}

/// `@connections` posts delivered so far by the stack.
async fn posts_delivered(stack: &DevProcess) -> Result<u64, String> {
    Ok(connections_stats(&stack.http_url).await?["delivered"]
        .as_u64()
        .unwrap_or(0))
}
