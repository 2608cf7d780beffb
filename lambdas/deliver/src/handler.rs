//! The delivery function: posts the shards of large channels, and the retries of recipients
//! that a fanout could not reach in time, from the delivery queue (FIFO).
//!
//! A shard's recipients all belong to one message group of its channel (wsfan_shared::shard), and
//! the queue hands out a group's shards one after another, so each recipient sees a channel's
//! frames in order. A recipient still failing at FANOUT_DEADLINE_MS is not dropped: it goes back
//! on the queue as a shard of its own group, attempt + 1, and after
//! [`wsfan_shared::shard::MAX_ATTEMPTS`] attempts into the delivery dead-letter queue, which then
//! holds exactly the recipients that never got the frame (with the frame), to inspect and redrive.
//! A 410 only removes that connection (the broadcaster's cleanup). The shard itself succeeds in
//! both cases, so the recipients it reached are not posted to again. Only when the queue cannot
//! be reached is the whole shard reported failed, and SQS retries it (at least once: clients
//! deduplicate by `messageId`/`seq`).

/// The environment variables this function reads (the SAM template is checked against it).
pub const ENV: &[&str] = &[
    "TABLE_NAME",
    "DYNAMODB_TIMEOUT_MS",
    "CONNECTIONS_ENDPOINT",
    "FANOUT_CONCURRENCY",
    "FANOUT_DEADLINE_MS",
    "FANOUT_MAX_RPS",
    "FANOUT_SHARES",
    "DELIVERY_QUEUE_URL",
    "DELIVERY_DLQ_URL",
];

/// Message groups of one batch worked on at once.
const GROUPS_IN_FLIGHT: usize = 10;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use wsfan_shared::batch::{in_key_order, Outcome};
use wsfan_shared::broadcaster::{BroadcastError, Counters, Deliver};
use wsfan_shared::shard::{self, Shard, ShardQueue, MAX_ATTEMPTS};

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("not a shard: {0}")]
    Malformed(String),
    #[error(transparent)]
    Broadcast(#[from] BroadcastError),
    #[error("could not reach the delivery queue: {0}")]
    Queue(String),
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

/// Posts one shard; its recipients that still fail go back to the queue, or to the DLQ.
pub async fn deliver_shard<D: Deliver, Q: ShardQueue>(
    deliver: &D,
    queue: &Q,
    shard: &Shard,
) -> Result<Delivered, ShardError> {
    let report = deliver
        .deliver(shard.recipients.clone(), shard.frame.as_bytes())
        .await?;
    let undelivered: Vec<String> = report.undelivered().map(|(id, _)| id.to_owned()).collect();
    let mut done = Delivered {
        counters: report.counters,
        ..Delivered::default()
    };
    if undelivered.is_empty() {
        return Ok(done);
    }
    let count = undelivered.len() as u64;
    let next = shard::retry(shard, undelivered);
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

/// Handles one batch of shards and returns the messages to retry.
pub async fn handle<D: Deliver, Q: ShardQueue>(deliver: &D, queue: &Q, event: SqsEvent) -> SqsBatchResponse {
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
        Ok(shard) => deliver_shard(deliver, queue, shard).await,
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
