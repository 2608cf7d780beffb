//! The SQS progress fanout: stores each document's latest progress and pushes it to subscribers.
//!
//! Each message is validated; the `DOC#<id>` snapshot only moves forward, and only an event that
//! moved it is pushed to the members of `doc:<id>`. A malformed message is reported failed (never
//! dropped), so the queue's redrive policy moves it to the DLQ. Messages of one document are
//! handled in order, and after a failure the rest of that document's messages in the batch are
//! reported failed too, which keeps FIFO groups in order.
//!
//! Progress takes the chat path: a document with more than
//! [`wsfan_shared::shard::DIRECT_MAX_MEMBERS`] subscribers goes to the delivery queue as a shard
//! per group of them, for `deliver`; a subscriber still failing at FANOUT_DEADLINE_MS goes there
//! too, for another attempt, and after the last into the delivery dead-letter queue with the
//! frame. A terminal state (`processing_complete`, a final `error`) that a subscriber could not be
//! given is never dropped: it is retried, then parked where an operator sees and redrives it.

/// What this function reads from its environment, loaded once by its main. The variables it
/// reads are this type's (`wsfan_shared::config::FromEnv::vars`); the SAM template is checked
/// against them (tests/template.rs).
pub type Config = (
    wsfan_shared::config::StoreConfig,
    wsfan_shared::config::BroadcastConfig,
    wsfan_shared::config::DeliveryQueueUrl,
);

const DOCS_IN_FLIGHT: usize = 16;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use wsfan_shared::batch::{in_key_order, Outcome};
use wsfan_shared::broadcaster::{Broadcast, BroadcastError, Counters};
use wsfan_shared::channel::ChannelId;
use wsfan_shared::ports::{QueueError, ShardQueue};
use wsfan_shared::progress::{InvalidProgress, ProgressEvent, ProgressKind};
use wsfan_shared::shard::{self, DIRECT_MAX_MEMBERS};
use wsfan_shared::store::{Members, Progress, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Invalid(#[from] InvalidProgress),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broadcast(#[from] BroadcastError),
    #[error("could not reach the delivery queue: {0}")]
    Enqueue(QueueError),
}

/// What happened to one valid event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The snapshot moved forward and subscribers were told.
    Pushed(Counters),
    /// Late or duplicate: the snapshot is already further along; nobody is told.
    Stale,
}

pub async fn apply<S: Progress + Members, D: Broadcast, Q: ShardQueue>(
    store: &S,
    deliver: &D,
    shards: &Q,
    event: &ProgressEvent,
) -> Result<Applied, MessageError> {
    apply_delivery(store, deliver, shards, event, None).await
}

/// [`apply`] for one delivery of a queue message (`delivery_id`: its SQS message id). When a
/// batch is retried because this function died mid-push, the event it had stored is pushed
/// again rather than found stale: otherwise the subscribers it had not reached would never get
/// it. Those it had reached get it twice, as at-least-once delivery allows.
pub async fn apply_delivery<S: Progress + Members, D: Broadcast, Q: ShardQueue>(
    store: &S,
    deliver: &D,
    shards: &Q,
    event: &ProgressEvent,
    delivery_id: Option<&str>,
) -> Result<Applied, MessageError> {
    let filled;
    let event = if event.kind == ProgressKind::ProcessingComplete && event.pages_processed.is_none() {
        // Done, all pages: the total comes from the snapshot this event ends.
        let known_total = store
            .progress(&event.doc_id)
            .await?
            .and_then(|s| s.get("totalPages").and_then(serde_json::Value::as_u64))
            .and_then(|n| u32::try_from(n).ok());
        filled = event.clone().with_counts_filled(known_total);
        &filled
    } else {
        event
    };
    let moved = match delivery_id {
        Some(id) => store.record_progress_delivery(event, id).await?,
        None => store.record_progress(event).await?,
    };
    if !moved {
        return Ok(Applied::Stale);
    }
    let channel = ChannelId::doc(&event.doc_id).map_err(|e| InvalidProgress(e.to_string()))?;
    let payload = serde_json::to_string(event).expect("progress events serialise");
    // What this push came from, for the delivery queue's deduplication: the queue message, or
    // the event itself.
    let origin = delivery_id.map_or_else(
        || {
            // FIFO deduplication ids take 128 characters; a document id may take as many.
            let doc: String = event.doc_id.chars().take(64).collect();
            format!("{doc}-{:?}-{}", event.kind, event.pages_processed.unwrap_or(0))
        },
        str::to_owned,
    );
    // One page one longer than the direct path takes tells which path the document needs.
    let page = store.members_page(&channel, None, DIRECT_MAX_MEMBERS + 1).await?;
    if page.members.len() > DIRECT_MAX_MEMBERS || page.next.is_some() {
        let groups = shard::group_shards(&channel, &payload, &origin, None);
        shards.enqueue(groups).await.map_err(MessageError::Enqueue)?;
        tracing::info!(%channel, "sharded to the delivery queue");
        return Ok(Applied::Pushed(Counters::default()));
    }
    let members: Vec<String> = page.members.into_iter().map(|m| m.connection_id).collect();
    if members.is_empty() {
        return Ok(Applied::Pushed(Counters::default()));
    }
    let report = deliver.deliver(members, payload.as_bytes()).await?;
    let undelivered: Vec<String> = report.undelivered().map(|(id, _)| id.to_owned()).collect();
    if !undelivered.is_empty() {
        // No subscriber is dropped: the next attempts come from deliver, then the DLQ.
        shards
            .enqueue(shard::retry_direct(channel, payload, origin, undelivered))
            .await
            .map_err(MessageError::Enqueue)?;
    }
    Ok(Applied::Pushed(report.counters))
}

pub async fn handle<S: Progress + Members, D: Broadcast, Q: ShardQueue>(
    store: &S,
    deliver: &D,
    shards: &Q,
    event: SqsEvent,
) -> SqsBatchResponse {
    let work: Vec<_> = event
        .records
        .iter()
        .map(|message| {
            let parsed = ProgressEvent::parse(message.body.as_deref().unwrap_or(""));
            let key = match &parsed {
                // One document is one FIFO message group.
                Ok(e) => e.doc_id.clone(),
                // Unreadable: a key of its own, so it blocks nobody else.
                Err(_) => format!("?{}", message.message_id.as_deref().unwrap_or("")),
            };
            (key, (message, parsed))
        })
        .collect();

    let outcomes = in_key_order(work, DOCS_IN_FLIGHT, async |(message, parsed)| match parsed {
        Ok(event) => apply_delivery(store, deliver, shards, event, message.message_id.as_deref()).await,
        Err(e) => Err(MessageError::Invalid(e.clone())),
    })
    .await;

    let mut response = SqsBatchResponse::default();
    let mut counters = Counters::default();
    for ((message, _), outcome) in outcomes {
        let id = message.message_id.clone().unwrap_or_default();
        let error = match outcome {
            Outcome::Done(Applied::Pushed(c)) => {
                counters.add(&c);
                continue;
            }
            Outcome::Done(Applied::Stale) => {
                tracing::info!(message = %id, "stale progress event ignored");
                continue;
            }
            Outcome::Failed(e) => e.to_string(),
            Outcome::Blocked => "not attempted: an earlier message of its document failed".to_owned(),
        };
        // Logged with the body, so a message bound for the DLQ can be understood from the logs.
        tracing::error!(message = %id, body = message.body.as_deref().unwrap_or(""), %error, "progress message failed");
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        response.batch_item_failures.push(failure);
    }
    counters.log_emf("progress-fanout");
    response
}
