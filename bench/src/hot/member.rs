//! `bench hot`'s members: real WebSocket clients of the channel, each counting what it reads.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use wsfan_local::per_second::billed_messages;

use super::{HotBench, CHANNEL, TAG};
use crate::client::{connect_and_join_with, Socket};
use crate::dev_process::DevProcess;

/// What one member saw; its reader task writes, the report reads.
#[derive(Default)]
pub(crate) struct Member {
    /// Whether it connected with `batch=1`.
    pub(crate) asked_for_batches: bool,
    /// `@connections` posts it received while measuring (WebSocket messages that are not route
    /// responses).
    pub(crate) posts: u64,
    /// The frames in those posts (a batch counts its frames).
    pub(crate) frames: u64,
    /// Posts that were batch frames.
    pub(crate) batch_posts: u64,
    /// Batch frames it received without having asked for them.
    pub(crate) unasked_batches: u64,
    /// Route responses (acks, error frames answering its own sends).
    pub(crate) route_responses: u64,
    /// API Gateway messages (32 KB each) it received and sent while measuring.
    pub(crate) billed_received: u64,
    pub(crate) billed_sent: u64,
    /// Text it could not read as a frame.
    pub(crate) malformed: u64,
    /// `message` frames of the bench: (messageId, clientMsgId, when read).
    pub(crate) messages: Vec<(String, String, Instant)>,
    /// Its sends' acks: clientMsgId -> messageId.
    pub(crate) acks: HashMap<String, String>,
    /// Its sends that were refused: clientMsgId and the error.
    pub(crate) refused: Vec<(String, String)>,
}

impl Member {
    /// Reads one WebSocket message that arrived `at`: a route response to its own send, one
    /// pushed frame, or a batch of them. Returns how many of the bench's `message` frames it held.
    fn read(&mut self, text: &str, measuring: bool, at: Instant) -> u64 {
        let Ok(frame) = serde_json::from_str::<Value>(text) else {
            self.malformed += 1;
            return 0;
        };
        if measuring {
            self.billed_received += billed_messages(text.len());
        }
        match frame["type"].as_str() {
            Some("ack") => {
                if let (Some(c), Some(id)) = (frame["clientMsgId"].as_str(), frame["messageId"].as_str()) {
                    self.acks.insert(c.to_owned(), id.to_owned());
                }
                self.route_responses += u64::from(measuring);
                return 0;
            }
            Some("error") => {
                // Only the bench's own sends are answered with an error frame here.
                let c = frame["clientMsgId"].as_str().unwrap_or_default().to_owned();
                self.refused.push((c, frame.to_string()));
                self.route_responses += u64::from(measuring);
                return 0;
            }
            _ => {}
        }
        let frames = if frame["type"] == "batch" {
            // Asked for or not, at any time: a batch to a member that did not ask is a failure.
            self.unasked_batches += u64::from(!self.asked_for_batches);
            self.batch_posts += u64::from(measuring);
            match frame["frames"].as_array() {
                Some(frames) if !frames.is_empty() => frames.clone(),
                _ => {
                    self.malformed += 1;
                    return 0;
                }
            }
        } else {
            vec![frame]
        };
        if measuring {
            self.posts += 1;
            self.frames += frames.len() as u64;
        }
        let mut read = 0;
        for f in frames {
            let client_msg_id = f["clientMsgId"].as_str().unwrap_or_default();
            if f["type"] == "message" && client_msg_id.starts_with(TAG) {
                let id = f["messageId"].as_str().unwrap_or_default().to_owned();
                self.messages.push((id, client_msg_id.to_owned(), at));
                read += 1;
            }
        }
        read
    }
}

/// Shared by every member's tasks.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) measuring: AtomicBool,
    /// Every bench `message` frame read by anyone (duplicates too): the drain's progress.
    pub(crate) message_frames: AtomicU64,
    /// clientMsgId -> when its sender wrote the frame to the socket.
    pub(crate) sent_at: Mutex<HashMap<String, Instant>>,
}

/// Reads one member's socket until it closes; writes what its outbox says, recording when.
fn run_member(
    socket: Socket,
    member: Arc<Mutex<Member>>,
    shared: Arc<Shared>,
) -> mpsc::UnboundedSender<(String, String)> {
    let (tx, mut outbox) = mpsc::unbounded_channel::<(String, String)>();
    let (mut sink, mut stream) = socket.split();
    let (writer_member, writer_shared) = (member.clone(), shared.clone());
    tokio::spawn(async move {
        while let Some((client_msg_id, text)) = outbox.recv().await {
            writer_shared
                .sent_at
                .lock()
                .unwrap()
                .insert(client_msg_id, Instant::now());
            let billed = billed_messages(text.len());
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
            if writer_shared.measuring.load(Ordering::Relaxed) {
                writer_member.lock().unwrap().billed_sent += billed;
            }
        }
        let _ = sink.close().await;
    });
    tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            let Message::Text(text) = message else { continue };
            let measuring = shared.measuring.load(Ordering::Relaxed);
            let read = member.lock().unwrap().read(text.as_str(), measuring, Instant::now());
            shared.message_frames.fetch_add(read, Ordering::Relaxed);
        }
    });
    tx
}

/// The members, in the order they joined.
pub(crate) struct Members {
    /// (index, what it saw): index < batching asked for batches.
    pub(crate) all: Vec<(usize, Arc<Mutex<Member>>)>,
    pub(crate) outboxes: HashMap<usize, mpsc::UnboundedSender<(String, String)>>,
}

/// Connects and joins every member, `batching` of them (the first) with `batch=1`.
pub(crate) async fn connect_members(
    bench: &HotBench,
    stack: &DevProcess,
    shared: &Arc<Shared>,
    batching: usize,
    failures: &mut Vec<String>,
) -> Members {
    let started = Instant::now();
    let joined: Vec<Result<(usize, Socket), String>> = futures::stream::iter(0..bench.members)
        .map(|i| {
            let url = stack.ws_url.clone();
            let query = if i < batching { "&batch=1" } else { "" };
            async move {
                connect_and_join_with(&url, &format!("hot-{i}"), CHANNEL, query)
                    .await
                    .map(|(s, _)| (i, s))
            }
        })
        .buffer_unordered(bench.connect_concurrency.max(1))
        .collect()
        .await;
    let mut members = Members {
        all: Vec::new(),
        outboxes: HashMap::new(),
    };
    let mut join_failures = Vec::new();
    for outcome in joined {
        match outcome {
            Ok((i, socket)) => {
                let member = Arc::new(Mutex::new(Member {
                    asked_for_batches: i < batching,
                    ..Member::default()
                }));
                members
                    .outboxes
                    .insert(i, run_member(socket, member.clone(), shared.clone()));
                members.all.push((i, member));
            }
            Err(e) => join_failures.push(e),
        }
    }
    println!(
        "connect and join: {} of {} members in {:.1} s; {} failed",
        members.all.len(),
        bench.members,
        started.elapsed().as_secs_f64(),
        join_failures.len()
    );
    for f in join_failures.iter().take(5) {
        println!("  {f}");
    }
    if !join_failures.is_empty() {
        failures.push(format!("{} members could not join", join_failures.len()));
    }
    members
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_member_unpacks_batches_and_a_plain_one_counts_a_batch_against_the_server() {
        let at = std::time::Instant::now();
        let message = |n: u32| serde_json::json!({"type": "message", "channel": "workspace:hot", "seq": n, "messageId": format!("m{n}"), "clientMsgId": format!("hot-{n}")});
        let batch = serde_json::json!({"type": "batch", "frames": [message(1), message(2), {"type": "presence", "channel": "workspace:hot"}]}).to_string();
        let mut batching = super::Member {
            asked_for_batches: true,
            ..Default::default()
        };
        assert_eq!(batching.read(&batch, true, at), 2);
        assert_eq!(batching.read(&message(3).to_string(), true, at), 1);
        assert_eq!((batching.posts, batching.frames, batching.batch_posts), (2, 4, 1));
        assert_eq!(batching.unasked_batches, 0);
        let ids: Vec<&str> = batching.messages.iter().map(|(id, _, _)| id.as_str()).collect();
        assert_eq!(ids, ["m1", "m2", "m3"]);

        let mut plain = super::Member::default();
        assert_eq!(plain.read(&message(1).to_string(), true, at), 1);
        assert_eq!(plain.read(&batch, true, at), 2);
        assert_eq!(plain.unasked_batches, 1);
        // Even outside the measured window.
        plain.read(&batch, false, at);
        assert_eq!(plain.unasked_batches, 2);

        // Route responses are not posts; an ack maps the send to its messageId.
        let ack = serde_json::json!({"type": "ack", "action": "sendMessage", "channel": "workspace:hot", "messageId": "m9", "clientMsgId": "hot-9", "duplicate": false});
        assert_eq!(plain.read(&ack.to_string(), true, at), 0);
        assert_eq!(plain.acks.get("hot-9").map(String::as_str), Some("m9"));
        assert_eq!((plain.posts, plain.route_responses), (2, 1));
        // An empty or broken batch is malformed, not a post.
        assert_eq!(plain.read(r#"{"type":"batch","frames":[]}"#, true, at), 0);
        assert_eq!(plain.read("not json", true, at), 0);
        assert_eq!(plain.malformed, 2);
    }
}
