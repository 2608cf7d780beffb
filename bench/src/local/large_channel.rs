//! `bench local --members`: a large channel's memberships read as the fanout reads them.

use std::collections::HashMap;
use std::time::Instant;

use futures::StreamExt;
use serde_json::{json, Value};
use wsfan_shared::channel::ChannelId;
use wsfan_shared::store::{DynamoStore, Members};

use crate::dev_process::DevProcess;

/// Writes `count` memberships of one channel straight into the table, then reads them back as
/// stream-fanout does (the store's paged Query).
pub(crate) async fn large_channel(stack: &DevProcess, count: usize) -> Result<Value, String> {
    use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
    let sdk = wsfan_local::moto::sdk_config(&stack.moto).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let channel: ChannelId = "workspace:large".parse().map_err(|e| format!("{e:?}"))?;
    let written = Instant::now();
    let batches: Vec<Vec<WriteRequest>> = (0..count)
        .map(|i| {
            let item = HashMap::from([
                ("pk".to_owned(), AttributeValue::S(format!("CHAN#{channel}"))),
                ("sk".to_owned(), AttributeValue::S(format!("CONN#member{i:07}"))),
                ("userId".to_owned(), AttributeValue::S(format!("user{i}"))),
                ("role".to_owned(), AttributeValue::S("member".into())),
                ("joinedAt".to_owned(), AttributeValue::N("1".into())),
            ]);
            let put = PutRequest::builder().set_item(Some(item)).build().expect("item set");
            WriteRequest::builder().put_request(put).build()
        })
        .collect::<Vec<_>>()
        .chunks(25)
        .map(<[WriteRequest]>::to_vec)
        .collect();
    let results: Vec<Result<(), String>> = futures::stream::iter(batches)
        .map(|batch| {
            let (client, table) = (client.clone(), stack.table.clone());
            async move {
                let mut pending = HashMap::from([(table.clone(), batch)]);
                while !pending.is_empty() {
                    let out = client
                        .batch_write_item()
                        .set_request_items(Some(pending))
                        .send()
                        .await
                        .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(e).to_string())?;
                    pending = out.unprocessed_items.unwrap_or_default();
                    pending.retain(|_, v| !v.is_empty());
                }
                Ok(())
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    results.into_iter().collect::<Result<Vec<()>, String>>()?;
    let write_time = written.elapsed();
    let store = DynamoStore::new(client, &stack.table, Default::default());
    let read = Instant::now();
    let members = store.members(&channel).await.map_err(|e| e.to_string())?;
    let read_time = read.elapsed();
    println!(
        "large channel: {count} memberships written in {:.1} s; the fanout's paged Query read {} of them in {:.2} s",
        write_time.as_secs_f64(),
        members.len(),
        read_time.as_secs_f64()
    );
    Ok(json!({"members": count, "read": members.len(), "readSeconds": read_time.as_secs_f64()}))
}
