//! The store: every read and write wsfan makes to its DynamoDB table.
//!
//! Handlers depend on the [`Store`] trait; [`DynamoStore`] is the one implementation, tested
//! against a real DynamoDB API (moto) in `tests/`.

use std::collections::HashMap;
use std::future::Future;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, Delete, Put, ReturnValue, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;
use serde::Serialize;
use serde_json::Value;

use crate::channel::ChannelId;
use crate::config::Retention;
use crate::model::{keys, Connection, Membership, Message, PK, SK};
use crate::progress::ProgressEvent;
use crate::protocol::HistoryCursor;
use crate::table::{BY_CONNECTION_INDEX, BY_CONNECTION_PK};

pub type Item = HashMap<String, AttributeValue>;

/// The snapshot attribute that orders progress events; internal, never shown to clients.
const POSITION: &str = "position";
/// The queue message that last moved a progress snapshot.
const DELIVERY: &str = "delivery";

/// The connection item's set of conversation channels (`Connection::joined`).
const JOINED: &str = "joined";

/// DynamoDB allows 100 actions per transaction; a leave is two.
const MEMBERSHIPS_PER_TRANSACTION: usize = 50;

/// The head item's attribute: the channel's last sequence number.
const SEQ: &str = "seq";

/// How often a send re-reads the head and tries again when other sends to the same channel won
/// the race for the next sequence number. Each loss means another send committed, so a send only
/// gives up when the channel takes more than this many messages during its own attempts.
const SEQ_ATTEMPTS: u32 = 25;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The connection item is gone (disconnected, or never written).
    #[error("connection is not registered")]
    NotConnected,
    /// The caller's connection is not a member of the channel it writes to.
    #[error("connection is not a member of the channel")]
    NotMember,
    /// Other sends to the channel kept taking the next sequence number; the caller may retry.
    #[error("the channel is too busy right now")]
    Contended,
    /// A connection's user id cannot name its `user:<sub>` channel (the authorizer admits none such).
    #[error("user id cannot name a user channel: {0}")]
    InvalidUserId(String),
    /// DynamoDB did not answer within the operation timeout (`DYNAMODB_TIMEOUT_MS`).
    #[error("DynamoDB did not answer within the operation timeout (DYNAMODB_TIMEOUT_MS): {0}")]
    Timeout(String),
    #[error("DynamoDB: {0}")]
    Dynamo(String),
    #[error("item does not match the model: {0}")]
    Model(#[from] serde_dynamo::Error),
}

impl<E: std::fmt::Debug, R: std::fmt::Debug> From<SdkError<E, R>> for StoreError
where
    E: std::error::Error + 'static,
{
    fn from(e: SdkError<E, R>) -> Self {
        let context = format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&e));
        match e {
            SdkError::TimeoutError(_) => StoreError::Timeout(context),
            _ => StoreError::Dynamo(context),
        }
    }
}

/// What a post did: a retried send with the same `clientMsgId` returns the first message's id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostOutcome {
    pub message_id: String,
    /// The message's place in the channel's sequence (history kinds; a duplicate answers with the
    /// first message's).
    pub seq: Option<u64>,
    pub duplicate: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    /// Oldest first, in sequence order.
    pub messages: Vec<Message>,
    /// The cursor for the page before this one, when there is one.
    pub before: Option<u64>,
    /// Recovery: the cursor for the next page, when there is one.
    pub after: Option<u64>,
    /// Recovery: whether the page starts right after the requested point (nothing expired or
    /// unknown in between).
    pub complete: Option<bool>,
}

/// One connection in a channel, as the fanout needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub connection_id: String,
    pub user_id: Option<String>,
}

/// What cleaning up a connection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    pub connection_existed: bool,
    pub memberships_removed: usize,
}

/// The table operations wsfan's handlers need.
pub trait Store: Send + Sync {
    /// Writes the connection item and, in the same transaction, its membership of `user:<sub>`
    /// (for a signed-in user) and of each channel `named` at connect (with `connection.history`).
    fn connect(
        &self,
        connection: &Connection,
        named: &[ChannelId],
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn connection(&self, connection_id: &str) -> impl Future<Output = Result<Option<Connection>, StoreError>> + Send;

    /// Removes a connection and all its memberships. Idempotent.
    fn disconnect(&self, connection_id: &str) -> impl Future<Output = Result<Cleanup, StoreError>> + Send;

    /// Adds a membership; fails with `NotConnected` when the connection item is gone.
    fn join(&self, membership: &Membership) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes a membership; `Ok(false)` when there was none.
    fn leave(
        &self,
        channel: &ChannelId,
        connection_id: &str,
        user_id: Option<&str>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    fn is_member(
        &self,
        channel: &ChannelId,
        connection_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Writes a message item. With `member`, the write only happens if that connection is a
    /// member of the channel (checked in the same transaction).
    fn post(
        &self,
        message: &Message,
        member: Option<&str>,
    ) -> impl Future<Output = Result<PostOutcome, StoreError>> + Send;

    /// A page of the channel's history (messages, reactions, receipts) in sequence order.
    fn history(
        &self,
        channel: &ChannelId,
        cursor: HistoryCursor,
        limit: u32,
    ) -> impl Future<Output = Result<HistoryPage, StoreError>> + Send;

    /// The channel's last sequence number; 0 before its first message.
    fn head(&self, channel: &ChannelId) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The latest progress snapshot of a document, as clients see it.
    fn progress(&self, doc_id: &str) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;

    /// Stores a progress event as the document's snapshot if it is further along than the
    /// stored one. `Ok(false)`: it was late or a duplicate, and nothing changed.
    fn record_progress(&self, event: &ProgressEvent) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// [`Store::record_progress`] for one delivery of a queue message (`delivery_id`: its SQS
    /// message id, which a redelivery keeps). The same delivery again counts as moving the
    /// snapshot again: a fanout killed after storing the event but before pushing it all must
    /// push it on the retry, or its subscribers never get it. A new message with the same event
    /// is still a duplicate.
    fn record_progress_delivery(
        &self,
        event: &ProgressEvent,
        delivery_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        let _ = delivery_id;
        self.record_progress(event)
    }

    /// The users with at least one connection in a channel (from the presence items), up to `limit`.
    fn present(
        &self,
        channel: &ChannelId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Every member connection of a channel, across all pages.
    fn members(&self, channel: &ChannelId) -> impl Future<Output = Result<Vec<Member>, StoreError>> + Send;

    /// Up to `limit` members of a channel after the connection id `after` (exclusive), in key
    /// order, with the id to go on from when there are more: large channels are read a page at
    /// a time, never whole.
    fn members_page(
        &self,
        channel: &ChannelId,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<MembersPage, StoreError>> + Send;

    /// The connection ids of one delivery group of a channel ([`crate::shard::group_of`]), up to
    /// `limit` after `after`, leaving out `except_user`'s: one key range of the member list, so each
    /// shard of a large channel's delivery reads its own part and no other. Only the key is read
    /// (the members' `user_id` is `None`); a page may come back short when some are left out.
    fn group_page(
        &self,
        channel: &ChannelId,
        group: u32,
        except_user: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<MembersPage, StoreError>> + Send;
}

/// One page of a channel's members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MembersPage {
    pub members: Vec<Member>,
    /// The last connection id read, when the channel may have more members after it.
    pub next: Option<String>,
}

#[derive(Clone, Debug)]
pub struct DynamoStore {
    client: Client,
    table: String,
    retention: Retention,
}

/// A DynamoDB client whose every operation, retries included, ends within `timeout`.
pub fn client_with_timeout(sdk: &aws_config::SdkConfig, timeout: std::time::Duration) -> Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk)
        .timeout_config(
            aws_smithy_types::timeout::TimeoutConfig::builder()
                .operation_timeout(timeout)
                .build(),
        )
        .build();
    Client::from_conf(config)
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Serialises a model value and adds its keys.
pub fn to_item<T: Serialize>(key: (String, String), value: &T) -> Result<Item, StoreError> {
    let mut item: Item = serde_dynamo::to_item(value)?;
    item.insert(PK.to_owned(), s(key.0));
    item.insert(SK.to_owned(), s(key.1));
    Ok(item)
}

fn key_of(pk: String, sk: String) -> Item {
    HashMap::from([(PK.to_owned(), s(pk)), (SK.to_owned(), s(sk))])
}

/// A membership item (`CONN#<id>`, projected to `sk, userId`) as a [`Member`].
fn member_of(item: &Item) -> Option<Member> {
    let id = item.get(SK)?.as_s().ok()?.strip_prefix(keys::CONN_PREFIX)?;
    Some(Member {
        connection_id: id.to_owned(),
        user_id: item.get("userId").and_then(|v| v.as_s().ok()).cloned(),
    })
}

/// Which actions of a cancelled transaction failed their condition.
fn failed_conditions(err: &SdkError<TransactWriteItemsError, impl std::fmt::Debug>) -> Option<Vec<bool>> {
    match err.as_service_error()? {
        TransactWriteItemsError::TransactionCanceledException(e) => Some(
            e.cancellation_reasons()
                .iter()
                .map(|r| r.code() == Some("ConditionalCheckFailed"))
                .collect(),
        ),
        _ => None,
    }
}

impl DynamoStore {
    /// Stores a progress snapshot if it moves the document forward, or if it is the delivery
    /// (`delivery_id`) that stored it, again.
    async fn put_progress(&self, event: &ProgressEvent, delivery_id: Option<&str>) -> Result<bool, StoreError> {
        let mut item = to_item((keys::doc(&event.doc_id), keys::PROGRESS.to_owned()), event)?;
        item.insert(POSITION.to_owned(), n(event.position()));
        item.insert("updatedAt".to_owned(), n(crate::clock::now_millis()));
        item.insert(
            crate::model::TTL_ATTRIBUTE.to_owned(),
            n(crate::clock::now_secs() + self.retention.message_secs),
        );
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .condition_expression("attribute_not_exists(pk) OR #position < :position")
            .expression_attribute_names("#position", POSITION)
            .expression_attribute_values(":position", n(event.position()));
        if let Some(id) = delivery_id {
            item.insert(DELIVERY.to_owned(), s(id));
            let again = "(#position = :position AND #delivery = :delivery)";
            put = put
                .condition_expression(format!("attribute_not_exists(pk) OR #position < :position OR {again}"))
                .expression_attribute_names("#delivery", DELIVERY)
                .expression_attribute_values(":delivery", s(id));
        }
        let result = put.set_item(Some(item)).send().await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    }

    pub fn new(client: Client, table: impl Into<String>, retention: Retention) -> Self {
        DynamoStore {
            client,
            table: table.into(),
            retention,
        }
    }

    /// The store a Lambda uses: table, retention and timeout from the environment, one SDK client.
    pub async fn from_env() -> Result<Self, crate::config::ConfigError> {
        let config = crate::config::StoreConfig::from_env()?;
        let sdk = crate::config::aws().await;
        let client = client_with_timeout(&sdk, config.operation_timeout);
        Ok(DynamoStore::new(client, config.table_name, config.retention))
    }

    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    fn put(&self, item: Item, condition: Option<&str>) -> TransactWriteItem {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .set_condition_expression(condition.map(str::to_owned))
                    .build()
                    .expect("put has table and item"),
            )
            .build()
    }

    fn exists_check(&self, key: Item) -> TransactWriteItem {
        TransactWriteItem::builder()
            .condition_check(
                ConditionCheck::builder()
                    .table_name(&self.table)
                    .set_key(Some(key))
                    .condition_expression("attribute_exists(pk)")
                    .build()
                    .expect("check is complete"),
            )
            .build()
    }

    /// The per-user presence item counts a user's connections in a channel, so the fanout can
    /// announce a join only for the first and a leave only for the last (see docs/DESIGN-NOTES.md).
    fn presence_update(
        &self,
        channel: &ChannelId,
        user_id: &str,
        connection_id: &str,
        joining: bool,
    ) -> TransactWriteItem {
        let mut values = HashMap::from([(":c".to_owned(), AttributeValue::Ss(vec![connection_id.to_owned()]))]);
        let expression = if joining {
            values.insert(
                ":e".to_owned(),
                n(crate::clock::now_secs() + self.retention.connection_secs),
            );
            values.insert(":ch".to_owned(), s(channel.to_string()));
            values.insert(":u".to_owned(), s(user_id));
            "SET expiresAt = :e, channel = :ch, userId = :u ADD connections :c"
        } else {
            "DELETE connections :c"
        };
        TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_of(keys::channel(channel), keys::presence(user_id))))
                    .update_expression(expression)
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .expect("update is complete"),
            )
            .build()
    }

    fn membership_actions(&self, membership: &Membership) -> Result<Vec<TransactWriteItem>, StoreError> {
        let mut actions = vec![self.put(to_item(membership.key(), membership)?, None)];
        if let Some(user) = &membership.user_id {
            actions.push(self.presence_update(&membership.channel, user, &membership.connection_id, true));
        }
        Ok(actions)
    }

    fn leave_actions(&self, channel: &ChannelId, connection_id: &str, user_id: Option<&str>) -> Vec<TransactWriteItem> {
        let mut actions = vec![TransactWriteItem::builder()
            .delete(
                Delete::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_of(keys::channel(channel), keys::connection(connection_id))))
                    .condition_expression("attribute_exists(pk)")
                    .build()
                    .expect("delete is complete"),
            )
            .build()];
        if let Some(user) = user_id {
            actions.push(self.presence_update(channel, user, connection_id, false));
        }
        actions
    }

    async fn transact(
        &self,
        actions: Vec<TransactWriteItem>,
    ) -> Result<(), SdkError<TransactWriteItemsError, aws_sdk_dynamodb::config::http::HttpResponse>> {
        self.client
            .transact_write_items()
            .set_transact_items(Some(actions))
            .send()
            .await
            .map(|_| ())
    }

    /// Moves the channel's head from `previous` to `previous + 1`; fails its condition when
    /// another send got there first.
    fn advance_head(&self, channel: &ChannelId, previous: u64) -> TransactWriteItem {
        let mut values = HashMap::from([(":n".to_owned(), n(previous as i64 + 1))]);
        let condition = if previous == 0 {
            "attribute_not_exists(#seq)"
        } else {
            values.insert(":prev".to_owned(), n(previous as i64));
            "#seq = :prev"
        };
        TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(&self.table)
                    .set_key(Some(key_of(keys::channel(channel), keys::HEAD.to_owned())))
                    .update_expression("SET #seq = :n")
                    .condition_expression(condition)
                    .expression_attribute_names("#seq", SEQ)
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .expect("update is complete"),
            )
            .build()
    }

    /// A retried send: the first message's id and sequence number, if the `clientMsgId` was stored.
    async fn deduped(&self, key: Item) -> Result<Option<(String, Option<u64>)>, StoreError> {
        let existing = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true)
            .send()
            .await?;
        Ok(existing.item.and_then(|i| {
            let seq = i.get(SEQ).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok());
            i.get("messageId")
                .and_then(|v| v.as_s().ok())
                .map(|id| (id.clone(), seq))
        }))
    }

    /// Every membership of a connection, through the `byConnection` index.
    /// One page of membership items by `query` (its key condition on the channel's partition
    /// as `:pk`), projected to `projection`, with the id to go on from.
    async fn member_query(
        &self,
        query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        channel: &ChannelId,
        projection: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, StoreError> {
        let pk = keys::channel(channel);
        let out = query
            .table_name(&self.table)
            .expression_attribute_values(":pk", s(pk.clone()))
            .projection_expression(projection)
            .set_exclusive_start_key(after.map(|id| key_of(pk, keys::connection(id))))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX).max(1))
            .send()
            .await?;
        let members = out.items().iter().filter_map(member_of).collect();
        let next = out
            .last_evaluated_key()
            .and_then(|k| k.get(SK))
            .and_then(|v| v.as_s().ok())
            .and_then(|sk| sk.strip_prefix(keys::CONN_PREFIX))
            .map(str::to_owned);
        Ok(MembersPage { members, next })
    }

    pub async fn memberships_of(&self, connection_id: &str) -> Result<Vec<Membership>, StoreError> {
        let mut found = Vec::new();
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_CONNECTION_INDEX)
            .key_condition_expression("#c = :c")
            .expression_attribute_names("#c", BY_CONNECTION_PK)
            .expression_attribute_values(":c", s(connection_id))
            .into_paginator()
            .items()
            .send();
        while let Some(item) = pages.next().await {
            let item = item?;
            // Only membership items carry both index keys, but be strict about what we delete.
            let is_membership = item
                .get(SK)
                .and_then(|v| v.as_s().ok())
                .is_some_and(|sk| sk.starts_with(keys::CONN_PREFIX));
            if is_membership {
                found.push(serde_dynamo::from_item(item)?);
            }
        }
        Ok(found)
    }
}

impl Store for DynamoStore {
    async fn connect(&self, connection: &Connection, named: &[ChannelId]) -> Result<(), StoreError> {
        // Every signed-in connection gets its personal channel; one without it would miss its
        // notifications unnoticed, so it is refused instead.
        let personal = match connection.user_id.as_deref() {
            Some(user) => Some(ChannelId::user(user).map_err(|e| StoreError::InvalidUserId(e.to_string()))?),
            None => None,
        };
        let mut item = to_item(connection.key(), connection)?;
        // A string set, so join and leave can ADD and DELETE one channel without a read.
        let joined: Vec<String> = named
            .iter()
            .filter(|c| c.kind().is_conversation())
            .map(ToString::to_string)
            .collect();
        item.remove(JOINED);
        if !joined.is_empty() {
            item.insert(JOINED.to_owned(), AttributeValue::Ss(joined));
        }
        let mut actions = vec![self.put(item, None)];
        let membership = |channel: ChannelId, history: Option<u32>| Membership {
            channel,
            connection_id: connection.connection_id.clone(),
            user_id: connection.user_id.clone(),
            role: connection.role,
            joined_at: connection.connected_at,
            expires_at: connection.expires_at,
            history,
        };
        if let Some(channel) = &personal {
            actions.extend(self.membership_actions(&membership(channel.clone(), None))?);
        }
        // A transaction may touch an item once: the personal channel is joined above already.
        for channel in named.iter().filter(|c| Some(*c) != personal.as_ref()) {
            actions.extend(self.membership_actions(&membership(channel.clone(), connection.history))?);
        }
        self.transact(actions).await?;
        Ok(())
    }

    async fn connection(&self, connection_id: &str) -> Result<Option<Connection>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(keys::connection(connection_id), keys::META.to_owned())))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out.item.map(serde_dynamo::from_item).transpose()?)
    }

    async fn disconnect(&self, connection_id: &str) -> Result<Cleanup, StoreError> {
        // Delete the connection first: a join racing with us then fails its existence check
        // instead of leaving an orphan membership behind.
        let deleted = self
            .client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key_of(keys::connection(connection_id), keys::META.to_owned())))
            .return_values(ReturnValue::AllOld)
            .send()
            .await?;
        let memberships = self.memberships_of(connection_id).await?;
        let mut removed = 0;
        for chunk in memberships.chunks(MEMBERSHIPS_PER_TRANSACTION) {
            let actions: Vec<_> = chunk
                .iter()
                .flat_map(|m| self.leave_actions(&m.channel, connection_id, m.user_id.as_deref()))
                .collect();
            match self.transact(actions).await {
                Ok(()) => removed += chunk.len(),
                // Someone (a concurrent $disconnect, a 410 cleanup) removed one first: fall back
                // to one leave at a time, each of which tolerates a missing membership.
                Err(e) if failed_conditions(&e).is_some_and(|f| f.iter().any(|x| *x)) => {
                    for m in chunk {
                        if self.leave(&m.channel, connection_id, m.user_id.as_deref()).await? {
                            removed += 1;
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Cleanup {
            connection_existed: deleted.attributes.is_some(),
            memberships_removed: removed,
        })
    }

    async fn join(&self, membership: &Membership) -> Result<(), StoreError> {
        let connection_key = key_of(keys::connection(&membership.connection_id), keys::META.to_owned());
        let first = if membership.channel.kind().is_conversation() {
            // Also remembered on the connection, for its default channel; same condition.
            TransactWriteItem::builder()
                .update(
                    Update::builder()
                        .table_name(&self.table)
                        .set_key(Some(connection_key))
                        .update_expression("ADD #joined :ch")
                        .condition_expression("attribute_exists(pk)")
                        .expression_attribute_names("#joined", JOINED)
                        .expression_attribute_values(":ch", AttributeValue::Ss(vec![membership.channel.to_string()]))
                        .build()
                        .expect("update is complete"),
                )
                .build()
        } else {
            self.exists_check(connection_key)
        };
        let mut actions = vec![first];
        actions.extend(self.membership_actions(membership)?);
        match self.transact(actions).await {
            Ok(()) => Ok(()),
            Err(e) if failed_conditions(&e).is_some_and(|f| f.first() == Some(&true)) => Err(StoreError::NotConnected),
            Err(e) => Err(e.into()),
        }
    }

    async fn leave(&self, channel: &ChannelId, connection_id: &str, user_id: Option<&str>) -> Result<bool, StoreError> {
        let left = match self.transact(self.leave_actions(channel, connection_id, user_id)).await {
            Ok(()) => true,
            Err(e) if failed_conditions(&e).is_some_and(|f| f.first() == Some(&true)) => false,
            Err(e) => return Err(e.into()),
        };
        if channel.kind().is_conversation() {
            // Apart from the transaction, because $disconnect leaves after deleting the connection
            // item; the condition keeps this from creating a bare one.
            let forgotten = self
                .client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(key_of(keys::connection(connection_id), keys::META.to_owned())))
                .update_expression("DELETE #joined :ch")
                .condition_expression("attribute_exists(pk)")
                .expression_attribute_names("#joined", JOINED)
                .expression_attribute_values(":ch", AttributeValue::Ss(vec![channel.to_string()]))
                .send()
                .await;
            match forgotten {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception()) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(left)
    }

    async fn is_member(&self, channel: &ChannelId, connection_id: &str) -> Result<bool, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(keys::channel(channel), keys::connection(connection_id))))
            .projection_expression("pk")
            .consistent_read(true)
            .send()
            .await?;
        Ok(out.item.is_some())
    }

    async fn post(&self, message: &Message, member: Option<&str>) -> Result<PostOutcome, StoreError> {
        let channel_pk = keys::channel(&message.channel);
        let dedupe_key = message
            .client_msg_id
            .as_deref()
            .map(|cmid| key_of(channel_pk.clone(), keys::dedupe(&message.sender_id, cmid)));
        let member_check = member.map(|c| self.exists_check(key_of(channel_pk.clone(), keys::connection(c))));
        let duplicate = |(message_id, seq)| PostOutcome {
            message_id,
            seq,
            duplicate: true,
        };
        if let Some(key) = &dedupe_key {
            // A retry is the common case: answer it with one read instead of a cancelled
            // transaction. The transaction's condition still settles concurrent duplicates.
            if let Some(first) = self.deduped(key.clone()).await? {
                if let Some(connection_id) = member {
                    if !self.is_member(&message.channel, connection_id).await? {
                        return Err(StoreError::NotMember);
                    }
                }
                return Ok(duplicate(first));
            }
        }
        // History kinds take the next number of the channel's sequence in the same transaction,
        // conditioned on the head still being where we read it: commits happen in sequence order.
        let sequenced = message.kind.is_history();
        for attempt in 0..SEQ_ATTEMPTS {
            let mut message = message.clone();
            let head = if sequenced {
                let head = self.head(&message.channel).await?;
                message.seq = Some(head + 1);
                Some(head)
            } else {
                message.seq = None;
                None
            };
            let mut actions = Vec::with_capacity(4);
            actions.extend(member_check.clone());
            if let Some(key) = &dedupe_key {
                let mut item = key.clone();
                item.insert("messageId".to_owned(), s(&message.message_id));
                if let Some(seq) = message.seq {
                    item.insert(SEQ.to_owned(), n(seq as i64));
                }
                item.insert(
                    crate::model::TTL_ATTRIBUTE.to_owned(),
                    n(crate::clock::now_secs() + self.retention.dedupe_secs),
                );
                actions.push(self.put(item, Some("attribute_not_exists(pk)")));
            }
            let head_index = actions.len();
            if let Some(head) = head {
                actions.push(self.advance_head(&message.channel, head));
            }
            actions.push(self.put(to_item(message.key(), &message)?, None));

            let err = match self.transact(actions).await {
                Ok(()) => {
                    return Ok(PostOutcome {
                        message_id: message.message_id.clone(),
                        seq: message.seq,
                        duplicate: false,
                    })
                }
                Err(e) => e,
            };
            let Some(failed) = failed_conditions(&err) else {
                return Err(err.into());
            };
            if member.is_some() && failed.first() == Some(&true) {
                return Err(StoreError::NotMember);
            }
            if let Some(key) = &dedupe_key {
                if failed.get(usize::from(member.is_some())) == Some(&true) {
                    let first = self
                        .deduped(key.clone())
                        .await?
                        .ok_or_else(|| StoreError::Dynamo("dedupe item vanished while reading it".into()))?;
                    return Ok(duplicate(first));
                }
            }
            if !(sequenced && failed.get(head_index) == Some(&true)) {
                return Err(err.into());
            }
            // Another send took this number: read the head again, after a short random pause
            // so that racing senders spread out.
            let pause = fastrand::u64(0..=(2u64 << attempt.min(5)));
            tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
        }
        Err(StoreError::Contended)
    }

    async fn history(&self, channel: &ChannelId, cursor: HistoryCursor, limit: u32) -> Result<HistoryPage, StoreError> {
        let (from, to, forward) = match cursor {
            HistoryCursor::Latest => (1, u64::MAX, false),
            HistoryCursor::Before(before) => (1, before.saturating_sub(1), false),
            HistoryCursor::After(after) => (after.saturating_add(1), u64::MAX, true),
        };
        if from > to {
            return Ok(HistoryPage {
                messages: Vec::new(),
                before: None,
                after: None,
                complete: matches!(cursor, HistoryCursor::After(_)).then_some(false),
            });
        }
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .scan_index_forward(forward)
            .consistent_read(true)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", s(keys::channel(channel)))
            .expression_attribute_values(":from", s(keys::message(from)))
            .expression_attribute_values(":to", s(keys::message(to)))
            // One more than asked, to know whether another page exists.
            .limit(limit as i32 + 1)
            .send()
            .await?;
        let now = crate::clock::now_secs();
        let mut messages = Vec::new();
        let mut more = false;
        let mut expired = false;
        for item in out.items.unwrap_or_default() {
            if messages.len() == limit as usize {
                more = true;
                break;
            }
            let message: Message = serde_dynamo::from_item(item)?;
            if message.seq.is_none() {
                continue; // written before messages were numbered; not part of the sequence
            }
            // DynamoDB deletes expired items only eventually; past its retention a message is
            // gone, whether or not the TTL sweep got to it yet.
            if message.expires_at <= now {
                expired = true;
                continue;
            }
            messages.push(message);
        }
        if !forward {
            messages.reverse();
            let before = more.then(|| messages.first().and_then(|m| m.seq)).flatten();
            return Ok(HistoryPage {
                messages,
                before,
                after: None,
                complete: None,
            });
        }
        let HistoryCursor::After(after) = cursor else {
            unreachable!("only recovery reads forward")
        };
        // Complete when nothing between the point and this page is missing: the page starts
        // right after the point, or the point is the head itself.
        let complete = !expired
            && match messages.first().and_then(|m| m.seq) {
                Some(first) => first == after + 1,
                None => after == self.head(channel).await?,
            };
        Ok(HistoryPage {
            after: more.then(|| messages.last().and_then(|m| m.seq)).flatten(),
            messages,
            before: None,
            complete: Some(complete),
        })
    }

    async fn head(&self, channel: &ChannelId) -> Result<u64, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(keys::channel(channel), keys::HEAD.to_owned())))
            .consistent_read(true)
            .send()
            .await?;
        Ok(out
            .item
            .and_then(|i| i.get(SEQ).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok()))
            .unwrap_or(0))
    }

    async fn progress(&self, doc_id: &str) -> Result<Option<Value>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(keys::doc(doc_id), keys::PROGRESS.to_owned())))
            .consistent_read(true)
            .send()
            .await?;
        let Some(mut item) = out.item else { return Ok(None) };
        for internal in [PK, SK, crate::model::TTL_ATTRIBUTE, POSITION, DELIVERY] {
            item.remove(internal);
        }
        Ok(Some(serde_dynamo::from_item(item)?))
    }

    async fn record_progress(&self, event: &ProgressEvent) -> Result<bool, StoreError> {
        self.put_progress(event, None).await
    }

    async fn record_progress_delivery(&self, event: &ProgressEvent, delivery_id: &str) -> Result<bool, StoreError> {
        self.put_progress(event, Some(delivery_id)).await
    }

    async fn members_page(
        &self,
        channel: &ChannelId,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, StoreError> {
        let query = self
            .client
            .query()
            .key_condition_expression("pk = :pk AND begins_with(sk, :conn)")
            .expression_attribute_values(":conn", s(keys::CONN_PREFIX));
        self.member_query(query, channel, "sk, userId", after, limit).await
    }

    async fn group_page(
        &self,
        channel: &ChannelId,
        group: u32,
        except_user: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<MembersPage, StoreError> {
        let (lo, hi) = crate::shard::group_bounds(group);
        let hi = hi.map_or_else(|| keys::CONN_END.to_owned(), |hi| format!("{}{hi}", keys::CONN_PREFIX));
        let mut query = self
            .client
            .query()
            .key_condition_expression("pk = :pk AND sk BETWEEN :lo AND :hi")
            .expression_attribute_values(":lo", s(format!("{}{lo}", keys::CONN_PREFIX)))
            .expression_attribute_values(":hi", s(hi));
        if let Some(user) = except_user {
            // A member without a user (an anonymous listener) is never the one left out.
            query = query
                .filter_expression("attribute_not_exists(userId) OR userId <> :except")
                .expression_attribute_values(":except", s(user));
        }
        // Deliver posts to ids: the key alone halves what a page of 1,000 costs to parse.
        let mut page = self.member_query(query, channel, "sk", after, limit).await?;
        // BETWEEN takes `hi` itself too: a one-character id equal to it is the next group's.
        page.members
            .retain(|m| crate::shard::group_of(&m.connection_id) == group);
        Ok(page)
    }

    async fn members(&self, channel: &ChannelId) -> Result<Vec<Member>, StoreError> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :conn)")
            .expression_attribute_values(":pk", s(keys::channel(channel)))
            .expression_attribute_values(":conn", s(keys::CONN_PREFIX))
            .projection_expression("sk, userId")
            .into_paginator()
            .items()
            .send();
        let mut members = Vec::new();
        while let Some(item) = pages.next().await {
            members.extend(member_of(&item?));
        }
        Ok(members)
    }

    async fn present(&self, channel: &ChannelId, limit: usize) -> Result<Vec<String>, StoreError> {
        let mut pages = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :user)")
            .filter_expression("attribute_exists(connections)")
            .expression_attribute_values(":pk", s(keys::channel(channel)))
            .expression_attribute_values(":user", s(keys::USER_PREFIX))
            .projection_expression("userId")
            .consistent_read(true)
            // Pages of `limit`: a full 1 MB page read every presence item of a large channel
            // for each join, to answer with the first 200 (a join storm read N² items).
            .limit(i32::try_from(limit).unwrap_or(i32::MAX).max(1))
            .into_paginator()
            .items()
            .send();
        let mut users = Vec::new();
        while let Some(item) = pages.next().await {
            if let Some(user) = item?.get("userId").and_then(|v| v.as_s().ok()) {
                users.push(user.clone());
            }
            if users.len() >= limit {
                break;
            }
        }
        Ok(users)
    }
}
