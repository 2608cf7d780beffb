//! What a `bench hot` window would have cost on AWS, priced from what the stack measured.

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Value};

use super::drive::Window;
use super::member::Member;
use crate::dev_log::invocation;
use crate::stack_stats::calls_between;

/// List prices (USD, us-east-1, x86 Lambda, DynamoDB on-demand), as on the providers' pricing
/// pages in 2026: API Gateway's first tier (up to a billion messages a month), no free tier.
mod price {
    /// API Gateway WebSocket: per million messages, each 32 KB or part of one.
    pub const APIGW_MESSAGES: f64 = 1.00;
    /// API Gateway WebSocket: per million connection-minutes.
    pub const APIGW_CONNECTION_MINUTES: f64 = 0.25;
    /// Lambda (x86): per GB-second.
    pub const LAMBDA_GB_SECOND: f64 = 0.000_016_666_7;
    /// Lambda: per million requests.
    pub const LAMBDA_REQUESTS: f64 = 0.20;
    /// DynamoDB on-demand: per million write request units.
    pub const DYNAMODB_WRU: f64 = 0.625;
    /// DynamoDB on-demand: per million read request units.
    pub const DYNAMODB_RRU: f64 = 0.125;
    /// SQS FIFO (the delivery queue): per million requests of up to 64 KB.
    pub const SQS_FIFO_REQUESTS: f64 = 0.50;
}

/// What the window would have cost on AWS at list prices, per million deliveries.
pub(crate) fn report_cost(
    all: &[(usize, Member)],
    window: &Window,
    memory_mb: &HashMap<String, u32>,
    delivered: u64,
) -> Value {
    let mut gb_seconds = 0.0;
    let mut requests = 0u64;
    let mut by_function: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for i in window.log.lines().filter_map(invocation) {
        let mb = memory_mb.get(&i.function).copied().unwrap_or(128);
        // Lambda bills each invocation's duration rounded up to the millisecond.
        gb_seconds += i.millis.max(1) as f64 / 1000.0 * f64::from(mb) / 1024.0;
        requests += 1;
        let entry = by_function.entry(i.function).or_default();
        entry.0 += 1;
        entry.1 += i.millis;
    }
    let received: u64 = all.iter().map(|(_, m)| m.billed_received).sum();
    let sent: u64 = all.iter().map(|(_, m)| m.billed_sent).sum();
    let apigw_messages = received + sent;
    let connection_minutes = all.len() as f64 * window.length.as_secs_f64() / 60.0;
    let (before, after) = &window.units;
    let delta = |k: &str| after[k].as_f64().unwrap_or(0.0) - before[k].as_f64().unwrap_or(0.0);
    let (wru, rru) = (delta("wru"), delta("rru"));
    let calls = calls_between(before, after, "calls");
    let sqs_requests = delta("sqsRequests");
    let sqs_calls = calls_between(before, after, "sqsCalls");
    let millions = delivered.max(1) as f64 / 1e6;
    let per_million = |dollars: f64| dollars / millions;
    let parts = [
        per_million(apigw_messages as f64 / 1e6 * price::APIGW_MESSAGES),
        per_million(connection_minutes / 1e6 * price::APIGW_CONNECTION_MINUTES),
        per_million(gb_seconds * price::LAMBDA_GB_SECOND),
        per_million(requests as f64 / 1e6 * price::LAMBDA_REQUESTS),
        per_million(wru / 1e6 * price::DYNAMODB_WRU),
        per_million(rru / 1e6 * price::DYNAMODB_RRU),
        per_million(sqs_requests / 1e6 * price::SQS_FIFO_REQUESTS),
    ];
    let total: f64 = parts.iter().sum();
    println!(
        "cost: ${total:.4} per million deliveries ({delivered} delivered) at list prices (us-east-1, 2026, no free tier):"
    );
    println!(
        "  API Gateway: {apigw_messages} messages of up to 32 KB ({received} to the members, {sent} from them) at ${:.2}/M: ${:.4}; {connection_minutes:.1} connection-minutes at ${:.2}/M: ${:.4}",
        price::APIGW_MESSAGES,
        parts[0],
        price::APIGW_CONNECTION_MINUTES,
        parts[1]
    );
    println!(
        "  Lambda: {gb_seconds:.3} GB-s at ${}/GB-s: ${:.4}; {requests} requests at ${:.2}/M: ${:.4} (invocations and ms by function, as wsfan dev measured them around each invocation, a wait for a free environment included: {by_function:?})",
        price::LAMBDA_GB_SECOND,
        parts[2],
        price::LAMBDA_REQUESTS,
        parts[3]
    );
    println!(
        "  DynamoDB on-demand: {wru:.0} WRU at ${:.3}/M: ${:.4}; {rru:.1} RRU at ${:.3}/M: ${:.4} (counted by moto per call: 1 KB written, 4 KB read of the wire JSON, so a little high; transactional items twice; Streams reads free: {calls:?})",
        price::DYNAMODB_WRU,
        parts[4],
        price::DYNAMODB_RRU,
        parts[5]
    );
    println!(
        "  SQS: {sqs_requests:.0} requests (per 64 KB) at ${:.2}/M, all priced as FIFO: ${:.4} (as the local pollers made them; Lambda's own pollers on AWS also poll an idle queue: {sqs_calls:?})",
        price::SQS_FIFO_REQUESTS,
        parts[6]
    );
    json!({
        "perMillionDeliveries": total,
        "parts": {
            "apigwMessages": parts[0], "apigwConnectionMinutes": parts[1],
            "lambdaGbSeconds": parts[2], "lambdaRequests": parts[3],
            "dynamodbWrites": parts[4], "dynamodbReads": parts[5], "sqsRequests": parts[6],
        },
        "counts": {
            "apigwMessages": apigw_messages, "connectionMinutes": connection_minutes,
            "lambdaGbSeconds": gb_seconds, "lambdaRequests": requests, "lambdaByFunction": by_function,
            "dynamodbWru": wru, "dynamodbRru": rru, "dynamodbCalls": calls,
            "sqsRequests": sqs_requests, "sqsCalls": sqs_calls,
        },
        "prices": {
            "apigwPerMillionMessages": price::APIGW_MESSAGES,
            "apigwPerMillionConnectionMinutes": price::APIGW_CONNECTION_MINUTES,
            "lambdaPerGbSecond": price::LAMBDA_GB_SECOND,
            "lambdaPerMillionRequests": price::LAMBDA_REQUESTS,
            "dynamodbPerMillionWru": price::DYNAMODB_WRU,
            "dynamodbPerMillionRru": price::DYNAMODB_RRU,
            "sqsFifoPerMillionRequests": price::SQS_FIFO_REQUESTS,
            "region": "us-east-1",
        },
    })
}
