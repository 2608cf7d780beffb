//! The publish queue's consumer: a backend's messages, numbered into their channels' sequences.
//!
//! A backend sends `{"channel","body","senderId","clientMsgId"}` (wsfan_shared::publish) to the
//! publish queue (FIFO, one message group per channel) with nothing but its AWS SDK; each message
//! is posted through the store's numbered path (`Store::post`, as ws-message and `wsfan publish
//! message --table` do), so it takes the channel's next `seq` and is in `history` and recovery;
//! the stream fanout pushes it. A message without a `clientMsgId` is deduplicated on its SQS
//! message id, which a redelivery keeps: a batch retried after this function died mid-post is
//! numbered once. Messages of one channel are posted in queue order; after a failure the rest of
//! that channel's messages in the batch are reported failed too, so the FIFO group keeps its
//! order. A malformed message is reported failed (never dropped) and reaches the DLQ.

/// What this function reads from its environment, loaded once by its main. The variables it
/// reads are this type's (`wsfan_shared::config::FromEnv::vars`); the SAM template is checked
/// against them (tests/template.rs).
pub type Config = wsfan_shared::config::StoreConfig;

const CHANNELS_IN_FLIGHT: usize = 16;

use aws_lambda_events::sqs::{BatchItemFailure, SqsBatchResponse, SqsEvent};
use wsfan_shared::batch::{in_key_order, Outcome};
use wsfan_shared::publish::{InvalidPublish, PublishRequest};
use wsfan_shared::publisher::ChannelPublisher;
use wsfan_shared::store::{Messages, PostOutcome, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error(transparent)]
    Invalid(#[from] InvalidPublish),
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub async fn handle<S: Messages>(publisher: &ChannelPublisher<S>, event: SqsEvent) -> SqsBatchResponse {
    let work: Vec<_> = event
        .records
        .iter()
        .map(|message| {
            let parsed = PublishRequest::parse(message.body.as_deref().unwrap_or(""));
            let key = match &parsed {
                // One channel is one FIFO message group.
                Ok(p) => p.channel.to_string(),
                // Unreadable: a key of its own, so it blocks nobody else.
                Err(_) => format!("?{}", message.message_id.as_deref().unwrap_or("")),
            };
            (key, (message, parsed))
        })
        .collect();

    let outcomes = in_key_order(work, CHANNELS_IN_FLIGHT, async |(message, parsed)| {
        let p = parsed.as_ref().map_err(|e| MessageError::Invalid(e.clone()))?;
        let delivery = message.message_id.as_deref().map(|id| format!("sqs-{id}"));
        let client_msg_id = p.client_msg_id.as_deref().or(delivery.as_deref());
        let outcome: PostOutcome = publisher
            .publish(&p.channel, &p.body, &p.sender_id, client_msg_id)
            .await?;
        Ok::<_, MessageError>(outcome)
    })
    .await;

    let mut response = SqsBatchResponse::default();
    for ((message, _), outcome) in outcomes {
        let id = message.message_id.clone().unwrap_or_default();
        let error = match outcome {
            Outcome::Done(posted) => {
                tracing::info!(message = %id, seq = ?posted.seq, duplicate = posted.duplicate, "published");
                continue;
            }
            Outcome::Failed(e) => e.to_string(),
            Outcome::Blocked => "not attempted: an earlier message of its channel failed".to_owned(),
        };
        // Logged with the body, so a message bound for the DLQ can be understood from the logs.
        tracing::error!(message = %id, body = message.body.as_deref().unwrap_or(""), %error, "publish message failed");
        let mut failure = BatchItemFailure::default();
        failure.item_identifier = id;
        response.batch_item_failures.push(failure);
    }
    response
}
