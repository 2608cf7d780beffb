//! The store: every read and write wsfan makes to its DynamoDB table.
//!
//! Handlers depend on a capability per concept, each a trait declared and implemented in its
//! concept's file: [`Connections`] (connect, disconnect, join, leave), [`Messages`] (post,
//! history, head, reactions and read cursors), [`Members`] (the fanout's and deliver's member
//! reads) and [`Progress`] (document snapshots). A handler's bounds say which parts of the table
//! it touches; [`Store`] is all four. [`DynamoStore`] is the one implementation, tested against
//! a real DynamoDB API (moto) in `tests/`. This file holds the item helpers and the transaction
//! builders every part shares.

use std::collections::HashMap;
use std::future::Future;

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{
    AttributeValue, ConditionCheck, Delete, Put, ReturnValue, ReturnValuesOnConditionCheckFailure, TransactWriteItem,
    Update,
};
use aws_sdk_dynamodb::Client;
use serde::Serialize;
use serde_json::Value;

use crate::channel::ChannelId;
use crate::config::Retention;
use crate::model::{keys, Connection, Membership, Message, PK, SK};
use crate::progress::ProgressEvent;
use crate::protocol::HistoryCursor;
use crate::reactions::Reaction;
use crate::reads::{ReadCursor, Reads};
use crate::table::{BY_CONNECTION_INDEX, BY_CONNECTION_PK};

pub use budget::{BudgetLedger, BUDGET_PK};
pub use connections::Connections;
pub use expiry::{Due, Expired, IdentityStore, CHANNELS, FIRST_SWEEP_LOOKBACK_MINUTES, ROLE};
pub use members::Members;
pub use messages::Messages;
pub use progress::Progress;
pub use reads::SEQ_LOOKUP_DEPTH;

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

/// How often a send tries again when other sends to the same channel won the race for the next
/// sequence number. Each loss means another send committed. Time bounds a send first
/// (`SEND_ROUNDS_BUDGETS`): with k senders racing, one wins each round, and a count of 25 left
/// one unlucky sender in eight giving up within a second once rounds took one round trip.
const SEQ_ATTEMPTS: u32 = 200;

/// How many operation budgets (`DYNAMODB_TIMEOUT_MS`) a send may start rounds within: a round
/// of a send lost to others under load locally takes a good part of one. The last round ends
/// within a third budget, and tests/template.rs checks that three fit in the `Timeout`.
const SEND_ROUNDS_BUDGETS: u32 = 2;

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
    /// The expiry sweep took the connection (its token expired) before a refresh could move it.
    #[error("the token expired and the connection is being closed")]
    TokenClaimed,
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
    /// The reaction summaries of the page's messages, by message id (those with reactions).
    pub reactions: HashMap<String, crate::reactions::Summary>,
}

impl HistoryPage {
    /// The page's entries as frames, each message with its reactions.
    pub fn frames(&self) -> Vec<crate::protocol::ServerFrame> {
        self.messages
            .iter()
            .map(|m| {
                let mut frame = m.to_frame();
                if let crate::protocol::ServerFrame::Message(event) = &mut frame {
                    event.reactions = self.reactions.get(&m.message_id).cloned();
                }
                frame
            })
            .collect()
    }
}

/// One connection in a channel, as the fanout needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Member {
    pub connection_id: String,
    pub user_id: Option<String>,
    /// It takes several frames in one post (`?batch=1` at connect).
    pub batch: bool,
}

/// What cleaning up a connection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cleanup {
    pub connection_existed: bool,
    pub memberships_removed: usize,
}

/// Every table operation wsfan's handlers need, one capability per concept. A handler names the
/// capabilities it uses (`S: Connections + Messages`), so its signature says what it touches;
/// `Store` is all of them, for what touches every part (ws-message).
pub trait Store: Connections + Messages + Members + Progress {}

impl<T: Connections + Messages + Members + Progress> Store for T {}

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
    /// How long one store operation, every call and retry included, may take.
    budget: std::time::Duration,
    /// The last head this execution environment saw per channel: a send tries it without
    /// reading the head first, and learns the current one from the cancellation when it is
    /// stale (`messages::post`).
    heads: std::sync::Arc<std::sync::Mutex<HashMap<String, u64>>>,
}

/// At most this many channels' heads are remembered; past it the memory starts over.
const REMEMBERED_HEADS: usize = 4096;

/// A DynamoDB client whose every call ends within `timeout`. The SDK does not retry: the
/// store does (`retry`), for more reasons than the SDK knows and within one budget.
pub fn client_with_timeout(sdk: &aws_config::SdkConfig, timeout: std::time::Duration) -> Client {
    let config = aws_sdk_dynamodb::config::Builder::from(sdk)
        .retry_config(aws_smithy_types::retry::RetryConfig::disabled())
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
        batch: item
            .get("batch")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
    })
}

/// The sequence number an item holds in `seq` (a head, a dedupe item, a read cursor; 0 without).
fn seq_in(item: &Item) -> u64 {
    item.get(SEQ)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Which actions of a cancelled transaction failed their condition.
fn failed_conditions(failure: &Failure<TransactWriteItemsError>) -> Option<Vec<bool>> {
    match failure.service_error()? {
        TransactWriteItemsError::TransactionCanceledException(e) => Some(
            e.cancellation_reasons()
                .iter()
                .map(|r| r.code() == Some("ConditionalCheckFailed"))
                .collect(),
        ),
        _ => None,
    }
}

/// The items a cancelled transaction's failed conditions found (where the action asked for
/// them with `ReturnValuesOnConditionCheckFailure`), one per action.
fn cancellation_items(failure: &Failure<TransactWriteItemsError>) -> Vec<Option<Item>> {
    match failure.service_error() {
        Some(TransactWriteItemsError::TransactionCanceledException(e)) => {
            e.cancellation_reasons().iter().map(|r| r.item().cloned()).collect()
        }
        _ => Vec::new(),
    }
}

mod budget;
mod connections;
mod expiry;
mod members;
mod messages;
mod progress;
mod reactions;
mod reads;
pub(crate) mod retry;

use retry::{retried, Failure};
pub use retry::{verdict_of, Verdict, MAX_ATTEMPTS};

impl DynamoStore {
    pub fn new(client: Client, table: impl Into<String>, retention: Retention) -> Self {
        DynamoStore {
            client,
            table: table.into(),
            retention,
            budget: std::time::Duration::from_millis(crate::config::DEFAULT_DYNAMODB_TIMEOUT_MS),
            heads: Default::default(),
        }
    }

    fn remembered_head(&self, channel: &ChannelId) -> Option<u64> {
        self.heads.lock().unwrap().get(&channel.to_string()).copied()
    }

    fn remember_head(&self, channel: &ChannelId, head: u64) {
        let mut heads = self.heads.lock().unwrap();
        if heads.len() >= REMEMBERED_HEADS {
            heads.clear();
        }
        heads.insert(channel.to_string(), head);
    }

    /// The same store with each operation (all its calls and retries) ending within `budget`.
    pub fn with_budget(mut self, budget: std::time::Duration) -> Self {
        self.budget = budget;
        self
    }

    /// When an operation starting now must have ended.
    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.budget
    }

    /// The store a Lambda uses: its table, retention and timeout, one SDK client.
    pub fn open(sdk: &aws_config::SdkConfig, config: crate::config::StoreConfig) -> Self {
        let client = client_with_timeout(sdk, config.operation_timeout);
        DynamoStore::new(client, config.table_name, config.retention).with_budget(config.operation_timeout)
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
        self.put_returning(item, condition, None)
    }

    /// A put whose cancellation carries the item it found (`ALL_OLD`) when its condition fails.
    fn put_returning(
        &self,
        item: Item,
        condition: Option<&str>,
        on_failure: Option<ReturnValuesOnConditionCheckFailure>,
    ) -> TransactWriteItem {
        TransactWriteItem::builder()
            .put(
                Put::builder()
                    .table_name(&self.table)
                    .set_item(Some(item))
                    .set_condition_expression(condition.map(str::to_owned))
                    .set_return_values_on_condition_check_failure(on_failure)
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

    /// Up to `limit` items `query` finds, read a page of `limit` at a time: a full 1 MB page read
    /// every item of a large channel to answer with the first few (a join storm read N² items).
    async fn first_items(
        &self,
        query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        limit: usize,
    ) -> Result<Vec<Item>, StoreError> {
        let deadline = self.deadline();
        let query = query.limit(i32::try_from(limit).unwrap_or(i32::MAX).max(1));
        let mut items = Vec::new();
        let mut start = None;
        loop {
            let page = query.clone().set_exclusive_start_key(start);
            let out = retried("Query", deadline, |_| page.clone().send()).await?;
            for item in out.items.unwrap_or_default() {
                items.push(item);
                if items.len() >= limit {
                    return Ok(items);
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(items);
            }
        }
    }

    /// Commits a transaction, retried for conflicts, throttles and 5xx until `deadline`. After
    /// a try whose outcome is unknown, the next one replays its `ClientRequestToken`, so that
    /// DynamoDB answers it as the commit it may have been instead of applying it twice.
    async fn transact(
        &self,
        deadline: tokio::time::Instant,
        actions: Vec<TransactWriteItem>,
    ) -> Result<(), Failure<TransactWriteItemsError>> {
        let new_token = || format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        let mut token = new_token();
        let call = self.client.transact_write_items().set_transact_items(Some(actions));
        retried("TransactWriteItems", deadline, |uncertain| {
            if !uncertain {
                // Cancelled or throttled tries wrote nothing: a new try is a new request.
                token = new_token();
            }
            call.clone().client_request_token(token.clone()).send()
        })
        .await
        .map(|_| ())
    }
}
