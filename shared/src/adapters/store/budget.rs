//! The shared `@connections` budget's counters: one item per second, `pk = BUDGET#fanout`,
//! `sk = S#<unix second>`, whose `used` counts the posts every fanout environment leased in that
//! second (crate::budget has the arithmetic). A lease is one conditional update: it adds the
//! block only while the sum stays at or under the cap, so no second is ever over-leased, however
//! many environments ask at once. The items expire a minute later.

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;

use super::*;

/// The partition of the budget's counters.
pub const BUDGET_PK: &str = "BUDGET#fanout";
/// The attribute that counts a second's leased posts.
const USED: &str = "used";
/// How long a second's counter is kept (TTL), far past the second itself.
const KEEP_SECONDS: u64 = 60;

/// Where environments lease their posts of the shared budget.
pub trait BudgetLedger: Send + Sync {
    /// Takes up to `want` of the `cap` posts of `second` (unix time): all of them when they fit,
    /// else what is left (0 when the second is spent).
    fn lease(&self, second: u64, want: u64, cap: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

impl BudgetLedger for DynamoStore {
    async fn lease(&self, second: u64, want: u64, cap: u64) -> Result<u64, StoreError> {
        let mut want = want.min(cap);
        // The second try asks for exactly what the failed condition showed was left; a third
        // only happens when others took that too, and then there is (nearly) nothing left.
        for _ in 0..3 {
            if want == 0 {
                return Ok(0);
            }
            match self.add_used(second, want, cap).await {
                Ok(()) => return Ok(want),
                Err(e) => {
                    let Some(used) = used_on_failure(&e.error) else {
                        return Err(e.into());
                    };
                    want = want.min(cap.saturating_sub(used));
                }
            }
        }
        Ok(0)
    }
}

impl DynamoStore {
    async fn add_used(&self, second: u64, n: u64, cap: u64) -> Result<(), retry::Failure<UpdateItemError>> {
        let expires = second + KEEP_SECONDS;
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(BUDGET_PK.to_owned(), format!("S#{second}"))))
            .update_expression("ADD #used :n SET #ttl = :ttl")
            .condition_expression("attribute_not_exists(#used) OR #used <= :room")
            .expression_attribute_names("#used", USED)
            .expression_attribute_names("#ttl", crate::model::TTL_ATTRIBUTE)
            .expression_attribute_values(":n", n_u(n))
            .expression_attribute_values(":room", n_u(cap - n))
            .expression_attribute_values(":ttl", n_u(expires))
            // A failed condition hands back the counter, so the next try asks for what is left
            // without a read.
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        // A throttle or 5xx is retried like every store call. A lease applied twice (its answer
        // lost) only leaves that second under-used: the cap still holds.
        retry::retried("UpdateItem", self.deadline(), |_| update.clone().send())
            .await
            .map(|_| ())
    }
}

fn n_u(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// The counter's value when the update failed its condition (`None`: another error).
fn used_on_failure(err: &SdkError<UpdateItemError, impl std::fmt::Debug>) -> Option<u64> {
    match err.as_service_error()? {
        UpdateItemError::ConditionalCheckFailedException(e) => Some(
            e.item()
                .and_then(|item| item.get(USED))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
                // No item came back: treat the second as spent rather than guess.
                .unwrap_or(u64::MAX),
        ),
        _ => None,
    }
}
