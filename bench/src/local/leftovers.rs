//! What `bench local`'s clients left behind once they had gone: their `$disconnect`s, and the
//! table's items of theirs that must go with them.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use wsfan_shared::model::keys;

use crate::dev_process::DevProcess;

/// Waits until `count` `$disconnect` invocations are in the stack's log after byte `from`, or
/// `within` passes: (ran, failed).
pub(crate) async fn wait_for_disconnects(
    stack: &DevProcess,
    from: usize,
    count: usize,
    within: Duration,
) -> (usize, usize) {
    let deadline = Instant::now() + within;
    loop {
        let log = crate::dev_log::log_between(&stack.log, from, None);
        let disconnects: Vec<_> = log
            .lines()
            .filter(|line| line.contains("$disconnect"))
            .filter_map(crate::dev_log::invocation)
            .filter(|i| i.function == "ws-disconnect")
            .collect();
        let failed = disconnects.iter().filter(|i| i.failed).count();
        if disconnects.len() >= count || Instant::now() >= deadline {
            return (disconnects.len(), failed);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What the clients left in the table, by kind: what a connection writes that must go with it
/// (its connection item and limiter item under `CONN#`, its memberships, its place in a presence
/// item). Messages, heads, dedupe and budget items are the channel's, and an emptied presence
/// item stays until its TTL (docs/DESIGN-NOTES.md). 0, or the run fails with the counts.
pub(crate) async fn left_behind(stack: &DevProcess) -> Result<Value, String> {
    let sdk = wsfan_local::moto::sdk_config(&stack.moto).await;
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let mut counts: std::collections::BTreeMap<&str, u64> = Default::default();
    let mut pages = client.scan().table_name(&stack.table).into_paginator().items().send();
    while let Some(item) = pages.next().await {
        let item = item.map_err(|e| format!("scanning for leftovers: {e}"))?;
        let text = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_s().ok())
                .map(String::as_str)
                .unwrap_or("")
        };
        let kind = if text("pk").starts_with(keys::CONN_PREFIX) {
            "connection items"
        } else if text("sk").starts_with(keys::CONN_PREFIX) {
            "memberships"
        } else if text("sk").starts_with(keys::USER_PREFIX) && item.contains_key("connections") {
            "presence items still naming a connection"
        } else {
            continue;
        };
        *counts.entry(kind).or_default() += 1;
    }
    let total: u64 = counts.values().sum();
    if total > 0 {
        return Err(format!(
            "bench local failed: {total} items left behind once every client's $disconnect had run: {counts:?}"
        ));
    }
    Ok(json!(0))
}
