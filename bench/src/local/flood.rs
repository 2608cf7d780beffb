//! `bench local --flood`: what one connection's flood does to another's acks in the same channel.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{connect_and_join, send_until_ack};
use crate::figures::{ms, percentile};

/// A quiet client's ack latency (a message every 50 ms) for `length`, with or without a flooding
/// client in the same channel; the flooder's answers are counted by kind.
pub(crate) async fn flood(url: &str, rate: f64, length: Duration) -> Result<Value, String> {
    async fn quiet_run(url: &str, sub: &str, length: Duration) -> Result<Vec<Duration>, String> {
        let (socket, _) = connect_and_join(url, sub, "workspace:flood", false).await?;
        let (mut sink, mut stream) = socket.split();
        let mut acks = Vec::new();
        let started = Instant::now();
        let mut n = 0;
        while started.elapsed() < length {
            let frame = json!({"action": "sendMessage", "channel": "workspace:flood", "body": format!("quiet {n}")});
            let took = send_until_ack(&mut sink, &mut stream, &frame, &format!("{sub}: send {n}")).await?;
            acks.push(took);
            n += 1;
            tokio::time::sleep(Duration::from_millis(50).saturating_sub(took)).await;
        }
        acks.sort();
        Ok(acks)
    }

    let baseline = quiet_run(url, "quiet-alone", length).await?;
    let (flooder, _) = connect_and_join(url, "flooder", "workspace:flood", false).await?;
    let (mut sink, mut stream) = flooder.split();
    let counts: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let reader_counts = counts.clone();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if let Message::Text(text) = message {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                let kind = match frame["type"].as_str() {
                    Some("error") => frame["code"].as_str().unwrap_or("error").to_owned(),
                    Some(other) => other.to_owned(),
                    None => "?".to_owned(),
                };
                *reader_counts.lock().unwrap().entry(kind).or_default() += 1;
            }
        }
    });
    let interval = Duration::from_secs_f64(1.0 / rate);
    let writer = tokio::spawn(async move {
        let started = Instant::now();
        let mut sent = 0u64;
        while started.elapsed() < length + Duration::from_secs(1) {
            let frame = json!({"action": "sendMessage", "channel": "workspace:flood", "body": format!("flood {sent}")});
            if sink.send(Message::Text(frame.to_string().into())).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep_until((started + interval.mul_f64(sent as f64)).into()).await;
        }
        (sent, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let flooded = quiet_run(url, "quiet-flooded", length).await?;
    let (sent, took) = writer.await.map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    reader.abort();
    let counts = counts.lock().unwrap().clone();
    let (p99_alone, p99_flooded) = (percentile(&baseline, 99.0), percentile(&flooded, 99.0));
    let ratio = p99_flooded.as_secs_f64() / p99_alone.as_secs_f64().max(1e-9);
    println!(
        "flood: {sent} frames in {:.1} s ({:.0}/s) from one connection, answered {counts:?}",
        took.as_secs_f64(),
        sent as f64 / took.as_secs_f64()
    );
    println!(
        "flood: the quiet client's ack p99 {} ms alone ({} acks), {} ms during the flood ({} acks): {ratio:.2}x",
        ms(p99_alone),
        baseline.len(),
        ms(p99_flooded),
        flooded.len()
    );
    Ok(json!({
        "floodSent": sent, "floodPerSecond": sent as f64 / took.as_secs_f64(), "floodAnswers": counts,
        "quietP99AloneMs": ms(p99_alone), "quietP99FloodedMs": ms(p99_flooded), "ratio": ratio,
        "quietAcksAlone": baseline.len(), "quietAcksFlooded": flooded.len(),
    }))
}
