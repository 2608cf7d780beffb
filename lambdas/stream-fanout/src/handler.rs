//! The DynamoDB stream fanout: pushes messages, reactions (a message's summary changed), typing,
//! receipts (a user's read cursor moved) and presence to every member of a channel.
//!
//! A batch's records are taken a channel at a time (different channels concurrently). For a
//! channel, every frame its records ask for is worked out first, in stream order, and then each
//! member gets its own frames as one ordered stream, the members in parallel: a member never
//! waits for every other member's copy of a record before getting the next one. A member that
//! connected with `?batch=1` gets its frames coalesced, as many as fit in one post, as
//! `{"type":"batch","frames":[...]}` (API Gateway bills a post per 32 KB, so this costs no more
//! and draws far fewer posts from the budget); every other member gets one frame a post.
//!
//! A channel's read-cursor moves in a batch are pushed together, at the place of the last: of each
//! user's, only the last (it says all the earlier ones would), and several users' as one
//! `receipts` frame. A thousand members reading one message cost each member a few frames.
//!
//! A record that can never be used (a message item that breaks the contract, say one a backend
//! wrote without a body) is not retried: it goes to the stream's failure destination at once,
//! with the reason, and the records behind it go on. A record that fails for a reason that may
//! pass is reported in `batchItemFailures` by its sequence number, and so is every later record
//! of the same channel, so that the retry (which starts from the failed record) replays them in
//! order. A membership written with `history` (asked for at connect) sends that page of the
//! channel's history to that one connection, in its place among the channel's frames. `$connect`
//! writes that membership before the connection is open, so the page can reach API Gateway
//! first and be answered 410: while the broadcaster says the connection is still connecting, its
//! frames are posted again after each of [`UPGRADE_BACKOFF`] (see
//! `delivery::deliver_once_open`).
//!
//! The invocation keeps a hand-off time [`HANDOFF_RESERVE`] before its timeout. No post starts
//! after it: a recipient's frames not yet delivered go to the delivery queue, in order, for
//! `deliver`; a channel not started by then is reported failed, for the next invocation. Nothing
//! delivered is sent again, and nothing runs into the timeout (which would replay the batch).
//!
//! A channel of up to [`DIRECT_MAX_MEMBERS`](wsfan_shared::shard::DIRECT_MAX_MEMBERS) members is
//! posted to from here. A larger one is handed to the delivery queue as one shard per group of its
//! members (wsfan_shared::shard), and the `deliver` function reads each group's part of the member
//! list and posts it, the groups in parallel. A small channel with more pending work (members ×
//! records, for members that take one frame a post) than this invocation can post before its
//! hand-off goes there too, its members listed in the shards
//! ([`shard::goes_parallel`](wsfan_shared::shard::goes_parallel)): the path follows the work, not
//! the size. A recipient still undelivered at FANOUT_DEADLINE_MS goes to the delivery queue too,
//! for another attempt: nobody is dropped silently.

/// What this function reads from its environment, loaded once by its main. The variables it
/// reads are this type's (`wsfan_shared::config::FromEnv::vars`); the SAM template is checked
/// against them (tests/template.rs).
pub type Config = (
    wsfan_shared::config::StoreConfig,
    wsfan_shared::config::BroadcastConfig,
    wsfan_shared::config::FailureQueueUrl,
    wsfan_shared::config::DeliveryQueueUrl,
    wsfan_shared::config::CoalesceWindow,
);

/// Sort-key prefixes of the records this function acts on; the stream filter must let each through.
pub const HANDLED_SORT_KEY_PREFIXES: &[&str] = &[
    keys::MSG_PREFIX,
    keys::EVT_PREFIX,
    keys::USER_PREFIX,
    keys::REACT_PREFIX,
    keys::READ_PREFIX,
];

/// Memberships (`CONN#`) matter only when inserted with this attribute; the stream filter lets
/// exactly those through.
pub const HISTORY_REQUEST_ATTRIBUTE: &str = "history";

/// Channels whose records are worked on at once within one batch.
const CHANNELS_IN_FLIGHT: usize = 16;

mod delivery;
mod failures;
mod plan;
mod queue;
mod records;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use futures::StreamExt;
use wsfan_shared::batch::by_key;
use wsfan_shared::broadcaster::{Broadcast, BroadcastError, Counters};
use wsfan_shared::cadence::Cadence;
use wsfan_shared::model::keys;
use wsfan_shared::ports::{FailureDestination, QueueError, ShardQueue};
use wsfan_shared::store::{Members, Messages, StoreError};

use delivery::channel_batch;
pub use failures::failure_body;
use failures::{fail_from, ChannelOutcomes};
use records::string_key;
pub use records::{classify, Push, Work};

/// Time kept at the end of an invocation: posts stop this long before the timeout, and what is
/// left goes to the delivery queue (a few sends) or back to Lambda.
pub const HANDOFF_RESERVE: Duration = Duration::from_secs(5);

/// The waits before each new post of a history page to a connection that answered 410 while
/// still connecting: about 3 s in all, far longer than API Gateway takes to finish an upgrade
/// once `$connect` has returned, and short enough not to hold the channel up for long.
pub const UPGRADE_BACKOFF: [Duration; 6] = [
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(200),
    Duration::from_millis(400),
    Duration::from_millis(800),
    Duration::from_millis(1500),
];

/// Time kept at the very end of an invocation: a channel still at work then (see [`handle_until`])
/// is cut, and its records go back to Lambda, with this long left to answer.
pub const CUT_RESERVE: Duration = Duration::from_millis(1_500);

/// When an invocation that must end by `deadline_ms` cuts a channel still at work:
/// [`CUT_RESERVE`] before, or at three quarters of a timeout too short for that.
pub fn cut_at(deadline_ms: u64) -> Instant {
    let left = wsfan_shared::clock::time_left(deadline_ms);
    Instant::now() + left.saturating_sub(CUT_RESERVE).max(left * 3 / 4)
}

/// When an invocation that must end by `deadline_ms` (milliseconds since the epoch, as the
/// Runtime API gives it) hands what is left on: [`HANDOFF_RESERVE`] before, or half-way for a
/// timeout too short for that.
pub fn stop_at(deadline_ms: u64) -> Instant {
    let left = wsfan_shared::clock::time_left(deadline_ms);
    Instant::now() + left.saturating_sub(HANDOFF_RESERVE).max(left / 2)
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("malformed record: {0}")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broadcast(#[from] BroadcastError),
    #[error("could not reach the failure destination: {0}")]
    Park(QueueError),
    #[error("could not reach the delivery queue: {0}")]
    Enqueue(QueueError),
    #[error("not attempted: an earlier record of its channel failed ({0})")]
    Blocked(String),
    #[error("not started before the invocation's hand-off time; the next invocation takes it")]
    OutOfTime,
    #[error("still at work at the invocation's cut, just before its timeout; the next invocation takes it")]
    Cut,
}

/// A channel's records of a batch, each with what it asks for, in stream order.
type ChannelRecords<'a> = Vec<(&'a EventRecord, Result<Work, RecordError>)>;

/// Handles one batch and returns the records to retry. No channel starts after `stop_at` (the
/// invocation's hand-off time, before its timeout), and no post does: what is left then goes to
/// the delivery queue (recipients' frames) or back to Lambda (records not started).
pub async fn handle<S: Messages + Members, D: Broadcast, F: FailureDestination, Q: ShardQueue>(
    store: &S,
    deliver: &D,
    failures: &F,
    shards: &Q,
    event: Event,
    stop_at: Option<Instant>,
) -> DynamoDbEventResponse {
    let bounds = Bounds {
        stop_at,
        ..Bounds::default()
    };
    handle_until(store, deliver, failures, shards, event, bounds).await
}

/// What an invocation keeps to besides its batch.
#[derive(Debug, Default, Clone, Copy)]
pub struct Bounds<'a> {
    /// The hand-off: no channel and no post starts after it (see [`stop_at`]).
    pub stop_at: Option<Instant>,
    /// A channel still at work then goes back to Lambda (see [`cut_at`]).
    pub cut_at: Option<Instant>,
    /// The environment's cadence of busy channels (wsfan_shared::cadence): the invocation ends
    /// no sooner than its busy channels ask, so that the lane's next batch brings several of
    /// their records for one post per member. `None` never holds.
    pub cadence: Option<&'a Mutex<Cadence>>,
}

impl<'a> Bounds<'a> {
    /// What an invocation that must end by `deadline_ms` (the Runtime API's deadline) keeps to:
    /// its hand-off ([`stop_at`]), its cut ([`cut_at`]) and the environment's `cadence`.
    pub fn of_invocation(deadline_ms: u64, cadence: &'a Mutex<Cadence>) -> Bounds<'a> {
        Bounds {
            stop_at: Some(stop_at(deadline_ms)),
            cut_at: Some(cut_at(deadline_ms)),
            cadence: Some(cadence),
        }
    }
}

/// [`handle`], and a channel still at work at `cut_at` is cut there: its records go back to
/// Lambda, whose retry starts from the first of them. No post starts after the hand-off, but the
/// DynamoDB and SQS calls around the posts (the channel's plan and members, a gone recipient's
/// cleanup, the hand-on) can each take their whole budget on a saturated table, several in a row:
/// `bench local`'s 1,000 clients leaving ran four stream-fanout invocations into their 30 s
/// timeout. A cut channel's members may get some frames again (they drop them by id); a
/// timed-out invocation's whole batch, every channel's, would come again.
pub async fn handle_until<S: Messages + Members, D: Broadcast, F: FailureDestination, Q: ShardQueue>(
    store: &S,
    deliver: &D,
    failures: &F,
    shards: &Q,
    event: Event,
    bounds: Bounds<'_>,
) -> DynamoDbEventResponse {
    let Bounds {
        stop_at,
        cut_at,
        cadence,
    } = bounds;
    let taken_at = Instant::now();
    // A channel's records, in stream order. The partition key is the channel, and it is there
    // even when the image is malformed, so a bad record holds up exactly its own channel's.
    let channels: Vec<(String, ChannelRecords)> = by_key(event.records.iter().filter_map(|record| {
        let work = classify(record).transpose()?;
        Some((string_key(record, "pk").unwrap_or("?").to_owned(), (record, work)))
    }));

    let outcomes: Vec<_> = futures::stream::iter(&channels)
        .map(|(_, records)| async move {
            let pace = cadence.map(|c| (c, taken_at));
            let work = channel_batch(store, deliver, failures, shards, records, stop_at, pace);
            let outcomes = match cut_at {
                None => work.await,
                Some(at) => match tokio::time::timeout_at(at.into(), work).await {
                    Ok(outcomes) => outcomes,
                    Err(_) => {
                        tracing::warn!(
                            records = records.len(),
                            "a channel was still at work at the cut; its records go back to Lambda"
                        );
                        let mut outcomes: ChannelOutcomes = records.iter().map(|_| Ok(Counters::default())).collect();
                        fail_from(&mut outcomes, 0, RecordError::Cut);
                        outcomes
                    }
                },
            };
            records.iter().map(|(r, _)| *r).zip(outcomes).collect::<Vec<_>>()
        })
        .buffer_unordered(CHANNELS_IN_FLIGHT)
        .collect()
        .await;

    let mut response = DynamoDbEventResponse::default();
    let mut counters = Counters::default();
    for (record, outcome) in outcomes.into_iter().flatten() {
        let error = match outcome {
            Ok(c) => {
                counters.add(&c);
                continue;
            }
            Err(e) => e.to_string(),
        };
        let sequence = record.change.sequence_number.clone();
        tracing::error!(sequence = sequence.as_deref().unwrap_or("?"), event_id = %record.event_id, %error, "record failed");
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = sequence;
        response.batch_item_failures.push(failure);
    }
    counters.log_emf("stream-fanout");
    if let Some(cadence) = cadence {
        let hold = cadence.lock().unwrap_or_else(|p| p.into_inner()).take_hold();
        // A batch with failures is retried at once, not held; and no hold passes the hand-off.
        if let Some(until) = hold.filter(|_| response.batch_item_failures.is_empty()) {
            let until = stop_at.map_or(until, |stop| until.min(stop));
            tracing::debug!(
                held_ms = until.saturating_duration_since(Instant::now()).as_millis() as u64,
                "busy channel: the lane is held"
            );
            tokio::time::sleep_until(until.into()).await;
        }
    }
    response
}
