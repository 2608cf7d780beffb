//! A loopback proxy in front of moto for the functions' DynamoDB calls, answering some of them
//! as DynamoDB does under load and moto never does (`wsfan dev --inject 'ddb-…'`): a
//! transaction cancelled with `TransactionConflict`, a throttled write, a write applied whose
//! answer is lost, a call that gets no answer in time (a stall), and latency. Everything else is moto's own answer, passed through.
//!
//! Only the functions point at it (`AWS_ENDPOINT_URL_DYNAMODB`); the stream pollers and the
//! stack's own setup talk to moto directly, so a fault lands where a handler must ride it out.
//! The error bodies are DynamoDB's (awsJson1.0: `__type`, `Message`, `CancellationReasons`),
//! which the SDK parses into the same errors it gives for the real service.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

use crate::faults::{DynamoFault, DynamoFaults, STALL};
use crate::logs::Logs;

/// The awsJson1.0 target prefix of DynamoDB's operations.
const TARGET_PREFIX: &str = "DynamoDB_20120810.";
const ERROR_NAMESPACE: &str = "com.amazonaws.dynamodb.v20120810#";

/// Operations that write; only these are throttled or lose their answer.
const WRITES: &[&str] = &[
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "TransactWriteItems",
];

#[derive(Clone)]
pub struct DynamoProxy {
    pub endpoint: String,
    inner: Arc<Inner>,
}

struct Inner {
    upstream: String,
    client: reqwest::Client,
    faults: DynamoFaults,
    rng: Mutex<fastrand::Rng>,
    logs: Option<Logs>,
    injected: Mutex<BTreeMap<DynamoFault, u64>>,
    requests: AtomicU64,
    /// The calls by operation (`TransactWriteItems`, `UpdateItem`, ...).
    operations: Mutex<BTreeMap<String, u64>>,
}

impl DynamoProxy {
    /// Listens on a free loopback port and forwards to `upstream` (moto), drawing `faults`
    /// from `seed`.
    pub async fn start(
        upstream: &str,
        faults: DynamoFaults,
        seed: u64,
        logs: Option<Logs>,
    ) -> std::io::Result<DynamoProxy> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            faults,
            // Its own stream of the run's seed: @connections draws from the seed as given.
            rng: Mutex::new(fastrand::Rng::with_seed(seed ^ 0xdd_b0_fa_17)),
            logs,
            injected: Mutex::default(),
            requests: AtomicU64::new(0),
            operations: Mutex::default(),
        });
        let router = Router::new().fallback(proxy).with_state(inner.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                eprintln!("wsfan dev: the DynamoDB fault proxy stopped: {e}");
            }
        });
        Ok(DynamoProxy {
            endpoint: format!("http://{addr}"),
            inner,
        })
    }

    /// How many faults of each kind were injected so far.
    pub fn injected(&self) -> BTreeMap<DynamoFault, u64> {
        self.inner.injected.lock().unwrap().clone()
    }

    /// How many DynamoDB calls came through.
    pub fn requests(&self) -> u64 {
        self.inner.requests.load(Ordering::Relaxed)
    }

    /// How many calls of each DynamoDB operation came through.
    pub fn operations(&self) -> BTreeMap<String, u64> {
        self.inner.operations.lock().unwrap().clone()
    }
}

/// The error DynamoDB answers, in its wire shape.
fn error(status: StatusCode, code: &str, body: Value) -> Response {
    let mut body = body;
    body["__type"] = json!(format!("{ERROR_NAMESPACE}{code}"));
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/x-amz-json-1.0"));
    headers.insert(
        "x-amzn-requestid",
        HeaderValue::from_str(&format!("{:032X}", fastrand::u128(..))).expect("hex is ASCII"),
    );
    (status, headers, body.to_string()).into_response()
}

/// `TransactionCanceledException` with one reason per action: `TransactionConflict` for
/// `conflicted`, `None` for the rest, as DynamoDB lists them.
pub fn transaction_conflict(actions: usize, conflicted: usize) -> Response {
    let reasons: Vec<Value> = (0..actions.max(1))
        .map(|i| {
            if i == conflicted {
                json!({"Code": "TransactionConflict", "Message": "Transaction is ongoing for the item"})
            } else {
                json!({"Code": "None"})
            }
        })
        .collect();
    let codes: Vec<&str> = (0..actions.max(1))
        .map(|i| if i == conflicted { "TransactionConflict" } else { "None" })
        .collect();
    error(
        StatusCode::BAD_REQUEST,
        "TransactionCanceledException",
        json!({
            "Message": format!(
                "Transaction cancelled, please refer cancellation reasons for specific reasons [{}]",
                codes.join(", ")
            ),
            "CancellationReasons": reasons,
        }),
    )
}

/// A throttled write, in one of the shapes DynamoDB uses for it.
fn throttled(provisioned: bool) -> Response {
    if provisioned {
        error(
            StatusCode::BAD_REQUEST,
            "ProvisionedThroughputExceededException",
            json!({"message": "The level of configured provisioned throughput for the table was exceeded. Consider increasing your provisioning level with the UpdateTable API."}),
        )
    } else {
        error(
            StatusCode::BAD_REQUEST,
            "ThrottlingException",
            json!({"message": "Throughput exceeds the current capacity of your table or index. DynamoDB is automatically scaling your table or index so please try again shortly."}),
        )
    }
}

async fn proxy(State(inner): State<Arc<Inner>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix(TARGET_PREFIX))
        .unwrap_or_default()
        .to_owned();
    if !operation.is_empty() {
        inner.requests.fetch_add(1, Ordering::Relaxed);
        *inner.operations.lock().unwrap().entry(operation.clone()).or_default() += 1;
    }
    let transaction = operation == "TransactWriteItems";
    let (fault, provisioned, conflicted) = {
        let mut rng = inner.rng.lock().unwrap();
        let fault = inner
            .faults
            .draw(rng.f64(), WRITES.contains(&operation.as_str()), transaction);
        (fault, rng.bool(), rng.usize(..100))
    };
    if !inner.faults.latency.is_zero() {
        tokio::time::sleep(inner.faults.latency).await;
    }
    if let Some(fault) = fault {
        *inner.injected.lock().unwrap().entry(fault).or_default() += 1;
        if let Some(logs) = &inner.logs {
            logs.dynamo_injected(fault.as_str(), &operation);
        }
    }
    match fault {
        Some(DynamoFault::Conflict) => {
            let actions = serde_json::from_slice::<Value>(&body)
                .ok()
                .and_then(|b| b.get("TransactItems").and_then(Value::as_array).map(Vec::len))
                .unwrap_or(1);
            return transaction_conflict(actions, conflicted % actions.max(1));
        }
        Some(DynamoFault::Throttle) => return throttled(provisioned),
        Some(DynamoFault::Stall) => {
            // The caller's timeout ends it long before: nothing reaches moto.
            tokio::time::sleep(STALL).await;
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                json!({"message": "stalled by wsfan dev --inject ddb-stall"}),
            );
        }
        Some(DynamoFault::Lost) | None => {}
    }
    let mut request = inner
        .client
        .request(
            method,
            format!("{}{}", inner.upstream, uri.path_and_query().map_or("/", |p| p.as_str())),
        )
        .body(body);
    for (name, value) in &headers {
        if !matches!(
            name.as_str(),
            "host" | "content-length" | "connection" | "transfer-encoding"
        ) {
            request = request.header(name, value);
        }
    }
    let answer = match request.send().await {
        Ok(answer) => answer,
        Err(e) => return (StatusCode::BAD_GATEWAY, format!("moto: {e}")).into_response(),
    };
    if fault == Some(DynamoFault::Lost) {
        // moto applied it; the caller only learns that something went wrong on the way back.
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerError",
            json!({"message": "Internal server error"}),
        );
    }
    let status = answer.status();
    let mut out = HeaderMap::new();
    for (name, value) in answer.headers() {
        if !matches!(name.as_str(), "content-length" | "connection" | "transfer-encoding") {
            out.insert(name.clone(), value.clone());
        }
    }
    match answer.bytes().await {
        Ok(bytes) => (status, out, bytes).into_response(),
        Err(e) => (StatusCode::BAD_GATEWAY, format!("moto: {e}")).into_response(),
    }
}
