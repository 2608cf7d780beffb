//! Connections and memberships: `$connect`, `$disconnect`, joins and leaves, and the presence
//! counts that go with them.

use super::*;

/// Connections and memberships: what `$connect`, `$disconnect`, joins and leaves write, and the
/// reads that check them.
pub trait Connections: Send + Sync {
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
}

// The methods hand back the concept's futures as they are: an async wrapper per call made the
// handlers' futures too deep to lay out.
impl Connections for DynamoStore {
    fn connect(
        &self,
        connection: &Connection,
        named: &[ChannelId],
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        connections::connect(self, connection, named)
    }

    fn connection(&self, connection_id: &str) -> impl Future<Output = Result<Option<Connection>, StoreError>> + Send {
        connections::connection(self, connection_id)
    }

    fn disconnect(&self, connection_id: &str) -> impl Future<Output = Result<Cleanup, StoreError>> + Send {
        connections::disconnect(self, connection_id)
    }

    fn join(&self, membership: &Membership) -> impl Future<Output = Result<(), StoreError>> + Send {
        connections::join(self, membership)
    }

    fn leave(
        &self,
        channel: &ChannelId,
        connection_id: &str,
        user_id: Option<&str>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        connections::leave(self, channel, connection_id, user_id)
    }

    fn is_member(
        &self,
        channel: &ChannelId,
        connection_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        connections::is_member(self, channel, connection_id)
    }
}

impl DynamoStore {
    /// The per-user presence item counts a user's connections in a channel, so the fanout can
    /// announce a join only for the first and a leave only for the last (see docs/DESIGN-NOTES.md).
    pub(super) fn presence_update(
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

    pub(super) fn membership_actions(&self, membership: &Membership) -> Result<Vec<TransactWriteItem>, StoreError> {
        let mut actions = vec![self.put(to_item(membership.key(), membership)?, None)];
        if let Some(user) = &membership.user_id {
            actions.push(self.presence_update(&membership.channel, user, &membership.connection_id, true));
        }
        Ok(actions)
    }

    pub(super) fn leave_actions(
        &self,
        channel: &ChannelId,
        connection_id: &str,
        user_id: Option<&str>,
    ) -> Vec<TransactWriteItem> {
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

    /// Every membership of a connection, through the `byConnection` index.
    pub async fn memberships_of(&self, connection_id: &str) -> Result<Vec<Membership>, StoreError> {
        let deadline = self.deadline();
        let mut found = Vec::new();
        let query = self
            .client
            .query()
            .table_name(&self.table)
            .index_name(BY_CONNECTION_INDEX)
            .key_condition_expression("#c = :c")
            .expression_attribute_names("#c", BY_CONNECTION_PK)
            .expression_attribute_values(":c", s(connection_id));
        let mut start = None;
        loop {
            let page = query.clone().set_exclusive_start_key(start);
            let out = retried("Query", deadline, |_| page.clone().send()).await?;
            for item in out.items.unwrap_or_default() {
                // Only membership items carry both index keys, but be strict about what we delete.
                let is_membership = item
                    .get(SK)
                    .and_then(|v| v.as_s().ok())
                    .is_some_and(|sk| sk.starts_with(keys::CONN_PREFIX));
                if is_membership {
                    found.push(serde_dynamo::from_item(item)?);
                }
            }
            start = out.last_evaluated_key;
            if start.is_none() {
                return Ok(found);
            }
        }
    }
}

pub(super) async fn connect(
    store: &DynamoStore,
    connection: &Connection,
    named: &[ChannelId],
) -> Result<(), StoreError> {
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
    let mut actions = vec![store.put(item, None)];
    if let Some(exp) = connection.token_exp {
        actions.push(store.expiry_put(&connection.connection_id, exp));
    }
    let membership = |channel: ChannelId, history: Option<u32>| Membership {
        channel,
        connection_id: connection.connection_id.clone(),
        user_id: connection.user_id.clone(),
        role: connection.role,
        joined_at: connection.connected_at,
        expires_at: connection.expires_at,
        history,
        batch: connection.batch,
    };
    if let Some(channel) = &personal {
        actions.extend(store.membership_actions(&membership(channel.clone(), None))?);
    }
    // A transaction may touch an item once: the personal channel is joined above already.
    for channel in named.iter().filter(|c| Some(*c) != personal.as_ref()) {
        actions.extend(store.membership_actions(&membership(channel.clone(), connection.history))?);
    }
    // Puts and set additions only: a retry after a commit whose answer was lost writes the same.
    store.transact(store.deadline(), actions).await?;
    Ok(())
}

pub(super) async fn connection(store: &DynamoStore, connection_id: &str) -> Result<Option<Connection>, StoreError> {
    let get = store
        .client
        .get_item()
        .table_name(&store.table)
        .set_key(Some(key_of(keys::connection(connection_id), keys::META.to_owned())))
        .consistent_read(true);
    let out = retried("GetItem", store.deadline(), |_| get.clone().send()).await?;
    Ok(out.item.map(serde_dynamo::from_item).transpose()?)
}

/// The connection item's `tokenExp`, where its expiry bucket item is (crate::expiry).
fn token_exp_of(item: Option<&Item>) -> Option<i64> {
    item?
        .get(crate::access::TOKEN_EXP_CONTEXT)?
        .as_n()
        .ok()?
        .parse::<i64>()
        .ok()
}

pub(super) async fn disconnect(store: &DynamoStore, connection_id: &str) -> Result<Cleanup, StoreError> {
    // The expiry bucket item is found only by the `tokenExp` the connection item holds, so it
    // goes first, while that is still there to read: a cleanup run again after failing
    // part-way (ws-disconnect does) knows it on every run, not only the one that deleted the
    // connection item.
    let get = store
        .client
        .get_item()
        .table_name(&store.table)
        .set_key(Some(key_of(keys::connection(connection_id), keys::META.to_owned())))
        .projection_expression("#exp")
        .expression_attribute_names("#exp", crate::access::TOKEN_EXP_CONTEXT)
        .consistent_read(true);
    let read = retried("GetItem", store.deadline(), |_| get.clone().send()).await?;
    let read_exp = token_exp_of(read.item.as_ref());
    if let Some(exp) = read_exp {
        store.forget_expiry(connection_id, exp).await?;
    }
    // Then the connection: a join racing with us then fails its existence check instead of
    // leaving an orphan membership behind.
    let delete = store
        .client
        .delete_item()
        .table_name(&store.table)
        .set_key(Some(key_of(keys::connection(connection_id), keys::META.to_owned())))
        .return_values(ReturnValue::AllOld);
    let deleted = retried("DeleteItem", store.deadline(), |_| delete.clone().send()).await?;
    let memberships = store.memberships_of(connection_id).await?;
    let mut removed = 0;
    for chunk in memberships.chunks(MEMBERSHIPS_PER_TRANSACTION) {
        let actions: Vec<_> = chunk
            .iter()
            .flat_map(|m| store.leave_actions(&m.channel, connection_id, m.user_id.as_deref()))
            .collect();
        match store.transact(store.deadline(), actions).await {
            Ok(()) => removed += chunk.len(),
            // Someone (a concurrent $disconnect, a 410 cleanup) removed one first: fall back
            // to one leave at a time, each of which tolerates a missing membership. After a
            // try whose answer was lost, that someone was most likely this very transaction.
            Err(e) if failed_conditions(&e).is_some_and(|f| f.iter().any(|x| *x)) => {
                for m in chunk {
                    if store.leave(&m.channel, connection_id, m.user_id.as_deref()).await? || e.uncertain {
                        removed += 1;
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    // The connection's rate-limit bucket (crate::limiter) goes with it: its TTL would remove it
    // only days later, and nothing of a closed connection should stay behind.
    let bucket = store.client.delete_item().table_name(&store.table).set_key(Some(key_of(
        keys::connection(connection_id),
        crate::limiter::RATE_SK.to_owned(),
    )));
    retried("DeleteItem", store.deadline(), |_| bucket.clone().send()).await?;
    // A refresh (`auth`) between the read and the delete moved the bucket item: that one too.
    let token_exp = token_exp_of(deleted.attributes.as_ref());
    if let Some(exp) = token_exp.filter(|exp| Some(*exp) != read_exp) {
        store.forget_expiry(connection_id, exp).await?;
    }
    Ok(Cleanup {
        connection_existed: deleted.attributes.is_some(),
        memberships_removed: removed,
    })
}

pub(super) async fn join(store: &DynamoStore, membership: &Membership) -> Result<(), StoreError> {
    let connection_key = key_of(keys::connection(&membership.connection_id), keys::META.to_owned());
    let first = if membership.channel.kind().is_conversation() {
        // Also remembered on the connection, for its default channel; same condition.
        TransactWriteItem::builder()
            .update(
                Update::builder()
                    .table_name(&store.table)
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
        store.exists_check(connection_key)
    };
    let mut actions = vec![first];
    actions.extend(store.membership_actions(membership)?);
    // An update that adds to a set, a put and a set addition: a retry writes the same.
    match store.transact(store.deadline(), actions).await {
        Ok(()) => Ok(()),
        Err(e) if failed_conditions(&e).is_some_and(|f| f.first() == Some(&true)) => Err(StoreError::NotConnected),
        Err(e) => Err(e.into()),
    }
}

pub(super) async fn leave(
    store: &DynamoStore,
    channel: &ChannelId,
    connection_id: &str,
    user_id: Option<&str>,
) -> Result<bool, StoreError> {
    let deadline = store.deadline();
    let left = match store
        .transact(deadline, store.leave_actions(channel, connection_id, user_id))
        .await
    {
        Ok(()) => true,
        // The membership is gone: if an earlier try may have committed, it was this leave that
        // removed it, and the caller gets the answer that try would have given.
        Err(e) if failed_conditions(&e).is_some_and(|f| f.first() == Some(&true)) => e.uncertain,
        Err(e) => return Err(e.into()),
    };
    if channel.kind().is_conversation() {
        // Apart from the transaction, because $disconnect leaves after deleting the connection
        // item; the condition keeps this from creating a bare one.
        let update = store
            .client
            .update_item()
            .table_name(&store.table)
            .set_key(Some(key_of(keys::connection(connection_id), keys::META.to_owned())))
            .update_expression("DELETE #joined :ch")
            .condition_expression("attribute_exists(pk)")
            .expression_attribute_names("#joined", JOINED)
            .expression_attribute_values(":ch", AttributeValue::Ss(vec![channel.to_string()]));
        match retried("UpdateItem", deadline, |_| update.clone().send()).await {
            Ok(_) => {}
            Err(e)
                if e.service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(left)
}

pub(super) async fn is_member(
    store: &DynamoStore,
    channel: &ChannelId,
    connection_id: &str,
) -> Result<bool, StoreError> {
    let get = store
        .client
        .get_item()
        .table_name(&store.table)
        .set_key(Some(key_of(keys::channel(channel), keys::connection(connection_id))))
        .projection_expression("pk")
        .consistent_read(true);
    let out = retried("GetItem", store.deadline(), |_| get.clone().send()).await?;
    Ok(out.item.is_some())
}
