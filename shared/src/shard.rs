//! Sharded delivery, the pure part: which members of a large channel go together, in which
//! message group, and what a shard message carries. No I/O.
//!
//! A channel above [`DIRECT_MAX_MEMBERS`] is not posted to by the stream fanout itself: it reads
//! the member list page by page and hands the members out as [`Shard`]s on the delivery queue (a
//! FIFO queue), where the `deliver` function posts them. A connection always falls in the same
//! one of [`GROUPS`] groups of its channel ([`group_of`], a stable hash of its id), and each
//! group is its own FIFO message group: the shards of one group are delivered one after another
//! in the order they were sent, so every recipient gets a channel's frames in stream order, while
//! the groups of a channel (and other channels) are delivered in parallel.

use serde::{Deserialize, Serialize};

use crate::channel::ChannelId;

/// Channels up to this many members are posted to by the stream fanout itself, as before: one
/// page of the member Query, no queue hop, so small channels keep their latency. Above it the
/// queue's fixed cost (a send, a poll, ~tens of ms) is small next to the posts themselves
/// (BENCHMARKS.md: 1,000 recipients take ~0.1 s at 20 ms of latency), and the stream shard is no
/// longer held by one channel's posts.
pub const DIRECT_MAX_MEMBERS: usize = 1000;

/// Message groups per channel: the most `deliver` invocations one channel's delivery can use at
/// once. Fixed, because a recipient must stay in one group for its frames to stay in order.
pub const GROUPS: u32 = 64;

/// Recipients per shard at most: one SQS message, ~20 KB of ids, a few seconds of posts.
pub const SHARD_MAX_RECIPIENTS: usize = 1000;

/// SQS's limit on a message body (moto's and the default's: 256 KiB), less room for the envelope.
pub const SHARD_MAX_BYTES: usize = 250 * 1024;

/// Delivery attempts of one recipient (each up to FANOUT_DEADLINE_MS) before it is parked in the
/// delivery dead-letter queue.
pub const MAX_ATTEMPTS: u32 = 3;

/// One shard of a channel's delivery: a frame and the recipients to post it to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Shard {
    pub channel: ChannelId,
    /// The frame, as posted (JSON text).
    pub frame: String,
    pub group: u32,
    pub recipients: Vec<String>,
    /// Which delivery attempt this is for these recipients (1 for the first).
    pub attempt: u32,
    /// Which of its group's shards for this origin this is (0, 1, ...).
    pub part: u64,
    /// What this delivery came from (the stream record's event id), for logs and deduplication.
    pub origin: String,
}

impl Shard {
    /// The FIFO message group: one channel, one group of its members.
    pub fn message_group_id(&self) -> String {
        format!("{}#{}", self.channel, self.group)
    }

    /// The FIFO deduplication id: a resent shard (a retried stream batch, a retried send) is
    /// enqueued once within SQS's five-minute window.
    pub fn deduplication_id(&self) -> String {
        format!("{}-{}-{}-{}", self.origin, self.attempt, self.group, self.part)
    }

    pub fn to_body(&self) -> String {
        serde_json::to_string(self).expect("shards serialise")
    }

    pub fn from_body(body: &str) -> Result<Shard, serde_json::Error> {
        serde_json::from_str(body)
    }
}

/// FNV-1a: stable across processes and versions, unlike std's hasher.
pub fn group_of(connection_id: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in connection_id.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % GROUPS
}

/// Cuts a channel's members into shards as the pages of the member Query come in, holding at
/// most one unfinished shard per group.
pub struct Sharder {
    channel: ChannelId,
    frame: String,
    origin: String,
    max_recipients: usize,
    open: Vec<Vec<String>>,
    open_bytes: Vec<usize>,
    parts: Vec<u64>,
}

impl Sharder {
    pub fn new(channel: ChannelId, frame: String, origin: String) -> Self {
        // Ids go in JSON strings: their length plus quotes and a comma.
        let room = SHARD_MAX_BYTES.saturating_sub(frame.len() * 2 + 512);
        let max_recipients = SHARD_MAX_RECIPIENTS.min(room / 24).max(1);
        Sharder {
            channel,
            frame,
            origin,
            max_recipients,
            open: vec![Vec::new(); GROUPS as usize],
            open_bytes: vec![0; GROUPS as usize],
            parts: vec![0; GROUPS as usize],
        }
    }

    fn close(&mut self, group: usize) -> Shard {
        self.open_bytes[group] = 0;
        self.parts[group] += 1;
        Shard {
            channel: self.channel.clone(),
            frame: self.frame.clone(),
            group: group as u32,
            recipients: std::mem::take(&mut self.open[group]),
            attempt: 1,
            part: self.parts[group] - 1,
            origin: self.origin.clone(),
        }
    }

    /// Adds one recipient; returns its group's shard when that is full.
    pub fn add(&mut self, connection_id: String) -> Option<Shard> {
        let group = group_of(&connection_id) as usize;
        self.open_bytes[group] += connection_id.len() + 3;
        self.open[group].push(connection_id);
        let full = self.open[group].len() >= self.max_recipients
            || self.open_bytes[group] + self.frame.len() * 2 + 512 >= SHARD_MAX_BYTES;
        full.then(|| self.close(group))
    }

    /// The shards still open, each group's last.
    pub fn finish(mut self) -> Vec<Shard> {
        let open: Vec<usize> = (0..GROUPS as usize).filter(|g| !self.open[*g].is_empty()).collect();
        open.into_iter().map(|g| self.close(g)).collect()
    }
}

/// The next attempt for recipients who still need `shard`'s frame, one shard per group (a
/// recipient's retry goes to the group its frames always take). Parts are numbered after the
/// part they came from, so retries of different shards never share a deduplication id.
pub fn retry(shard: &Shard, recipients: Vec<String>) -> Vec<Shard> {
    let mut sharder = Sharder::new(shard.channel.clone(), shard.frame.clone(), shard.origin.clone());
    let mut shards: Vec<Shard> = recipients.into_iter().filter_map(|r| sharder.add(r)).collect();
    shards.extend(sharder.finish());
    for next in &mut shards {
        next.attempt = shard.attempt + 1;
        // Unique per attempt: a part's retries are numbered within it (wrapping is harmless: only
        // the five-minute deduplication window could ever see a clash).
        next.part = next
            .part
            .wrapping_add(shard.part.wrapping_mul(SHARD_MAX_RECIPIENTS as u64));
    }
    shards
}

/// Where shards go: the delivery queue, and its dead-letter queue for recipients that every
/// attempt missed.
pub trait ShardQueue: Send + Sync {
    /// Enqueues shards; those of one group in the order given.
    fn enqueue(&self, shards: Vec<Shard>) -> impl std::future::Future<Output = Result<(), String>> + Send;
    /// Parks a shard whose recipients every attempt missed, to inspect and redrive.
    fn park(&self, shard: Shard) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn channel() -> ChannelId {
        "workspace:big".parse().unwrap()
    }

    #[test]
    fn groups_are_stable_and_spread() {
        assert_eq!(group_of("L0SM9cOFvHcCIhw="), group_of("L0SM9cOFvHcCIhw="));
        let mut counts = vec![0u32; GROUPS as usize];
        for i in 0..64_000 {
            counts[group_of(&format!("conn-{i:06}")) as usize] += 1;
        }
        // 1,000 per group on average; no group far from it.
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn a_shard_round_trips_through_its_body() {
        let shard = Shard {
            channel: channel(),
            frame: r#"{"type":"message","body":"\"hi\""}"#.into(),
            group: 7,
            recipients: vec!["a".into(), "b".into()],
            attempt: 1,
            part: 0,
            origin: "ev1".into(),
        };
        assert_eq!(Shard::from_body(&shard.to_body()).unwrap(), shard);
        assert_eq!(shard.message_group_id(), "workspace:big#7");
        let retry = retry(&shard, vec!["b".into()]);
        assert_eq!((retry.len(), retry[0].attempt, retry[0].group), (1, 2, group_of("b")));
    }

    #[test]
    fn a_large_frame_makes_smaller_shards_that_fit_in_a_message() {
        let frame = "x".repeat(120 * 1024);
        let mut sharder = Sharder::new(channel(), frame, "ev".into());
        let mut shards: Vec<Shard> = (0..20_000)
            .filter_map(|i| sharder.add(format!("connection-id-{i:08}=")))
            .collect();
        shards.extend(sharder.finish());
        for s in &shards {
            assert!(s.to_body().len() <= 256 * 1024, "{}", s.to_body().len());
        }
        assert_eq!(shards.iter().map(|s| s.recipients.len()).sum::<usize>(), 20_000);
    }

    proptest! {
        /// Every member lands in exactly one shard, of its own group, and shards stay in bounds.
        #[test]
        fn every_member_once_in_its_group(n in 0usize..5000, frame_len in 0usize..2000) {
            let mut sharder = Sharder::new(channel(), "f".repeat(frame_len), "ev".into());
            let ids: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
            let mut shards: Vec<Shard> = ids.iter().cloned().filter_map(|id| sharder.add(id)).collect();
            shards.extend(sharder.finish());
            let mut seen: HashMap<String, u32> = HashMap::new();
            for s in &shards {
                prop_assert!(!s.recipients.is_empty() && s.recipients.len() <= SHARD_MAX_RECIPIENTS);
                for r in &s.recipients {
                    prop_assert_eq!(group_of(r), s.group);
                    prop_assert!(seen.insert(r.clone(), s.group).is_none(), "{} twice", r);
                }
            }
            prop_assert_eq!(seen.len(), n);
        }
    }
}
