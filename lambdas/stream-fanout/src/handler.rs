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
//! frames are posted again after each of [`UPGRADE_BACKOFF`] (see [`deliver_once_open`]).
//!
//! The invocation keeps a hand-off time [`HANDOFF_RESERVE`] before its timeout. No post starts
//! after it: a recipient's frames not yet delivered go to the delivery queue, in order, for
//! `deliver`; a channel not started by then is reported failed, for the next invocation. Nothing
//! delivered is sent again, and nothing runs into the timeout (which would replay the batch).
//!
//! A channel of up to [`DIRECT_MAX_MEMBERS`] members is posted to from here. A larger one is
//! handed to the delivery queue as one shard per group of its members (wsfan_shared::shard), and
//! the `deliver` function reads each group's part of the member list and posts it, the groups in
//! parallel. A small channel with more pending work (members × records, for members that take one
//! frame a post) than this invocation can post before its hand-off goes there too, its members
//! listed in the shards ([`shard::goes_parallel`]): the path follows the work, not the size. A
//! recipient still undelivered at FANOUT_DEADLINE_MS goes to the delivery queue too, for another
//! attempt: nobody is dropped silently.

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

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use futures::StreamExt;
use serde_dynamo::AttributeValue;
use wsfan_shared::batch::by_key;
use wsfan_shared::broadcaster::{BroadcastError, Counters, Deliver, Parcel, ParcelReport, MAX_PAYLOAD_BYTES};
use wsfan_shared::cadence::{Cadence, Sequenced};
use wsfan_shared::channel::{ChannelId, ChannelKind};
use wsfan_shared::model::{keys, Message};
use wsfan_shared::protocol::{ChatEvent, HistoryCursor, PresenceState, ServerFrame, MAX_HISTORY_LIMIT};
use wsfan_shared::publisher::FailureQueue;
use wsfan_shared::reactions::SummaryItem;
use wsfan_shared::reads::ReadCursor;
use wsfan_shared::shard::{self, ShardQueue, DIRECT_MAX_MEMBERS};
use wsfan_shared::store::{Member, Store, StoreError};

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
    Park(String),
    #[error("could not reach the delivery queue: {0}")]
    Enqueue(String),
    #[error("not attempted: an earlier record of its channel failed ({0})")]
    Blocked(String),
    #[error("not started before the invocation's hand-off time; the next invocation takes it")]
    OutOfTime,
    #[error("still at work at the invocation's cut, just before its timeout; the next invocation takes it")]
    Cut,
}

/// A frame to push to every member of a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub channel: ChannelId,
    pub frame: ServerFrame,
}

/// What one record asks for.
// One per stream record, made once and read in place: boxing the frame would only add an
// allocation per record.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    Push(Push),
    /// The last `limit` messages of `channel`, to `connection_id` only.
    History {
        channel: ChannelId,
        connection_id: String,
        limit: u32,
    },
}

/// Where records that can never be used go: the stream's on-failure destination.
pub trait FailureDestination: Send + Sync {
    fn park(&self, body: String) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

impl FailureDestination for FailureQueue {
    async fn park(&self, body: String) -> Result<(), String> {
        self.send(body).await.map_err(|e| e.to_string())
    }
}

/// What the failure destination receives: the reason and the record as the stream gave it.
pub fn failure_body(record: &EventRecord, reason: &str) -> String {
    serde_json::json!({
        "condition": "UnusableRecord",
        "reason": reason,
        "function": "stream-fanout",
        "record": record,
    })
    .to_string()
}

/// A message item's place in its channel's sequence and when it was written (`seq`, `sentAt`):
/// the channel's rate, for its cadence. Kinds off the sequence have no `seq`.
fn sequenced(record: &EventRecord) -> Option<Sequenced> {
    let number = |name: &str| match record.change.new_image.get(name)? {
        AttributeValue::N(n) => n.parse::<i64>().ok(),
        _ => None,
    };
    Some(Sequenced {
        seq: u64::try_from(number("seq")?).ok()?,
        sent_at_ms: number("sentAt")?,
    })
}

fn string_key<'a>(record: &'a EventRecord, name: &str) -> Result<&'a str, RecordError> {
    match record.change.keys.get(name) {
        Some(AttributeValue::S(s)) => Ok(s),
        _ => Err(RecordError::Malformed(format!("keys.{name} is missing"))),
    }
}

fn has_connections(image: &serde_dynamo::Item) -> bool {
    matches!(image.get("connections"), Some(AttributeValue::Ss(set)) if !set.is_empty())
}

fn channel_of(record: &EventRecord) -> Result<ChannelId, RecordError> {
    string_key(record, "pk")?
        .strip_prefix(keys::CHAN_PREFIX)
        .ok_or_else(|| RecordError::Malformed("item outside a channel".into()))?
        .parse()
        .map_err(|e| RecordError::Malformed(format!("channel: {e}")))
}

/// Decides what a record means (`None`: nothing to do). Pure: no I/O.
pub fn classify(record: &EventRecord) -> Result<Option<Work>, RecordError> {
    let sk = string_key(record, "sk")?;
    let is_message = sk.starts_with(keys::MSG_PREFIX) || sk.starts_with(keys::EVT_PREFIX);
    if is_message {
        // Edits and TTL removals of messages are not news to anyone.
        if record.event_name != "INSERT" {
            return Ok(None);
        }
        let mut item = record.change.new_image.clone();
        // Old records' images may lack the keys; the record's keys are always there.
        for (name, value) in record.change.keys.iter() {
            item.entry(name.clone()).or_insert_with(|| value.clone());
        }
        let message = Message::from_stream_item(item).map_err(|e| RecordError::Malformed(e.to_string()))?;
        let frame = message.to_frame();
        // A backend can write a body no frame can carry; no retry would ever deliver it.
        let size = frame.to_json().len();
        if size > MAX_PAYLOAD_BYTES {
            return Err(RecordError::Malformed(format!(
                "the frame would be {size} bytes; @connections takes at most {MAX_PAYLOAD_BYTES}"
            )));
        }
        return Ok(Some(Work::Push(Push {
            channel: message.channel.clone(),
            frame,
        })));
    }
    if sk.starts_with(keys::REACT_PREFIX) || sk.starts_with(keys::READ_PREFIX) {
        return moved(record);
    }
    if let Some(connection_id) = sk.strip_prefix(keys::CONN_PREFIX) {
        if record.event_name != "INSERT" {
            return Ok(None);
        }
        let limit = match record.change.new_image.get(HISTORY_REQUEST_ATTRIBUTE) {
            None => return Ok(None),
            Some(AttributeValue::N(n)) => n
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_HISTORY_LIMIT).contains(n))
                .ok_or_else(|| RecordError::Malformed(format!("history {n} is not 1-{MAX_HISTORY_LIMIT}")))?,
            Some(other) => return Err(RecordError::Malformed(format!("history is {other:?}, not a number"))),
        };
        return Ok(Some(Work::History {
            channel: channel_of(record)?,
            connection_id: connection_id.to_owned(),
            limit,
        }));
    }
    if let Some(user_id) = sk.strip_prefix(keys::USER_PREFIX) {
        let channel = channel_of(record)?;
        // Only the user's own devices are in user:<sub>; telling them about themselves is noise.
        if channel.kind() == ChannelKind::User {
            return Ok(None);
        }
        let was = has_connections(&record.change.old_image);
        let is = has_connections(&record.change.new_image);
        let state = match (was, is) {
            (false, true) => PresenceState::Join,
            // A leave, the user's last; or the TTL removed the item (REMOVE has no new image).
            (true, false) => PresenceState::Leave,
            _ => return Ok(None),
        };
        let frame = ServerFrame::Presence {
            channel: channel.to_string(),
            user_id: user_id.to_owned(),
            state,
        };
        return Ok(Some(Work::Push(Push { channel, frame })));
    }
    Ok(None)
}

/// A message's reaction summary or a user's read cursor changed: push the latest reaction with
/// the whole summary, or the receipt with the cursor. Only a new reaction or receipt (a new
/// `messageId` on the item) is news; the TTL's removal is not.
fn moved(record: &EventRecord) -> Result<Option<Work>, RecordError> {
    let new_id = record.change.new_image.get("messageId");
    if record.event_name == "REMOVE" || new_id.is_none() || new_id == record.change.old_image.get("messageId") {
        return Ok(None);
    }
    let channel = channel_of(record)?;
    let image = record.change.new_image.clone();
    let frame = if string_key(record, "sk")?.starts_with(keys::REACT_PREFIX) {
        let summary: SummaryItem =
            serde_dynamo::from_item(image).map_err(|e| RecordError::Malformed(format!("reaction summary: {e}")))?;
        ServerFrame::Reaction(summary.to_event(&channel))
    } else {
        let cursor: ReadCursor =
            serde_dynamo::from_item(image).map_err(|e| RecordError::Malformed(format!("read cursor: {e}")))?;
        ServerFrame::Receipt(cursor.to_event())
    };
    Ok(Some(Work::Push(Push { channel, frame })))
}

/// The history page a connection asked for at connect, as the frame it gets.
async fn history_frame<S: Store>(store: &S, channel: &ChannelId, limit: u32) -> Result<String, RecordError> {
    let page = store.history(channel, HistoryCursor::Latest, limit).await?;
    let frame = ServerFrame::History {
        channel: channel.to_string(),
        messages: page.frames(),
        before: page.before,
        after: None,
        complete: None,
        reads: None,
    };
    Ok(frame.to_json())
}

/// One frame of a channel's batch, and who gets it.
struct Planned {
    /// The record it came from (its index in the channel's records).
    record: usize,
    frame: Arc<str>,
    to: Audience,
}

enum Audience {
    /// Every member, but a user's own connections for news about that user.
    Members { except_user: Option<String> },
    /// One connection (a history page it asked for).
    Connection(String),
}

/// What a channel's records came to: an outcome per record, in order.
type ChannelOutcomes = Vec<Result<Counters, RecordError>>;

/// A channel's records of a batch, each with what it asks for, in stream order.
type ChannelRecords<'a> = Vec<(&'a EventRecord, Result<Work, RecordError>)>;

/// Record `first` failed with `error`: it and every later record of its channel are retried, the
/// later ones behind it, so the retry replays them in order.
fn fail_from(outcomes: &mut ChannelOutcomes, first: usize, error: RecordError) {
    let reason = error.to_string();
    outcomes[first] = Err(error);
    for later in outcomes.iter_mut().skip(first + 1) {
        *later = Err(RecordError::Blocked(reason.clone()));
    }
}

/// The receipt, when `work` moves a user's read cursor (a receipt stored through the sequence,
/// by an older stack or a backend, is a message of the channel and is pushed as it is).
fn cursor_move(work: &Result<Work, RecordError>) -> Option<&ChatEvent> {
    match work {
        Ok(Work::Push(Push {
            frame: ServerFrame::Receipt(r),
            ..
        })) if r.read_seq.is_some() => Some(r),
        _ => None,
    }
}

/// Every read-cursor move among a channel's records, as the frames that push them: the last move
/// of each user (it says all that user's earlier ones would), in the order of those moves. One
/// user's is a `receipt` frame as ever; several users' go as one `receipts` frame (more than one
/// only when they would not fit one post).
fn cursor_frames(channel: &ChannelId, records: &[(&EventRecord, Result<Work, RecordError>)]) -> Vec<String> {
    let moves: Vec<&ChatEvent> = records.iter().filter_map(|(_, work)| cursor_move(work)).collect();
    let latest: Vec<ChatEvent> = moves
        .iter()
        .enumerate()
        .filter(|(i, r)| !moves[i + 1..].iter().any(|later| later.sender_id == r.sender_id))
        .map(|(_, r)| (*r).clone())
        .collect();
    let frame = |mut receipts: Vec<ChatEvent>| match receipts.len() {
        1 => ServerFrame::Receipt(receipts.remove(0)).to_json(),
        _ => ServerFrame::Receipts {
            channel: channel.to_string(),
            receipts,
        }
        .to_json(),
    };
    // Each entry is small (ids, a user id, numbers), so a stream batch's fit one post; a batch
    // of very long user ids is split rather than refused.
    let mut frames = Vec::new();
    let mut part: Vec<ChatEvent> = Vec::new();
    let mut size = 0;
    for r in latest {
        let entry = serde_json::to_string(&r).map_or(0, |s| s.len()) + 1;
        if !part.is_empty() && size + entry + 128 > MAX_PAYLOAD_BYTES {
            frames.push(frame(std::mem::take(&mut part)));
            size = 0;
        }
        size += entry;
        part.push(r);
    }
    frames.push(frame(part));
    frames
}

/// Works out every frame a channel's records ask for, in stream order. A record that can never be
/// used goes to the failure destination; one that fails here (its history read, or the failure
/// destination) stops the plan, and it and the records after it are retried.
///
/// The read-cursor moves of the batch, every user's, are pushed together at the place of the last
/// one: a thousand members reading one message in a few batches cost each member a few frames,
/// not a thousand. The earlier moves wait for it, so when the plan stops before it, they are
/// retried too (from the first of them).
async fn plan<S: Store, F: FailureDestination>(
    store: &S,
    failures: &F,
    records: &[(&EventRecord, Result<Work, RecordError>)],
) -> (Vec<Planned>, Option<(usize, RecordError)>) {
    let mut planned = Vec::new();
    let moves: Vec<usize> = (0..records.len())
        .filter(|&i| cursor_move(&records[i].1).is_some())
        .collect();
    for (index, (record, work)) in records.iter().enumerate() {
        let step = match work {
            Ok(Work::Push(Push { channel, .. })) if cursor_move(work).is_some() => {
                if moves.last() == Some(&index) {
                    planned.extend(cursor_frames(channel, records).into_iter().map(|frame| Planned {
                        record: index,
                        frame: frame.into(),
                        to: Audience::Members { except_user: None },
                    }));
                }
                Ok(None)
            }
            Ok(Work::Push(Push { frame, .. })) => {
                let except_user = match frame {
                    ServerFrame::Presence { user_id, .. } => Some(user_id.clone()),
                    _ => None,
                };
                Ok(Some(Planned {
                    record: index,
                    frame: frame.to_json().into(),
                    to: Audience::Members { except_user },
                }))
            }
            Ok(Work::History {
                channel,
                connection_id,
                limit,
            }) => history_frame(store, channel, *limit).await.map(|frame| {
                Some(Planned {
                    record: index,
                    frame: frame.into(),
                    to: Audience::Connection(connection_id.clone()),
                })
            }),
            // Retrying cannot make it usable: off to the failure destination now, and the channel
            // goes on. Only when that fails is the record retried.
            Err(e) => {
                let reason = e.to_string();
                match failures.park(failure_body(record, &reason)).await {
                    Ok(()) => {
                        tracing::warn!(event_id = %record.event_id, %reason, "unusable record sent to the failure destination");
                        Ok(None)
                    }
                    Err(why) => Err(RecordError::Park(why)),
                }
            }
        };
        match step {
            Ok(Some(p)) => planned.push(p),
            Ok(None) => {}
            Err(e) => {
                let from = moves.first().map_or(index, |&first| first.min(index));
                return (planned, Some((from, e)));
            }
        }
    }
    (planned, None)
}

/// Each member's frames, in order: the parcels of a channel's batch for the direct path.
fn parcels(members: &[Member], planned: &[Planned]) -> Vec<Parcel> {
    let mut parcels: Vec<Parcel> = members
        .iter()
        .map(|m| Parcel {
            connection_id: m.connection_id.clone(),
            frames: planned
                .iter()
                .filter(|p| match &p.to {
                    Audience::Members { except_user } => {
                        except_user.is_none() || m.user_id.as_ref() != except_user.as_ref()
                    }
                    Audience::Connection(id) => *id == m.connection_id,
                })
                .map(|p| p.frame.clone())
                .collect(),
            batch: m.batch,
        })
        .collect();
    // A history page for a connection the member read did not list (it joined after the read).
    for p in planned {
        if let Audience::Connection(id) = &p.to {
            if !members.iter().any(|m| m.connection_id == *id) {
                parcels.push(Parcel {
                    connection_id: id.clone(),
                    frames: vec![p.frame.clone()],
                    batch: false,
                });
            }
        }
    }
    parcels.retain(|p| !p.frames.is_empty());
    parcels
}

/// The connections a history page is planned for: they asked for it at connect, so its push may
/// reach API Gateway before their upgrade is done.
fn awaiting_upgrade(planned: &[Planned]) -> Vec<&str> {
    planned
        .iter()
        .filter_map(|p| match &p.to {
            Audience::Connection(id) => Some(id.as_str()),
            Audience::Members { .. } => None,
        })
        .collect()
}

/// Delivers `parcels`, and does not let a history page race its connection's upgrade: a
/// recipient in `awaiting` that answers 410 while still connecting is posted the frames it did
/// not get again after each of [`UPGRADE_BACKOFF`], until it takes them. The counters add up
/// over the rounds. A wait that would pass `stop_at` is not waited: those frames are handed on
/// (in the report's `undelivered`), for the delivery queue. Other recipients still connecting
/// lose the frame, as any client not connected yet would; they asked for nothing at connect.
async fn deliver_once_open<D: Deliver>(
    deliver: &D,
    parcels: Vec<Parcel>,
    awaiting: &[&str],
    stop_at: Option<Instant>,
) -> ParcelReport {
    let mut report = deliver.deliver_parcels(parcels, stop_at).await;
    let mut waits = UPGRADE_BACKOFF.iter();
    loop {
        let again: Vec<Parcel> = std::mem::take(&mut report.connecting)
            .into_iter()
            .filter(|p| awaiting.contains(&p.connection_id.as_str()))
            .collect();
        if again.is_empty() {
            return report;
        }
        let Some(wait) = waits.next() else {
            tracing::warn!(
                recipients = again.len(),
                "still connecting after every retry; their history was not delivered"
            );
            return report;
        };
        if stop_at.is_some_and(|at| Instant::now() + *wait >= at) {
            report.handed_on += again.len() as u64;
            report.undelivered.extend(again);
            return report;
        }
        tokio::time::sleep(*wait).await;
        report.counters.retried += again.len() as u64;
        let next = deliver.deliver_parcels(again, stop_at).await;
        report.counters.add(&next.counters);
        report.undelivered.extend(next.undelivered);
        report.handed_on += next.handed_on;
        report.connecting = next.connecting;
    }
}

/// How recipients' frames become shards: [`shard::retry_direct`] for those a post missed, the
/// second attempt; [`shard::listed`] for those handed to `deliver` before any post, the first.
type ToShards = fn(ChannelId, String, String, Vec<String>) -> Vec<shard::Shard>;

/// The frames of recipients not reached (by their deadline, or by the hand-off) go to the delivery
/// queue, each recipient's in order: one frame after another, so each group's shards keep it.
async fn hand_on<Q: ShardQueue>(
    shards: &Q,
    channel: &ChannelId,
    planned: &[Planned],
    origins: &[String],
    undelivered: Vec<Parcel>,
    to_shards: ToShards,
) -> Result<(), String> {
    // Recipients with the same frames left go together: usually every one of them has all, or
    // the same last few.
    let mut by_frames: Vec<(Vec<Arc<str>>, Vec<String>)> = Vec::new();
    for parcel in undelivered {
        match by_frames.iter_mut().find(|(frames, _)| {
            frames.len() == parcel.frames.len() && frames.iter().zip(&parcel.frames).all(|(a, b)| Arc::ptr_eq(a, b))
        }) {
            Some((_, ids)) => ids.push(parcel.connection_id),
            None => by_frames.push((parcel.frames, vec![parcel.connection_id])),
        }
    }
    let mut out = Vec::new();
    for (frames, recipients) in by_frames {
        for frame in frames {
            let origin = planned
                .iter()
                .find(|p| Arc::ptr_eq(&p.frame, &frame))
                .map_or("?", |p| origins[p.record].as_str());
            out.extend(to_shards(
                channel.clone(),
                frame.to_string(),
                origin.to_owned(),
                recipients.clone(),
            ));
        }
    }
    shards.enqueue(out).await
}

/// Takes out of `parcels` what goes to `deliver` instead ([`shard::goes_parallel`]): the parcels
/// of members that take one frame a post, when the posts of all of them would not be made before
/// the hand-off. Members that take batches stay: theirs are a post or two each here, and would be
/// a post per frame from `deliver`; so do connections awaiting their history page, which only
/// this invocation posts again while their upgrade finishes. Each recipient's frames all go one
/// way, in order.
fn parallel_part<D: Deliver>(
    deliver: &D,
    parcels: &mut Vec<Parcel>,
    awaiting: &[&str],
    stop_at: Option<Instant>,
) -> Option<Vec<Parcel>> {
    let time_left = stop_at?.saturating_duration_since(Instant::now());
    let movable = |p: &Parcel| !p.batch && !awaiting.contains(&p.connection_id.as_str());
    // A batching member's frames are about one post (a post holds 128 KB of them).
    let posts = |p: &Parcel| if p.batch { 1 } else { p.frames.len() };
    let pending: usize = parcels.iter().map(posts).sum();
    if !parcels.iter().any(movable) || !shard::goes_parallel(pending as u64, deliver.posts_per_second(), time_left) {
        return None;
    }
    let (parallel, direct): (Vec<Parcel>, Vec<Parcel>) = std::mem::take(parcels).into_iter().partition(movable);
    *parcels = direct;
    Some(parallel)
}

/// Delivers one channel's records of a batch: every frame they ask for, each member's in stream
/// order, the members in parallel. No member waits for every other member's copy of a record
/// before getting the next record, and a member that takes batches gets them in as few posts as
/// fit. A large channel is handed to the delivery queue, a group of its members a shard.
async fn channel_batch<S: Store, D: Deliver, F: FailureDestination, Q: ShardQueue>(
    store: &S,
    deliver: &D,
    failures: &F,
    shards: &Q,
    records: &[(&EventRecord, Result<Work, RecordError>)],
    stop_at: Option<Instant>,
    pace: Option<(&Mutex<Cadence>, Instant)>,
) -> ChannelOutcomes {
    let mut outcomes: ChannelOutcomes = (0..records.len()).map(|_| Ok(Counters::default())).collect();
    // Past the hand-off a channel is not started: Lambda gives its records to the next invocation.
    if stop_at.is_some_and(|at| Instant::now() >= at) {
        fail_from(&mut outcomes, 0, RecordError::OutOfTime);
        return outcomes;
    }
    let (planned, stopped) = plan(store, failures, records).await;
    if let Some((index, error)) = stopped {
        fail_from(&mut outcomes, index, error);
    }
    if planned.is_empty() {
        return outcomes;
    }
    let origins: Vec<String> = records.iter().map(|(r, _)| r.event_id.clone()).collect();
    // The channel, as the records' work names it (a frame is planned only from work, and all of
    // a channel's records name the same one).
    let (Ok(Work::Push(Push { channel, .. })) | Ok(Work::History { channel, .. })) = &records[planned[0].record].1
    else {
        return outcomes;
    };
    let channel = channel.clone();
    let wants_members = planned.iter().any(|p| matches!(p.to, Audience::Members { .. }));
    let members = if wants_members {
        // One page one longer than the direct path takes tells which path the channel needs.
        match store.members_page(&channel, None, DIRECT_MAX_MEMBERS + 1).await {
            Ok(page) if page.members.len() > DIRECT_MAX_MEMBERS || page.next.is_some() => None,
            Ok(page) => Some(page.members),
            Err(e) => {
                fail_from(&mut outcomes, planned[0].record, e.into());
                return outcomes;
            }
        }
    } else {
        Some(Vec::new())
    };
    let Some(members) = members else {
        return sharded(deliver, shards, &channel, &planned, &origins, outcomes, stop_at).await;
    };
    let awaiting = awaiting_upgrade(&planned);
    let mut parcels = parcels(&members, &planned);
    if let Some((cadence, taken_at)) = pace {
        let for_members = planned
            .iter()
            .filter(|p| matches!(p.to, Audience::Members { .. }))
            .count();
        let batching = parcels.iter().filter(|p| p.batch).count();
        if for_members > 0 {
            let messages: Vec<Sequenced> = records.iter().filter_map(|(r, _)| sequenced(r)).collect();
            let mut cadence = cadence.lock().unwrap_or_else(|p| p.into_inner());
            cadence.observe(&channel.to_string(), &messages, batching, taken_at);
        }
    }
    let parallel = parallel_part(deliver, &mut parcels, &awaiting, stop_at).unwrap_or_default();
    let (recipients, posts) = (parallel.len(), parallel.iter().map(|p| p.frames.len()).sum::<usize>());
    // The two parts have no recipient in common: the posts here need not wait for the enqueueing.
    let (report, enqueued) = tokio::join!(deliver_once_open(deliver, parcels, &awaiting, stop_at), async {
        match parallel.is_empty() {
            true => Ok(()),
            false => hand_on(shards, &channel, &planned, &origins, parallel, shard::listed).await,
        }
    });
    if let Err(why) = enqueued {
        // The records are retried: members who got them here may get them again, and drop them
        // by messageId/seq.
        fail_from(&mut outcomes, planned[0].record, RecordError::Enqueue(why));
        return outcomes;
    }
    if recipients > 0 {
        tracing::info!(%channel, recipients, posts, "too much to post before the hand-off; sent to the delivery queue");
    }
    outcomes[planned[0].record] = Ok(report.counters);
    if report.undelivered.is_empty() {
        return outcomes;
    }
    let (count, handed_on) = (report.undelivered.len(), report.handed_on);
    // No silent loss: those not reached get the next attempt from deliver.
    if let Err(why) = hand_on(
        shards,
        &channel,
        &planned,
        &origins,
        report.undelivered,
        shard::retry_direct,
    )
    .await
    {
        // Then the records are retried from the first: members who got them may get them again,
        // and drop them by messageId/seq.
        fail_from(&mut outcomes, planned[0].record, RecordError::Enqueue(why));
        return outcomes;
    }
    tracing::info!(%channel, recipients = count, handed_on, "undelivered frames sent to the delivery queue");
    outcomes
}

/// A large channel: each frame to the delivery queue as a shard per group (deliver reads the
/// members); a history page, for one connection, is posted from here.
async fn sharded<D: Deliver, Q: ShardQueue>(
    deliver: &D,
    shards: &Q,
    channel: &ChannelId,
    planned: &[Planned],
    origins: &[String],
    mut outcomes: ChannelOutcomes,
    stop_at: Option<Instant>,
) -> ChannelOutcomes {
    for p in planned {
        let result = match &p.to {
            Audience::Members { except_user } => {
                let groups = shard::group_shards(channel, &p.frame, &origins[p.record], except_user.as_deref());
                shards
                    .enqueue(groups)
                    .await
                    .map(|()| Counters::default())
                    .map_err(RecordError::Enqueue)
            }
            Audience::Connection(id) => {
                let parcel = Parcel {
                    connection_id: id.clone(),
                    frames: vec![p.frame.clone()],
                    batch: false,
                };
                let report = deliver_once_open(deliver, vec![parcel], &[id.as_str()], stop_at).await;
                match report.undelivered.is_empty() {
                    true => Ok(report.counters),
                    false => hand_on(
                        shards,
                        channel,
                        planned,
                        origins,
                        report.undelivered,
                        shard::retry_direct,
                    )
                    .await
                    .map(|()| report.counters)
                    .map_err(RecordError::Enqueue),
                }
            }
        };
        match result {
            Ok(c) => outcomes[p.record] = Ok(c),
            Err(e) => {
                fail_from(&mut outcomes, p.record, e);
                return outcomes;
            }
        }
    }
    tracing::info!(%channel, frames = planned.len(), "sharded to the delivery queue");
    outcomes
}

/// Handles one batch and returns the records to retry. No channel starts after `stop_at` (the
/// invocation's hand-off time, before its timeout), and no post does: what is left then goes to
/// the delivery queue (recipients' frames) or back to Lambda (records not started).
pub async fn handle<S: Store, D: Deliver, F: FailureDestination, Q: ShardQueue>(
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

/// [`handle`], and a channel still at work at `cut_at` is cut there: its records go back to
/// Lambda, whose retry starts from the first of them. No post starts after the hand-off, but the
/// DynamoDB and SQS calls around the posts (the channel's plan and members, a gone recipient's
/// cleanup, the hand-on) can each take their whole budget on a saturated table, several in a row:
/// `bench local`'s 1,000 clients leaving ran four stream-fanout invocations into their 30 s
/// timeout. A cut channel's members may get some frames again (they drop them by id); a
/// timed-out invocation's whole batch, every channel's, would come again.
pub async fn handle_until<S: Store, D: Deliver, F: FailureDestination, Q: ShardQueue>(
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
