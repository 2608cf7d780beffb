//! Posting and retrying: one recipient's attempts under its deadline, and many recipients at once.

use std::time::{Duration, Instant};

use aws_sdk_apigatewaymanagement::error::SdkError;
use aws_sdk_apigatewaymanagement::operation::post_to_connection::PostToConnectionError;
use aws_sdk_apigatewaymanagement::primitives::Blob;
use futures::stream::{self, Stream, StreamExt};

use super::client::describe;
use super::{
    pack, Broadcast, BroadcastError, Broadcaster, Counters, Gone, GoneCleanup, Parcel, ParcelReport, RecipientOutcome,
    Report, MAX_PAYLOAD_BYTES,
};

/// What posting to one connection came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub delivery: RecipientOutcome,
    pub retries: u64,
    /// Of the retries, those that followed a 429.
    pub throttled: u64,
    pub paced: Duration,
}

enum Attempt {
    Done(RecipientOutcome),
    /// Not sent: its budget second ended before it could be written (transport::http1::TooLate).
    /// It takes a token of the new second and goes again; no retry is counted.
    Late,
    Retry(String),
    /// A retry because @connections answered 429.
    Throttled(String),
}

impl<G: GoneCleanup> Broadcaster<G> {
    async fn attempt(&self, connection_id: &str, payload: &[u8]) -> Attempt {
        let result = self
            .client
            .post_to_connection()
            .connection_id(connection_id)
            .data(Blob::new(payload))
            .send()
            .await;
        let err = match result {
            Ok(_) => return Attempt::Done(RecipientOutcome::Delivered),
            Err(e) => e,
        };
        let late = match &err {
            SdkError::DispatchFailure(failure) => failure
                .as_connector_error()
                .and_then(std::error::Error::source)
                .is_some_and(|source| source.is::<crate::http1::TooLate>()),
            _ => false,
        };
        if late {
            return Attempt::Late;
        }
        let status = err.raw_response().map(|r| r.status().as_u16());
        match &err {
            SdkError::ServiceError(service) => match service.err() {
                PostToConnectionError::GoneException(_) => Attempt::Done(RecipientOutcome::Gone),
                PostToConnectionError::LimitExceededException(_) => Attempt::Throttled("throttled (429)".into()),
                PostToConnectionError::PayloadTooLargeException(_) | PostToConnectionError::ForbiddenException(_) => {
                    Attempt::Done(RecipientOutcome::Failed(describe(&err)))
                }
                _ if status == Some(410) => Attempt::Done(RecipientOutcome::Gone),
                _ if status == Some(429) => Attempt::Throttled(describe(&err)),
                _ if status.is_some_and(|s| s >= 500) => Attempt::Retry(describe(&err)),
                _ => Attempt::Done(RecipientOutcome::Failed(describe(&err))),
            },
            // Timeouts, dropped connections, and unparseable responses are transient.
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                Attempt::Retry(describe(&err))
            }
            _ => Attempt::Done(RecipientOutcome::Failed(describe(&err))),
        }
    }

    /// Posts to one connection, within the governor's budget, retrying throttling and 5xx
    /// until the deadline.
    pub async fn post(&self, connection_id: &str, payload: &[u8]) -> Posted {
        self.post_within(connection_id, payload, self.config.deadline).await
    }

    /// [`Broadcaster::post`] with a deadline of `limit` for this recipient's attempts.
    async fn post_within(&self, connection_id: &str, payload: &[u8], limit: Duration) -> Posted {
        let started = Instant::now();
        let mut backoff = self.config.first_backoff;
        let mut posted = Posted {
            delivery: RecipientOutcome::Delivered,
            retries: 0,
            throttled: 0,
            paced: Duration::ZERO,
        };
        loop {
            let mut send_by = None;
            if let Some(pacer) = &self.governor {
                let (paced, by) = pacer.wait_turn().await;
                (posted.paced, send_by) = (posted.paced + paced, by);
            }
            // The deadline is for the recipient's own attempts and backoff: time waiting for
            // the budget is the whole channel's, and counting it would give up on recipients
            // that were never tried.
            let mut throttled = false;
            let attempt = self.attempt(connection_id, payload);
            let attempt = match send_by {
                Some(by) => crate::http1::SEND_BY.scope(by, attempt).await,
                None => attempt.await,
            };
            let why = match attempt {
                Attempt::Late => continue,
                Attempt::Done(RecipientOutcome::Gone) => {
                    posted.delivery = match self.gone.connection_gone(connection_id).await {
                        Gone::Removed => RecipientOutcome::Gone,
                        Gone::Connecting => RecipientOutcome::Connecting,
                    };
                    return posted;
                }
                Attempt::Done(d) => {
                    posted.delivery = d;
                    return posted;
                }
                Attempt::Retry(why) => why,
                Attempt::Throttled(why) => {
                    if let Some(pacer) = &self.governor {
                        pacer.throttled();
                    }
                    posted.throttled += 1;
                    throttled = true;
                    why
                }
            };
            // Full jitter: sleep a random time up to the bound.
            let sleep = sleep_bound(backoff, throttled, self.governor.is_some()).mul_f64(fastrand::f64());
            if started.elapsed().saturating_sub(posted.paced) + sleep >= limit {
                posted.delivery = RecipientOutcome::Failed(format!("gave up after {} retries: {why}", posted.retries));
                return posted;
            }
            tokio::time::sleep(sleep).await;
            posted.retries += 1;
            backoff = (backoff * 2).min(self.config.max_backoff);
        }
    }
}

/// The longest wait between a recipient's attempts after a 429 when a governor paces every
/// attempt. The governor has already slowed the whole environment for that 429, and every retry
/// waits for its budget, so a long wait per recipient protects nobody: it only leaves that
/// recipient behind the posts that came after it (a small channel's frame behind a broadcast,
/// which measured up to 1.8 s with the 2 s cap).
pub const THROTTLED_MAX_BACKOFF: Duration = Duration::from_millis(250);

/// How long a recipient may wait before its next attempt, at most: the backoff, but after a 429
/// under a governor no more than [`THROTTLED_MAX_BACKOFF`]. Without a governor nothing else
/// slows the posts down, and 429s back off as far as 5xx do.
pub(super) fn sleep_bound(backoff: Duration, throttled: bool, governed: bool) -> Duration {
    if throttled && governed {
        backoff.min(THROTTLED_MAX_BACKOFF)
    } else {
        backoff
    }
}

impl<G: GoneCleanup> Broadcast for Broadcaster<G> {
    async fn deliver(&self, recipients: Vec<String>, payload: &[u8]) -> Result<Report, BroadcastError> {
        self.post_all(stream::iter(recipients), payload, true).await
    }

    async fn deliver_pages<P: Stream<Item = Vec<String>> + Send>(
        &self,
        pages: P,
        payload: &[u8],
    ) -> Result<Report, BroadcastError> {
        self.post_all(pages.flat_map(stream::iter), payload, false).await
    }

    fn posts_per_second(&self) -> Option<u64> {
        self.config.max_rps
    }

    async fn deliver_parcels(&self, parcels: Vec<Parcel>, stop_at: Option<Instant>) -> ParcelReport {
        let backoffs_before = self.backoffs();
        let mut done = std::pin::pin!(stream::iter(parcels)
            .map(|parcel| self.post_parcel(parcel, stop_at))
            .buffer_unordered(self.config.concurrency.max(1)));
        let mut report = ParcelReport::default();
        while let Some((counters, rest)) = done.next().await {
            report.counters.add(&counters);
            match rest {
                None => {}
                Some(Unsent::Failed(rest)) => report.undelivered.push(rest),
                Some(Unsent::HandedOn(rest)) => {
                    report.handed_on += 1;
                    report.undelivered.push(rest);
                }
                Some(Unsent::Connecting(rest)) => report.connecting.push(rest),
            }
        }
        report.counters.backoffs = self.backoffs().saturating_sub(backoffs_before);
        report
    }
}

/// A recipient's frames left when [`Broadcaster::post_parcel`] stopped, and why.
enum Unsent {
    /// A post failed (retries ran out, or not worth retrying).
    Failed(Parcel),
    /// `stop_at` came first.
    HandedOn(Parcel),
    /// 410 from a connection still connecting.
    Connecting(Parcel),
}

impl<G: GoneCleanup> Broadcaster<G> {
    /// Posts one recipient its frames in order; what is left when a post fails, the recipient
    /// is still connecting, or `stop_at` comes.
    async fn post_parcel(&self, parcel: Parcel, stop_at: Option<Instant>) -> (Counters, Option<Unsent>) {
        let mut counters = Counters::default();
        let mut sent = 0;
        for (body, count) in pack(&parcel.frames, parcel.batch) {
            let limit = match stop_at {
                None => self.config.deadline,
                Some(at) => {
                    let left = at.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return (counters, Some(Unsent::HandedOn(parcel.rest(sent))));
                    }
                    left.min(self.config.deadline)
                }
            };
            let posted = self.post_within(&parcel.connection_id, &body, limit).await;
            counters.retried += posted.retries;
            counters.throttled += posted.throttled;
            counters.posts += posted.retries + 1;
            counters.paced_ms += posted.paced.as_millis() as u64;
            match posted.delivery {
                RecipientOutcome::Delivered => {
                    counters.delivered += count as u64;
                    sent += count;
                }
                RecipientOutcome::Gone => {
                    counters.gone += 1;
                    return (counters, None);
                }
                RecipientOutcome::Connecting => {
                    counters.gone += 1;
                    return (counters, Some(Unsent::Connecting(parcel.rest(sent))));
                }
                RecipientOutcome::Failed(why) => {
                    // Stopped by the hand-off rather than failing: handed on, not failed.
                    if stop_at.is_some_and(|at| Instant::now() >= at) {
                        return (counters, Some(Unsent::HandedOn(parcel.rest(sent))));
                    }
                    counters.failed += 1;
                    tracing::warn!(connection = %parcel.connection_id, reason = %why, frames = parcel.frames.len() - sent, "not delivered");
                    return (counters, Some(Unsent::Failed(parcel.rest(sent))));
                }
            }
        }
        (counters, None)
    }
}

impl<G: GoneCleanup> Broadcaster<G> {
    /// Posts to every recipient `recipients` yields, `concurrency` at a time, counting each
    /// outcome as it comes; the delivered ones are kept in the report only if `keep_delivered`.
    async fn post_all(
        &self,
        recipients: impl Stream<Item = String> + Send,
        payload: &[u8],
        keep_delivered: bool,
    ) -> Result<Report, BroadcastError> {
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(BroadcastError::PayloadTooLarge(payload.len()));
        }
        let backoffs_before = self.backoffs();
        let mut posts = std::pin::pin!(recipients
            .map(|id| async move {
                let posted = self.post(&id, payload).await;
                (id, posted)
            })
            .buffer_unordered(self.config.concurrency.max(1)));
        let mut report = Report::default();
        while let Some((id, posted)) = posts.next().await {
            let Posted {
                delivery,
                retries,
                throttled,
                paced,
            } = posted;
            report.counters.retried += retries;
            report.counters.throttled += throttled;
            report.counters.posts += retries + 1;
            report.counters.paced_ms += paced.as_millis() as u64;
            match &delivery {
                RecipientOutcome::Delivered => report.counters.delivered += 1,
                RecipientOutcome::Gone | RecipientOutcome::Connecting => report.counters.gone += 1,
                RecipientOutcome::Failed(why) => {
                    report.counters.failed += 1;
                    tracing::warn!(connection = %id, reason = %why, "not delivered");
                }
            }
            if keep_delivered || delivery != RecipientOutcome::Delivered {
                report.outcomes.push((id, delivery));
            }
        }
        // Other deliveries of this environment may run at once; this one's share is close enough.
        report.counters.backoffs = self.backoffs().saturating_sub(backoffs_before);
        Ok(report)
    }
}
