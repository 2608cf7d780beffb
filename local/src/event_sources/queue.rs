//! A queue mapping: a queue fed to its function as Lambda's SQS event source mapping does.

use std::sync::Arc;
use std::time::Duration;

use super::invoke_batch;
use crate::environment::Environment;
use crate::logs::Logs;
use crate::moto::LOCAL_REGION;
use crate::runtime::LambdaFunction;
use crate::template::EventSource;

/// How long a message whose batch failed stays invisible before its retry, locally.
pub(crate) const FAILED_VISIBILITY_SECS: u32 = 2;

/// Feeds a queue to its function: receive, invoke, delete what succeeded. What failed becomes
/// visible again, and the redrive policy moves it to the DLQ after maxReceiveCount tries.
pub(super) async fn poller(
    environment: Arc<Environment>,
    source: EventSource,
    url: String,
    arn: String,
    function: Arc<LambdaFunction>,
    logs: Logs,
) {
    let sqs = aws_sdk_sqs::Client::new(&environment.sdk);
    loop {
        let received = sqs
            .receive_message()
            .queue_url(&url)
            .max_number_of_messages(source.batch_size.clamp(1, 10) as i32)
            .wait_time_seconds(1)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await;
        let messages = match received {
            Ok(out) => out.messages.unwrap_or_default(),
            Err(e) => {
                logs.warn(&format!(
                    "receiving from {url}: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&e)
                ));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if messages.is_empty() {
            continue;
        }
        let event = match crate::sources::sqs_event(&messages, &arn, LOCAL_REGION) {
            Ok(e) => serde_json::to_value(e).unwrap_or_default(),
            Err(e) => {
                logs.warn(&format!("building an SQS event: {e}"));
                continue;
            }
        };
        let ids: Vec<&str> = messages.iter().filter_map(|m| m.message_id.as_deref()).collect();
        let records = format!("messages {}", ids.join(","));
        let failed = match invoke_batch(&function, &event, messages.len(), &records, &logs).await {
            Some(failed) => failed,
            None => messages.iter().filter_map(|m| m.message_id.clone()).collect(),
        };
        for m in &messages {
            if m.message_id.as_ref().is_some_and(|id| failed.contains(id)) {
                // Retried in seconds, not after the whole visibility timeout.
                if let Some(handle) = &m.receipt_handle {
                    let _ = sqs
                        .change_message_visibility()
                        .queue_url(&url)
                        .receipt_handle(handle)
                        .visibility_timeout(FAILED_VISIBILITY_SECS as i32)
                        .send()
                        .await;
                }
                continue;
            }
            if let Some(handle) = &m.receipt_handle {
                let _ = sqs.delete_message().queue_url(&url).receipt_handle(handle).send().await;
            }
        }
    }
}
