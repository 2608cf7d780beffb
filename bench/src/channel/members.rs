//! `bench channel`'s members: memberships written straight into the table, as joins would.

use futures::stream::{self, StreamExt};
use wsfan_shared::access::Role;
use wsfan_shared::channel::ChannelId;
use wsfan_shared::model::{keys, Membership};

pub(crate) fn membership(channel: &ChannelId, connection_id: String) -> Membership {
    Membership {
        channel: channel.clone(),
        user_id: Some(format!("u-{connection_id}")),
        connection_id,
        role: Role::Member,
        joined_at: wsfan_shared::clock::now_millis(),
        expires_at: wsfan_shared::clock::now_secs() + 7200,
        history: None,
        batch: false,
    }
}

/// Writes the members with BatchWriteItem, 25 at a time, several requests at once.
pub(crate) async fn write_members(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    members: Vec<Membership>,
) -> Result<(), String> {
    use aws_sdk_dynamodb::types::{PutRequest, WriteRequest};
    let chunks: Vec<Vec<Membership>> = members.chunks(25).map(<[Membership]>::to_vec).collect();
    let results: Vec<Result<(), String>> = stream::iter(chunks)
        .map(|chunk| async move {
            let mut requests: Vec<WriteRequest> = chunk
                .iter()
                .map(|m| {
                    let key = (
                        keys::channel(&m.channel),
                        format!("{}{}", keys::CONN_PREFIX, m.connection_id),
                    );
                    let item = wsfan_shared::store::to_item(key, m).expect("memberships serialise");
                    let put = PutRequest::builder().set_item(Some(item)).build().expect("item set");
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            while !requests.is_empty() {
                let out = client
                    .batch_write_item()
                    .request_items(table, requests)
                    .send()
                    .await
                    .map_err(|e| aws_sdk_dynamodb::error::DisplayErrorContext(&e).to_string())?;
                requests = out
                    .unprocessed_items
                    .and_then(|mut u| u.remove(table))
                    .unwrap_or_default();
            }
            Ok(())
        })
        .buffer_unordered(8)
        .collect()
        .await;
    results.into_iter().collect()
}
