//! `bench local --soak`: one client's sends in a row, each after the last one's ack, and whether
//! its acks slow down.

use std::time::Instant;

use futures::StreamExt;
use serde_json::{json, Value};

use crate::client::{connect_and_join, send_until_ack};
use crate::figures::{median, ms};

/// One client sends `count` messages one after another, each after the last one's ack.
pub(crate) async fn soak(url: &str, count: usize) -> Result<Value, String> {
    let (socket, _) = connect_and_join(url, "soaker", "workspace:soak", false).await?;
    let (mut sink, mut stream) = socket.split();
    let mut acks = Vec::with_capacity(count);
    let started = Instant::now();
    for n in 0..count {
        let frame = json!({"action": "sendMessage", "channel": "workspace:soak", "body": format!("soak {n}"), "clientMsgId": format!("soak-{n}")});
        acks.push(send_until_ack(&mut sink, &mut stream, &frame, &format!("soak send {n}")).await?);
        if (n + 1) % 1000 == 0 {
            println!(
                "  soak: {} sends, median ack of the last 1,000 {} ms",
                n + 1,
                ms(median(&acks[n + 1 - 1000..]))
            );
        }
    }
    let window = (count / 10).clamp(1, 1000);
    let head = median(&acks[..window]);
    let tail = median(&acks[count - window..]);
    let ratio = tail.as_secs_f64() / head.as_secs_f64().max(1e-9);
    println!(
        "soak: {count} sendMessage in a row in {:.1} s; median ack first {window}: {} ms, last {window}: {} ms ({ratio:.2}x)",
        started.elapsed().as_secs_f64(),
        ms(head),
        ms(tail)
    );
    Ok(json!({"sends": count, "window": window, "firstMedianMs": ms(head), "lastMedianMs": ms(tail), "ratio": ratio}))
}
