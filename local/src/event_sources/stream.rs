//! A stream mapping: the table's stream fed to its function as Lambda's event source mapping
//! does.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::types::Record;
use serde_json::{json, Value};

use super::invoke_batch;
use crate::logs::Logs;
use crate::moto::LOCAL_REGION;
use crate::runtime::LambdaFunction;
use crate::sources::{dynamodb_event, record_json, StreamReader};
use crate::template::{matches_any, EventSource};

/// What Lambda sends an on-failure destination for a stream batch that ran out of retries: where
/// the records are, not the records.
fn stream_failure_record(record: &Record, arn: &str, attempts: u32) -> Value {
    let sequence = record.dynamodb.as_ref().and_then(|d| d.sequence_number.clone());
    json!({
        "requestContext": {"condition": "RetryAttemptsExhausted", "approximateInvokeCount": attempts},
        "version": "1.0",
        "timestamp": wsfan_shared::clock::now_millis(),
        "DDBStreamBatchInfo": {
            "shardId": "local",
            "startSequenceNumber": sequence,
            "endSequenceNumber": sequence,
            "batchSize": 1,
            "streamArn": arn,
        },
    })
}

/// Feeds the table's stream to its function as Lambda's event source mapping does: filtered,
/// in batches, and on `batchItemFailures` retried from the first failed record, up to
/// MaximumRetryAttempts; then that record goes to the mapping's on-failure queue, as Lambda
/// sends it to its destination (dropped only when the template names none).
pub(super) async fn poller(
    mut reader: StreamReader,
    source: EventSource,
    function: Arc<LambdaFunction>,
    failures: Option<(aws_sdk_sqs::Client, String)>,
    logs: Logs,
) {
    let arn = reader.stream_arn().to_owned();
    // ParallelizationFactor: that many batches of a shard at once, as Lambda runs them, each
    // record in the lane of its partition key, so one channel's records stay in order while a
    // long batch (a large channel being sharded) does not hold up the other channels.
    let lanes: Vec<tokio::sync::mpsc::UnboundedSender<Record>> = (0..source.parallelization_factor.unwrap_or(1).max(1))
        .map(|_| {
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(lane(
                rx,
                arn.clone(),
                source.clone(),
                function.clone(),
                failures.clone(),
                logs.clone(),
            ));
            tx
        })
        .collect();
    loop {
        let polled = tokio::time::Instant::now();
        let records = match reader.poll(STREAM_READ_LIMIT).await {
            Ok(records) => records,
            Err(e) => {
                logs.warn(&format!("reading the stream: {e}"));
                Vec::new()
            }
        };
        // A full read leaves more behind: read on at once, as Lambda catches up on a backlog.
        let next_poll = match records.len() < STREAM_READ_LIMIT as usize {
            true => Some(polled + STREAM_POLL_INTERVAL),
            false => None,
        };
        for record in records {
            if !matches_any(&source.filters, &record_json(&record, &arn, LOCAL_REGION)) {
                continue;
            }
            let key = record
                .dynamodb
                .as_ref()
                .and_then(|d| d.keys.as_ref())
                .and_then(|k| k.get("pk"))
                .and_then(|v| v.as_s().ok())
                .cloned()
                .unwrap_or_default();
            let lane = {
                use std::hash::{Hash, Hasher};
                let mut h = std::collections::hash_map::DefaultHasher::new();
                key.hash(&mut h);
                (h.finish() % lanes.len() as u64) as usize
            };
            if lanes[lane].send(record).is_err() {
                return;
            }
        }
        if let Some(at) = next_poll {
            tokio::time::sleep_until(at).await;
        }
    }
}

/// Lambda polls each stream shard "at a base rate of 4 times per second" (AWS Lambda Developer
/// Guide, "Polling and batching streams"), so a batch holds what arrived since the last poll: a
/// busy channel's records reach stream-fanout several at a time, as on AWS. Polling as fast as
/// moto answers made batches of one that AWS would not, and overstated posts per frame.
const STREAM_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// Records one poll reads (GetRecords' own limit).
const STREAM_READ_LIMIT: i32 = 1000;

/// One lane of a stream shard: its records in order, a batch at a time, retried from the first
/// failed record, then sent to the on-failure destination when the retries run out.
async fn lane(
    mut records: tokio::sync::mpsc::UnboundedReceiver<Record>,
    arn: String,
    source: EventSource,
    function: Arc<LambdaFunction>,
    failures: Option<(aws_sdk_sqs::Client, String)>,
    logs: Logs,
) {
    let mut pending = VecDeque::new();
    let mut attempts = 0u32;
    loop {
        if pending.is_empty() {
            match records.recv().await {
                Some(r) => pending.push_back(r),
                None => return,
            }
        }
        while let Ok(r) = records.try_recv() {
            pending.push_back(r);
        }
        let batch: Vec<_> = pending.iter().take(source.batch_size.max(1)).cloned().collect();
        let event = match dynamodb_event(&batch, &arn, LOCAL_REGION) {
            Ok(e) => serde_json::to_value(e).unwrap_or_default(),
            Err(e) => {
                logs.warn(&format!("building a stream event: {e}"));
                pending.clear();
                continue;
            }
        };
        let sequence = |r: Option<&Record>| r.map(sequence_number).unwrap_or_default();
        let records = format!("seq {}..{}", sequence(batch.first()), sequence(batch.last()));
        let failed_at = match invoke_batch(&function, &event, batch.len(), &records, &logs).await {
            Some(failed) if failed.is_empty() => None,
            Some(failed) => batch.iter().position(|r| {
                r.dynamodb
                    .as_ref()
                    .and_then(|d| d.sequence_number.as_deref())
                    .is_some_and(|s| failed.iter().any(|f| f == s))
            }),
            None => Some(0),
        };
        match failed_at {
            None => {
                pending.drain(..batch.len());
                attempts = 0;
            }
            Some(index) => {
                pending.drain(..index);
                attempts += 1;
                if attempts > source.maximum_retry_attempts.unwrap_or(u32::MAX) {
                    if let Some(failed) = pending.pop_front() {
                        send_to_destination(&failed, attempts, &arn, failures.as_ref(), &logs).await;
                    }
                    attempts = 0;
                } else {
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(attempts))).await;
                }
            }
        }
    }
}

/// A record's sequence number, which names it in `batchItemFailures` and in the log.
fn sequence_number(record: &Record) -> String {
    record
        .dynamodb
        .as_ref()
        .and_then(|d| d.sequence_number.clone())
        .unwrap_or_default()
}

/// A record that ran out of retries goes to the mapping's on-failure destination, as Lambda
/// sends it there; without one it is dropped. Either way the lane moves on past it.
async fn send_to_destination(
    failed: &Record,
    attempts: u32,
    arn: &str,
    failures: Option<&(aws_sdk_sqs::Client, String)>,
    logs: &Logs,
) {
    let seq = sequence_number(failed);
    let sent = match failures {
        Some((sqs, url)) => sqs
            .send_message()
            .queue_url(url)
            .message_body(stream_failure_record(failed, arn, attempts).to_string())
            .send()
            .await
            .map(|_| url.clone())
            .map_err(|e| aws_sdk_sqs::error::DisplayErrorContext(&e).to_string()),
        None => Err("the template names no on-failure destination".to_owned()),
    };
    match sent {
        Ok(url) => logs.warn(&format!(
            "stream record {seq} failed {attempts} times; sent to the on-failure destination {url}"
        )),
        Err(e) => logs.warn(&format!("stream record {seq} failed {attempts} times; dropped: {e}")),
    }
}
