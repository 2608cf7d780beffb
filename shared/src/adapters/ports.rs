//! Every port: what a handler asks of the world, one trait per capability. The handlers' bounds
//! name these, and tests put their own behind them.
//!
//! | port | what it is for | implemented by |
//! |---|---|---|
//! | [`Connections`], [`Messages`], [`Members`], [`Progress`] ([`Store`]: all four) | the table, by concept | `DynamoStore` (store/) |
//! | [`IdentityStore`] | the identity a refresh stores, and the expiry buckets | `DynamoStore` (store/expiry.rs) |
//! | [`BudgetLedger`] | the `@connections` budget all fanout shares | `DynamoStore` (store/budget.rs) |
//! | [`FrameLimiter`] | the limit per connection | `DynamoLimiter` (limiter.rs) |
//! | [`RevocationList`], [`TokenVerifier`] | revoked tokens, and verifying a token | `DynamoStore`, `RevocationChecked` (revocation.rs) |
//! | [`Broadcast`], [`GoneCleanup`] | posting to connections, and what a 410 does | `Broadcaster` (broadcaster/) |
//! | [`ShardQueue`], [`FailureDestination`] | the delivery queue and its dead letters; the stream's on-failure queue | `DeliveryQueue`, `FailureQueue` (publisher.rs) |
//!
//! The queue ports' errors are [`QueueError`]s, which say whether another try may succeed.

pub use crate::broadcaster::{Broadcast, GoneCleanup};
pub use crate::limiter::FrameLimiter;
pub use crate::revocation::{RevocationList, TokenVerifier};
pub use crate::store::{BudgetLedger, Connections, IdentityStore, Members, Messages, Progress, Store};

use crate::shard::Shard;

/// Where shards go: the delivery queue, and its dead-letter queue for recipients that every
/// attempt missed.
pub trait ShardQueue: Send + Sync {
    /// Enqueues shards; those of one group in the order given.
    fn enqueue(&self, shards: Vec<Shard>) -> impl std::future::Future<Output = Result<(), QueueError>> + Send;
    /// Parks a shard whose recipients every attempt missed, to inspect and redrive.
    fn park(&self, shard: Shard) -> impl std::future::Future<Output = Result<(), QueueError>> + Send;
}

/// Where records that can never be used go: the stream's on-failure destination.
pub trait FailureDestination: Send + Sync {
    fn park(&self, body: String) -> impl std::future::Future<Output = Result<(), QueueError>> + Send;
}

/// A queue did not take a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct QueueError {
    pub message: String,
    /// Another try may succeed: throttled, a 5xx, a timeout or a broken connection. Not when the
    /// queue refused the message for what it is, or does not exist, or is not configured.
    pub retryable: bool,
}

impl QueueError {
    /// An error no retry mends.
    pub(crate) fn permanent(message: impl Into<String>) -> QueueError {
        QueueError {
            message: message.into(),
            retryable: false,
        }
    }

    /// The error of an SQS call, with whether another try may succeed.
    pub(crate) fn from_sdk<E, R>(err: &aws_sdk_sqs::error::SdkError<E, R>) -> QueueError
    where
        E: aws_sdk_sqs::error::ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        use aws_sdk_sqs::error::SdkError;
        let retryable = match err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(service) => retryable(service.err().code(), None),
            _ => false,
        };
        QueueError {
            message: aws_sdk_sqs::error::DisplayErrorContext(err).to_string(),
            retryable,
        }
    }

    /// The same error, its message prefixed with what was being done.
    pub fn context(self, doing: &str) -> QueueError {
        QueueError {
            message: format!("{doing}: {}", self.message),
            ..self
        }
    }
}

/// Whether an SQS service error is worth another try: SQS's throttling codes, and what the store
/// retries (crate::store::verdict_of: throttles, 5xx, timeouts).
fn retryable(code: Option<&str>, status: Option<u16>) -> bool {
    const SQS_THROTTLING: &[&str] = &[
        "RequestThrottled",
        "KmsThrottled",
        "AWS.SimpleQueueService.RequestThrottled",
    ];
    code.is_some_and(|c| SQS_THROTTLING.contains(&c))
        || crate::store::verdict_of(code, status, None) != crate::store::Verdict::Final
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_and_server_errors_are_retryable_and_refusals_are_not() {
        assert!(retryable(Some("RequestThrottled"), None));
        assert!(retryable(Some("ThrottlingException"), None));
        assert!(retryable(Some("ServiceUnavailable"), None));
        assert!(retryable(None, Some(503)));
        assert!(!retryable(Some("QueueDoesNotExist"), None));
        assert!(!retryable(Some("InvalidMessageContents"), Some(400)));
        assert!(!retryable(Some("AccessDenied"), Some(403)));
    }

    #[test]
    fn a_timeout_is_retryable_and_keeps_its_message_with_context() {
        let err: aws_sdk_sqs::error::SdkError<aws_sdk_sqs::operation::send_message::SendMessageError, ()> =
            aws_sdk_sqs::error::SdkError::timeout_error("no answer in time");
        let queue = QueueError::from_sdk(&err).context("enqueueing shards");
        assert!(queue.retryable);
        assert!(queue.to_string().starts_with("enqueueing shards: "), "{queue}");
        assert!(queue.to_string().contains("no answer in time"), "{queue}");
        assert!(!QueueError::permanent("DELIVERY_DLQ_URL is not set").retryable);
    }
}
