//! Channel messages: posting with the next sequence number, history pages and the head.

use super::*;

/// A channel's messages and what hangs off them: posting with the next sequence number,
/// history, the head, reactions and read cursors.
pub trait Messages: Send + Sync {
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

    /// Records `reaction` in its message's summary, if the member's connection is in the channel
    /// (`NotMember` if not). A reaction the user already made answers `duplicate`.
    fn react(&self, reaction: &Reaction, member: &str) -> impl Future<Output = Result<PostOutcome, StoreError>> + Send;

    /// Moves the user's read cursor forward to `cursor`, if the member's connection is in the
    /// channel (`NotMember` if not). The outcome's `seq` is where the cursor is; `duplicate`: it
    /// was there or further already, and nothing changed.
    fn read(&self, cursor: &ReadCursor, member: &str) -> impl Future<Output = Result<PostOutcome, StoreError>> + Send;

    /// Up to `limit` users' read cursors in the channel.
    fn reads(&self, channel: &ChannelId, limit: usize) -> impl Future<Output = Result<Reads, StoreError>> + Send;

    /// The `seq` of a message among the channel's latest [`SEQ_LOOKUP_DEPTH`] history items.
    fn seq_of(
        &self,
        channel: &ChannelId,
        message_id: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;
}

// The methods hand back the concept's futures as they are: an async wrapper per call made the
// handlers' futures too deep to lay out.
impl Messages for DynamoStore {
    fn post(
        &self,
        message: &Message,
        member: Option<&str>,
    ) -> impl Future<Output = Result<PostOutcome, StoreError>> + Send {
        messages::post(self, message, member)
    }

    fn history(
        &self,
        channel: &ChannelId,
        cursor: HistoryCursor,
        limit: u32,
    ) -> impl Future<Output = Result<HistoryPage, StoreError>> + Send {
        messages::history(self, channel, cursor, limit)
    }

    fn head(&self, channel: &ChannelId) -> impl Future<Output = Result<u64, StoreError>> + Send {
        messages::head(self, channel)
    }

    fn react(&self, reaction: &Reaction, member: &str) -> impl Future<Output = Result<PostOutcome, StoreError>> + Send {
        reactions::react(self, reaction, member)
    }

    fn read(&self, cursor: &ReadCursor, member: &str) -> impl Future<Output = Result<PostOutcome, StoreError>> + Send {
        reads::read(self, cursor, member)
    }

    fn reads(&self, channel: &ChannelId, limit: usize) -> impl Future<Output = Result<Reads, StoreError>> + Send {
        reads::reads(self, channel, limit)
    }

    fn seq_of(
        &self,
        channel: &ChannelId,
        message_id: &str,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send {
        reads::seq_of(self, channel, message_id)
    }
}

impl DynamoStore {
    /// Moves the channel's head from `previous` to `previous + 1`; fails its condition when
    /// another send got there first.
    pub(super) fn advance_head(&self, channel: &ChannelId, previous: u64) -> TransactWriteItem {
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
                    // A lost race tells the winner's head, so the next round needs no read.
                    .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
                    .expression_attribute_names("#seq", SEQ)
                    .set_expression_attribute_values(Some(values))
                    .build()
                    .expect("update is complete"),
            )
            .build()
    }

    /// A retried send: the first message's id and sequence number, if the `clientMsgId` was stored.
    pub(super) async fn deduped(
        &self,
        deadline: tokio::time::Instant,
        key: Item,
    ) -> Result<Option<(String, Option<u64>)>, StoreError> {
        let get = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .consistent_read(true);
        let existing = retried("GetItem", deadline, |_| get.clone().send()).await?;
        Ok(existing.item.as_ref().and_then(dedupe_of))
    }

    /// Which of the sequence numbers an earlier try of a send took, if it committed after all:
    /// the message stored at that number carries the send's message id.
    pub(super) async fn committed_at(
        &self,
        deadline: tokio::time::Instant,
        message: &Message,
        tried: &[u64],
    ) -> Result<Option<u64>, StoreError> {
        let pk = keys::channel(&message.channel);
        for &seq in tried {
            let get = self
                .client
                .get_item()
                .table_name(&self.table)
                .set_key(Some(key_of(pk.clone(), keys::message(seq))))
                .projection_expression("messageId")
                .consistent_read(true);
            let out = retried("GetItem", deadline, |_| get.clone().send()).await?;
            let id = out
                .item
                .as_ref()
                .and_then(|i| i.get("messageId"))
                .and_then(|v| v.as_s().ok());
            if id == Some(&message.message_id) {
                return Ok(Some(seq));
            }
        }
        Ok(None)
    }

    pub(super) async fn head_by(&self, deadline: tokio::time::Instant, channel: &ChannelId) -> Result<u64, StoreError> {
        let get = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key_of(keys::channel(channel), keys::HEAD.to_owned())))
            .consistent_read(true);
        let out = retried("GetItem", deadline, |_| get.clone().send()).await?;
        let head = out.item.as_ref().map_or(0, seq_in);
        self.remember_head(channel, head);
        Ok(head)
    }
}

/// The first message's id and number, from its dedupe item.
fn dedupe_of(item: &Item) -> Option<(String, Option<u64>)> {
    let seq = item.get(SEQ).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok());
    item.get("messageId")
        .and_then(|v| v.as_s().ok())
        .map(|id| (id.clone(), seq))
}

pub(super) async fn post(
    store: &DynamoStore,
    message: &Message,
    member: Option<&str>,
) -> Result<PostOutcome, StoreError> {
    let channel_pk = keys::channel(&message.channel);
    let dedupe_key = message
        .client_msg_id
        .as_deref()
        .map(|cmid| key_of(channel_pk.clone(), keys::dedupe(&message.sender_id, cmid)));
    let member_check = member.map(|c| store.exists_check(key_of(channel_pk.clone(), keys::connection(c))));
    let duplicate = |(message_id, seq)| PostOutcome {
        message_id,
        seq,
        duplicate: true,
    };
    // Each round (read the head, commit) has a budget for its calls and their retries; a new
    // round starts only within SEND_ROUNDS_BUDGETS budgets of the first, so that a send lost
    // to other sends ends inside the function's timeout too.
    let mut deadline = store.deadline();
    let last_round = deadline + store.budget * (SEND_ROUNDS_BUDGETS - 1);
    // No read first: a retried send fails the dedupe item's condition, whose cancellation
    // carries the first message's id and number, so a first send (the common case) is one
    // round trip when the remembered head is current.
    // History kinds take the next number of the channel's sequence in the same transaction,
    // conditioned on the head still being where we read it: commits happen in sequence order.
    let sequenced = message.kind.is_history();
    // The sequence numbers of tries that may have committed though their answer was lost.
    let mut uncertain_at = Vec::new();
    // The head to try: the one this environment last saw, or the one a lost race told.
    let mut known = store.remembered_head(&message.channel);
    for attempt in 0..SEQ_ATTEMPTS {
        if attempt > 0 {
            if tokio::time::Instant::now() >= last_round {
                break;
            }
            deadline = store.deadline();
        }
        let (message, head) = numbered(store, deadline, message, sequenced, known.take()).await?;
        let (actions, head_index) = send_actions(store, &message, member_check.as_ref(), dedupe_key.as_ref(), head)?;

        let committed = |seq| PostOutcome {
            message_id: message.message_id.clone(),
            seq,
            duplicate: false,
        };
        let err = match store.transact(deadline, actions).await {
            Ok(()) => {
                if let Some(seq) = message.seq {
                    store.remember_head(&message.channel, seq);
                }
                return Ok(committed(message.seq));
            }
            Err(e) => e,
        };
        let found = cancellation_items(&err);
        if err.uncertain {
            uncertain_at.extend(message.seq);
        }
        let Some(failed) = failed_conditions(&err) else {
            return Err(err.into());
        };
        if member.is_some() && failed.first() == Some(&true) {
            return Err(StoreError::NotMember);
        }
        if let Some(key) = &dedupe_key {
            let dedupe_index = usize::from(member.is_some());
            if failed.get(dedupe_index) == Some(&true) {
                let first = first_send(store, deadline, found.get(dedupe_index).cloned().flatten(), key).await?;
                // This send's own earlier try committed (its answer was lost): answer as it
                // would have. Another send's id means the client sent this message before.
                if first.0 == message.message_id {
                    return Ok(committed(first.1));
                }
                return Ok(duplicate(first));
            }
        }
        if !(sequenced && failed.get(head_index) == Some(&true)) {
            return Err(err.into());
        }
        // Without a dedupe item, a lost commit of ours shows as the message at a number we took.
        if let Some(seq) = store.committed_at(deadline, &message, &uncertain_at).await? {
            return Ok(committed(Some(seq)));
        }
        known = after_lost_race(
            store,
            &message.channel,
            found.get(head_index).cloned().flatten(),
            attempt,
        )
        .await;
    }
    Err(StoreError::Contended)
}

/// The message as this try sends it: a history kind numbered after the head (`known`, or read),
/// with that head; any other kind without a number.
async fn numbered(
    store: &DynamoStore,
    deadline: tokio::time::Instant,
    message: &Message,
    sequenced: bool,
    known: Option<u64>,
) -> Result<(Message, Option<u64>), StoreError> {
    let mut message = message.clone();
    if !sequenced {
        message.seq = None;
        return Ok((message, None));
    }
    let head = match known {
        Some(head) => head,
        None => store.head_by(deadline, &message.channel).await?,
    };
    message.seq = Some(head + 1);
    Ok((message, Some(head)))
}

/// One try's transaction: the membership check, the dedupe item, the head's move (history kinds)
/// and the message; with where the head's move is among them.
fn send_actions(
    store: &DynamoStore,
    message: &Message,
    member_check: Option<&TransactWriteItem>,
    dedupe_key: Option<&Item>,
    head: Option<u64>,
) -> Result<(Vec<TransactWriteItem>, usize), StoreError> {
    let mut actions = Vec::with_capacity(4);
    actions.extend(member_check.cloned());
    if let Some(key) = dedupe_key {
        let mut item = key.clone();
        item.insert("messageId".to_owned(), s(&message.message_id));
        if let Some(seq) = message.seq {
            item.insert(SEQ.to_owned(), n(seq as i64));
        }
        item.insert(
            crate::model::TTL_ATTRIBUTE.to_owned(),
            n(crate::clock::now_secs() + store.retention.dedupe_secs),
        );
        actions.push(store.put_returning(
            item,
            Some("attribute_not_exists(pk)"),
            Some(ReturnValuesOnConditionCheckFailure::AllOld),
        ));
    }
    let head_index = actions.len();
    if let Some(head) = head {
        actions.push(store.advance_head(&message.channel, head));
    }
    actions.push(store.put(to_item(message.key(), message)?, None));
    Ok((actions, head_index))
}

/// The first send's id and number under a dedupe key: from the item the cancellation carried,
/// or read when it carried none.
async fn first_send(
    store: &DynamoStore,
    deadline: tokio::time::Instant,
    found: Option<Item>,
    key: &Item,
) -> Result<(String, Option<u64>), StoreError> {
    match found.as_ref().and_then(dedupe_of) {
        Some(first) => Ok(first),
        None => store
            .deduped(deadline, key.clone())
            .await?
            .ok_or_else(|| StoreError::Dynamo("dedupe item vanished while reading it".into())),
    }
}

/// The head to try after another send took this number. The cancellation says which head it left
/// (`found`; none: the head is gone or never was, so read it). A first loss is most likely a
/// remembered head gone stale, and the next try goes at once with the head the cancellation
/// carried. Later losses are a race, so racing senders spread out with a short pause, and the head
/// is read again after it: the cancellation's head is stale by then, and a send that kept trying
/// it after each pause lost every round to fresh sends, which never pause (`bench sends`, 10
/// closed-loop senders: `internal` "too busy" after 6 s of losses).
async fn after_lost_race(store: &DynamoStore, channel: &ChannelId, found: Option<Item>, attempt: u32) -> Option<u64> {
    let known = found.map(|head| seq_in(&head));
    if let Some(head) = known {
        store.remember_head(channel, head);
    }
    if attempt == 0 {
        return known;
    }
    let pause = fastrand::u64(0..=(2u64 << attempt.min(5)));
    tokio::time::sleep(std::time::Duration::from_millis(pause)).await;
    None
}

pub(super) async fn history(
    store: &DynamoStore,
    channel: &ChannelId,
    cursor: HistoryCursor,
    limit: u32,
) -> Result<HistoryPage, StoreError> {
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
            reactions: HashMap::new(),
        });
    }
    let deadline = store.deadline();
    let query = store
        .client
        .query()
        .table_name(&store.table)
        .scan_index_forward(forward)
        .consistent_read(true)
        .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
        .expression_attribute_values(":pk", s(keys::channel(channel)))
        .expression_attribute_values(":from", s(keys::message(from)))
        .expression_attribute_values(":to", s(keys::message(to)))
        // One more than asked, to know whether another page exists.
        .limit(limit as i32 + 1);
    let out = retried("Query", deadline, |_| query.clone().send()).await?;
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
    let ids: Vec<&str> = messages
        .iter()
        .filter(|m| m.kind == crate::model::MessageKind::Message)
        .map(|m| m.message_id.as_str())
        .collect();
    let reactions = reactions::summaries(store, deadline, channel, &ids).await?;
    if !forward {
        messages.reverse();
        let before = more.then(|| messages.first().and_then(|m| m.seq)).flatten();
        return Ok(HistoryPage {
            messages,
            before,
            after: None,
            complete: None,
            reactions,
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
            None => after == store.head_by(deadline, channel).await?,
        };
    Ok(HistoryPage {
        after: more.then(|| messages.last().and_then(|m| m.seq)).flatten(),
        messages,
        before: None,
        complete: Some(complete),
        reactions,
    })
}

pub(super) async fn head(store: &DynamoStore, channel: &ChannelId) -> Result<u64, StoreError> {
    store.head_by(store.deadline(), channel).await
}
