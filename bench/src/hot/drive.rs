//! `bench hot`'s load: the senders' messages at a steady rate, and the wait for their deliveries.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wsfan_local::per_second::Second;

use super::member::{Members, Shared};
use super::{HotBench, CHANNEL, TAG};
use crate::dev_log::{log_between, log_len};
use crate::dev_process::DevProcess;
use crate::stack_stats::{connections_stats, dynamodb_units};

/// What the stack did from the first send to the end of the drain.
pub(crate) struct Window {
    pub(crate) messages: usize,
    pub(crate) sending: Duration,
    pub(crate) length: Duration,
    /// From the last send until every due delivery was read (`None`: not within the limit).
    pub(crate) drained: Option<Duration>,
    /// (seconds into the window, deliveries due and not yet read), each second.
    pub(crate) backlog: Vec<(f64, u64)>,
    /// @connections' counts of each second of the window.
    pub(crate) seconds: Vec<Second>,
    /// The stack's log of the window.
    pub(crate) log: String,
    /// moto's request units at its start and end.
    pub(crate) units: (Value, Value),
}

/// Sends `rate` messages a second for `seconds`, round robin over the senders, then waits for
/// the deliveries still due.
pub(crate) async fn drive(
    bench: &HotBench,
    stack: &DevProcess,
    shared: &Shared,
    members: &Members,
) -> Result<Window, String> {
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
