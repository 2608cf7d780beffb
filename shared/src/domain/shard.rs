//! Sharded delivery, the pure part: which members of a large channel go together, in which
//! message group, and what a shard message carries. No I/O.
//!
//! A channel above [`DIRECT_MAX_MEMBERS`] is not posted to by the stream fanout itself. It puts
//! one [`Shard`] per group on the delivery queue (a FIFO queue), and the `deliver` function reads
//! that group's members a page at a time and posts them, reading the next page while it posts
//! the last. A connection always falls in the same one of [`GROUPS`] groups of its channel
//! ([`group_of`]): the range of connection ids that its first byte falls in. A group is then
//! one key range of the channel's membership items (`CONN#<id>`), so a shard reads exactly its
//! own part of the member list, and the stream fanout reads none of it. Each group is its own
//! FIFO message group: a group's shards are delivered one after another in the order they were
//! sent, so every recipient gets a channel's frames in stream order, while the groups of a
//! channel (and other channels) are delivered in parallel.
//!
//! The ranges split the first character over the base64 alphabet, which is what API Gateway's
//! connection ids are made of (12 random bytes, e.g. `L0SM9cOFvHcCIhw=`): 64 ranges of one
//! character each, so a real channel's members spread evenly. Ids from other alphabets still
//! fall in exactly one range (the first range starts at byte 0, the last runs to the end); they
//! may only spread less.

use serde::{Deserialize, Serialize};

use crate::channel::ChannelId;

/// Channels up to this many members are posted to by the stream fanout itself, as before: one
/// page of the member Query, no queue hop, so small channels keep their latency. Above it the
/// queue's fixed cost (a send, a poll, ~tens of ms) is small next to the posts themselves
/// (BENCHMARKS.md: 1,000 recipients take ~0.1 s at 20 ms of latency), and the stream shard is no
/// longer held by one channel's posts.
pub const DIRECT_MAX_MEMBERS: usize = 1000;

/// Posts one stream-fanout environment makes in a second when nothing else limits it: about 40 µs
/// of CPU a post (BENCHMARKS.md, `bench channel`) at the 0.58 vCPU of its 1024 MB.
pub const ENVIRONMENT_POSTS_PER_SECOND: u64 = 14_000;

/// Whether a small channel's batch goes to `deliver` rather than being posted from stream-fanout:
/// when the posts it needs (`pending_posts`: its members times the records each is due, for
/// members that take one frame a post) would not all be made before the invocation's hand-off,
/// `time_left` away, at `posts_per_second` (the budget, `FANOUT_MAX_RPS`, or one environment's
/// CPU, whichever is less). Such a batch would hand its rest on at the hand-off anyway; handed on
/// now, `deliver`'s environments post it in parallel from the start, and this one goes on to the
/// next channel. The size of the channel alone says nothing of this: 100 members with 100
/// records waiting are 10,000 posts, ten times a quiet channel of 1,000.
pub fn goes_parallel(pending_posts: u64, posts_per_second: Option<u64>, time_left: std::time::Duration) -> bool {
    let rate = posts_per_second
        .unwrap_or(ENVIRONMENT_POSTS_PER_SECOND)
        .min(ENVIRONMENT_POSTS_PER_SECOND);
    let fits = (rate as f64 * time_left.as_secs_f64()) as u64;
    pending_posts > fits
}

/// Message groups per channel: the most `deliver` invocations one channel's delivery can use at
/// once. Fixed, because a recipient must stay in one group for its frames to stay in order.
pub const GROUPS: u32 = 64;

/// Recipients per shard at most: one SQS message, ~20 KB of ids, a few seconds of posts.
pub(crate) const SHARD_MAX_RECIPIENTS: usize = 1000;

/// SQS's limit on a message body (moto's and the default's: 256 KiB), less room for the envelope.
pub(crate) const SHARD_MAX_BYTES: usize = 250 * 1024;

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
    /// Members the shard reads itself, besides `recipients`: its group's part of the channel's
    /// member list. Set on the shards of a large channel's delivery; a retry lists its recipients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<GroupRead>,
}

/// What a shard that reads its own group's members reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupRead {
    /// Start after this connection id: a shard going on where one that ran out of time stopped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// A user whose own connections are left out (a presence frame about that user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except_user: Option<String>,
}

/// A large channel's delivery: one shard per group, each reading its own members.
pub fn group_shards(channel: &ChannelId, frame: &str, origin: &str, except_user: Option<&str>) -> Vec<Shard> {
    (0..GROUPS)
        .map(|group| Shard {
            channel: channel.clone(),
            frame: frame.to_owned(),
            group,
            recipients: Vec::new(),
            attempt: 1,
            part: 0,
            origin: origin.to_owned(),
            read: Some(GroupRead {
                after: None,
                except_user: except_user.map(str::to_owned),
            }),
        })
        .collect()
}

impl Shard {
    /// The FIFO message group: one channel, one group of its members.
    pub fn message_group_id(&self) -> String {
        format!("{}#{}", self.channel, self.group)
    }

    /// The FIFO deduplication id: a resent shard (a retried stream batch, a retried send) is
    /// enqueued once within SQS's five-minute window.
    pub(crate) fn deduplication_id(&self) -> String {
        format!("{}-{}-{}-{}", self.origin, self.attempt, self.group, self.part)
    }

    /// The rest of this shard's group, after `after`: the next part, same attempt. It joins the
    /// back of the group, so it is only for a group too large for one invocation.
    pub fn continued(&self, after: String) -> Shard {
        Shard {
            recipients: Vec::new(),
            part: self.part + 1,
            read: Some(GroupRead {
                after: Some(after),
                except_user: self.read.as_ref().and_then(|r| r.except_user.clone()),
            }),
            ..self.clone()
        }
    }

    pub(crate) fn to_body(&self) -> String {
        serde_json::to_string(self).expect("shards serialise")
    }

    pub fn from_body(body: &str) -> Result<Shard, serde_json::Error> {
        serde_json::from_str(body)
    }
}

/// The first byte of each group's ids: the base64 alphabet (standard; the url-safe `-` and `_`
/// fall in the ranges of `+` and `Z`), in byte order, which is DynamoDB's order of string keys.
const GROUP_STARTS: &[u8; GROUPS as usize] = b"+/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The group of a connection: the range its id's first byte falls in. Stable across processes
/// and versions, and the same as the key range `group_bounds` gives the store.
pub fn group_of(connection_id: &str) -> u32 {
    let Some(&first) = connection_id.as_bytes().first() else {
        return 0;
    };
    // Group 0 also takes every byte below '+'.
    GROUP_STARTS.partition_point(|&start| start <= first).saturating_sub(1) as u32
}

/// The ids of `group`, as bounds on the id: from `lo` (inclusive; empty for the first group) to
/// `hi` (exclusive; none for the last). Both are one character, so an id of exactly `hi` is the
/// only one a reader of the key range `lo..=hi` must leave out (it is the next group's).
pub(crate) fn group_bounds(group: u32) -> (String, Option<String>) {
    let g = (group % GROUPS) as usize;
    let lo = if g == 0 {
        String::new()
    } else {
        char::from(GROUP_STARTS[g]).to_string()
    };
    let hi = GROUP_STARTS.get(g + 1).map(|&b| char::from(b).to_string());
    (lo, hi)
}

/// Cuts a channel's members into shards as the pages of the member Query come in, holding at
/// most one unfinished shard per group.
pub(crate) struct Sharder {
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
            read: None,
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
    let mut shards = listed(
        shard.channel.clone(),
        shard.frame.clone(),
        shard.origin.clone(),
        recipients,
    );
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

/// The first attempt for recipients of a small channel that stream-fanout hands to `deliver`
/// with their names ([`goes_parallel`]): one shard per group, as a large channel's, but listing
/// its recipients instead of reading them.
pub fn listed(channel: ChannelId, frame: String, origin: String, recipients: Vec<String>) -> Vec<Shard> {
    let mut sharder = Sharder::new(channel, frame, origin);
    let mut shards: Vec<Shard> = recipients.into_iter().filter_map(|r| sharder.add(r)).collect();
    shards.extend(sharder.finish());
    shards
}

/// The second attempt for recipients that stream-fanout's direct path (a small channel, posted
/// by stream-fanout itself) still missed at its deadline: that first attempt had no shard, so
/// this is [`retry`] of the part-0, first-attempt shard it would have been.
pub fn retry_direct(channel: ChannelId, frame: String, origin: String, recipients: Vec<String>) -> Vec<Shard> {
    let first = Shard {
        channel,
        frame,
        group: 0,
        recipients: Vec::new(),
        attempt: 1,
        part: 0,
        origin,
        read: None,
    };
    retry(&first, recipients)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    #[test]
    fn the_path_follows_the_posts_waiting_against_the_rate_and_the_time_left() {
        let s = std::time::Duration::from_secs;
        // 100 members x 100 records at the template's 5,000/s: 2 s of posts.
        assert!(!goes_parallel(10_000, Some(5_000), s(25)));
        assert!(goes_parallel(10_000, Some(5_000), s(1)));
        // A quiet channel of 1,000 members with one record: 1,000 posts, fits.
        assert!(!goes_parallel(1_000, Some(5_000), s(1)));
        // Unbounded or raised budgets are bounded by one environment's CPU.
        assert!(goes_parallel(15_000, None, s(1)));
        assert!(goes_parallel(15_000, Some(1_000_000), s(1)));
        assert!(!goes_parallel(14_000, None, s(1)));
        assert!(goes_parallel(1, Some(5_000), s(0)));
        assert!(!goes_parallel(0, Some(5_000), s(0)));
    }

    fn channel() -> ChannelId {
        "workspace:big".parse().unwrap()
    }

    #[test]
    fn groups_are_stable_and_spread_over_api_gateway_ids() {
        assert_eq!(group_of("L0SM9cOFvHcCIhw="), group_of("L0SM9cOFvHcCIhw="));
        // Ids as API Gateway makes them: random bytes in base64.
        const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        let mut counts = vec![0u32; GROUPS as usize];
        for _ in 0..64_000 {
            let id: String = (0..16)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    char::from(BASE64[(state % 64) as usize])
                })
                .collect();
            counts[group_of(&id) as usize] += 1;
        }
        // 1,000 per group on average; no group far from it.
        assert!(counts.iter().all(|c| (800..1200).contains(c)), "{counts:?}");
    }

    #[test]
    fn every_group_s_bounds_meet_the_next_s() {
        assert_eq!(group_bounds(0).0, "");
        assert_eq!(group_bounds(GROUPS - 1).1, None);
        for g in 0..GROUPS - 1 {
            assert_eq!(group_bounds(g).1, Some(group_bounds(g + 1).0), "group {g}");
        }
        assert_eq!(
            (group_of(""), group_of("\u{1}"), group_of("\u{10ffff}")),
            (0, 0, GROUPS - 1)
        );
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
            read: None,
        };
        assert_eq!(Shard::from_body(&shard.to_body()).unwrap(), shard);
        assert_eq!(shard.message_group_id(), "workspace:big#7");
        let retry = retry(&shard, vec!["b".into()]);
        assert_eq!((retry.len(), retry[0].attempt, retry[0].group), (1, 2, group_of("b")));
    }

    #[test]
    fn the_direct_paths_misses_become_second_attempts_in_their_own_groups() {
        let missed: Vec<String> = ["A1", "zz", "A2", "+x"].map(String::from).to_vec();
        let next = retry_direct(channel(), "{}".into(), "ev1".into(), missed.clone());
        assert!(next
            .iter()
            .all(|s| s.attempt == 2 && s.frame == "{}" && s.origin == "ev1"));
        let mut reached: Vec<String> = next.iter().flat_map(|s| s.recipients.clone()).collect();
        reached.sort();
        let mut want = missed;
        want.sort();
        assert_eq!(reached, want);
        for s in &next {
            assert!(s.recipients.iter().all(|r| group_of(r) == s.group), "{s:?}");
        }
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
        /// A connection's group is the key range its id is in: what deliver reads for the group
        /// is exactly the members `group_of` puts there.
        #[test]
        fn an_id_is_within_its_group_s_bounds(id in "\\PC{0,20}") {
            let (lo, hi) = group_bounds(group_of(&id));
            prop_assert!(lo.as_str() <= id.as_str());
            if let Some(hi) = hi {
                prop_assert!(id.as_str() < hi.as_str());
            }
        }

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
