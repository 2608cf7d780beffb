//! `bench local`'s clients: each reads its socket and records what arrives, and sends what it
//! is given.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;

use super::Seen;
use crate::client::Socket;

/// Reads one client's socket until the end, recording what arrives; sends what `outbox` says.
pub(crate) fn run_client(index: usize, socket: Socket, seen: Arc<Seen>) -> mpsc::UnboundedSender<String> {
    let (tx, mut outbox) = mpsc::unbounded_channel::<String>();
    let (mut sink, mut stream) = socket.split();
    tokio::spawn(async move {
        while let Some(text) = outbox.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let Message::Text(text) = message else { continue };
            seen.frames.fetch_add(1, Ordering::Relaxed);
            seen.posts.fetch_add(1, Ordering::Relaxed);
            let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
            // A batch frame carries several, in order; anything else is one.
            let frames = match frame["type"].as_str() {
                Some("batch") => match frame {
                    Value::Object(mut batch) => match batch.remove("frames") {
                        Some(Value::Array(frames)) => frames,
                        _ => Vec::new(),
                    },
                    _ => Vec::new(),
                },
                _ => vec![frame],
            };
            let now = Instant::now();
            for frame in frames {
                match frame["type"].as_str() {
                    Some("message") => {
                        let id = frame["messageId"].as_str().unwrap_or_default().to_owned();
                        let client_id = frame["clientMsgId"].as_str().unwrap_or_default().to_owned();
                        seen.messages.lock().unwrap().push((index, id, client_id, now));
                    }
                    Some("presence") => {
                        seen.presence.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("error") => {
                        seen.errors.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
    });
    tx
}

/// Waits until no client has received a frame for `quiet`, at most `limit`.
pub(crate) async fn settle(seen: &Seen, quiet: Duration, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut last = seen.frames.load(Ordering::Relaxed);
    let mut still_since = Instant::now();
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = seen.frames.load(Ordering::Relaxed);
        if now != last {
            last = now;
            still_since = Instant::now();
        } else if still_since.elapsed() >= quiet {
            break;
        }
    }
    still_since.duration_since(started)
}
