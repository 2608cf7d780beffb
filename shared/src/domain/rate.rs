//! The limit per connection: a token bucket of `per_second` frames with room for `burst`, kept as
//! GCRA (the generic cell rate algorithm). GCRA is a token bucket whose whole state is one number,
//! the theoretical arrival time (`tat`) of the next frame, so every execution environment of
//! ws-message can share one bucket per connection through one conditional write of that number
//! (adapters/limiter.rs), with no read first.

use serde::{Deserialize, Serialize};

/// Frames per second per connection and the burst above it. AppSync Events allows 25 publishes
/// per second per connection, Ably 50 messages: the default is AppSync's rate with room for a
/// burst of Ably's size (a client that reconnects rejoins and recovers several channels at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    /// 0: no limit.
    pub per_second: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            per_second: 25,
            burst: 50,
        }
    }
}

/// What the bucket says about one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Admit it; the bucket's state becomes `tat`.
    Admit { tat: i64 },
    /// Refuse it; a frame sent `retry_after_ms` from now is admitted.
    Limited { retry_after_ms: u64 },
}

impl RateLimit {
    pub const OFF: RateLimit = RateLimit {
        per_second: 0,
        burst: 0,
    };

    pub(crate) fn is_off(&self) -> bool {
        self.per_second == 0
    }

    /// Microseconds between frames at the steady rate (all state is in microseconds, so that a
    /// rate that does not divide 1,000 loses nothing).
    pub(crate) fn interval_us(&self) -> i64 {
        1_000_000 / i64::from(self.per_second.max(1))
    }

    /// How far ahead of now the state may run: a full bucket.
    pub(crate) fn tolerance_us(&self) -> i64 {
        self.interval_us() * i64::from(self.burst.max(1))
    }

    /// The latest state at which one more frame is still admitted at `now_us`.
    pub(crate) fn admit_until(&self, now_us: i64) -> i64 {
        now_us + self.tolerance_us() - self.interval_us()
    }

    /// GCRA: the frame arriving at `now_us` against the state `tat` (None: a fresh bucket).
    pub fn check(&self, tat: Option<i64>, now_us: i64) -> Verdict {
        let tat = tat.unwrap_or(now_us).max(now_us);
        if tat <= self.admit_until(now_us) {
            Verdict::Admit {
                tat: tat + self.interval_us(),
            }
        } else {
            Verdict::Limited {
                retry_after_ms: self.retry_after_ms(tat, now_us),
            }
        }
    }

    /// When a frame is admitted again, for a bucket whose state is `tat` (rounded up).
    pub fn retry_after_ms(&self, tat: i64, now_us: i64) -> u64 {
        let wait_us = (tat - self.admit_until(now_us)).max(0) as u64;
        wait_us.div_ceil(1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(limit: RateLimit, arrivals_us: impl IntoIterator<Item = i64>) -> usize {
        let mut tat = None;
        let mut n = 0;
        for now in arrivals_us {
            if let Verdict::Admit { tat: next } = limit.check(tat, now) {
                tat = Some(next);
                n += 1;
            }
        }
        n
    }

    #[test]
    fn a_burst_then_the_steady_rate() {
        let limit = RateLimit {
            per_second: 25,
            burst: 50,
        };
        // 1,000 frames in one millisecond: the burst only.
        assert_eq!(admitted(limit, 0..1000), 50);
        // 1,000 frames/s for 10 s: the burst plus 25 a second.
        let n = admitted(limit, (0..10_000).map(|i| i * 1000));
        assert!((50 + 250 - 1..=50 + 250 + 1).contains(&n), "{n}");
        // A client at the rate is never refused.
        assert_eq!(admitted(limit, (0..1000).map(|i| i * 40_000)), 1000);
    }

    #[test]
    fn the_retry_hint_is_when_a_frame_is_admitted_again() {
        let limit = RateLimit {
            per_second: 10,
            burst: 2,
        };
        let mut tat = None;
        for _ in 0..2 {
            let Verdict::Admit { tat: next } = limit.check(tat, 0) else {
                panic!("the burst is admitted")
            };
            tat = Some(next);
        }
        let Verdict::Limited { retry_after_ms } = limit.check(tat, 0) else {
            panic!("past the burst")
        };
        assert_eq!(retry_after_ms, 100);
        assert!(matches!(
            limit.check(tat, 99_000),
            Verdict::Limited { retry_after_ms: 1 }
        ));
        assert!(matches!(limit.check(tat, 100_000), Verdict::Admit { .. }));
    }

    #[test]
    fn an_idle_bucket_refills_to_the_burst_and_no_further() {
        let limit = RateLimit {
            per_second: 5,
            burst: 3,
        };
        let later = 3_600_000_000;
        let arrivals = std::iter::repeat_n(0, 10).chain(std::iter::repeat_n(later, 10));
        assert_eq!(admitted(limit, arrivals), 6);
    }
}
