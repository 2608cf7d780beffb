//! The limit per connection, shared by every execution environment of ws-message.
//!
//! API Gateway hands a connection's frames to whichever environment is free, and Lambda starts
//! more as frames overlap, so a bucket kept in one process would let a flood through once per
//! environment. The bucket's one number (GCRA's `tat`, domain/rate.rs) lives in the table, on
//! `CONN#<id>` / `RATE`, and each frame moves it with one conditional UpdateItem; no read first.
//!
//! Each environment remembers the last `tat` it saw per connection. The shared `tat` never moves
//! back while the connection lives, so when the remembered one already refuses a frame, the frame
//! is refused without a call: a flood costs one write per admitted frame, and nothing per refused
//! one after the first. The remembered value also says which of the two conditional writes (an
//! idle bucket, a busy one) to try first, so an admitted frame is one write, rarely two.
//! docs/DESIGN-NOTES.md ("A limit per connection") has the costs.
//!
//! The same item holds a connection's identity once an `auth` frame refreshed it (role, channel
//! patterns, `tokenExp`: store/expiry.rs): API Gateway keeps handing every frame the context of
//! `$connect`, so the refreshed one must come from the table, and the write that admits the frame
//! returns it (`ALL_NEW`) at no extra call.
//!
//! The item's sort key (`RATE`) matches none of the stream mapping's filters, so these writes
//! never invoke the fanout. Its TTL is the connection's.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Mutex;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;

use crate::access::{Refreshed, TOKEN_EXP_CONTEXT};
use crate::model::{keys, PK, SK, TTL_ATTRIBUTE};
use crate::rate::{RateLimit, Verdict};
use crate::store::{DynamoStore, StoreError};

/// The sort key of a connection's bucket.
pub(crate) const RATE_SK: &str = "RATE";
const TAT: &str = "tat";
/// Environments remember at most this many connections' buckets (a few MB at most); past it the
/// memory is dropped, which costs a write per frame, never correctness.
const REMEMBERED: usize = 50_000;
/// Concurrent frames of one connection can race between the two writes; after this many rounds
/// the frame is refused with a short retry hint rather than looping.
const ROUNDS: usize = 3;

/// What the routes need: admit one frame of a connection, or say when to retry.
pub trait FrameLimiter: Send + Sync {
    fn limit(&self) -> RateLimit;

    /// Admits a frame, or not; with the identity an `auth` stored for the connection, if any.
    fn admit_reading(
        &self,
        connection_id: &str,
        now_us: i64,
    ) -> impl Future<Output = Result<(Verdict, Option<Refreshed>), StoreError>> + Send;

    fn admit(&self, connection_id: &str, now_us: i64) -> impl Future<Output = Result<Verdict, StoreError>> + Send {
        async move { Ok(self.admit_reading(connection_id, now_us).await?.0) }
    }
}

/// The refreshed identity on a `RATE` item, if an `auth` wrote one.
pub(crate) fn refreshed_of(item: Option<&HashMap<String, AttributeValue>>) -> Option<Refreshed> {
    let item = item?;
    let text = |name: &str| item.get(name)?.as_s().ok().map(String::as_str);
    let exp = item.get(TOKEN_EXP_CONTEXT)?.as_n().ok()?.parse().ok()?;
    match Refreshed::parse(text(crate::store::ROLE)?, text(crate::store::CHANNELS)?, exp) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::error!(error = %e, "a stored identity does not parse; using the connect-time one");
            None
        }
    }
}

pub struct DynamoLimiter {
    client: Client,
    table: String,
    limit: RateLimit,
    /// Items live as long as connections (`CONNECTION_TTL_SECONDS`).
    ttl_secs: i64,
    remembered: Mutex<HashMap<String, i64>>,
}

impl DynamoLimiter {
    pub fn new(store: &DynamoStore, limit: RateLimit) -> Self {
        DynamoLimiter {
            client: store.client().clone(),
            table: store.table().to_owned(),
            limit,
            ttl_secs: store.retention().connection_secs,
            remembered: Mutex::new(HashMap::new()),
        }
    }

    fn remembered(&self, connection_id: &str) -> Option<i64> {
        self.remembered.lock().unwrap().get(connection_id).copied()
    }

    fn remember(&self, connection_id: &str, tat: i64) {
        let mut map = self.remembered.lock().unwrap();
        if map.len() >= REMEMBERED && !map.contains_key(connection_id) {
            map.clear();
        }
        let entry = map.entry(connection_id.to_owned()).or_insert(tat);
        *entry = (*entry).max(tat);
    }

    /// One conditional write. `Ok(Ok((tat, refreshed)))`: admitted with the new state;
    /// `Ok(Err(old))`: the condition failed, with the state found (None: no item).
    async fn write(
        &self,
        connection_id: &str,
        now_us: i64,
        busy: bool,
    ) -> Result<Result<(i64, Option<Refreshed>), Option<i64>>, StoreError> {
        let interval = self.limit.interval_us();
        let num = |n: i64| AttributeValue::N(n.to_string());
        let request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(PK, AttributeValue::S(keys::connection(connection_id)))
            .key(SK, AttributeValue::S(RATE_SK.to_owned()))
            .expression_attribute_names("#tat", TAT)
            .expression_attribute_names("#ttl", TTL_ATTRIBUTE)
            .expression_attribute_values(":now", num(now_us))
            .expression_attribute_values(":ttl", num(now_us / 1_000_000 + self.ttl_secs))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let request = if busy {
            // A bucket with frames ahead of now: one more if it still has room.
            request
                .update_expression("SET #tat = #tat + :i, #ttl = :ttl")
                .condition_expression("#tat > :now AND #tat <= :until")
                .expression_attribute_values(":i", num(interval))
                .expression_attribute_values(":until", num(self.limit.admit_until(now_us)))
        } else {
            // An idle (or new) bucket: full, so the frame is admitted.
            request
                .update_expression("SET #tat = :next, #ttl = :ttl")
                .condition_expression("attribute_not_exists(#tat) OR #tat <= :now")
                .expression_attribute_values(":next", num(now_us + interval))
        };
        // A throttle, conflict or 5xx is retried like every store call (a lost answer retried may
        // charge the frame twice: the limit errs strict, never loose).
        let deadline = tokio::time::Instant::now() + ADMISSION_BUDGET;
        match crate::store::retry::retried("UpdateItem", deadline, |_| request.clone().send()).await {
            Ok(out) => Ok(Ok((
                tat_of(out.attributes()).unwrap_or(now_us + interval),
                refreshed_of(out.attributes()),
            ))),
            Err(failure) => match failure.error.as_service_error() {
                Some(service) if service.is_conditional_check_failed_exception() => {
                    let found = match service {
                        aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(
                            c,
                        ) => tat_of(c.item()),
                        _ => None,
                    };
                    Ok(Err(found))
                }
                _ => Err(failure.into()),
            },
        }
    }
}

/// How long one frame's admission may take, retries included.
const ADMISSION_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

fn tat_of(item: Option<&HashMap<String, AttributeValue>>) -> Option<i64> {
    item?.get(TAT)?.as_n().ok()?.parse().ok()
}

impl FrameLimiter for DynamoLimiter {
    fn limit(&self) -> RateLimit {
        self.limit
    }

    async fn admit_reading(
        &self,
        connection_id: &str,
        now_us: i64,
    ) -> Result<(Verdict, Option<Refreshed>), StoreError> {
        if self.limit.is_off() {
            // No write to ride on: the stored identity costs a read.
            let get = self
                .client
                .get_item()
                .table_name(&self.table)
                .key(PK, AttributeValue::S(keys::connection(connection_id)))
                .key(SK, AttributeValue::S(RATE_SK.to_owned()))
                .consistent_read(true);
            let deadline = tokio::time::Instant::now() + ADMISSION_BUDGET;
            let out = crate::store::retry::retried("GetItem", deadline, |_| get.clone().send()).await?;
            return Ok((Verdict::Admit { tat: now_us }, refreshed_of(out.item())));
        }
        let known = self.remembered(connection_id);
        if let Some(Verdict::Limited { retry_after_ms }) = known.map(|tat| self.limit.check(Some(tat), now_us)) {
            return Ok((Verdict::Limited { retry_after_ms }, None));
        }
        let mut busy = known.is_some_and(|tat| tat > now_us);
        let mut found = known;
        for _ in 0..ROUNDS {
            match self.write(connection_id, now_us, busy).await? {
                Ok((tat, refreshed)) => {
                    self.remember(connection_id, tat);
                    return Ok((Verdict::Admit { tat }, refreshed));
                }
                Err(state) => {
                    found = state.or(found);
                    if let Some(tat) = state {
                        self.remember(connection_id, tat);
                        if let verdict @ Verdict::Limited { .. } = self.limit.check(Some(tat), now_us) {
                            return Ok((verdict, None));
                        }
                    }
                    // The bucket changed between the guess and the write: try the other form.
                    busy = !busy;
                }
            }
        }
        let retry_after_ms = found.map_or(1, |tat| self.limit.retry_after_ms(tat, now_us).max(1));
        Ok((Verdict::Limited { retry_after_ms }, None))
    }
}
