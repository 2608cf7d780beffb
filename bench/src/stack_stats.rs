//! What a running `wsfan dev` says of itself, for the benchmarks that drive one: what its
//! `@connections` answered (`GET /dev/stats`) and the DynamoDB request units and calls its moto
//! counted (`/_wsfan/dynamodb-units`, scripts/moto_server.py).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::dev_process::DevProcess;

/// `GET {base}{path}` as JSON (`base` is `http://host:port`, with or without a trailing `/`).
async fn get_json(base: &str, path: &str) -> Result<Value, String> {
    let authority = base
        .strip_prefix("http://")
        .and_then(|r| r.split('/').next())
        .ok_or_else(|| format!("not an http URL: {base}"))?;
    let what = format!("GET {authority}{path}");
    let mut tcp = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes())
        .await
        .map_err(|e| format!("{what}: {e}"))?;
    let mut answer = Vec::new();
    tcp.read_to_end(&mut answer).await.map_err(|e| format!("{what}: {e}"))?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(format!("{what}: {}", head.lines().next().unwrap_or_default()));
    }
    serde_json::from_str(body).map_err(|e| format!("{what}: {e}: {body}"))
}

/// What the stack's @connections answered, per second (`wsfan dev`'s `GET /dev/stats`).
pub(crate) async fn connections_stats(http_url: &str) -> Result<Value, String> {
    get_json(http_url, "/dev/stats").await
}

/// DynamoDB request units the stack's moto counted so far (scripts/moto_server.py).
pub(crate) async fn dynamodb_units(moto: &str) -> Result<Value, String> {
    get_json(moto, "/_wsfan/dynamodb-units").await
}

/// The calls by operation that moto counted (under `key`) between two reads.
pub(crate) fn calls_between(before: &Value, after: &Value, key: &str) -> BTreeMap<String, u64> {
    after[key]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(op, n)| {
            let n = n.as_u64().unwrap_or(0);
            (op.clone(), n.saturating_sub(before[key][op].as_u64().unwrap_or(0)))
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Waits until @connections delivered nothing for 2 s (the joins' presence frames), at most
/// `limit`.
pub(crate) async fn settle(stack: &DevProcess, limit: Duration) -> Result<(), String> {
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    let mut last = u64::MAX;
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let delivered = connections_stats(&stack.http_url).await?["delivered"]
            .as_u64()
            .unwrap_or(0);
        if delivered != last {
            last = delivered;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_secs(2) {
            println!(
                "presence settled {:.1} s after the last join ({last} posts delivered so far)",
                (quiet_since - started).as_secs_f64()
            );
            return Ok(());
        }
    }
    println!(
        "presence did NOT settle within {} s of the last join ({last} posts delivered so far): measuring anyway, with presence frames still being posted",
        limit.as_secs()
    );
    Ok(())
}
