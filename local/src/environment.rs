//! The AWS side of the local stack, from the template: moto, the table, the queues (with their
//! redrive policies and visibility timeouts), and each function's environment with local values.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wsfan_shared::table::TABLE;

use crate::dev::{setup, DevConfig, DevError, DEV_SECRET};
use crate::dynamo_proxy::DynamoProxy;
use crate::event_sources::FAILED_VISIBILITY_SECS;
use crate::logs::Logs;
use crate::moto::MotoProcess;
use crate::runtime::{FunctionSpec, LambdaFunction};
use crate::template::Template;

const TABLE_NAME: &str = "wsfan-local";

/// The AWS side: moto, the table, the queues, from the template.
pub struct Environment {
    pub moto: MotoProcess,
    pub sdk: aws_config::SdkConfig,
    pub template: Template,
    pub table_name: String,
    pub stream_arn: String,
    /// Queue URL and ARN by the template's logical id.
    pub queues: HashMap<String, (String, String)>,
    /// Where the functions' DynamoDB calls go when DynamoDB faults are injected.
    pub dynamo_proxy: Option<DynamoProxy>,
}

impl Environment {
    pub async fn start(config: &DevConfig) -> Result<Environment, DevError> {
        let template = Template::load(&config.repo_root.join("sam/template.yaml"))?;
        let moto = MotoProcess::start(&config.repo_root, config.moto_port)?;
        let sdk = moto.sdk_config().await;
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let stream_arn = TABLE
            .create(&dynamodb, TABLE_NAME)
            .await
            .map_err(setup("creating the table"))?;

        // Dead-letter queues first, so redrive policies can name them.
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let mut queues = HashMap::new();
        let mut ordered = template.queues.clone();
        ordered.sort_by_key(|q| q.dead_letter_queue.is_some());
        for queue in &ordered {
            let redrive = match (&queue.dead_letter_queue, queue.max_receive_count) {
                (Some(dlq), Some(max)) => {
                    let (_, dlq_arn): &(String, String) = queues
                        .get(dlq)
                        .ok_or_else(|| DevError::Setup(format!("{dlq} is not a queue")))?;
                    Some((dlq_arn.clone(), max))
                }
                _ => None,
            };
            // FIFO queue names must end in .fifo.
            let suffix = if queue.fifo { ".fifo" } else { "" };
            let name = format!("wsfan-{}{suffix}", queue.logical_id.to_lowercase());
            // A batch is not handed to a second poller while its function may still run on it;
            // a failed one is made visible again after FAILED_VISIBILITY by the poller.
            let reader_timeout = template
                .event_sources
                .iter()
                .filter(|s| s.source == queue.logical_id)
                .filter_map(|s| template.function(&s.binary))
                .map(|f| f.timeout_secs)
                .max();
            let spec = crate::sources::QueueSpec {
                name: &name,
                fifo: queue.fifo,
                visibility_timeout_seconds: reader_timeout
                    .map_or(FAILED_VISIBILITY_SECS, |t| (t as u32).max(FAILED_VISIBILITY_SECS)),
                redrive: redrive.as_ref().map(|(arn, max)| (arn.as_str(), *max)),
            };
            let (url, arn) = crate::sources::create_queue(&sqs, spec)
                .await
                .map_err(DevError::Setup)?;
            queues.insert(queue.logical_id.clone(), (url, arn));
        }
        Ok(Environment {
            moto,
            sdk,
            template,
            table_name: TABLE_NAME.to_owned(),
            stream_arn,
            queues,
            dynamo_proxy: None,
        })
    }

    /// The queue a function reads, by the template's event source mapping.
    pub fn queue_feeding(&self, binary: &str) -> Option<&(String, String)> {
        self.template
            .event_sources
            .iter()
            .find(|s| s.binary == binary)
            .and_then(|s| self.queues.get(&s.source))
    }

    /// The URL of the dead-letter queue behind the queue `binary` reads.
    pub fn dead_letter_queue_of(&self, binary: &str) -> Option<String> {
        let source = self.template.event_sources.iter().find(|s| s.binary == binary)?;
        let queue = self.template.queues.iter().find(|q| q.logical_id == source.source)?;
        self.queues
            .get(queue.dead_letter_queue.as_ref()?)
            .map(|(url, _)| url.clone())
    }

    /// The URL of the on-failure destination of the stream mapping that feeds `binary`.
    pub fn failure_queue_of(&self, binary: &str) -> Option<String> {
        self.template
            .event_sources
            .iter()
            .filter(|s| s.binary == binary)
            .find_map(|s| s.on_failure.as_ref())
            .and_then(|q| self.queues.get(q))
            .map(|(url, _)| url.clone())
    }

    /// The template's environment for `binary`, with local values.
    pub fn function_env(
        &self,
        binary: &str,
        connections_endpoint: &str,
        anonymous: Option<&str>,
    ) -> Vec<(String, String)> {
        let mut env = vec![("AWS_ENDPOINT_URL".to_owned(), self.moto.endpoint.clone())];
        if let Some(proxy) = &self.dynamo_proxy {
            // DynamoDB only (the SDK's service-specific endpoint); SQS still goes to moto.
            env.push(("AWS_ENDPOINT_URL_DYNAMODB".to_owned(), proxy.endpoint.clone()));
        }
        env.extend([
            (
                "AWS_ACCESS_KEY_ID".to_owned(),
                crate::moto::LOCAL_ACCESS_KEY_ID.to_owned(),
            ),
            (
                "AWS_SECRET_ACCESS_KEY".to_owned(),
                crate::moto::LOCAL_SECRET_ACCESS_KEY.to_owned(),
            ),
            ("RUST_LOG".to_owned(), "info".to_owned()),
        ]);
        let Some(function) = self.template.function(binary) else {
            return env;
        };
        for (name, value) in &function.env {
            let local = match name.as_str() {
                "TABLE_NAME" => self.table_name.clone(),
                "CONNECTIONS_ENDPOINT" => connections_endpoint.to_owned(),
                "JWT_SECRET" => DEV_SECRET.to_owned(),
                "JWKS_URL" | "JWT_AUDIENCE" | "JWT_ISSUER" => String::new(),
                "ANONYMOUS_CHANNELS" => anonymous.unwrap_or_default().to_owned(),
                "FAILURE_QUEUE_URL" => self.failure_queue_of(binary).unwrap_or_default(),
                // `!Ref` to a queue: its URL.
                _ => value
                    .clone()
                    .or_else(|| {
                        let (url, _) = self.queues.get(function.env_refs.get(name)?)?;
                        Some(url.clone())
                    })
                    .unwrap_or_default(),
            };
            env.push((name.clone(), local));
        }
        env
    }

    pub async fn start_function(
        &self,
        config: &DevConfig,
        binary: &str,
        connections_endpoint: &str,
        logs: &Logs,
    ) -> Result<Arc<LambdaFunction>, DevError> {
        let overrides: Vec<(String, String)> = config
            .rate_limit
            .map(|l| {
                vec![
                    ("RATE_LIMIT_PER_SECOND".to_owned(), l.per_second.to_string()),
                    ("RATE_LIMIT_BURST".to_owned(), l.burst.to_string()),
                ]
            })
            .unwrap_or_default();
        self.start_function_with(config, binary, connections_endpoint, &overrides, logs)
            .await
    }

    /// [`Environment::start_function`], with some variables set to other values than the
    /// template's (benchmarks).
    pub async fn start_function_with(
        &self,
        config: &DevConfig,
        binary: &str,
        connections_endpoint: &str,
        overrides: &[(String, String)],
        logs: &Logs,
    ) -> Result<Arc<LambdaFunction>, DevError> {
        let function = self.template.function(binary);
        let mut env = self.function_env(binary, connections_endpoint, config.anonymous_channels.as_deref());
        for (name, value) in overrides {
            if let Some(slot) = env.iter_mut().find(|(n, _)| n == name) {
                slot.1 = value.clone();
            }
        }
        let spec = FunctionSpec {
            name: binary.to_owned(),
            binary: config.bin_dir.join(binary),
            env,
            timeout: Duration::from_secs(function.map(|f| f.timeout_secs).unwrap_or(30)),
            memory_mb: function.map(|f| f.memory_mb).unwrap_or(128),
            concurrency: config.concurrency,
        };
        LambdaFunction::start(spec, logs.clone())
            .await
            .map_err(|source| DevError::Function {
                name: binary.to_owned(),
                source,
            })
    }
}
