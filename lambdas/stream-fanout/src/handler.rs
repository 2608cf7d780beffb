//! The DynamoDB stream fanout: pushes messages, reactions, typing, receipts and presence to every
//! member of a channel.
//!
//! Records of one channel are handled in stream order; different channels run concurrently. A
//! record that cannot be handled is reported in `batchItemFailures` by its sequence number, and so
//! is every later record of the same channel in the batch, so that the retry (which starts from
//! the failed record) replays them in order instead of delivering them ahead of it.

/// The environment variables this function reads (the SAM template is checked against it).
pub const ENV: &[&str] = &[
    "TABLE_NAME",
    "DYNAMODB_TIMEOUT_MS",
    "CONNECTIONS_ENDPOINT",
    "FANOUT_CONCURRENCY",
    "FANOUT_DEADLINE_MS",
];

/// Sort-key prefixes of the records this function acts on; the stream filter must let each through.
pub const HANDLED_SORT_KEY_PREFIXES: &[&str] = &[keys::MSG_PREFIX, keys::EVT_PREFIX, keys::USER_PREFIX];

/// Channels whose records are worked on at once within one batch.
const CHANNELS_IN_FLIGHT: usize = 16;

use aws_lambda_events::dynamodb::{Event, EventRecord};
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use serde_dynamo::AttributeValue;
use wsfan_shared::batch::{in_key_order, Outcome};
use wsfan_shared::broadcaster::{BroadcastError, Counters, Deliver};
use wsfan_shared::channel::{ChannelId, ChannelKind};
use wsfan_shared::model::{keys, Message};
use wsfan_shared::protocol::{PresenceState, ServerFrame};
use wsfan_shared::store::{Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("malformed record: {0}")]
    Malformed(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broadcast(#[from] BroadcastError),
}

/// A frame to push to every member of a channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Push {
    pub channel: ChannelId,
    pub frame: ServerFrame,
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

/// Decides what a record means (`None`: nothing to push). Pure: no I/O.
pub fn classify(record: &EventRecord) -> Result<Option<Push>, RecordError> {
    let sk = string_key(record, "sk")?;
    let is_message = sk.starts_with(keys::MSG_PREFIX) || sk.starts_with(keys::EVT_PREFIX);
    if is_message {
        // Edits and TTL removals of messages are not news to anyone.
        if record.event_name != "INSERT" {
            return Ok(None);
        }
        let message: Message = serde_dynamo::from_item(record.change.new_image.clone())
            .map_err(|e| RecordError::Malformed(format!("message image: {e}")))?;
        return Ok(Some(Push {
            channel: message.channel.clone(),
            frame: message.to_frame(),
        }));
    }
    if let Some(user_id) = sk.strip_prefix(keys::USER_PREFIX) {
        let channel: ChannelId = string_key(record, "pk")?
            .strip_prefix(keys::CHAN_PREFIX)
            .ok_or_else(|| RecordError::Malformed("presence item outside a channel".into()))?
            .parse()
            .map_err(|e| RecordError::Malformed(format!("presence channel: {e}")))?;
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
        return Ok(Some(Push { channel, frame }));
    }
    Ok(None)
}

async fn push<S: Store, D: Deliver>(
    store: &S,
    deliver: &D,
    channel: &ChannelId,
    frame: &ServerFrame,
) -> Result<Counters, RecordError> {
    // A user's own devices are not told of the user's own presence.
    let subject = match frame {
        ServerFrame::Presence { user_id, .. } => Some(user_id.as_str()),
        _ => None,
    };
    let members: Vec<String> = store
        .members(channel)
        .await?
        .into_iter()
        .filter(|m| subject.is_none() || m.user_id.as_deref() != subject)
        .map(|m| m.connection_id)
        .collect();
    if members.is_empty() {
        return Ok(Counters::default());
    }
    let payload = frame.to_json();
    let report = deliver.deliver(members, payload.as_bytes()).await?;
    Ok(report.counters)
}

/// Handles one batch and returns the records to retry.
pub async fn handle<S: Store, D: Deliver>(store: &S, deliver: &D, event: Event) -> DynamoDbEventResponse {
    let work: Vec<_> = event
        .records
        .iter()
        .map(|record| (record, classify(record).transpose()))
        .filter_map(|(record, action)| Some((record, action?)))
        // The partition key is the channel, and it is there even when the image is malformed,
        // so a bad record holds up exactly the records of its own channel.
        .map(|(record, action)| (string_key(record, "pk").unwrap_or("?").to_owned(), (record, action)))
        .collect();

    let outcomes = in_key_order(work, CHANNELS_IN_FLIGHT, async |(_, action)| match action {
        Ok(Push { channel, frame }) => push(store, deliver, channel, frame).await,
        Err(e) => Err(RecordError::Malformed(e.to_string())),
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
