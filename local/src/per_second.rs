//! What `@connections` answered in each wall-clock second, for the last few minutes.
//!
//! `FanoutMaxRps` is a budget per second, so a total over a run cannot show that it was kept:
//! a run can stay under it on average and exceed it for the one second that a burst takes.
//! The counts are kept per unix second in a ring of [`SECONDS_KEPT`] slots, so memory stays the
//! same however long `wsfan dev` runs; a reader that wants more than that polls
//! (`wsfan-bench hot` does, and merges what it read by second).

use std::sync::Mutex;

use serde::Serialize;

/// Seconds kept: five minutes, several times what a reader polling each minute needs.
pub const SECONDS_KEPT: usize = 300;

/// API Gateway bills a message (a post, or a frame a client sends) per 32 KB of its data.
pub const BILLING_INCREMENT_BYTES: usize = 32 * 1024;

/// The 32 KB increments a message of `len` bytes is billed as (an empty one is still one).
pub fn billed_messages(len: usize) -> u64 {
    len.div_ceil(BILLING_INCREMENT_BYTES).max(1) as u64
}

/// One second's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Second {
    /// The unix second these counts belong to.
    pub unix: u64,
    /// Every request (POST, GET, DELETE), answered however.
    pub requests: u64,
    /// `POST`s, answered however: what the fanouts' budget (`FanoutMaxRps`) counts.
    pub posts: u64,
    /// Posts that delivered their data to a socket.
    pub delivered: u64,
    /// Requests answered 429.
    pub throttled: u64,
    /// The delivered posts' data in bytes.
    pub bytes: u64,
    /// The delivered posts as API Gateway bills them: one message per 32 KB or part of it.
    pub billed_messages: u64,
}

/// What a request was, for [`PerSecond::record`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request arrived; `post` when it is a POST.
    Request { post: bool },
    /// It was answered 429.
    Throttled,
    /// A post delivered `len` bytes.
    Delivered { len: usize },
}

/// The ring of the last [`SECONDS_KEPT`] seconds.
#[derive(Debug)]
pub struct PerSecond {
    slots: Mutex<Vec<Second>>,
}

impl Default for PerSecond {
    fn default() -> Self {
        PerSecond {
            slots: Mutex::new(vec![Second::default(); SECONDS_KEPT]),
        }
    }
}

impl PerSecond {
    /// Counts `event` in the second `unix`.
    pub fn record(&self, unix: u64, event: Event) {
        let mut slots = self.slots.lock().unwrap();
        let slot = &mut slots[(unix % SECONDS_KEPT as u64) as usize];
        if slot.unix != unix {
            // The slot held a second that is SECONDS_KEPT (or more) ago: start it afresh.
            *slot = Second {
                unix,
                ..Second::default()
            };
        }
        match event {
            Event::Request { post } => {
                slot.requests += 1;
                slot.posts += u64::from(post);
            }
            Event::Throttled => slot.throttled += 1,
            Event::Delivered { len } => {
                slot.delivered += 1;
                slot.bytes += len as u64;
                slot.billed_messages += billed_messages(len);
            }
        }
    }

    /// The seconds of the last [`SECONDS_KEPT`] before `now` (inclusive) that saw a request,
    /// oldest first.
    pub fn recent(&self, now: u64) -> Vec<Second> {
        let oldest = now.saturating_sub(SECONDS_KEPT as u64 - 1);
        let mut seconds: Vec<Second> = self
            .slots
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.requests > 0 && (oldest..=now).contains(&s.unix))
            .copied()
            .collect();
        seconds.sort_by_key(|s| s.unix);
        seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_each_second_apart_and_bills_per_32_kb() {
        let ring = PerSecond::default();
        ring.record(1000, Event::Request { post: true });
        ring.record(1000, Event::Delivered { len: 10 });
        ring.record(1000, Event::Request { post: false });
        ring.record(1001, Event::Request { post: true });
        ring.record(1001, Event::Throttled);
        ring.record(1002, Event::Request { post: true });
        ring.record(1002, Event::Delivered { len: 32 * 1024 + 1 });
        let seconds = ring.recent(1002);
        assert_eq!(
            seconds,
            vec![
                Second {
                    unix: 1000,
                    requests: 2,
                    posts: 1,
                    delivered: 1,
                    throttled: 0,
                    bytes: 10,
                    billed_messages: 1
                },
                Second {
                    unix: 1001,
                    requests: 1,
                    posts: 1,
                    delivered: 0,
                    throttled: 1,
                    bytes: 0,
                    billed_messages: 0
                },
                Second {
                    unix: 1002,
                    requests: 1,
                    posts: 1,
                    delivered: 1,
                    throttled: 0,
                    bytes: 32 * 1024 + 1,
                    billed_messages: 2
                },
            ]
        );
    }

    #[test]
    fn keeps_only_the_last_seconds_in_the_same_memory() {
        let ring = PerSecond::default();
        for unix in 0..(3 * SECONDS_KEPT as u64) {
            ring.record(unix, Event::Request { post: true });
        }
        let now = 3 * SECONDS_KEPT as u64 - 1;
        let seconds = ring.recent(now);
        assert_eq!(seconds.len(), SECONDS_KEPT);
        assert_eq!(seconds[0].unix, 2 * SECONDS_KEPT as u64);
        assert!(seconds.iter().all(|s| s.requests == 1));
        // A slot reused for a later second starts from zero, and a second too old is not shown.
        ring.record(now + 1, Event::Request { post: false });
        let seconds = ring.recent(now + 1);
        assert_eq!(seconds.len(), SECONDS_KEPT);
        assert_eq!(seconds.last().unwrap().posts, 0);
        assert_eq!(seconds[0].unix, 2 * SECONDS_KEPT as u64 + 1);
    }

    #[test]
    fn bills_a_message_per_started_32_kb() {
        assert_eq!(billed_messages(0), 1);
        assert_eq!(billed_messages(1), 1);
        assert_eq!(billed_messages(32 * 1024), 1);
        assert_eq!(billed_messages(32 * 1024 + 1), 2);
        assert_eq!(billed_messages(128 * 1024), 4);
    }
}
