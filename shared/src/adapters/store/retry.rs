//! Riding out what DynamoDB says is worth another try: a transaction cancelled because another
//! one held an item (`TransactionConflict`), throttling, 5xx answers, timeouts and broken
//! connections. Each store operation gets one budget (`DYNAMODB_TIMEOUT_MS`, set below the
//! function's timeout) for all its calls and their retries; the pauses between tries are
//! jittered so that writers that collided once do not collide again.
//!
//! The SDK's own retries are off for the store's client (see [`super::client_with_timeout`]):
//! one layer decides, with one budget, and it knows what the SDK does not (a cancellation
//! reason of `TransactionConflict` is a reason to try again; `ConditionalCheckFailed` is not).
//!
//! A 5xx or a timeout leaves it open whether the write happened. Transactions are retried
//! with the same `ClientRequestToken` then (DynamoDB answers a replay of a committed one with
//! success), and every caller also recognises its own earlier commit from what it wrote (the
//! dedupe item's message id, the message at the sequence number it took), because a
//! replayed token is only honoured for ten minutes and not by every emulator.

use std::time::Duration;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use tokio::time::Instant;

/// What one failed DynamoDB call says about trying again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Another transaction held one of the items: nothing was written; try again soon.
    Conflict,
    /// Throttled (the partition's or the table's capacity, or the account's request rate):
    /// nothing was written; try again after a longer pause.
    Throttled,
    /// A 5xx, a timeout or a broken connection: the write may or may not have happened.
    Uncertain,
    /// An answer of its own (a failed condition, a validation error): the caller decides.
    Final,
}

/// Error codes DynamoDB (and the AWS SDKs' shared list) use for throttling.
const THROTTLING: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "Throttling",
    "RequestLimitExceeded",
    "TransactionInProgressException",
];

/// Cancellation reasons of a transaction that are worth another try. `None` (the action was
/// fine) and `ConditionalCheckFailed` are not: the latter is the caller's answer.
const RETRYABLE_REASONS: &[(&str, Verdict)] = &[
    ("TransactionConflict", Verdict::Conflict),
    ("ThrottlingError", Verdict::Throttled),
    ("ProvisionedThroughputExceeded", Verdict::Throttled),
];

/// The verdict on a service error from its code, HTTP status and, for a cancelled
/// transaction, its cancellation reason codes (one per action, `None` where there was none).
pub fn verdict_of(code: Option<&str>, status: Option<u16>, reasons: Option<&[Option<&str>]>) -> Verdict {
    if let Some(reasons) = reasons {
        // A failed condition is an answer even when another action also conflicted: the
        // caller's handling of it (read again, deduplicate, refuse) decides what comes next.
        if reasons.contains(&Some("ConditionalCheckFailed")) {
            return Verdict::Final;
        }
        let mut verdict = Verdict::Final;
        for reason in reasons.iter().flatten() {
            match RETRYABLE_REASONS.iter().find(|(r, _)| r == reason) {
                // A throttle anywhere asks for the longer pause.
                Some((_, Verdict::Throttled)) => verdict = Verdict::Throttled,
                Some((_, v)) if verdict == Verdict::Final => verdict = *v,
                Some(_) => {}
                // A reason we do not retry (validation, item collection size) settles it.
                None if *reason != "None" => return Verdict::Final,
                None => {}
            }
        }
        return verdict;
    }
    match code {
        Some(code) if THROTTLING.contains(&code) => Verdict::Throttled,
        Some("TransactionConflictException") => Verdict::Conflict,
        Some("InternalServerError" | "ServiceUnavailable" | "RequestTimeout" | "RequestTimeoutException") => {
            Verdict::Uncertain
        }
        _ if status.is_some_and(|s| (500..600).contains(&s)) => Verdict::Uncertain,
        _ => Verdict::Final,
    }
}

/// The cancellation reasons of an operation's error, where it has them.
pub(crate) trait Cancellation {
    fn cancellation_codes(&self) -> Option<Vec<Option<&str>>> {
        None
    }
}

impl Cancellation for aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError {
    fn cancellation_codes(&self) -> Option<Vec<Option<&str>>> {
        match self {
            Self::TransactionCanceledException(e) => Some(e.cancellation_reasons().iter().map(|r| r.code()).collect()),
            _ => None,
        }
    }
}

macro_rules! no_cancellation {
    ($($operation:ident::$error:ident),*) => {
        $(impl Cancellation for aws_sdk_dynamodb::operation::$operation::$error {})*
    };
}
no_cancellation!(
    batch_get_item::BatchGetItemError,
    get_item::GetItemError,
    put_item::PutItemError,
    update_item::UpdateItemError,
    delete_item::DeleteItemError,
    query::QueryError
);

/// The verdict on any failed call.
pub fn classify<E: ProvideErrorMetadata + Cancellation>(error: &SdkError<E, HttpResponse>) -> Verdict {
    match error {
        SdkError::ServiceError(e) => verdict_of(
            e.err().code(),
            Some(e.raw().status().as_u16()),
            e.err().cancellation_codes().as_deref(),
        ),
        // The request may have reached DynamoDB before the answer was lost.
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Verdict::Uncertain,
        // The request could not be built: it would fail the same way again.
        _ => Verdict::Final,
    }
}

/// At most this many tries of one call, however much of the budget is left.
pub const MAX_ATTEMPTS: u32 = 10;

/// The least time worth starting another try with: DynamoDB answers in milliseconds, and a
/// try that the deadline cuts off only turns a clear error into a timeout.
pub(crate) const MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// Exponential backoff with full jitter: the pause before try `n + 1` is uniform in
/// `[0, min(cap, base · 2ⁿ)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Verdict {
    /// How long to pause, by what went wrong; `None`: not worth another try.
    pub fn backoff(self) -> Option<Backoff> {
        let (base, cap) = match self {
            // The other transaction finishes within milliseconds.
            Verdict::Conflict => (5, 200),
            // Capacity comes back per second; DynamoDB's SDKs start at 25 ms.
            Verdict::Throttled => (25, 1000),
            Verdict::Uncertain => (20, 500),
            Verdict::Final => return None,
        };
        Some(Backoff {
            base: Duration::from_millis(base),
            cap: Duration::from_millis(cap),
        })
    }
}

impl Backoff {
    /// The pause after the `failed`-th failed try (1 for the first), for a uniform draw `u` in
    /// [0, 1), or `None` when the next try would not fit in `remaining` or the tries are spent.
    pub fn pause(&self, failed: u32, u: f64, remaining: Duration) -> Option<Duration> {
        if failed >= MAX_ATTEMPTS {
            return None;
        }
        let ceiling = self
            .base
            .saturating_mul(1u32 << failed.saturating_sub(1).min(16))
            .min(self.cap);
        let pause = ceiling.mul_f64(u.clamp(0.0, 1.0));
        (pause + MIN_ATTEMPT <= remaining).then_some(pause)
    }
}

/// A call that failed for good, and whether an earlier try of it may have been applied (it
/// failed with a 5xx, a timeout or a broken connection), which its caller must then check.
#[derive(Debug)]
pub(crate) struct Failure<E> {
    pub error: SdkError<E, HttpResponse>,
    pub uncertain: bool,
}

impl<E> Failure<E> {
    pub(crate) fn service_error(&self) -> Option<&E> {
        self.error.as_service_error()
    }
}

impl<E> From<Failure<E>> for super::StoreError
where
    E: std::error::Error + 'static,
{
    fn from(f: Failure<E>) -> Self {
        f.error.into()
    }
}

/// Tries `call` until it succeeds, fails for good, or the next try would not end by
/// `deadline`. `call` is told whether an earlier try may have been applied.
pub async fn retried<T, E, F, Fut>(what: &'static str, deadline: Instant, mut call: F) -> Result<T, Failure<E>>
where
    E: ProvideErrorMetadata + Cancellation + std::error::Error + Send + Sync + 'static,
    F: FnMut(bool) -> Fut,
    Fut: std::future::Future<Output = Result<T, SdkError<E, HttpResponse>>>,
{
    let mut uncertain = false;
    let mut failed = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // Boxed: the SDK's futures are deep, and a handler's future holding them inline
        // outgrows the compiler's layout depth.
        let error = match tokio::time::timeout(remaining, Box::pin(call(uncertain))).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error,
            Err(_) => SdkError::timeout_error(format!(
                "{what}: no answer within the operation's budget (DYNAMODB_TIMEOUT_MS)"
            )),
        };
        failed += 1;
        let verdict = classify(&error);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let pause = verdict
            .backoff()
            .and_then(|b| b.pause(failed, fastrand::f64(), remaining));
        let Some(pause) = pause else {
            if verdict != Verdict::Final {
                tracing::warn!(operation = what, ?verdict, tries = failed, "DynamoDB: giving up");
            }
            return Err(Failure { error, uncertain });
        };
        tracing::info!(
            operation = what,
            ?verdict,
            tries = failed,
            pause_ms = pause.as_millis() as u64,
            "DynamoDB: retrying"
        );
        uncertain |= verdict == Verdict::Uncertain;
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cancellations_are_retried_for_conflicts_and_throttles_never_for_failed_conditions() {
        let v = |reasons: &[Option<&str>]| verdict_of(Some("TransactionCanceledException"), Some(400), Some(reasons));
        assert_eq!(v(&[Some("None"), Some("TransactionConflict")]), Verdict::Conflict);
        assert_eq!(v(&[None, Some("TransactionConflict"), Some("None")]), Verdict::Conflict);
        assert_eq!(v(&[Some("ThrottlingError")]), Verdict::Throttled);
        assert_eq!(
            v(&[Some("TransactionConflict"), Some("ProvisionedThroughputExceeded")]),
            Verdict::Throttled
        );
        assert_eq!(v(&[Some("ConditionalCheckFailed")]), Verdict::Final);
        assert_eq!(
            v(&[Some("TransactionConflict"), Some("ConditionalCheckFailed")]),
            Verdict::Final
        );
        assert_eq!(
            v(&[Some("TransactionConflict"), Some("ValidationError")]),
            Verdict::Final
        );
        assert_eq!(v(&[Some("ItemCollectionSizeLimitExceeded")]), Verdict::Final);
        // A cancellation without a reason to retry is not retried.
        assert_eq!(v(&[Some("None")]), Verdict::Final);
        assert_eq!(v(&[]), Verdict::Final);
    }

    #[test]
    fn throttles_5xx_and_conflicts_are_retried_and_client_errors_are_not() {
        for code in THROTTLING {
            assert_eq!(verdict_of(Some(code), Some(400), None), Verdict::Throttled, "{code}");
        }
        assert_eq!(
            verdict_of(Some("InternalServerError"), Some(500), None),
            Verdict::Uncertain
        );
        assert_eq!(verdict_of(None, Some(503), None), Verdict::Uncertain);
        assert_eq!(verdict_of(Some("Whatever"), Some(502), None), Verdict::Uncertain);
        assert_eq!(
            verdict_of(Some("TransactionConflictException"), Some(400), None),
            Verdict::Conflict
        );
        for code in [
            "ConditionalCheckFailedException",
            "ValidationException",
            "ResourceNotFoundException",
            "IdempotentParameterMismatchException",
            "AccessDeniedException",
        ] {
            assert_eq!(verdict_of(Some(code), Some(400), None), Verdict::Final, "{code}");
        }
        assert_eq!(verdict_of(None, Some(404), None), Verdict::Final);
    }

    #[test]
    fn the_pause_grows_to_its_cap_and_stops_when_the_budget_or_tries_are_spent() {
        let b = Verdict::Conflict.backoff().unwrap();
        let plenty = Duration::from_secs(60);
        let ms = Duration::from_millis;
        assert_eq!(b.pause(1, 1.0, plenty), Some(ms(5)));
        assert_eq!(b.pause(2, 1.0, plenty), Some(ms(10)));
        assert_eq!(b.pause(4, 1.0, plenty), Some(ms(40)));
        assert_eq!(b.pause(9, 1.0, plenty), Some(ms(200)));
        assert_eq!(b.pause(3, 0.0, plenty), Some(ms(0)));
        assert_eq!(b.pause(MAX_ATTEMPTS, 0.0, plenty), None);
        // The next try must still have MIN_ATTEMPT after the pause.
        assert_eq!(b.pause(4, 1.0, ms(89)), None);
        assert_eq!(b.pause(4, 1.0, ms(90)), Some(ms(40)));
        assert_eq!(Verdict::Final.backoff(), None);
        assert!(Verdict::Throttled.backoff().unwrap().base > b.base);
    }

    fn verdicts() -> impl Strategy<Value = Verdict> {
        prop_oneof![
            Just(Verdict::Conflict),
            Just(Verdict::Throttled),
            Just(Verdict::Uncertain)
        ]
    }

    proptest! {
        #[test]
        fn a_pause_is_jittered_under_its_envelope_and_fits_the_budget(
            verdict in verdicts(),
            failed in 1..MAX_ATTEMPTS,
            u in 0.0..1.0f64,
            remaining_ms in 0..5000u64,
        ) {
            let b = verdict.backoff().unwrap();
            let remaining = Duration::from_millis(remaining_ms);
            let envelope = (b.base * (1 << (failed - 1).min(16))).min(b.cap);
            match b.pause(failed, u, remaining) {
                Some(pause) => {
                    prop_assert!(pause <= envelope);
                    prop_assert!(pause + MIN_ATTEMPT <= remaining);
                    prop_assert_eq!(pause, envelope.mul_f64(u));
                }
                None => prop_assert!(envelope.mul_f64(u) + MIN_ATTEMPT > remaining),
            }
        }

        #[test]
        fn the_tries_of_one_call_end_within_its_budget(
            verdict in verdicts(),
            draws in proptest::collection::vec(0.0..1.0f64, MAX_ATTEMPTS as usize),
            budget_ms in 0..5000u64,
            attempt_ms in 0..200u64,
        ) {
            // Every try takes attempt_ms and fails: the pauses and tries never pass the budget
            // by more than the last try's own time, which the caller's timeout cuts off.
            let b = verdict.backoff().unwrap();
            let budget = Duration::from_millis(budget_ms);
            let attempt = Duration::from_millis(attempt_ms);
            let mut spent = Duration::ZERO;
            let mut failed = 0;
            loop {
                spent += attempt.min(budget.saturating_sub(spent));
                failed += 1;
                match b.pause(failed, draws[(failed - 1) as usize], budget.saturating_sub(spent)) {
                    Some(pause) => spent += pause,
                    None => break,
                }
                prop_assert!(spent + MIN_ATTEMPT <= budget);
            }
            prop_assert!(spent <= budget);
            prop_assert!(failed <= MAX_ATTEMPTS);
        }
    }
}
