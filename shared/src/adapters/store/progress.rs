//! Document progress: the snapshot a late subscriber gets, moved only forward.

use super::*;

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
