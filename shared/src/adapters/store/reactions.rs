//! Reactions: one summary item per message, updated in place, never on the channel's head.
//!
//! A reaction is a single `UpdateItem` on `REACT#<messageId>` (after a read of the caller's
//! membership), so reactions neither take a sequence number nor race each other for the head: 100
//! members reacting to one message are 100 updates of one small item, which DynamoDB applies one
//! after another without cancelling any.

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::KeysAndAttributes;

use super::*;
use crate::reactions::{self, Reaction, Summary, SummaryItem};

/// BatchGetItem takes at most 100 keys; a history page is at most that long.
const KEYS_PER_BATCH_GET: usize = 100;

pub(super) async fn react(store: &DynamoStore, reaction: &Reaction, member: &str) -> Result<PostOutcome, StoreError> {
    if !connections::is_member(store, &reaction.channel, member).await? {
        return Err(StoreError::NotMember);
    }
    let entry = reactions::entry(&reaction.sender_id, &reaction.emoji);
    let update = store
        .client
        .update_item()
        .table_name(&store.table)
        .set_key(Some(key_of(
            keys::channel(&reaction.channel),
            keys::reactions(&reaction.target_id),
        )))
        // The entry's absence is the condition: a retried reaction changes nothing, and says so.
        .condition_expression("NOT contains(#entries, :entry)")
        .update_expression(
            "ADD #entries :entries SET targetId = :target, messageId = :id, senderId = :sender, \
             emoji = :emoji, sentAt = :at, #ttl = if_not_exists(#ttl, :ttl)",
        )
        .expression_attribute_names("#entries", reactions::ENTRIES)
        .expression_attribute_names("#ttl", crate::model::TTL_ATTRIBUTE)
        .expression_attribute_values(":entry", s(&entry))
        .expression_attribute_values(":entries", AttributeValue::Ss(vec![entry]))
        .expression_attribute_values(":target", s(&reaction.target_id))
        .expression_attribute_values(":id", s(&reaction.message_id))
        .expression_attribute_values(":sender", s(&reaction.sender_id))
        .expression_attribute_values(":emoji", s(&reaction.emoji))
        .expression_attribute_values(":at", n(reaction.sent_at))
        .expression_attribute_values(":ttl", n(reaction.expires_at))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
    let outcome = |duplicate| PostOutcome {
        message_id: reaction.message_id.clone(),
        seq: None,
        duplicate,
    };
    match retried("UpdateItem", store.deadline(), |_| update.clone().send()).await {
        Ok(_) => Ok(outcome(false)),
        Err(e) => match e.service_error() {
            // The user had reacted so already: a duplicate, unless a try of this reaction whose
            // answer was lost may have added the entry. The item names only the latest reaction,
            // which another user's may have replaced since, so the lost answer is what tells.
            Some(UpdateItemError::ConditionalCheckFailedException(found)) => {
                let ours = e.uncertain
                    || found
                        .item()
                        .and_then(|i| i.get("messageId"))
                        .and_then(|v| v.as_s().ok())
                        .is_some_and(|id| *id == reaction.message_id);
                Ok(outcome(!ours))
            }
            _ => Err(e.into()),
        },
    }
}

/// The reaction summaries of `message_ids` in `channel` (only those with reactions), in as few
/// round trips as BatchGetItem allows.
pub(super) async fn summaries(
    store: &DynamoStore,
    deadline: tokio::time::Instant,
    channel: &ChannelId,
    message_ids: &[&str],
) -> Result<HashMap<String, Summary>, StoreError> {
    let mut found = HashMap::new();
    for chunk in message_ids.chunks(KEYS_PER_BATCH_GET) {
        let mut keys: Vec<Item> = chunk
            .iter()
            .map(|id| key_of(keys::channel(channel), keys::reactions(id)))
            .collect();
        keys.dedup();
        let mut pending = Some(
            KeysAndAttributes::builder()
                .set_keys(Some(keys))
                .consistent_read(true)
                .build()
                .expect("keys are set"),
        );
        // Keys DynamoDB left unprocessed (under throttling) are asked for again.
        while let Some(request) = pending.take() {
            let get = store.client.batch_get_item().request_items(&store.table, request);
            let out = retried("BatchGetItem", deadline, |_| get.clone().send()).await?;
            for item in out
                .responses
                .unwrap_or_default()
                .remove(&store.table)
                .unwrap_or_default()
            {
                let summary: SummaryItem = serde_dynamo::from_item(item)?;
                found.insert(summary.target_id.clone(), summary.summary());
            }
            pending = out
                .unprocessed_keys
                .and_then(|mut u| u.remove(&store.table))
                .filter(|k| !k.keys().is_empty());
        }
    }
    Ok(found)
}
