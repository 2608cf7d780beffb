//! Producers for backends and document processors, which need no WebSocket of their own.
//!
//! [`ChannelPublisher`] writes a message item to any channel (the stream fanout does the rest);
//! [`PublishQueue`] sends one to the publish queue, whose function numbers it the same way;
//! [`ProgressPublisher`] validates progress events and sends them to the progress queue;
//! [`FailureQueue`] is where the stream fanout puts a record it can never use;
//! [`DeliveryQueue`] carries the shards of large channels to `deliver`.

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use futures::{StreamExt, TryStreamExt};

use crate::channel::ChannelId;
use crate::config::Retention;
use crate::model::{Message, MessageKind};
use crate::ports::{FailureDestination, QueueError, ShardQueue};
use crate::progress::{InvalidProgress, ProgressEvent};
use crate::shard::Shard;
use crate::store::{Messages, PostOutcome, StoreError};

/// SQS takes at most ten messages per batch.
const SQS_BATCH: usize = 10;

pub struct ChannelPublisher<S> {
    store: S,
    retention: Retention,
}

impl<S: Messages> ChannelPublisher<S> {
    pub fn new(store: S, retention: Retention) -> Self {
        ChannelPublisher { store, retention }
    }

    /// Posts `body` to `channel` as `sender_id`. With a `client_msg_id`, a retried publish is
    /// stored once, exactly as a client's retried send.
    pub async fn publish(
        &self,
        channel: &ChannelId,
        body: &str,
        sender_id: &str,
        client_msg_id: Option<&str>,
    ) -> Result<PostOutcome, StoreError> {
        let message = chat_message(channel, sender_id, body, client_msg_id, self.retention.message_secs);
        self.store.post(&message, None).await
    }
}

/// A chat message from `sender_id`, as a backend publishes it: a new id, sent now, kept for
/// `keep_secs`. The store gives it its number when it posts it.
pub fn chat_message(
    channel: &ChannelId,
    sender_id: &str,
    body: &str,
    client_msg_id: Option<&str>,
    keep_secs: i64,
) -> Message {
    let now = crate::clock::now_millis();
    Message {
        kind: MessageKind::Message,
        channel: channel.clone(),
        message_id: ulid::Ulid::generate().to_string(),
        seq: None,
        sender_id: sender_id.to_owned(),
        body: Some(body.to_owned()),
        client_msg_id: client_msg_id.map(str::to_owned),
        target_id: None,
        emoji: None,
        sent_at: now,
        expires_at: now / 1000 + keep_secs,
    }
}

/// The publish queue (`PublishQueueUrl`, FIFO): what a backend without table access sends; the
/// `publish` function posts each message with [`ChannelPublisher`].
pub struct PublishQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl PublishQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        PublishQueue {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// Validates and sends one message; returns its SQS message id. The channel is the message
    /// group (a channel's messages are numbered in send order); the deduplication id is the
    /// `clientMsgId`, so a retried send within SQS's five minutes is queued once (and the
    /// function stores it once for a day), or a fresh id without one.
    pub async fn send(&self, request: &crate::publish::PublishRequest) -> Result<String, PublishError> {
        let valid = request
            .clone()
            .validate()
            .map_err(|e| PublishError::Queue(e.to_string()))?;
        let dedupe = valid
            .client_msg_id
            .clone()
            .unwrap_or_else(|| ulid::Ulid::generate().to_string());
        let out = self
            .client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(serde_json::to_string(request).expect("requests serialise"))
            .message_group_id(valid.channel.to_string())
            .message_deduplication_id(dedupe)
            .send()
            .await
            .map_err(|e| PublishError::Queue(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()))?;
        Ok(out.message_id.unwrap_or_default())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(transparent)]
    Invalid(#[from] InvalidProgress),
    #[error("SQS: {0}")]
    Queue(String),
    #[error("SQS refused {count} of the events: {reasons}")]
    Refused { count: usize, reasons: String },
}

pub struct ProgressPublisher {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl ProgressPublisher {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        ProgressPublisher {
            client,
            queue_url: queue_url.into(),
        }
    }

    fn is_fifo(&self) -> bool {
        self.queue_url.ends_with(".fifo")
    }

    /// Validates every event first (nothing is sent if one is invalid), then sends them in
    /// batches of ten. On a FIFO queue each document is its own message group, so one
    /// document's events stay in order while different documents flow in parallel.
    pub async fn send(&self, events: &[ProgressEvent]) -> Result<(), PublishError> {
        for event in events {
            event.validate()?;
        }
        for chunk in events.chunks(SQS_BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, event)| {
                    let mut entry = SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(serde_json::to_string(event).expect("progress events serialise"));
                    if self.is_fifo() {
                        entry = entry
                            .message_group_id(&event.doc_id)
                            .message_deduplication_id(ulid::Ulid::generate().to_string());
                    }
                    entry.build().expect("entry has id and body")
                })
                .collect();
            let out = self
                .client
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| PublishError::Queue(aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()))?;
            if !out.failed.is_empty() {
                let reasons = out
                    .failed
                    .iter()
                    .map(|f| format!("{}: {}", f.code, f.message.as_deref().unwrap_or("")))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(PublishError::Refused {
                    count: out.failed.len(),
                    reasons,
                });
            }
        }
        Ok(())
    }
}

/// The stream's failure destination (`StreamFailureQueue`): the stream fanout sends a record it
/// can never use here at once, with the reason, instead of failing it until its retries run out.
pub struct FailureQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl FailureQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>) -> Self {
        FailureQueue {
            client,
            queue_url: queue_url.into(),
        }
    }

    /// The queue in `FAILURE_QUEUE_URL`.
    pub fn connect(sdk: &aws_config::SdkConfig, url: crate::config::FailureQueueUrl) -> Self {
        FailureQueue::new(aws_sdk_sqs::Client::new(sdk), url.0)
    }
}

impl FailureDestination for FailureQueue {
    async fn park(&self, body: String) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(&self.queue_url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| QueueError::from_sdk(&e))?;
        Ok(())
    }
}

/// The delivery queue (`DELIVERY_QUEUE_URL`, FIFO) and its dead-letter queue
/// (`DELIVERY_DLQ_URL`, when this function parks shards itself).
pub struct DeliveryQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
    dead_letter_url: Option<String>,
}

/// Groups sent to at once; a group's own shards go one after another, to keep their order.
const GROUPS_IN_FLIGHT: usize = 16;

impl DeliveryQueue {
    pub fn new(client: aws_sdk_sqs::Client, queue_url: impl Into<String>, dead_letter_url: Option<String>) -> Self {
        DeliveryQueue {
            client,
            queue_url: queue_url.into(),
            dead_letter_url,
        }
    }

    /// The queue in `DELIVERY_QUEUE_URL`, for the functions that only send to it.
    pub fn connect(sdk: &aws_config::SdkConfig, url: crate::config::DeliveryQueueUrl) -> Self {
        DeliveryQueue::new(aws_sdk_sqs::Client::new(sdk), url.0, None)
    }

    /// The same queue, parking shards in the dead-letter queue `deliver` reads from its
    /// environment (`DELIVERY_DLQ_URL`).
    pub fn parking_in(self, dead_letter: crate::config::DeliveryDeadLetterUrl) -> Self {
        DeliveryQueue {
            dead_letter_url: dead_letter.0,
            ..self
        }
    }

    async fn send_to(&self, url: &str, shard: &Shard) -> Result<(), QueueError> {
        self.client
            .send_message()
            .queue_url(url)
            .message_body(shard.to_body())
            .message_group_id(shard.message_group_id())
            .message_deduplication_id(shard.deduplication_id())
            .send()
            .await
            .map_err(|e| QueueError::from_sdk(&e))?;
        Ok(())
    }
}

impl ShardQueue for DeliveryQueue {
    async fn enqueue(&self, shards: Vec<Shard>) -> Result<(), QueueError> {
        let mut groups: std::collections::BTreeMap<u32, Vec<Shard>> = Default::default();
        for shard in shards {
            groups.entry(shard.group).or_default().push(shard);
        }
        futures::stream::iter(groups.into_values())
            .map(|group| async move {
                for shard in &group {
                    self.send_to(&self.queue_url, shard).await?;
                }
                Ok::<_, QueueError>(())
            })
            .buffer_unordered(GROUPS_IN_FLIGHT)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
            .map_err(|e| e.context("enqueueing shards"))
    }

    async fn park(&self, shard: Shard) -> Result<(), QueueError> {
        let url = self
            .dead_letter_url
            .as_deref()
            .ok_or_else(|| QueueError::permanent("DELIVERY_DLQ_URL is not set"))?;
        self.send_to(url, &shard).await
    }
}
