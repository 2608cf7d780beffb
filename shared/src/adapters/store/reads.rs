//! Read cursors: one item per user and channel, moved forward in place, never on the head.
//!
//! A receipt is one conditional `PutItem` of `READ#<userId>` (after a read of the caller's
//! membership): 1,000 members reading a message are 1,000 writes to 1,000 small items, none of
//! which waits for another or for the channel's sequence.

use aws_sdk_dynamodb::operation::put_item::PutItemError;

use super::*;
use crate::reads::{ReadCursor, Reads};

/// How far back a receipt without `seq` is looked for: the channel's latest messages.
pub const SEQ_LOOKUP_DEPTH: i32 = 100;

pub(super) async fn read(store: &DynamoStore, cursor: &ReadCursor, member: &str) -> Result<PostOutcome, StoreError> {
    if !connections::is_member(store, &cursor.channel, member).await? {
        return Err(StoreError::NotMember);
    }
    let item = to_item(
        (keys::channel(&cursor.channel), keys::read_cursor(&cursor.user_id)),
        cursor,
    )?;
    let put = store
        .client
        .put_item()
        .table_name(&store.table)
        .set_item(Some(item))
        // Forward only: a late, repeated or older receipt leaves the cursor where it is.
        .condition_expression("attribute_not_exists(#seq) OR #seq < :seq")
        .expression_attribute_names("#seq", SEQ)
        .expression_attribute_values(":seq", n(cursor.seq as i64))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
    let outcome = |seq, duplicate| PostOutcome {
        message_id: cursor.message_id.clone(),
        seq: Some(seq),
        duplicate,
    };
    match retried("PutItem", store.deadline(), |_| put.clone().send()).await {
        Ok(_) => Ok(outcome(cursor.seq, false)),
        Err(e) => match e.service_error() {
            // The cursor is already there or further: answer with where it is. A try whose answer
            // was lost may have put it there; then it is this receipt's doing.
            Some(PutItemError::ConditionalCheckFailedException(found)) => {
                let found = found.item();
                let at = found.map_or(cursor.seq, seq_in);
                let ours = e.uncertain
                    || found
                        .and_then(|i| i.get("messageId"))
                        .and_then(|v| v.as_s().ok())
                        .is_some_and(|id| *id == cursor.message_id);
                Ok(outcome(at, !ours))
            }
            _ => Err(e.into()),
        },
    }
}

/// Up to `limit` users' read cursors in the channel.
pub(super) async fn reads(store: &DynamoStore, channel: &ChannelId, limit: usize) -> Result<Reads, StoreError> {
    let query = store
        .client
        .query()
        .table_name(&store.table)
        .key_condition_expression("pk = :pk AND begins_with(sk, :read)")
        .expression_attribute_values(":pk", s(keys::channel(channel)))
        .expression_attribute_values(":read", s(keys::READ_PREFIX))
        .projection_expression("userId, #seq")
        .expression_attribute_names("#seq", SEQ)
        .consistent_read(true);
    let items = store.first_items(query, limit).await?;
    Ok(items
        .iter()
        .filter_map(|item| Some((item.get("userId")?.as_s().ok()?.clone(), seq_in(item))))
        .collect())
}

/// The `seq` of message `message_id`, if it is among the channel's latest [`SEQ_LOOKUP_DEPTH`]
/// history items: for receipts from clients that name the message only by its id.
pub(super) async fn seq_of(
    store: &DynamoStore,
    channel: &ChannelId,
    message_id: &str,
) -> Result<Option<u64>, StoreError> {
    let query = store
        .client
        .query()
        .table_name(&store.table)
        .scan_index_forward(false)
        .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
        .filter_expression("messageId = :id")
        .expression_attribute_values(":pk", s(keys::channel(channel)))
        .expression_attribute_values(":from", s(keys::message(1)))
        .expression_attribute_values(":to", s(keys::message(u64::MAX)))
        .expression_attribute_values(":id", s(message_id))
        .projection_expression("#seq")
        .expression_attribute_names("#seq", SEQ)
        .limit(SEQ_LOOKUP_DEPTH);
    let out = retried("Query", store.deadline(), |_| query.clone().send()).await?;
    Ok(out.items.unwrap_or_default().first().map(seq_in).filter(|seq| *seq > 0))
}
