//! The test harness: a real moto server on loopback (started once per test binary from the
//! project's venv), a fresh table per test, and the fixtures in `events/`.

pub mod moto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use aws_sdk_dynamodb::types::AttributeValue;
use serde::de::DeserializeOwned;
use wsfan_shared::config::Retention;
use wsfan_shared::store::{DynamoStore, Item};
use wsfan_shared::table::TABLE;

pub use moto::Moto;

/// Every Lambda binary of the workspace, as named in `events/<function>/` and the template.
pub const FUNCTIONS: [&str; 8] = [
    "ws-authorizer",
    "ws-connect",
    "ws-disconnect",
    "ws-message",
    "stream-fanout",
    "progress-fanout",
    "deliver",
    "expiry-sweep",
];

/// The HS256 secret the fixtures' tokens are signed with: `wsfan dev`'s. For local use only.
pub use wsfan_local::dev::DEV_SECRET;

/// The authorizer's settings for tests: these keys, no audience or issuer, no leeway, and
/// anonymous listeners on these patterns if any.
pub fn auth_config(keys: wsfan_shared::config::KeySource, anonymous: Option<&str>) -> wsfan_shared::config::AuthConfig {
    wsfan_shared::config::AuthConfig {
        keys,
        audience: None,
        issuer: None,
        anonymous_channels: anonymous.map(|a| wsfan_shared::access::parse_patterns(a).unwrap()),
        leeway_secs: 0,
    }
}

/// A verifier of tokens signed with [`DEV_SECRET`], as `wsfan dev` signs them.
pub fn dev_verifier(anonymous: Option<&str>) -> wsfan_shared::auth::JwtVerifier {
    wsfan_shared::auth::JwtVerifier::new(auth_config(
        wsfan_shared::config::KeySource::Secret(DEV_SECRET.into()),
        anonymous,
    ))
}

/// When a handler invoked now must stop: ten seconds, well past any test's DynamoDB calls.
pub fn invocation_deadline() -> tokio::time::Instant {
    tokio::time::Instant::now() + std::time::Duration::from_secs(10)
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the repo")
        .to_path_buf()
}

/// Fails unless every Lambda binary and `wsfan` sit beside `binary` (the binary under test), as
/// `wsfan dev` expects them: `cargo test` alone does not build them.
pub fn require_lambda_binaries(binary: &Path) {
    let dir = binary.parent().expect("a binary sits in a directory");
    // `wsfan` too: the benchmarks (`wsfan-bench`) drive its `dev` stack.
    for bin in FUNCTIONS.iter().chain(&["wsfan"]) {
        assert!(
            dir.join(bin).exists(),
            "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
            dir.join(bin).display()
        );
    }
}

/// Reads `events/<path>.json` as the event type a handler takes.
pub fn fixture<T: DeserializeOwned>(path: &str) -> T {
    let file = repo_root().join("events").join(format!("{path}.json"));
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not a valid event: {e}", file.display()))
}

/// Every fixture path under `events/<function>/`, without the `.json`.
pub fn fixtures_of(function: &str) -> Vec<String> {
    let dir = repo_root().join("events").join(function);
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".json")
                .map(|n| format!("{function}/{n}"))
        })
        .collect();
    names.sort();
    names
}

/// Fails unless every fixture of `functions` is named in `source`, the text of the test file
/// `file`, by its path (`"ws-connect/ok"`) or its name as a string (`"ok"`), so that no fixture
/// is added without a test that runs it.
pub fn assert_every_fixture_named_in(file: &str, source: &str, functions: &[&str]) {
    for function in functions {
        for path in fixtures_of(function) {
            let name = path.rsplit('/').next().unwrap();
            assert!(
                source.contains(&format!("\"{path}\"")) || source.contains(&format!("\"{name}\"")),
                "{path}.json is not run by any test in {file}"
            );
        }
    }
}

/// A table of its own for one test, on the shared moto server.
pub struct TestTable {
    pub client: aws_sdk_dynamodb::Client,
    pub name: String,
    pub stream_arn: String,
    pub store: DynamoStore,
}

impl TestTable {
    pub async fn new() -> Self {
        Self::with_retention(Retention::default()).await
    }

    /// A store of this table reached through `wsfan dev`'s DynamoDB fault proxy (its faults drawn
    /// from `seed`), each operation (all its calls and retries) ending within `budget`.
    pub async fn through_faults(
        &self,
        faults: wsfan_local::faults::DynamoFaults,
        seed: u64,
        budget: std::time::Duration,
    ) -> (DynamoStore, wsfan_local::dynamo_proxy::DynamoProxy) {
        let proxy = wsfan_local::dynamo_proxy::DynamoProxy::start(&moto::shared().endpoint, faults, seed, None)
            .await
            .expect("starting the DynamoDB fault proxy");
        let sdk = wsfan_local::moto::sdk_config(&proxy.endpoint).await;
        let client = wsfan_shared::store::client_with_timeout(&sdk, budget);
        let store = DynamoStore::new(client, &self.name, Retention::default()).with_budget(budget);
        (store, proxy)
    }

    pub async fn with_retention(retention: Retention) -> Self {
        let moto = moto::shared();
        let client = aws_sdk_dynamodb::Client::new(&moto.sdk_config().await);
        let name = format!("wsfan-test-{}", ulid::Ulid::generate().to_string().to_lowercase());
        let stream_arn = TABLE.create(&client, &name).await.expect("creating the test table");
        let store = DynamoStore::new(client.clone(), &name, retention);
        TestTable {
            client,
            name,
            stream_arn,
            store,
        }
    }

    /// Every item in the table, sorted by key, for before/after comparisons.
    pub async fn items(&self) -> Vec<Item> {
        scan(&self.client, &self.name).await
    }

    /// The items whose partition key is `pk`, as (sk, item).
    pub async fn partition(&self, pk: &str) -> Vec<(String, Item)> {
        self.items()
            .await
            .into_iter()
            .filter(|i| s(i, "pk") == pk)
            .map(|i| (s(&i, "sk").to_owned(), i))
            .collect()
    }

    pub async fn item(&self, pk: &str, sk: &str) -> Option<Item> {
        self.client
            .get_item()
            .table_name(&self.name)
            .key("pk", AttributeValue::S(pk.into()))
            .key("sk", AttributeValue::S(sk.into()))
            .consistent_read(true)
            .send()
            .await
            .expect("get_item")
            .item
    }

    /// A history item (message, reaction, receipt) by its message id; they are keyed by sequence.
    pub async fn message(&self, pk: &str, message_id: &str) -> Option<Item> {
        self.partition(pk)
            .await
            .into_iter()
            .find(|(sk, i)| sk.starts_with("MSG#") && s(i, "messageId") == message_id)
            .map(|(_, i)| i)
    }

    pub async fn put(&self, item: HashMap<String, AttributeValue>) {
        self.client
            .put_item()
            .table_name(&self.name)
            .set_item(Some(item))
            .send()
            .await
            .expect("put_item");
    }
}

/// Every item of `table`, sorted by key (a consistent scan).
pub async fn scan(client: &aws_sdk_dynamodb::Client, table: &str) -> Vec<Item> {
    let mut items: Vec<Item> = client
        .scan()
        .table_name(table)
        .consistent_read(true)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("scanning the table");
    items.sort_by_key(|i| (s(i, "pk").to_owned(), s(i, "sk").to_owned()));
    items
}

/// A string attribute, or "" when absent.
pub fn s<'a>(item: &'a Item, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
        .unwrap_or("")
}

/// A number attribute.
pub fn n(item: &Item, name: &str) -> i64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} is not a number in {item:?}"))
}

/// A fake `@connections` server and the real broadcaster pointed at it.
pub struct Rig {
    pub table: TestTable,
    pub server: wsfan_local::connections::ConnectionsServer,
    pub broadcaster: wsfan_shared::broadcaster::Broadcaster<DynamoStore>,
    pub streams: wsfan_local::sources::StreamReader,
    /// The stream's failure destination: a queue of its own on moto.
    pub failures: wsfan_shared::publisher::FailureQueue,
    pub failures_url: String,
    /// The delivery queue (FIFO) and its DLQ, where large channels' shards and retries go.
    pub delivery: TestQueue,
    pub shards: wsfan_shared::publisher::DeliveryQueue,
}

impl Rig {
    pub async fn new() -> Self {
        let table = TestTable::new().await;
        let server = wsfan_local::connections::ConnectionsServer::start("127.0.0.1:0")
            .await
            .expect("starting the @connections server");
        let mut config = wsfan_shared::broadcaster::BroadcastConfig::new(server.endpoint("prod"));
        // Quick retries keep tests short; the deadline is generous so retries finish.
        config.first_backoff = std::time::Duration::from_millis(5);
        config.max_backoff = std::time::Duration::from_millis(50);
        let sdk = moto::shared().sdk_config().await;
        let broadcaster = wsfan_shared::broadcaster::Broadcaster::new(&sdk, config, table.store.clone());
        let streams = wsfan_local::sources::StreamReader::new(
            aws_sdk_dynamodbstreams::Client::new(&sdk),
            &table.stream_arn,
            true,
        );
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let name = format!("wsfan-failures-{}", ulid::Ulid::generate().to_string().to_lowercase());
        let spec = wsfan_local::sources::QueueSpec {
            name: &name,
            fifo: false,
            visibility_timeout_seconds: 30,
            redrive: None,
        };
        let (failures_url, _) = wsfan_local::sources::create_queue(&sqs, spec)
            .await
            .expect("creating the failure queue");
        let delivery = TestQueue::new(true, 5).await;
        let shards = wsfan_shared::publisher::DeliveryQueue::new(
            delivery.client.clone(),
            delivery.url.clone(),
            Some(delivery.dlq_url.clone()),
        );
        Rig {
            table,
            server,
            broadcaster,
            streams,
            failures: wsfan_shared::publisher::FailureQueue::new(sqs, failures_url.clone()),
            failures_url,
            delivery,
            shards,
        }
    }

    /// Runs `deliver` over the delivery queue, a batch at a time as Lambda would, until it is
    /// empty (retries it enqueues included). Returns the batches run.
    pub async fn drain_deliveries<D: wsfan_shared::broadcaster::Broadcast>(&self, broadcaster: &D) -> usize {
        self.drain_deliveries_with(broadcaster, deliver::ReadBudget::pages(usize::MAX))
            .await
    }

    /// As [`Rig::drain_deliveries`], each invocation reading as far as `budget` lets it.
    pub async fn drain_deliveries_with<D: wsfan_shared::broadcaster::Broadcast>(
        &self,
        broadcaster: &D,
        budget: deliver::ReadBudget,
    ) -> usize {
        let mut batches = 0;
        loop {
            let (event, messages) = self.delivery.receive_event().await;
            if messages.is_empty() {
                return batches;
            }
            assert!(batches < 10_000, "the delivery queue never empties");
            batches += 1;
            let response = deliver::handle(&self.table.store, broadcaster, &self.shards, event, budget).await;
            self.delivery.settle(&messages, &sqs_failures(&response)).await;
        }
    }

    /// The shards parked in the delivery dead-letter queue (and left there).
    pub async fn parked_shards(&self) -> Vec<wsfan_shared::shard::Shard> {
        peek(&self.delivery.client, &self.delivery.dlq_url)
            .await
            .iter()
            .map(|body| wsfan_shared::shard::Shard::from_body(body).expect("parked shards"))
            .collect()
    }

    /// Runs stream-fanout over one batch, with this rig's failure destination.
    pub async fn stream_fanout(
        &self,
        batch: aws_lambda_events::dynamodb::Event,
    ) -> aws_lambda_events::streams::DynamoDbEventResponse {
        self.stream_fanout_until(batch, None).await
    }

    /// [`Rig::stream_fanout`] for an invocation whose hand-off time is `stop_at`.
    pub async fn stream_fanout_until(
        &self,
        batch: aws_lambda_events::dynamodb::Event,
        stop_at: Option<std::time::Instant>,
    ) -> aws_lambda_events::streams::DynamoDbEventResponse {
        stream_fanout::handle(
            &self.table.store,
            &self.broadcaster,
            &self.failures,
            &self.shards,
            batch,
            stop_at,
        )
        .await
    }

    /// The bodies waiting in the failure destination, parsed (and left there).
    pub async fn parked(&self) -> Vec<serde_json::Value> {
        let sqs = aws_sdk_sqs::Client::new(&moto::shared().sdk_config().await);
        peek(&sqs, &self.failures_url)
            .await
            .iter()
            .map(|body| serde_json::from_str(body).expect("failure bodies are JSON"))
            .collect()
    }

    /// Everything written to the table since the last call, as one stream batch.
    pub async fn stream_batch(&mut self) -> aws_lambda_events::dynamodb::Event {
        let records = self.streams.poll(1000).await.expect("reading the table's stream");
        wsfan_local::sources::dynamodb_event(&records, &self.table.stream_arn, "us-east-1").expect("stream event")
    }

    /// Runs stream-fanout over everything written since the last call.
    pub async fn run_stream_fanout(&mut self) -> aws_lambda_events::streams::DynamoDbEventResponse {
        let batch = self.stream_batch().await;
        self.stream_fanout(batch).await
    }

    /// Frames a connection received, parsed.
    pub fn frames(&self, connection_id: &str) -> Vec<serde_json::Value> {
        self.server
            .received(connection_id)
            .iter()
            .map(|t| serde_json::from_str(t).expect("pushed frames are JSON"))
            .collect()
    }
}

/// An SQS queue on moto with a DLQ behind it.
pub struct TestQueue {
    pub client: aws_sdk_sqs::Client,
    pub url: String,
    pub arn: String,
    pub dlq_url: String,
}

impl TestQueue {
    /// `max_receives`: deliveries before a message moves to the DLQ.
    pub async fn new(fifo: bool, max_receives: u32) -> Self {
        use wsfan_local::sources::{create_queue, QueueSpec};
        let client = aws_sdk_sqs::Client::new(&moto::shared().sdk_config().await);
        let suffix = if fifo { ".fifo" } else { "" };
        let base = format!("wsfan-progress-{}", ulid::Ulid::generate().to_string().to_lowercase());
        let dlq = QueueSpec {
            name: &format!("{base}-dlq{suffix}"),
            fifo,
            // SQS's default.
            visibility_timeout_seconds: 30,
            redrive: None,
        };
        let (dlq_url, dlq_arn) = create_queue(&client, dlq).await.expect("creating the DLQ");
        let queue = QueueSpec {
            name: &format!("{base}{suffix}"),
            fifo,
            // Failed messages come back at once, so tests need not wait.
            visibility_timeout_seconds: 0,
            redrive: Some((&dlq_arn, max_receives)),
        };
        let (url, arn) = create_queue(&client, queue).await.expect("creating the queue");
        TestQueue {
            client,
            url,
            arn,
            dlq_url,
        }
    }

    /// Receives up to ten messages as an SQS event, as Lambda's event source mapping would.
    pub async fn receive_event(&self) -> (aws_lambda_events::sqs::SqsEvent, Vec<aws_sdk_sqs::types::Message>) {
        let out = self
            .client
            .receive_message()
            .queue_url(&self.url)
            .max_number_of_messages(10)
            .message_system_attribute_names(aws_sdk_sqs::types::MessageSystemAttributeName::All)
            .send()
            .await
            .expect("receive_message");
        let messages = out.messages.unwrap_or_default();
        let event = wsfan_local::sources::sqs_event(&messages, &self.arn, "us-east-1").expect("sqs event");
        (event, messages)
    }

    /// Deletes the messages the handler did not report failed, as Lambda does.
    pub async fn settle(&self, messages: &[aws_sdk_sqs::types::Message], failed: &[String]) {
        for m in messages {
            if !failed.iter().any(|f| Some(f.as_str()) == m.message_id.as_deref()) {
                self.client
                    .delete_message()
                    .queue_url(&self.url)
                    .receipt_handle(m.receipt_handle.clone().unwrap())
                    .send()
                    .await
                    .expect("delete_message");
            }
        }
    }

    /// Messages waiting in the queue (SQS's approximate count, exact on moto).
    pub async fn waiting(&self) -> usize {
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(&self.url)
            .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
            .expect("get_queue_attributes");
        out.attributes()
            .and_then(|a| a.get(&aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// The bodies of up to ten waiting messages, left there.
    pub async fn peek(&self) -> Vec<String> {
        peek(&self.client, &self.url).await
    }

    pub async fn count(&self, url: &str) -> usize {
        let out = self
            .client
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .send()
            .await
            .expect("receive_message");
        out.messages.map(|m| m.len()).unwrap_or(0)
    }
}

/// The message ids an SQS batch response reports failed, sorted.
pub fn sqs_failures(r: &aws_lambda_events::sqs::SqsBatchResponse) -> Vec<String> {
    let mut v: Vec<String> = r
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect();
    v.sort();
    v
}

/// The bodies of up to 10 messages waiting in a queue, left there (visible again at once).
async fn peek(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> Vec<String> {
    let out = sqs
        .receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .send()
        .await
        .expect("receive_message");
    out.messages
        .unwrap_or_default()
        .into_iter()
        .map(|m| m.body.unwrap_or_default())
        .collect()
}
