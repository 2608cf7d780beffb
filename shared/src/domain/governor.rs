//! The throttle governor's arithmetic: how fast one execution environment may post to
//! `@connections` when API Gateway answers 429. Pure: time is passed in, nothing sleeps here (the
//! broadcaster does).
//!
//! `@connections` draws from the account's API Gateway bucket (10,000 RPS by default, shared
//! with every other API of the Region). `FANOUT_MAX_RPS` is the share all fanout together may
//! use, and environments lease it second by second from one counter (crate::budget), so one
//! environment alone may take all of it: that is this governor's ceiling. Under it the rate
//! follows AIMD: a 429 (someone else's burst, or a lower account quota than the budget assumed)
//! halves it (once per `DECREASE_SPACING`, since a burst of posts in flight all see the same
//! 429), and it climbs back linearly, to the ceiling in `RECOVERY`, while no 429 comes.

use std::time::Duration;

/// A 429 answered to several posts in flight at once is one signal, not many.
pub(crate) const DECREASE_SPACING: Duration = Duration::from_millis(200);
/// How long the rate takes to climb from the floor back to the ceiling without a 429.
pub(crate) const RECOVERY: Duration = Duration::from_secs(10);
/// What a 429 multiplies the rate by.
pub(crate) const DECREASE: f64 = 0.5;
/// The rate never falls below this share of the ceiling: a throttled environment still probes
/// and recovers, and 429s that do not come from our own rate (another API's burst, a fault)
/// cannot slow the fanout to a crawl.
pub(crate) const FLOOR: f64 = 0.25;
/// Tokens the bucket holds at most, in seconds of the current rate: enough to start a batch of
/// posts at once, small enough that environments starting together do not burst far above
/// their share.
pub const BURST: Duration = Duration::from_millis(100);

/// One environment's posting rate: a token bucket whose rate moves by AIMD.
#[derive(Debug, Clone, PartialEq)]
pub struct Governor {
    ceiling: f64,
    rate: f64,
    /// May go negative: a post that finds no token reserves one and is told how long to wait,
    /// so concurrent posts queue in order instead of all waking at once.
    tokens: f64,
    last: Duration,
    last_decrease: Option<Duration>,
    decreases: u64,
}

impl Governor {
    /// A governor for `ceiling` posts per second, full at `now`.
    pub fn new(ceiling: f64, now: Duration) -> Self {
        let ceiling = ceiling.max(1.0);
        Governor {
            ceiling,
            rate: ceiling,
            tokens: Self::burst_at(ceiling),
            last: now,
            last_decrease: None,
            decreases: 0,
        }
    }

    fn burst_at(rate: f64) -> f64 {
        (rate * BURST.as_secs_f64()).max(1.0)
    }

    pub fn ceiling(&self) -> f64 {
        self.ceiling
    }

    /// The rate allowed now, posts per second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// How many times a 429 lowered the rate.
    pub(crate) fn decreases(&self) -> u64 {
        self.decreases
    }

    fn advance(&mut self, now: Duration) {
        let dt = now.saturating_sub(self.last).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        self.tokens = (self.tokens + dt * self.rate).min(Self::burst_at(self.rate));
        // Additive increase, for the time since the last step.
        self.rate = (self.rate + self.ceiling * dt / RECOVERY.as_secs_f64()).min(self.ceiling);
        self.last = now;
    }

    /// Takes a token for one post at `now`: how long the post must wait first.
    pub fn reserve(&mut self, now: Duration) -> Duration {
        self.advance(now);
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }

    /// `@connections` answered 429 at `now`: multiplicative decrease.
    pub fn throttled(&mut self, now: Duration) {
        self.advance(now);
        if self
            .last_decrease
            .is_some_and(|at| now.saturating_sub(at) < DECREASE_SPACING)
        {
            return;
        }
        self.last_decrease = Some(now);
        self.decreases += 1;
        self.rate = (self.rate * DECREASE).max(self.ceiling * FLOOR).max(1.0);
        self.tokens = self.tokens.min(Self::burst_at(self.rate));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn posts_beyond_the_burst_wait_their_turn() {
        let mut g = Governor::new(100.0, MS(0));
        // A 100 ms burst at 100/s: ten posts go at once.
        for _ in 0..10 {
            assert_eq!(g.reserve(MS(0)), Duration::ZERO);
        }
        let waits: Vec<Duration> = (0..3).map(|_| g.reserve(MS(0))).collect();
        assert_eq!(waits, vec![MS(10), MS(20), MS(30)]);
    }

    #[test]
    fn a_429_halves_the_rate_once_per_burst_and_it_recovers() {
        let mut g = Governor::new(1000.0, MS(0));
        for _ in 0..50 {
            g.throttled(MS(10));
        }
        assert_eq!(g.rate(), 500.0);
        assert_eq!(g.decreases(), 1);
        g.throttled(MS(10) + DECREASE_SPACING);
        assert!(g.rate() < 500.0, "{}", g.rate());
        g.reserve(MS(10) + DECREASE_SPACING + RECOVERY);
        assert_eq!(g.rate(), 1000.0);
    }

    #[test]
    fn the_rate_never_falls_below_the_floor() {
        let mut g = Governor::new(1000.0, MS(0));
        for i in 0..100 {
            g.throttled(DECREASE_SPACING * i);
        }
        assert_eq!(g.rate(), 1000.0 * FLOOR);
    }

    proptest! {
        /// Whatever the arrivals and 429s, the posts started by time t never exceed the burst plus
        /// the ceiling times t: an environment never takes more than its share.
        #[test]
        fn never_above_the_share(
            ceiling in 1.0f64..20_000.0,
            steps in proptest::collection::vec((0u64..50, any::<bool>()), 1..400),
        ) {
            let mut g = Governor::new(ceiling, MS(0));
            let mut now = MS(0);
            let mut starts = Vec::new();
            for (gap, throttled) in steps {
                now += MS(gap);
                if throttled {
                    g.throttled(now);
                }
                starts.push(now + g.reserve(now));
                prop_assert!(g.rate() <= ceiling + 1e-9 && g.rate() >= (ceiling * FLOOR).max(1.0) - 1e-9);
            }
            starts.sort();
            for (i, t) in starts.iter().enumerate() {
                let allowed = Governor::burst_at(ceiling) + ceiling * t.as_secs_f64();
                prop_assert!((i + 1) as f64 <= allowed + 1e-6, "post {} at {:?} > {}", i + 1, t, allowed);
            }
        }

        /// Without a 429 the rate only climbs, and reaches the ceiling within RECOVERY.
        #[test]
        fn recovers_within_the_recovery_time(ceiling in 1.0f64..20_000.0, hits in 1u32..20) {
            let mut g = Governor::new(ceiling, MS(0));
            for i in 0..hits {
                g.throttled(DECREASE_SPACING * i);
            }
            let after = DECREASE_SPACING * hits;
            let mut previous = g.rate();
            for k in 1..=10u32 {
                g.reserve(after + RECOVERY * k / 10);
                prop_assert!(g.rate() >= previous);
                previous = g.rate();
            }
            prop_assert!((g.rate() - ceiling).abs() < 1e-9);
        }
    }
}
