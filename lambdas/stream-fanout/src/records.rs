//! Records to work: what each stream record asks for, decided without I/O.

use aws_lambda_events::dynamodb::EventRecord;
use serde_dynamo::AttributeValue;
use wsfan_shared::broadcaster::MAX_PAYLOAD_BYTES;
use wsfan_shared::cadence::Sequenced;
use wsfan_shared::channel::{ChannelId, ChannelKind};
use wsfan_shared::model::{keys, Message};
use wsfan_shared::protocol::{PresenceState, ServerFrame, MAX_HISTORY_LIMIT};
use wsfan_shared::reactions::SummaryItem;
use wsfan_shared::reads::ReadCursor;

use crate::{RecordError, HISTORY_REQUEST_ATTRIBUTE};

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

/// A message item's place in its channel's sequence and when it was written (`seq`, `sentAt`):
/// the channel's rate, for its cadence. Kinds off the sequence have no `seq`.
pub(crate) fn sequenced(record: &EventRecord) -> Option<Sequenced> {
    let number = |name: &str| match record.change.new_image.get(name)? {
        AttributeValue::N(n) => n.parse::<i64>().ok(),
        _ => None,
    };
    Some(Sequenced {
        seq: u64::try_from(number("seq")?).ok()?,
        sent_at_ms: number("sentAt")?,
    })
}

pub(crate) fn string_key<'a>(record: &'a EventRecord, name: &str) -> Result<&'a str, RecordError> {
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
