//! What goes to the delivery queue: a large channel's frames, a shard per group of members, and
//! the frames of recipients a post did not reach.

use std::sync::Arc;
use std::time::Instant;

use wsfan_shared::broadcaster::{Broadcast, Counters, Parcel};
use wsfan_shared::channel::ChannelId;
use wsfan_shared::ports::{QueueError, ShardQueue};
use wsfan_shared::shard;

use crate::delivery::deliver_once_open;
use crate::failures::{fail_from, ChannelOutcomes};
use crate::plan::{Audience, ChannelFrames};
use crate::RecordError;

/// How recipients' frames become shards: [`shard::retry_direct`] for those a post missed, the
/// second attempt; [`shard::listed`] for those handed to `deliver` before any post, the first.
type ToShards = fn(ChannelId, String, String, Vec<String>) -> Vec<shard::Shard>;

/// The frames of recipients not reached (by their deadline, or by the hand-off) go to the delivery
/// queue, each recipient's in order: one frame after another, so each group's shards keep it.
pub(crate) async fn hand_on<Q: ShardQueue>(
    shards: &Q,
    channel_frames: &ChannelFrames,
    undelivered: Vec<Parcel>,
    to_shards: ToShards,
) -> Result<(), QueueError> {
    let ChannelFrames {
        channel,
        planned,
        origins,
    } = channel_frames;
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

/// A large channel: each frame to the delivery queue as a shard per group (deliver reads the
/// members); a history page, for one connection, is posted from here.
pub(crate) async fn sharded<D: Broadcast, Q: ShardQueue>(
    deliver: &D,
    shards: &Q,
    frames: &ChannelFrames,
    mut outcomes: ChannelOutcomes,
    stop_at: Option<Instant>,
) -> ChannelOutcomes {
    let ChannelFrames {
        channel,
        planned,
        origins,
    } = frames;
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
                    false => hand_on(shards, frames, report.undelivered, shard::retry_direct)
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
