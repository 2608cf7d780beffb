//! What `bench channel`'s @connections server does with each post: counts it per connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use wsfan_local::connections::Sink;

/// Counts each post per connection, and when the small channel's posts arrived.
#[derive(Default)]
pub(crate) struct Counter {
    pub(crate) big: Mutex<HashMap<u32, u32>>,
    pub(crate) big_posts: AtomicU64,
    /// When the broadcast's first post arrived.
    pub(crate) first_big: std::sync::OnceLock<Instant>,
    /// The unix seconds of the broadcast's first and last posts, for @connections' per-second
    /// counts (`u64::MAX` / 0 until a post arrives).
    pub(crate) first_big_unix: AtomicU64,
    pub(crate) last_big_unix: AtomicU64,
    /// (connection, message body) -> arrival.
    pub(crate) small: Mutex<Vec<(String, String, Instant)>>,
}

impl Sink for Counter {
    fn send(&self, connection_id: &str, data: Bytes) -> bool {
        if let Some(n) = big_index(connection_id) {
            // Only the broadcast's frame counts (presence etc. never reach here: no records).
            *self.big.lock().unwrap().entry(n).or_default() += 1;
            self.first_big.get_or_init(Instant::now);
            let unix = wsfan_shared::clock::now_secs().max(0) as u64;
            self.first_big_unix.fetch_min(unix, Ordering::Relaxed);
            self.last_big_unix.fetch_max(unix, Ordering::Relaxed);
            self.big_posts.fetch_add(1, Ordering::Relaxed);
        } else if connection_id.starts_with("small-") {
            let frame: serde_json::Value = serde_json::from_slice(&data).unwrap_or_default();
            let body = frame["body"].as_str().unwrap_or_default().to_owned();
            self.small
                .lock()
                .unwrap()
                .push((connection_id.to_owned(), body, Instant::now()));
        }
        true
    }
    fn close(&self, _connection_id: &str) -> bool {
        true
    }
    fn exists(&self, _connection_id: &str) -> bool {
        true
    }
}

/// The large channel's member `i`: its id starts with a character of the base64 alphabet in
/// turn, as API Gateway's ids do, so the members spread over every delivery group.
pub(crate) fn big_id(i: usize) -> String {
    const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    format!("{}big-{i:07}", char::from(BASE64[i % BASE64.len()]))
}

fn big_index(connection_id: &str) -> Option<u32> {
    connection_id.get(1..)?.strip_prefix("big-")?.parse().ok()
}
