//! Event sources: DynamoDB Streams and SQS records from a local AWS emulator, turned into the
//! exact event shapes Lambda delivers (`DynamoDBEvent`, `SQSEvent`).

use std::collections::HashMap;

use aws_lambda_events::dynamodb::Event as DynamoDbEvent;
use aws_lambda_events::sqs::SqsEvent;
use aws_sdk_dynamodbstreams::types::{AttributeValue, Record, ShardIteratorType};
use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("DynamoDB Streams: {0}")]
    Streams(String),
    #[error("event shape: {0}")]
    Shape(#[from] serde_json::Error),
}

fn streams_error<E: std::error::Error + 'static, R: std::fmt::Debug>(
    e: aws_sdk_dynamodbstreams::error::SdkError<E, R>,
) -> SourceError {
    SourceError::Streams(aws_sdk_dynamodbstreams::error::DisplayErrorContext(&e).to_string())
}

/// An attribute value in DynamoDB's JSON wire form, as stream events carry it.
pub fn attribute_json(value: &AttributeValue) -> Value {
    let b64 = |b: &aws_smithy_types::Blob| Value::String(aws_smithy_types::base64::encode(b.as_ref()));
    match value {
        AttributeValue::S(s) => json!({ "S": s }),
        AttributeValue::N(n) => json!({ "N": n }),
        AttributeValue::B(b) => json!({ "B": b64(b) }),
        AttributeValue::Ss(v) => json!({ "SS": v }),
        AttributeValue::Ns(v) => json!({ "NS": v }),
        AttributeValue::Bs(v) => json!({ "BS": v.iter().map(b64).collect::<Vec<_>>() }),
        AttributeValue::Bool(b) => json!({ "BOOL": b }),
        AttributeValue::Null(_) => json!({ "NULL": true }),
        AttributeValue::L(v) => json!({ "L": v.iter().map(attribute_json).collect::<Vec<_>>() }),
        AttributeValue::M(m) => json!({ "M": item_json(m) }),
        _ => json!({ "NULL": true }),
    }
}

pub fn item_json(item: &HashMap<String, AttributeValue>) -> Map<String, Value> {
    item.iter().map(|(k, v)| (k.clone(), attribute_json(v))).collect()
}

/// One stream record in the shape of a `DynamoDBEvent` record.
pub fn record_json(record: &Record, event_source_arn: &str, region: &str) -> Value {
    let mut dynamodb = Map::new();
    if let Some(change) = &record.dynamodb {
        if let Some(t) = change.approximate_creation_date_time {
            dynamodb.insert("ApproximateCreationDateTime".into(), json!(t.as_secs_f64()));
        }
        for (name, image) in [
            ("Keys", &change.keys),
            ("NewImage", &change.new_image),
            ("OldImage", &change.old_image),
        ] {
            if let Some(image) = image {
                dynamodb.insert(name.into(), Value::Object(item_json(image)));
            }
        }
        dynamodb.insert("SequenceNumber".into(), json!(change.sequence_number));
        dynamodb.insert("SizeBytes".into(), json!(change.size_bytes.unwrap_or(0)));
        if let Some(view) = &change.stream_view_type {
            dynamodb.insert("StreamViewType".into(), json!(view.as_str()));
        }
    }
    let mut value = json!({
        "eventID": record.event_id,
        "eventName": record.event_name.as_ref().map(|n| n.as_str()),
        "eventVersion": record.event_version.as_deref().unwrap_or("1.1"),
        "eventSource": "aws:dynamodb",
        "awsRegion": record.aws_region.as_deref().unwrap_or(region),
        "dynamodb": dynamodb,
        "eventSourceARN": event_source_arn,
    });
    if let Some(identity) = &record.user_identity {
        value["userIdentity"] = json!({ "type": identity.r#type, "principalId": identity.principal_id });
    }
    value
}

pub fn dynamodb_event(records: &[Record], event_source_arn: &str, region: &str) -> Result<DynamoDbEvent, SourceError> {
    let records: Vec<Value> = records
        .iter()
        .map(|r| record_json(r, event_source_arn, region))
        .collect();
    Ok(serde_json::from_value(json!({ "Records": records }))?)
}

/// Reads a table's stream shard by shard, like Lambda's event source mapping does.
pub struct StreamReader {
    client: aws_sdk_dynamodbstreams::Client,
    stream_arn: String,
    start: ShardIteratorType,
    /// Next iterator of each shard seen so far (`None`: the shard is closed and drained).
    iterators: HashMap<String, Option<String>>,
}

impl StreamReader {
    /// `from_start`: every record still in the stream (TRIM_HORIZON); otherwise only new ones.
    pub fn new(client: aws_sdk_dynamodbstreams::Client, stream_arn: &str, from_start: bool) -> Self {
        StreamReader {
            client,
            stream_arn: stream_arn.to_owned(),
            start: if from_start {
                ShardIteratorType::TrimHorizon
            } else {
                ShardIteratorType::Latest
            },
            iterators: HashMap::new(),
        }
    }

    pub fn stream_arn(&self) -> &str {
        &self.stream_arn
    }

    async fn discover(&mut self) -> Result<(), SourceError> {
        let description = self
            .client
            .describe_stream()
            .stream_arn(&self.stream_arn)
            .send()
            .await
            .map_err(streams_error)?;
        let shards = description
            .stream_description
            .map(|d| d.shards.unwrap_or_default())
            .unwrap_or_default();
        for shard in shards {
            let Some(id) = shard.shard_id else { continue };
            if self.iterators.contains_key(&id) {
                continue;
            }
            let iterator = self
                .client
                .get_shard_iterator()
                .stream_arn(&self.stream_arn)
                .shard_id(&id)
                .shard_iterator_type(self.start.clone())
                .send()
                .await
                .map_err(streams_error)?
                .shard_iterator;
            self.iterators.insert(id, iterator);
        }
        Ok(())
    }

    /// The records written since the last poll, in order within each shard, up to `limit`.
    pub async fn poll(&mut self, limit: i32) -> Result<Vec<Record>, SourceError> {
        self.discover().await?;
        let mut records = Vec::new();
        let shards: Vec<String> = self.iterators.keys().cloned().collect();
        for shard in shards {
            let Some(Some(iterator)) = self.iterators.get(&shard).cloned() else {
                continue;
            };
            let out = self
                .client
                .get_records()
                .shard_iterator(iterator)
                .limit(limit)
                .send()
                .await
                .map_err(streams_error)?;
            records.extend(out.records.unwrap_or_default());
            self.iterators.insert(shard, out.next_shard_iterator);
        }
        Ok(records)
    }
}

/// How to make an SQS queue locally.
pub struct QueueSpec<'a> {
    pub name: &'a str,
    /// FIFO: `name` must end in `.fifo`.
    pub fifo: bool,
    pub visibility_timeout_seconds: u32,
    /// Moves a message to this DLQ (an ARN) after this many receives.
    pub redrive: Option<(&'a str, u32)>,
}

/// Creates the queue; its URL and ARN.
pub async fn create_queue(sqs: &aws_sdk_sqs::Client, spec: QueueSpec<'_>) -> Result<(String, String), String> {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let describe = |e: &dyn std::fmt::Display| format!("queue {}: {e}", spec.name);
    let mut create = sqs
        .create_queue()
        .queue_name(spec.name)
        .attributes(A::VisibilityTimeout, spec.visibility_timeout_seconds.to_string());
    if spec.fifo {
        create = create.attributes(A::FifoQueue, "true");
    }
    if let Some((dlq_arn, max_receives)) = spec.redrive {
        let policy = json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives}).to_string();
        create = create.attributes(A::RedrivePolicy, policy);
    }
    let url = create
        .send()
        .await
        .map_err(|e| describe(&aws_sdk_sqs::error::DisplayErrorContext(e)))?
        .queue_url
        .unwrap_or_default();
    let arn = sqs
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(A::QueueArn)
        .send()
        .await
        .map_err(|e| describe(&aws_sdk_sqs::error::DisplayErrorContext(e)))?
        .attributes
        .and_then(|a| a.get(&A::QueueArn).cloned())
        .ok_or_else(|| format!("queue {} has no ARN", spec.name))?;
    Ok((url, arn))
}

/// Received SQS messages in the shape of an `SQSEvent`.
pub fn sqs_event(
    messages: &[aws_sdk_sqs::types::Message],
    queue_arn: &str,
    region: &str,
) -> Result<SqsEvent, SourceError> {
    let records: Vec<Value> = messages
        .iter()
        .map(|m| {
            let attributes: Map<String, Value> = m
                .attributes
                .as_ref()
                .map(|a| a.iter().map(|(k, v)| (k.as_str().to_owned(), json!(v))).collect())
                .unwrap_or_default();
            json!({
                "messageId": m.message_id,
                "receiptHandle": m.receipt_handle,
                "body": m.body,
                "attributes": attributes,
                "messageAttributes": {},
                "md5OfBody": m.md5_of_body,
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            })
        })
        .collect();
    Ok(serde_json::from_value(json!({ "Records": records }))?)
}
