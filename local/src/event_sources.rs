//! The template's event source mappings, emulated as Lambda runs them: the table's stream
//! ([`stream`]: filters, batches, lanes by partition key, retry from the first failure, the
//! on-failure destination) and the queues ([`queue`]: batches, visibility, redrive).

mod queue;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use serde_json::Value;

use crate::dev::{DevConfig, DevError};
use crate::environment::Environment;
use crate::logs::{Logs, Outcome};
use crate::runtime::LambdaFunction;
use crate::sources::StreamReader;

pub(crate) use queue::FAILED_VISIBILITY_SECS;

/// Feeds the stream and the queues to their functions, as the template's mappings say.
pub(crate) fn spawn_pollers(
    environment: &Arc<Environment>,
    functions: &HashMap<String, Arc<LambdaFunction>>,
    config: &DevConfig,
    logs: &Logs,
) -> Result<(), DevError> {
    for source in &environment.template.event_sources {
        let function = crate::dev::function_named(functions, &source.binary)?;
        if let Some((url, arn)) = environment.queues.get(&source.source) {
            // As many batches at once as the mapping's MaximumConcurrency (within the function's
            // environments), as Lambda's pollers do; a FIFO queue keeps each group to one.
            let pollers = source
                .maximum_concurrency
                .unwrap_or(1)
                .clamp(1, config.concurrency.max(1));
            for _ in 0..pollers {
                tokio::spawn(queue::poller(
                    environment.clone(),
                    source.clone(),
                    url.clone(),
                    arn.clone(),
                    function.clone(),
                    logs.clone(),
                ));
            }
        } else {
            let reader = StreamReader::new(
                aws_sdk_dynamodbstreams::Client::new(&environment.sdk),
                &environment.stream_arn,
                true,
            );
            let failures = source
                .on_failure
                .as_ref()
                .and_then(|q| environment.queues.get(q))
                .map(|(url, _)| (aws_sdk_sqs::Client::new(&environment.sdk), url.clone()));
            tokio::spawn(stream::poller(reader, source.clone(), function, failures, logs.clone()));
        }
    }

    Ok(())
}

/// Invokes an event-source function with one batch and logs how it went. Returns the ids in
/// `batchItemFailures`, or `None` when the invocation itself failed (the whole batch did).
/// `records` names the batch's records in the log line of a failure, so that what is retried,
/// and so may be delivered twice, can be told.
pub(super) async fn invoke_batch(
    function: &Arc<LambdaFunction>,
    event: &Value,
    size: usize,
    records: &str,
    logs: &Logs,
) -> Option<Vec<String>> {
    let what = format!("batch of {size}");
    let started = Instant::now();
    match function.invoke(event).await {
        Ok(response) => {
            let failed: Vec<String> = response["batchItemFailures"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|f| f["itemIdentifier"].as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            if failed.is_empty() {
                logs.invocation(function.name(), &what, started.elapsed(), Outcome::Ok(""));
            } else {
                let detail = format!("batchItemFailures {} of {records}", failed.join(","));
                logs.invocation(function.name(), &what, started.elapsed(), Outcome::Failed(&detail));
            }
            Some(failed)
        }
        Err(e) => {
            logs.invocation(
                function.name(),
                &what,
                started.elapsed(),
                Outcome::Failed(&format!("{e}; retrying {records}")),
            );
            None
        }
    }
}
