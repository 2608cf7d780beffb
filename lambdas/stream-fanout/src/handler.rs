//! The DynamoDB stream fanout: pushes messages, reactions, typing, receipts and presence to every
//! member of a channel.
//!
//! Records of one channel are handled in stream order; different channels run concurrently. A
//! record that cannot be handled is reported in `batchItemFailures` by its sequence number, and so
//! is every later record of the same channel in the batch, so that the retry (which starts from
//! the failed record) replays them in order instead of delivering them ahead of it.
//!
//! A record that can never be used (a message item that breaks the contract, say one a backend
//! wrote without a body) is not retried: it goes to the stream's failure destination at once,
//! with the reason, and the records behind it go on. A membership written with `history` (asked
//! for at connect) sends that page of the channel's history to that one connection.
//!
//! A channel of up to [`DIRECT_MAX_MEMBERS`] members is posted to from here. A larger one is
//! handed to the delivery queue as one shard per group of its members (wsfan_shared::shard), and
//! the `deliver` function reads each group's part of the member list and posts it, the groups in
//! parallel: this function reads one page of a large channel and holds its stream shard for the
//! few sends only. A recipient still undelivered at FANOUT_DEADLINE_MS goes to the delivery queue
//! too, for another attempt: nobody is dropped silently.

/// The environment variables this function reads (the SAM template is checked against it).
pub const ENV: &[&str] = &[
    "TABLE_NAME",
    "DYNAMODB_TIMEOUT_MS",
    "CONNECTIONS_ENDPOINT",
    "FANOUT_CONCURRENCY",
    "FANOUT_DEADLINE_MS",
    "FAILURE_QUEUE_URL",
    "DELIVERY_QUEUE_URL",
    "FANOUT_MAX_RPS",
    "FANOUT_SHARES",
];

/// Sort-key prefixes of the records this function acts on; the stream filter must let each through.
pub const HANDLED_SORT_KEY_PREFIXES: &[&str] = &[keys::MSG_PREFIX, keys::EVT_PREFIX, keys::USER_PREFIX];

/// Memberships (`CONN#`) matter only when inserted with this attribute; the stream filter lets
/// exactly those through.
pub const HISTORY_REQUEST_ATTRIBUTE: &str = "history";

/// Channels whose records are worked on at once within one batch.
const CHANNELS_IN_FLIGHT: usize = 16;

use std::collections::HashMap;
use std::sync::Arc;

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use serde_dynamo::AttributeValue;
use wsfan_shared::batch::{in_key_order, Outcome};
use wsfan_shared::broadcaster::{BroadcastError, Counters, Deliver, MAX_PAYLOAD_BYTES};
use wsfan_shared::channel::{ChannelId, ChannelKind};
use wsfan_shared::model::{keys, Message};
use wsfan_shared::protocol::{HistoryCursor, PresenceState, ServerFrame, MAX_HISTORY_LIMIT};
use wsfan_shared::publisher::FailureQueue;
use wsfan_shared::shard::{self, ShardQueue, DIRECT_MAX_MEMBERS};
use wsfan_shared::store::{Member, Store, StoreError};

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
}

/// A frame to push to every member of a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub channel: ChannelId,
    pub frame: ServerFrame,
}

/// What one record asks for.
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

/// Sends a page of history to the one connection that asked for it at connect.
async fn send_history<S: Store, D: Deliver>(
    store: &S,
    deliver: &D,
    channel: &ChannelId,
    connection_id: &str,
    limit: u32,
) -> Result<Counters, RecordError> {
    let page = store.history(channel, HistoryCursor::Latest, limit).await?;
    let frame = ServerFrame::History {
        channel: channel.to_string(),
        messages: page.messages.iter().map(Message::to_frame).collect(),
        before: page.before,
        after: None,
        complete: None,
    };
    let report = deliver
        .deliver(vec![connection_id.to_owned()], frame.to_json().as_bytes())
        .await?;
    Ok(report.counters)
}

/// A channel's members as the batch sees them: the list itself when small, or the fact that it
/// is too large to hold here (deliver reads it, a group at a time).
#[derive(Clone)]
enum Members {
    Direct(Arc<Vec<Member>>),
    Sharded,
}

/// The member lists of one batch, read once per channel.
///
/// A batch holds up to a hundred records, and when many people join a channel at once most of
/// them are presence records of that one channel: reading the whole member list again for each
/// made a join storm quadratic in reads (1,000 joins read a million items). Records of a channel
/// are handled in order, so the list read for the first serves the rest of the batch; everyone
/// who joins later wrote their membership after these records, and learns what came before from
/// `joined` and `history`.
struct BatchMembers<'a, S> {
    store: &'a S,
    read: std::sync::Mutex<HashMap<ChannelId, Members>>,
}

impl<'a, S: Store> BatchMembers<'a, S> {
    fn new(store: &'a S) -> Self {
        BatchMembers {
            store,
            read: Default::default(),
        }
    }

    async fn of(&self, channel: &ChannelId) -> Result<Members, StoreError> {
        if let Some(members) = self.read.lock().unwrap().get(channel) {
            return Ok(members.clone());
        }
        // One page one longer than the direct path takes tells which path the channel needs.
        let page = self.store.members_page(channel, None, DIRECT_MAX_MEMBERS + 1).await?;
        let members = if page.members.len() > DIRECT_MAX_MEMBERS || page.next.is_some() {
            Members::Sharded
        } else {
            Members::Direct(Arc::new(page.members))
        };
        self.read.lock().unwrap().insert(channel.clone(), members.clone());
        Ok(members)
    }
}

async fn push<S: Store, D: Deliver, Q: ShardQueue>(
    members: &BatchMembers<'_, S>,
    deliver: &D,
    shards: &Q,
    channel: &ChannelId,
    frame: &ServerFrame,
    origin: &str,
) -> Result<Counters, RecordError> {
    // A user's own devices are not told of the user's own presence.
    let subject = match frame {
        ServerFrame::Presence { user_id, .. } => Some(user_id.as_str()),
        _ => None,
    };
    let wanted = |m: &Member| subject.is_none() || m.user_id.as_deref() != subject;
    let payload = frame.to_json();
    let members = match members.of(channel).await? {
        Members::Direct(members) => members,
        Members::Sharded => {
            let groups = shard::group_shards(channel, &payload, origin, subject);
            let count = groups.len();
            shards.enqueue(groups).await.map_err(RecordError::Enqueue)?;
            tracing::info!(%channel, groups = count, "sharded to the delivery queue");
            return Ok(Counters::default());
        }
    };
    let members: Vec<String> = members
        .iter()
        .filter(|m| wanted(m))
        .map(|m| m.connection_id.clone())
        .collect();
    if members.is_empty() {
        return Ok(Counters::default());
    }
    let report = deliver.deliver(members, payload.as_bytes()).await?;
    let undelivered: Vec<String> = report.undelivered().map(|(id, _)| id.to_owned()).collect();
    if !undelivered.is_empty() {
        // No silent loss: those still failing at the deadline get the next attempt from deliver.
        shards
            .enqueue(shard::retry_direct(
                channel.clone(),
                payload,
                origin.to_owned(),
                undelivered,
            ))
            .await
            .map_err(RecordError::Enqueue)?;
    }
    Ok(report.counters)
}

/// Handles one batch and returns the records to retry.
pub async fn handle<S: Store, D: Deliver, F: FailureDestination, Q: ShardQueue>(
    store: &S,
    deliver: &D,
    failures: &F,
    shards: &Q,
    event: Event,
) -> DynamoDbEventResponse {
    let work: Vec<_> = event
        .records
        .iter()
        .map(|record| (record, classify(record).transpose()))
        .filter_map(|(record, action)| Some((record, action?)))
        // The partition key is the channel, and it is there even when the image is malformed,
        // so a bad record holds up exactly the records of its own channel.
        .map(|(record, action)| (string_key(record, "pk").unwrap_or("?").to_owned(), (record, action)))
        .collect();

    let members = BatchMembers::new(store);
    let outcomes = in_key_order(work, CHANNELS_IN_FLIGHT, async |(record, action)| match action {
        Ok(Work::Push(Push { channel, frame })) => {
            push(&members, deliver, shards, channel, frame, &record.event_id).await
        }
        Ok(Work::History {
            channel,
            connection_id,
            limit,
        }) => send_history(store, deliver, channel, connection_id, *limit).await,
        // Retrying cannot make it usable: off to the failure destination now, and the channel
        // goes on. Only when that fails is the record retried.
        Err(e) => {
            let reason = e.to_string();
            failures
                .park(failure_body(record, &reason))
                .await
                .map_err(RecordError::Park)?;
            tracing::warn!(event_id = %record.event_id, %reason, "unusable record sent to the failure destination");
            Ok(Counters::default())
        }
    })
    .await;

    let mut response = DynamoDbEventResponse::default();
    let mut counters = Counters::default();
    for ((record, _), outcome) in outcomes {
        let error = match outcome {
            Outcome::Done(c) => {
                counters.add(&c);
                continue;
            }
            Outcome::Failed(e) => e.to_string(),
            Outcome::Blocked => "not attempted: an earlier record of its channel failed".to_owned(),
        };
        let sequence = record.change.sequence_number.clone();
        tracing::error!(sequence = sequence.as_deref().unwrap_or("?"), event_id = %record.event_id, %error, "record failed");
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = sequence;
        response.batch_item_failures.push(failure);
    }
    counters.log_emf("stream-fanout");
    response
}
