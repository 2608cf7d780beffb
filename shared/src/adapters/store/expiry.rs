//! Tokens that expire: a connection's identity refreshed by `auth`, and the minute buckets the
//! expiry sweep reads (docs/DESIGN-NOTES.md, "Refresh and expiry").
//!
//! Each connection with a token has one bucket item, `EXP#<minute of exp>` / `CONN#<id>`, written
//! with the connection, moved by each refresh and deleted by `$disconnect`. The sweep reads the
//! buckets of the minutes since its last run (a cursor item remembers where it got to), and
//! claims each due connection by deleting its bucket item on the condition that it still says
//! the `tokenExp` the sweep read: a refresh that moved it first wins, and two sweeps never close
//! one connection twice. Bucket items carry no `connectionId`, so they stay out of the
//! `byConnection` index, and no `history`, so the stream mapping's filters drop them.

use super::*;
use crate::access::{Identity, TOKEN_EXP_CONTEXT};
use crate::limiter::RATE_SK;
use crate::model::TTL_ATTRIBUTE;

/// The sweep's cursor item.
const SWEEP_PK: &str = "SWEEP";
const CURSOR_SK: &str = "CURSOR";
const MINUTE: &str = "minute";
/// Where a sweep with no cursor starts: API Gateway closes every connection after two hours,
/// so no older bucket can hold an open one.
pub const FIRST_SWEEP_LOOKBACK_MINUTES: i64 = 120;

/// The attributes of a connection's refreshed identity, on its `RATE` item (which the limiter's
/// UpdateItem returns on every frame) and on its `META` item (what audits read).
pub const ROLE: &str = "role";
pub const CHANNELS: &str = "channels";

/// A connection whose token expired, found by the sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub connection_id: String,
    pub token_exp: i64,
}

/// What one sweep read: the due connections, and the minute the next sweep starts from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Due {
    pub expired: Vec<Expired>,
    /// The cursor to store once every due connection was handled.
    pub next_minute: i64,
}

/// What the `auth` route writes and reads besides the [`Store`]: a small trait, so that the
/// handler's signature says it touches identities.
pub trait IdentityStore: Send + Sync {
    /// See [`DynamoStore::refresh`].
    fn refresh(
        &self,
        connection_id: &str,
        identity: &Identity,
        exp: i64,
        previous_exp: Option<i64>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Every membership of a connection.
    fn memberships(
        &self,
        connection_id: &str,
    ) -> impl std::future::Future<Output = Result<Vec<Membership>, StoreError>> + Send;
}

impl IdentityStore for DynamoStore {
    fn refresh(
        &self,
        connection_id: &str,
        identity: &Identity,
        exp: i64,
        previous_exp: Option<i64>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send {
        DynamoStore::refresh(self, connection_id, identity, exp, previous_exp)
    }

    fn memberships(
        &self,
        connection_id: &str,
    ) -> impl std::future::Future<Output = Result<Vec<Membership>, StoreError>> + Send {
        self.memberships_of(connection_id)
    }
}

impl DynamoStore {
    /// The bucket item of a connection whose token expires at `exp`.
    pub(super) fn expiry_put(&self, connection_id: &str, exp: i64) -> TransactWriteItem {
        let mut item = key_of(keys::expiry(keys::minute(exp)), keys::connection(connection_id));
        item.insert(TOKEN_EXP_CONTEXT.to_owned(), n(exp));
        // Only a bucket nobody removed (a sweep that failed for good) waits for the TTL.
        item.insert(TTL_ATTRIBUTE.to_owned(), n(exp + self.retention.connection_secs));
        self.put(item, None)
    }

    /// Puts a claimed bucket item back, for the next sweep, when closing its connection failed.
    pub(crate) async fn restore_expiry(&self, expired: &Expired) -> Result<(), StoreError> {
        self.transact(
            self.deadline(),
            vec![self.expiry_put(&expired.connection_id, expired.token_exp)],
        )
        .await?;
        Ok(())
    }

    /// Deletes a connection's bucket item (on `$disconnect`); gone already is fine.
    pub(super) async fn forget_expiry(&self, connection_id: &str, exp: i64) -> Result<(), StoreError> {
        let delete = self.client.delete_item().table_name(&self.table).set_key(Some(key_of(
            keys::expiry(keys::minute(exp)),
            keys::connection(connection_id),
        )));
        retried("DeleteItem", self.deadline(), |_| delete.clone().send()).await?;
        Ok(())
    }

    /// Replaces a connection's identity after `auth`: its role, channel patterns and `tokenExp`
    /// on the `META` and `RATE` items, and its bucket moved from `previous_exp`'s minute to the
    /// new one's, in one transaction. `TokenClaimed` when the sweep took the old bucket first
    /// (the connection is being closed); `NotConnected` when the connection is gone.
    pub async fn refresh(
        &self,
        connection_id: &str,
        identity: &Identity,
        exp: i64,
        previous_exp: Option<i64>,
    ) -> Result<(), StoreError> {
        let channels: Vec<String> = identity.channels.iter().map(ToString::to_string).collect();
        let update = |sk: &str, expression: &str, condition: Option<&str>, extra: Vec<(&str, &str, AttributeValue)>| {
            let mut names = HashMap::from([
                ("#role".to_owned(), ROLE.to_owned()),
                ("#channels".to_owned(), CHANNELS.to_owned()),
                ("#exp".to_owned(), TOKEN_EXP_CONTEXT.to_owned()),
            ]);
            let mut values = HashMap::from([
                (":role".to_owned(), s(identity.role.as_str())),
                (":exp".to_owned(), n(exp)),
            ]);
            for (name, attribute, value) in extra {
                if !attribute.is_empty() {
                    names.insert(name.replace(':', "#"), attribute.to_owned());
                }
                values.insert(name.to_owned(), value);
            }
            TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name(&self.table)
                        .set_key(Some(key_of(keys::connection(connection_id), sk.to_owned())))
                        .update_expression(expression)
                        .set_condition_expression(condition.map(str::to_owned))
                        .set_expression_attribute_names(Some(names))
                        .set_expression_attribute_values(Some(values))
                        .build()
                        .expect("update is complete"),
                )
                .build()
        };
        // The connection item keeps the patterns as a list (Connection::channels); the RATE item
        // as the context carries them, comma-joined, so the limiter's answer reads like one.
        let list = AttributeValue::L(channels.iter().map(|c| s(c.clone())).collect());
        let mut actions = vec![
            update(
                keys::META,
                "SET #role = :role, #channels = :channels, #exp = :exp",
                Some("attribute_exists(pk)"),
                vec![(":channels", "", list)],
            ),
            update(
                RATE_SK,
                "SET #role = :role, #channels = :channels, #exp = :exp, #ttl = if_not_exists(#ttl, :ttl)",
                None,
                vec![
                    (":channels", "", s(channels.join(","))),
                    (
                        ":ttl",
                        TTL_ATTRIBUTE,
                        n(crate::clock::now_secs() + self.retention.connection_secs),
                    ),
                ],
            ),
        ];
        actions.extend(self.bucket_move(connection_id, previous_exp, exp));
        // Updates to fixed values and a move: a retry after a lost commit finds the old bucket
        // gone, and the cancellation below says so only when no try may have committed.
        match self.transact(self.deadline(), actions).await {
            Ok(()) => Ok(()),
            Err(e) => match failed_conditions(&e) {
                Some(f) if f.first() == Some(&true) => Err(StoreError::NotConnected),
                Some(f) if f.get(2) == Some(&true) && e.uncertain => Ok(()),
                Some(f) if f.get(2) == Some(&true) => Err(StoreError::TokenClaimed),
                _ => Err(e.into()),
            },
        }
    }

    /// The actions that move a connection's bucket item from `previous_exp`'s minute to `exp`'s.
    fn bucket_move(&self, connection_id: &str, previous_exp: Option<i64>, exp: i64) -> Vec<TransactWriteItem> {
        let mut moves = Vec::with_capacity(2);
        let old_bucket = previous_exp.map(|e| keys::expiry(keys::minute(e)));
        let new_bucket = keys::expiry(keys::minute(exp));
        match &old_bucket {
            // The same minute: the item is updated in place, on the condition the sweep has not
            // taken it (one transaction may touch an item once).
            Some(old) if *old == new_bucket => moves.push(
                TransactWriteItem::builder()
                    .update(
                        Update::builder()
                            .table_name(&self.table)
                            .set_key(Some(key_of(old.clone(), keys::connection(connection_id))))
                            .update_expression("SET #exp = :exp")
                            .condition_expression("attribute_exists(pk)")
                            .expression_attribute_names("#exp", TOKEN_EXP_CONTEXT)
                            .expression_attribute_values(":exp", n(exp))
                            .build()
                            .expect("update is complete"),
                    )
                    .build(),
            ),
            Some(old) => {
                moves.push(
                    TransactWriteItem::builder()
                        .delete(
                            Delete::builder()
                                .table_name(&self.table)
                                .set_key(Some(key_of(old.clone(), keys::connection(connection_id))))
                                .condition_expression("attribute_exists(pk)")
                                .build()
                                .expect("delete is complete"),
                        )
                        .build(),
                );
                moves.push(self.expiry_put(connection_id, exp));
            }
            None => moves.push(self.expiry_put(connection_id, exp)),
        }
        moves
    }

    /// The connections whose tokens expired at or before `now_secs`, from the minutes since the
    /// last sweep (its cursor) to now's.
    pub async fn due_expiries(&self, now_secs: i64) -> Result<Due, StoreError> {
        let now_minute = keys::minute(now_secs);
        let get = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(SWEEP_PK.to_owned(), CURSOR_SK.to_owned())))
            .consistent_read(true);
        let cursor = retried("GetItem", self.deadline(), |_| get.clone().send())
            .await?
            .item
            .and_then(|i| i.get(MINUTE)?.as_n().ok()?.parse::<i64>().ok())
            .unwrap_or(now_minute - FIRST_SWEEP_LOOKBACK_MINUTES)
            .max(now_minute - FIRST_SWEEP_LOOKBACK_MINUTES);
        let mut expired = Vec::new();
        for minute in cursor..=now_minute {
            let query = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(keys::expiry(minute)))
                .consistent_read(true);
            let mut start = None;
            loop {
                let page = query.clone().set_exclusive_start_key(start);
                let out = retried("Query", self.deadline(), |_| page.clone().send()).await?;
                for item in out.items() {
                    let id = item
                        .get(SK)
                        .and_then(|v| v.as_s().ok())
                        .and_then(|sk| sk.strip_prefix(keys::CONN_PREFIX));
                    let exp = item
                        .get(TOKEN_EXP_CONTEXT)
                        .and_then(|v| v.as_n().ok())
                        .and_then(|v| v.parse::<i64>().ok());
                    if let (Some(id), Some(exp)) = (id, exp) {
                        if exp <= now_secs {
                            expired.push(Expired {
                                connection_id: id.to_owned(),
                                token_exp: exp,
                            });
                        }
                    }
                }
                start = out.last_evaluated_key;
                if start.is_none() {
                    break;
                }
            }
        }
        // This minute is read again next time: more of its tokens fall due.
        Ok(Due {
            expired,
            next_minute: now_minute,
        })
    }

    /// Where the next sweep starts; never moved back by a slower concurrent sweep.
    pub async fn advance_sweep(&self, minute: i64) -> Result<(), StoreError> {
        let update = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key_of(SWEEP_PK.to_owned(), CURSOR_SK.to_owned())))
            .update_expression("SET #m = :m")
            .condition_expression("attribute_not_exists(#m) OR #m < :m")
            .expression_attribute_names("#m", MINUTE)
            .expression_attribute_values(":m", n(minute));
        match retried("UpdateItem", self.deadline(), |_| update.clone().send()).await {
            Ok(_) => Ok(()),
            Err(e)
                if e.service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Takes a due connection for closing: deletes its bucket item if it still holds the
    /// `tokenExp` read. `false`: a refresh moved it, or another sweep took it.
    pub async fn claim_expiry(&self, expired: &Expired) -> Result<bool, StoreError> {
        let delete = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(
                keys::expiry(keys::minute(expired.token_exp)),
                keys::connection(&expired.connection_id),
            )))
            .condition_expression("#exp = :exp")
            .expression_attribute_names("#exp", TOKEN_EXP_CONTEXT)
            .expression_attribute_values(":exp", n(expired.token_exp))
            .return_values(ReturnValue::AllOld);
        match retried("DeleteItem", self.deadline(), |_| delete.clone().send()).await {
            // A retry after a lost answer finds nothing to delete: the first try claimed it.
            Ok(_) => Ok(true),
            Err(e)
                if e.service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(e.uncertain)
            }
            Err(e) => Err(e.into()),
        }
    }
}
