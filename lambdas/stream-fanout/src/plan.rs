//! A channel's records to the frames they push, in stream order, and who gets each.

use std::sync::Arc;

use aws_lambda_events::dynamodb::EventRecord;
use wsfan_shared::broadcaster::MAX_PAYLOAD_BYTES;
use wsfan_shared::channel::ChannelId;
use wsfan_shared::protocol::{ChatEvent, HistoryCursor, ServerFrame};
use wsfan_shared::store::Messages;

use crate::failures::failure_body;
use crate::{Push, RecordError, Work};
use wsfan_shared::ports::FailureDestination;

/// The history page a connection asked for at connect, as the frame it gets.
async fn history_frame<S: Messages>(store: &S, channel: &ChannelId, limit: u32) -> Result<String, RecordError> {
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
pub(crate) struct Planned {
    /// The record it came from (its index in the channel's records).
    pub(crate) record: usize,
    pub(crate) frame: Arc<str>,
    pub(crate) to: Audience,
}

pub(crate) enum Audience {
    /// Every member, but a user's own connections for news about that user.
    Members { except_user: Option<String> },
    /// One connection (a history page it asked for).
    Connection(String),
}

/// A channel's planned frames, with what a shard needs of them: the channel, and the event id of
/// each record (a frame's origin, by its record's index).
pub(crate) struct ChannelFrames {
    pub(crate) channel: ChannelId,
    pub(crate) planned: Vec<Planned>,
    pub(crate) origins: Vec<String>,
}

impl ChannelFrames {
    /// The first record a frame is planned for: the one reported with the channel's counters,
    /// and from which the records are retried when the delivery fails.
    pub(crate) fn first_record(&self) -> usize {
        self.planned[0].record
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
pub(crate) async fn plan<S: Messages, F: FailureDestination>(
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
