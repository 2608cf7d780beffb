//! A channel's frames to its members: the direct path (posts from here, each member's frames in
//! order, the members in parallel) or, for a large channel, the delivery queue.

use std::sync::Mutex;
use std::time::Instant;

use aws_lambda_events::dynamodb::EventRecord;
use wsfan_shared::broadcaster::{Broadcast, Counters, Parcel, ParcelReport};
use wsfan_shared::cadence::{Cadence, Sequenced};
use wsfan_shared::ports::{FailureDestination, ShardQueue};
use wsfan_shared::shard::{self, DIRECT_MAX_MEMBERS};
use wsfan_shared::store::{Member, Members, Messages};

use crate::failures::{fail_from, ChannelOutcomes};
use crate::plan::{plan, Audience, ChannelFrames, Planned};
use crate::queue::{hand_on, sharded};
use crate::records::sequenced;
use crate::{Push, RecordError, Work, UPGRADE_BACKOFF};

/// Delivers one channel's records of a batch: every frame they ask for, each member's in stream
/// order, the members in parallel. No member waits for every other member's copy of a record
/// before getting the next record, and a member that takes batches gets them in as few posts as
/// fit. A large channel is handed to the delivery queue, a group of its members a shard.
pub(crate) async fn channel_batch<S: Messages + Members, D: Broadcast, F: FailureDestination, Q: ShardQueue>(
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
    let frames = ChannelFrames {
        channel: channel.clone(),
        planned,
        origins,
    };
    let members = match direct_members(store, &frames).await {
        Ok(Some(members)) => members,
        Ok(None) => return sharded(deliver, shards, &frames, outcomes, stop_at).await,
        Err(e) => {
            fail_from(&mut outcomes, frames.first_record(), e);
            return outcomes;
        }
    };
    let awaiting = awaiting_upgrade(&frames.planned);
    let parcels = parcels(&members, &frames.planned);
    if let Some(pace) = pace {
        observe_cadence(pace, &frames, records, &parcels);
    }
    match deliver_direct(deliver, shards, &frames, parcels, &awaiting, stop_at).await {
        Ok(counters) => outcomes[frames.first_record()] = Ok(counters),
        // The records are retried: members who got them here may get them again, and drop them
        // by messageId/seq.
        Err(e) => fail_from(&mut outcomes, frames.first_record(), e),
    }
    outcomes
}

/// The channel's members, when the direct path takes the channel; `None` when it has too many
/// (it is sharded). Frames for single connections only need no member list.
async fn direct_members<S: Messages + Members>(
    store: &S,
    frames: &ChannelFrames,
) -> Result<Option<Vec<Member>>, RecordError> {
    let wants_members = frames.planned.iter().any(|p| matches!(p.to, Audience::Members { .. }));
    if !wants_members {
        return Ok(Some(Vec::new()));
    }
    // One page one longer than the direct path takes tells which path the channel needs.
    let page = store
        .members_page(&frames.channel, None, DIRECT_MAX_MEMBERS + 1)
        .await?;
    Ok(match page.members.len() > DIRECT_MAX_MEMBERS || page.next.is_some() {
        true => None,
        false => Some(page.members),
    })
}

/// Tells the cadence the channel's rate (its messages in this batch) and how many of its members
/// take batches, when it has frames for its members.
fn observe_cadence(
    (cadence, taken_at): (&Mutex<Cadence>, Instant),
    frames: &ChannelFrames,
    records: &[(&EventRecord, Result<Work, RecordError>)],
    parcels: &[Parcel],
) {
    let for_members = frames
        .planned
        .iter()
        .filter(|p| matches!(p.to, Audience::Members { .. }))
        .count();
    let batching = parcels.iter().filter(|p| p.batch).count();
    if for_members > 0 {
        let messages: Vec<Sequenced> = records.iter().filter_map(|(r, _)| sequenced(r)).collect();
        let mut cadence = cadence.lock().unwrap_or_else(|p| p.into_inner());
        cadence.observe(&frames.channel.to_string(), &messages, batching, taken_at);
    }
}

/// The direct path: posts `parcels` from here, but for the part that goes to `deliver` before
/// the hand-off ([`parallel_part`]), and hands on the frames of recipients not reached. An error
/// is a hand-on that failed: the records are then retried.
async fn deliver_direct<D: Broadcast, Q: ShardQueue>(
    deliver: &D,
    shards: &Q,
    frames: &ChannelFrames,
    mut parcels: Vec<Parcel>,
    awaiting: &[&str],
    stop_at: Option<Instant>,
) -> Result<Counters, RecordError> {
    let channel = &frames.channel;
    let parallel = parallel_part(deliver, &mut parcels, awaiting, stop_at).unwrap_or_default();
    let (recipients, posts) = (parallel.len(), parallel.iter().map(|p| p.frames.len()).sum::<usize>());
    // The two parts have no recipient in common: the posts here need not wait for the enqueueing.
    let (report, enqueued) = tokio::join!(deliver_once_open(deliver, parcels, awaiting, stop_at), async {
        match parallel.is_empty() {
            true => Ok(()),
            false => hand_on(shards, frames, parallel, shard::listed).await,
        }
    });
    enqueued.map_err(RecordError::Enqueue)?;
    if recipients > 0 {
        tracing::info!(%channel, recipients, posts, "too much to post before the hand-off; sent to the delivery queue");
    }
    if report.undelivered.is_empty() {
        return Ok(report.counters);
    }
    let (count, handed_on) = (report.undelivered.len(), report.handed_on);
    // No silent loss: those not reached get the next attempt from deliver. If that fails, the
    // records are retried from the first.
    hand_on(shards, frames, report.undelivered, shard::retry_direct)
        .await
        .map_err(RecordError::Enqueue)?;
    tracing::info!(%channel, recipients = count, handed_on, "undelivered frames sent to the delivery queue");
    Ok(report.counters)
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
pub(crate) async fn deliver_once_open<D: Broadcast>(
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

/// Takes out of `parcels` what goes to `deliver` instead ([`shard::goes_parallel`]): the parcels
/// of members that take one frame a post, when the posts of all of them would not be made before
/// the hand-off. Members that take batches stay: theirs are a post or two each here, and would be
/// a post per frame from `deliver`; so do connections awaiting their history page, which only
/// this invocation posts again while their upgrade finishes. Each recipient's frames all go one
/// way, in order.
fn parallel_part<D: Broadcast>(
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
