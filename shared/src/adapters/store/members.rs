//! Reading a channel's members: the fanout's pages, deliver's group ranges and who is present.

use super::*;

/// Reading a channel's members: whole, a page at a time, by delivery group, and who is present.
pub trait Members: Send + Sync {
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

// The methods hand back the concept's futures as they are: an async wrapper per call made the
// handlers' futures too deep to lay out.
impl Members for DynamoStore {
    fn present(
        &self,
        channel: &ChannelId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send {
        members::present(self, channel, limit)
    }

    fn members(&self, channel: &ChannelId) -> impl Future<Output = Result<Vec<Member>, StoreError>> + Send {
        members::members(self, channel)
    }

    fn members_page(
        &self,
        channel: &ChannelId,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<MembersPage, StoreError>> + Send {
        members::members_page(self, channel, after, Some(limit))
    }

    fn group_page(
        &self,
        channel: &ChannelId,
        group: u32,
        except_user: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<MembersPage, StoreError>> + Send {
        members::group_page(self, channel, group, except_user, after, limit)
    }
}

impl DynamoStore {
    /// One page of membership items by `query` (its key condition on the channel's partition
    /// as `:pk`), projected to `projection`, with the id to go on from.
    pub(super) async fn member_query(
        &self,
        query: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
        channel: &ChannelId,
        projection: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<MembersPage, StoreError> {
        let pk = keys::channel(channel);
        let query = query
            .table_name(&self.table)
            .expression_attribute_values(":pk", s(pk.clone()))
            .projection_expression(projection)
            .set_exclusive_start_key(after.map(|id| key_of(pk, keys::connection(id))))
            // None: DynamoDB's own page, up to 1 MB.
            .set_limit(limit.map(|limit| i32::try_from(limit).unwrap_or(i32::MAX).max(1)));
        let out = retried("Query", self.deadline(), |_| query.clone().send()).await?;
        let members = out.items().iter().filter_map(member_of).collect();
        let next = out
            .last_evaluated_key()
            .and_then(|k| k.get(SK))
            .and_then(|v| v.as_s().ok())
            .and_then(|sk| sk.strip_prefix(keys::CONN_PREFIX))
            .map(str::to_owned);
        Ok(MembersPage { members, next })
    }
}

/// A page of the channel's memberships (`CONN#` items), as `sk, userId, batch`; `limit` None reads
/// DynamoDB's own page.
pub(super) async fn members_page(
    store: &DynamoStore,
    channel: &ChannelId,
    after: Option<&str>,
    limit: Option<usize>,
) -> Result<MembersPage, StoreError> {
    let query = store
        .client
        .query()
        .key_condition_expression("pk = :pk AND begins_with(sk, :conn)")
        .expression_attribute_values(":conn", s(keys::CONN_PREFIX))
        // BATCH is one of DynamoDB's reserved words.
        .expression_attribute_names("#batch", "batch");
    store
        .member_query(query, channel, "sk, userId, #batch", after, limit)
        .await
}

pub(super) async fn group_page(
    store: &DynamoStore,
    channel: &ChannelId,
    group: u32,
    except_user: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<MembersPage, StoreError> {
    let (lo, hi) = crate::shard::group_bounds(group);
    let hi = hi.map_or_else(|| keys::CONN_END.to_owned(), |hi| format!("{}{hi}", keys::CONN_PREFIX));
    let mut query = store
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
    let mut page = store.member_query(query, channel, "sk", after, Some(limit)).await?;
    // BETWEEN takes `hi` itself too: a one-character id equal to it is the next group's.
    page.members
        .retain(|m| crate::shard::group_of(&m.connection_id) == group);
    Ok(page)
}

pub(super) async fn members(store: &DynamoStore, channel: &ChannelId) -> Result<Vec<Member>, StoreError> {
    let mut members = Vec::new();
    let mut after = None;
    loop {
        let page = members_page(store, channel, after.as_deref(), None).await?;
        members.extend(page.members);
        match page.next {
            Some(next) => after = Some(next),
            None => return Ok(members),
        }
    }
}

pub(super) async fn present(store: &DynamoStore, channel: &ChannelId, limit: usize) -> Result<Vec<String>, StoreError> {
    let query = store
        .client
        .query()
        .table_name(&store.table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :user)")
        .filter_expression("attribute_exists(connections)")
        .expression_attribute_values(":pk", s(keys::channel(channel)))
        .expression_attribute_values(":user", s(keys::USER_PREFIX))
        .projection_expression("userId")
        .consistent_read(true);
    let items = store.first_items(query, limit).await?;
    Ok(items
        .iter()
        .filter_map(|item| item.get("userId").and_then(|v| v.as_s().ok()).cloned())
        .collect())
}
