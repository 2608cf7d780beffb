//! The delivery function: posts the shards of large channels, and the retries of recipients
//! that a fanout could not reach in time, from the delivery queue (FIFO).
//!
//! A large channel's shard names one group of its members (wsfan_shared::shard) and this
//! function reads that group's part of the member list itself, a page at a time and a page ahead
//! of the posts, which go on from page to page without waiting for a page's slowest recipient.
//! The queue hands out a group's shards one after another, so each recipient sees a channel's
//! frames in order. A group too large to finish in one invocation stops reading at its
//! [`ReadBudget`] and hands the rest on as the group's next shard (it joins the back of the group:
//! only then can a later frame overtake it; clients recover by `seq`). A shard that cannot even
//! start in time fails, and SQS gives it back in order.
//!
//! A recipient still failing at FANOUT_DEADLINE_MS is not dropped: it goes back on the queue as a
//! shard of its own group, attempt + 1, and after [`wsfan_shared::shard::MAX_ATTEMPTS`] attempts
//! into the delivery dead-letter queue, which then holds exactly the recipients that never got the
//! frame (with the frame), to inspect and redrive. A 410 only removes that connection (the
//! broadcaster's cleanup). The shard itself succeeds in both cases, so the recipients it reached
//! are not posted to again. Only when the table or the queue cannot be reached is the whole shard
//! reported failed, and SQS retries it (at least once: clients deduplicate by `messageId`/`seq`).

/// What this function reads from its environment, loaded once by its main. The variables it
/// reads are this type's (`wsfan_shared::config::FromEnv::vars`); the SAM template is checked
/// against them (tests/template.rs).
pub type Config = (
    wsfan_shared::config::StoreConfig,
    wsfan_shared::config::BroadcastConfig,
    wsfan_shared::config::DeliveryQueueUrl,
    wsfan_shared::config::DeliveryDeadLetterUrl,
);

/// Message groups of one batch worked on at once.
const GROUPS_IN_FLIGHT: usize = 10;

/// Members read per page of a group: ~40 KB, and the posts of one page outlast the next read.
pub const READ_PAGE: usize = 1000;

/// Time kept at the end of an invocation: FANOUT_DEADLINE_MS (20 s in the template) for the
/// posts of the last page read, and 5 s to hand the rest of the group on.
pub const FINISH_RESERVE: Duration = Duration::from_secs(25);

use std::time::{Duration, Instant};

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use wsfan_shared::batch::{in_key_order, Outcome};
use wsfan_shared::broadcaster::{Broadcast, BroadcastError, Counters, Report};
use wsfan_shared::ports::{QueueError, ShardQueue};
use wsfan_shared::shard::{self, GroupRead, Shard, MAX_ATTEMPTS};
use wsfan_shared::store::{Members, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("not a shard: {0}")]
    Malformed(String),
    #[error(transparent)]
    Broadcast(#[from] BroadcastError),
    #[error("could not reach the delivery queue: {0}")]
    Queue(QueueError),
    #[error("could not read the group's members: {0}")]
    Store(#[from] StoreError),
    #[error("no time left in this invocation to start the shard")]
    OutOfTime,
}

/// How far a shard reads its group in this invocation: a page more while the invocation has
/// more than [`FINISH_RESERVE`] left (or, for tests and one-off runs, a number of pages).
#[derive(Debug, Clone, Copy)]
pub struct ReadBudget {
    until: Instant,
    max_pages: usize,
}

impl ReadBudget {
    /// For an invocation that must end by `deadline_ms` (milliseconds since the epoch, as the
    /// Runtime API gives it). A function configured with less than twice [`FINISH_RESERVE`]
    /// still reads for half its time: otherwise every shard would find no time left, forever.
    pub fn from_deadline_ms(deadline_ms: u64) -> Self {
        let left = wsfan_shared::clock::time_left(deadline_ms);
        ReadBudget {
            until: Instant::now() + left.saturating_sub(FINISH_RESERVE).max(left / 2),
            max_pages: usize::MAX,
        }
    }

    /// At most `pages` pages of a group per shard, with no time limit.
    pub fn pages(pages: usize) -> Self {
        ReadBudget {
            until: Instant::now() + Duration::from_secs(365 * 24 * 3600),
            max_pages: pages,
        }
    }

    fn may_start(&self) -> bool {
        Instant::now() < self.until
    }

    fn may_read(&self, pages_read: usize) -> bool {
        pages_read < self.max_pages && Instant::now() < self.until
    }
}

/// What one shard came to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Delivered {
    pub counters: Counters,
    /// Recipients sent back to the queue for another attempt.
    pub requeued: u64,
    /// Recipients parked in the dead-letter queue, their attempts spent.
    pub parked: u64,
}

/// The posts of one shard so far: their counters, and who is still not reached.
#[derive(Default)]
struct Tally {
    counters: Counters,
    undelivered: Vec<String>,
}

impl Tally {
    fn add(&mut self, report: Report) {
        self.counters.add(&report.counters);
        self.undelivered
            .extend(report.undelivered().map(|(id, _)| id.to_owned()));
    }
}

/// Posts one shard: its listed recipients, and its group's members when it reads them. The
/// recipients that still fail go back to the queue, or to the DLQ.
pub async fn deliver_shard<S: Members, D: Broadcast, Q: ShardQueue>(
    store: &S,
    deliver: &D,
    queue: &Q,
    shard: &Shard,
    budget: ReadBudget,
) -> Result<Delivered, ShardError> {
    if !budget.may_start() {
        return Err(ShardError::OutOfTime);
    }
    let mut tally = Tally::default();
    if !shard.recipients.is_empty() {
        tally.add(
            deliver
                .deliver(shard.recipients.clone(), shard.frame.as_bytes())
                .await?,
        );
    }
    if let Some(read) = &shard.read {
        read_and_post(store, deliver, queue, shard, read, budget, &mut tally).await?;
    }
    let mut done = Delivered {
        counters: tally.counters,
        ..Delivered::default()
    };
    if tally.undelivered.is_empty() {
        return Ok(done);
    }
    let count = tally.undelivered.len() as u64;
    let next = shard::retry(shard, tally.undelivered);
    if shard.attempt >= MAX_ATTEMPTS {
        for parked in next {
            tracing::error!(
                channel = %parked.channel,
                group = parked.group,
                origin = %parked.origin,
                recipients = parked.recipients.len(),
                "recipients missed every attempt; parked in the delivery dead-letter queue"
            );
            queue.park(parked).await.map_err(ShardError::Queue)?;
        }
        done.parked = count;
    } else {
        queue.enqueue(next).await.map_err(ShardError::Queue)?;
        done.requeued = count;
    }
    Ok(done)
}

/// Reads the shard's group a page at a time, a page ahead of the posts, and posts its members
/// as one stream (a page's slow recipients hold back nobody on the next); hands the rest on as
/// the group's next shard when the budget runs out first.
async fn read_and_post<S: Members, D: Broadcast, Q: ShardQueue>(
    store: &S,
    deliver: &D,
    queue: &Q,
    shard: &Shard,
    read: &GroupRead,
    budget: ReadBudget,
    tally: &mut Tally,
) -> Result<(), ShardError> {
    // A page is read while the one before it is posted, and handed over once the posts have
    // taken that one: reads stay a page ahead, and when the budget runs out no more than one
    // page (and the posts in flight) is left to post, as FINISH_RESERVE assumes.
    let (pages_out, pages_in) = tokio::sync::mpsc::channel::<Vec<String>>(1);
    let reader = async move {
        let except = read.except_user.as_deref();
        let mut after = read.after.clone();
        let mut pages = 0;
        loop {
            // Only a frame too large stops the posts early; the reading stops with them.
            let Ok(slot) = pages_out.reserve().await else {
                return Ok(None);
            };
            if let Some(next) = after.as_ref().filter(|_| pages > 0 && !budget.may_read(pages)) {
                return Ok::<_, StoreError>(Some((next.clone(), pages)));
            }
            let page = store
                .group_page(&shard.channel, shard.group, except, after.as_deref(), READ_PAGE)
                .await?;
            pages += 1;
            let recipients: Vec<String> = page.members.into_iter().map(|m| m.connection_id).collect();
            if !recipients.is_empty() {
                slot.send(recipients);
            }
            match page.next {
                None => return Ok(None),
                next => after = next,
            }
        }
    };
    let pages = futures::stream::unfold(pages_in, |mut pages_in| async move {
        pages_in.recv().await.map(|page| (page, pages_in))
    });
    let (stopped, report) = tokio::join!(reader, deliver.deliver_pages(pages, shard.frame.as_bytes()));
    tally.add(report?);
    if let Some((after, pages)) = stopped? {
        tracing::info!(channel = %shard.channel, group = shard.group, pages, "out of time; the rest of the group goes on in the next shard");
        queue
            .enqueue(vec![shard.continued(after)])
            .await
            .map_err(ShardError::Queue)?;
    }
    Ok(())
}

/// Handles one batch of shards and returns the messages to retry.
pub async fn handle<S: Members, D: Broadcast, Q: ShardQueue>(
    store: &S,
    deliver: &D,
    queue: &Q,
    event: SqsEvent,
    budget: ReadBudget,
) -> SqsBatchResponse {
    let work: Vec<_> = event
        .records
        .iter()
        .map(|message| {
            let parsed = Shard::from_body(message.body.as_deref().unwrap_or(""));
            let key = match &parsed {
                // A FIFO group: its messages in order, and a failure holds back the rest of it.
                Ok(s) => s.message_group_id(),
                Err(_) => format!("?{}", message.message_id.as_deref().unwrap_or("")),
            };
            (key, (message, parsed))
        })
        .collect();

    let outcomes = in_key_order(work, GROUPS_IN_FLIGHT, async |(_, parsed)| match parsed {
        Ok(shard) => deliver_shard(store, deliver, queue, shard, budget).await,
        Err(e) => Err(ShardError::Malformed(e.to_string())),
    })
    .await;

    let mut response = SqsBatchResponse::default();
    let mut counters = Counters::default();
    let (mut requeued, mut parked) = (0, 0);
    for ((message, _), outcome) in outcomes {
        let id = message.message_id.clone().unwrap_or_default();
        let error = match outcome {
            Outcome::Done(d) => {
                counters.add(&d.counters);
                requeued += d.requeued;
                parked += d.parked;
                continue;
            }
            Outcome::Failed(e) => e.to_string(),
            Outcome::Blocked => "not attempted: an earlier shard of its group failed".to_owned(),
        };
        tracing::error!(message = %id, %error, "shard failed; SQS retries it");
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        response.batch_item_failures.push(failure);
    }
    if requeued + parked > 0 {
        tracing::warn!(requeued, parked, "recipients not reached in time");
    }
    counters.log_emf("deliver");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_ms(ms: u64) -> u64 {
        u64::try_from(wsfan_shared::clock::now_millis()).unwrap() + ms
    }

    #[test]
    fn the_budget_keeps_the_reserve_and_a_short_timeout_still_reads() {
        // The template's 120 s: reading stops 25 s before the end, not earlier.
        let budget = ReadBudget::from_deadline_ms(in_ms(120_000));
        let reading = budget.until.saturating_duration_since(Instant::now());
        assert!(
            reading > Duration::from_secs(90) && reading <= Duration::from_secs(95),
            "{reading:?}"
        );
        // A 20 s timeout, under the reserve: half of it, not nothing.
        let budget = ReadBudget::from_deadline_ms(in_ms(20_000));
        assert!(budget.may_start());
        assert!(budget.until.saturating_duration_since(Instant::now()) > Duration::from_secs(9));
        // No time left at all: nothing starts.
        assert!(!ReadBudget::from_deadline_ms(in_ms(0)).may_start());
    }
}
