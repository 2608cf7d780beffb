//! Document progress: the snapshot a late subscriber gets, moved only forward.

use super::*;

/// Document progress: the snapshot a late subscriber gets, moved only forward.
pub trait Progress: Send + Sync {
    /// The latest progress snapshot of a document, as clients see it.
    fn progress(&self, doc_id: &str) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send;

    /// Stores a progress event as the document's snapshot if it is further along than the
    /// stored one. `Ok(false)`: it was late or a duplicate, and nothing changed.
    fn record_progress(&self, event: &ProgressEvent) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// [`Progress::record_progress`] for one delivery of a queue message (`delivery_id`: its SQS
    /// message id, which a redelivery keeps). The same delivery again counts as moving the
    /// snapshot again: a fanout killed after storing the event but before pushing it all must
    /// push it on the retry, or its subscribers never get it. A new message with the same event
    /// is still a duplicate. No default: one that forwarded to `record_progress` would drop the
    /// delivery id, and a retried delivery would then push nothing.
    fn record_progress_delivery(
        &self,
        event: &ProgressEvent,
        delivery_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

// The methods hand back the concept's futures as they are: an async wrapper per call made the
// handlers' futures too deep to lay out.
impl Progress for DynamoStore {
    fn progress(&self, doc_id: &str) -> impl Future<Output = Result<Option<Value>, StoreError>> + Send {
        progress::progress(self, doc_id)
    }

    fn record_progress(&self, event: &ProgressEvent) -> impl Future<Output = Result<bool, StoreError>> + Send {
        progress::record_progress(self, event)
    }

    fn record_progress_delivery(
        &self,
        event: &ProgressEvent,
        delivery_id: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send {
        progress::record_progress_delivery(self, event, delivery_id)
    }
}

impl DynamoStore {
    /// Stores a progress snapshot if it moves the document forward, or if it is the delivery
    /// (`delivery_id`) that stored it, again.
    pub(super) async fn put_progress(
        &self,
        event: &ProgressEvent,
        delivery_id: Option<&str>,
    ) -> Result<bool, StoreError> {
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
        let put = put.set_item(Some(item));
        match retried("PutItem", self.deadline(), |_| put.clone().send()).await {
            Ok(_) => Ok(true),
            // Not further along. After a try that may have stored it, that try was this one
            // (the same event, the same delivery), and the caller must still push it.
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

pub(super) async fn progress(store: &DynamoStore, doc_id: &str) -> Result<Option<Value>, StoreError> {
    let get = store
        .client
        .get_item()
        .table_name(&store.table)
        .set_key(Some(key_of(keys::doc(doc_id), keys::PROGRESS.to_owned())))
        .consistent_read(true);
    let out = retried("GetItem", store.deadline(), |_| get.clone().send()).await?;
    let Some(mut item) = out.item else { return Ok(None) };
    for internal in [PK, SK, crate::model::TTL_ATTRIBUTE, POSITION, DELIVERY] {
        item.remove(internal);
    }
    Ok(Some(serde_dynamo::from_item(item)?))
}

pub(super) async fn record_progress(store: &DynamoStore, event: &ProgressEvent) -> Result<bool, StoreError> {
    store.put_progress(event, None).await
}

pub(super) async fn record_progress_delivery(
    store: &DynamoStore,
    event: &ProgressEvent,
    delivery_id: &str,
) -> Result<bool, StoreError> {
    store.put_progress(event, Some(delivery_id)).await
}
