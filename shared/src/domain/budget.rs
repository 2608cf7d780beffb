//! The shared `@connections` budget, the pure part: how an execution environment takes its posts
//! out of one per-second allowance that every fanout environment draws from.
//!
//! `FANOUT_MAX_RPS` is what all fanout together may post in one second. A fixed split
//! (`FANOUT_MAX_RPS / environments`) held a busy channel that posts alone to a 28th of it. Instead
//! each second has a counter in the table (`adapters::store::budget`), and an environment leases
//! blocks of that second's posts with one conditional update per block: the condition keeps the
//! sum of every lease of a second at or under the cap, so all fanout together never goes over it,
//! and one environment alone can take nearly all of it.
//!
//! A block is small when an environment starts posting in a second and doubles each time it is
//! used up within the same second, so a channel of ten members leases a few posts while a busy
//! broadcast needs only a handful of updates per second. In a second's last `NEAR_END` it is
//! also never more than the posts this environment can still make before the second ends at the
//! rate it has been posting: what is leased and not posted is lost to everyone for that second. Posts of a second's lease start
//! no later than `GUARD` before the second ends, so that a post in flight across the boundary is
//! not counted in the next second by the receiving end.
//!
//! Nothing here sleeps or does I/O: time is passed in, and the broadcaster acts on the answers.

use std::time::Duration;

/// Posts of a second's lease are not started in its last this-many milliseconds.
pub(crate) const GUARD: Duration = Duration::from_millis(30);

/// The first block of a second, as a fraction of the cap (at least one post).
pub(crate) const FIRST_BLOCK_FRACTION: f64 = 1.0 / 200.0;

/// The largest block, as a fraction of the cap: leaves room for the other environments.
pub(crate) const MAX_BLOCK_FRACTION: f64 = 1.0 / 4.0;

/// In this last part of a second (before the guard) a block is bounded by what the environment
/// can still post at its rate.
pub(crate) const NEAR_END: Duration = Duration::from_millis(300);

/// What a post must do before it may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A token was in hand: post now.
    Go,
    /// Ask the ledger for `want` posts of `second`, then call `Lease::granted` and take again.
    Lease { second: u64, want: u64 },
    /// This second is spent (or too near its end): take again after this wait.
    Wait(Duration),
}

/// One environment's posts of the shared budget: the tokens in hand and the next block's size.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Lease {
    cap: u64,
    /// The second the tokens in hand belong to.
    second: u64,
    tokens: u64,
    /// The next block's size.
    block: u64,
    /// Posts started in `second` so far: the rate that bounds a block near the second's end.
    started: u64,
    /// The ledger answered that this second has nothing left.
    spent: bool,
    /// Leases granted, and posts leased in all.
    pub leases: u64,
    pub leased: u64,
}

impl Lease {
    /// An environment's lease of `cap` posts per second, with nothing in hand.
    pub fn new(cap: u64) -> Self {
        let cap = cap.max(1);
        Lease {
            cap,
            second: 0,
            tokens: 0,
            block: Self::first_block(cap),
            started: 0,
            spent: false,
            leases: 0,
            leased: 0,
        }
    }

    pub fn cap(&self) -> u64 {
        self.cap
    }

    fn first_block(cap: u64) -> u64 {
        ((cap as f64 * FIRST_BLOCK_FRACTION).ceil() as u64).max(1)
    }

    fn max_block(cap: u64) -> u64 {
        ((cap as f64 * MAX_BLOCK_FRACTION).ceil() as u64).max(1)
    }

    /// Moves to the second `now` falls in, dropping the tokens of an earlier one (they can only
    /// be used in their own second).
    fn roll(&mut self, now: Duration) {
        let second = now.as_secs();
        if second != self.second {
            self.second = second;
            self.tokens = 0;
            self.started = 0;
            self.spent = false;
            // A new second starts from a smaller block: the load may have gone.
            self.block = (self.block / 2).max(Self::first_block(self.cap));
        }
    }

    /// Takes one post's token at `now` (wall-clock time since the epoch).
    pub fn take(&mut self, now: Duration) -> Take {
        self.roll(now);
        let into = now - Duration::from_secs(self.second);
        let left = Duration::from_secs(1).saturating_sub(into);
        if left <= GUARD {
            return Take::Wait(left);
        }
        if self.tokens > 0 {
            self.tokens -= 1;
            self.started += 1;
            return Take::Go;
        }
        if self.spent {
            return Take::Wait(left);
        }
        Take::Lease {
            second: self.second,
            want: self.want(into, left),
        }
    }

    /// The next block: its size, but no more than this environment can post before the guard at
    /// the rate it posted so far in this second (a quarter more, for a rate that is still rising).
    fn want(&self, into: Duration, left: Duration) -> u64 {
        let usable = left.saturating_sub(GUARD);
        // Earlier in the second the block alone decides: the rate so far includes the waits
        // for earlier leases, and bounding by it would keep the blocks as small as they began.
        if self.started == 0 || into < Duration::from_millis(50) || usable > NEAR_END {
            return self.block;
        }
        let (usable, elapsed) = (usable.as_secs_f64(), into.as_secs_f64());
        let rate = self.started as f64 / elapsed;
        let can_use = (rate * usable * 1.25).ceil() as u64;
        self.block.min(can_use.max(Self::first_block(self.cap)))
    }

    /// The ledger granted `granted` of the `want` posts asked for `second`.
    pub fn granted(&mut self, second: u64, want: u64, granted: u64) {
        if second != self.second {
            // The second ended while the lease was in flight: those posts are lost with it.
            return;
        }
        if granted > 0 {
            self.leases += 1;
            self.leased += granted;
        }
        self.tokens += granted;
        if granted < want {
            self.spent = true;
        } else {
            self.block = (self.block * 2).min(Self::max_block(self.cap));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    /// The ledger's rule, as the table's condition enforces it: a lease of a second is granted in
    /// full when it fits, else what is left.
    fn ledger(used: &mut std::collections::HashMap<u64, u64>, cap: u64, second: u64, want: u64) -> u64 {
        let used = used.entry(second).or_default();
        let granted = want.min(cap - *used);
        *used += granted;
        granted
    }

    #[test]
    fn a_post_leases_a_small_block_first_and_the_blocks_grow() {
        let mut lease = Lease::new(5000);
        let t = Duration::from_secs(1_000) + MS(10);
        assert_eq!(lease.take(t), Take::Lease { second: 1000, want: 25 });
        lease.granted(1000, 25, 25);
        for _ in 0..25 {
            assert_eq!(lease.take(t), Take::Go);
        }
        assert_eq!(lease.take(t), Take::Lease { second: 1000, want: 50 });
    }

    #[test]
    fn a_spent_second_waits_for_the_next_and_so_does_its_end() {
        let mut lease = Lease::new(100);
        let t = Duration::from_secs(7) + MS(400);
        let Take::Lease { want, .. } = lease.take(t) else {
            panic!()
        };
        lease.granted(7, want, 0);
        assert_eq!(lease.take(t), Take::Wait(MS(600)));
        // Near its end, a second lends nothing more.
        let late = Duration::from_secs(8) + MS(980);
        assert_eq!(lease.take(late), Take::Wait(MS(20)));
        assert!(matches!(
            lease.take(Duration::from_secs(9)),
            Take::Lease { second: 9, .. }
        ));
    }

    #[test]
    fn tokens_of_a_second_are_not_used_in_the_next() {
        let mut lease = Lease::new(1000);
        lease.take(Duration::from_secs(3));
        lease.granted(3, 5, 5);
        assert!(matches!(
            lease.take(Duration::from_secs(4)),
            Take::Lease { second: 4, .. }
        ));
        // A grant for a second that has ended adds nothing.
        lease.granted(3, 5, 5);
        assert!(matches!(lease.take(Duration::from_secs(4)), Take::Lease { .. }));
    }

    #[test]
    fn near_the_end_of_a_second_a_block_is_what_can_still_be_posted() {
        let mut lease = Lease::new(10_000);
        let start = Duration::from_secs(50);
        let mut used = std::collections::HashMap::new();
        let mut now = start;
        let mut wants = Vec::new();
        // Post at 1,000 per second (one a millisecond) through the second.
        while now < start + MS(960) {
            match lease.take(now) {
                Take::Go => now += MS(1),
                Take::Lease { second, want } => {
                    wants.push((now - start, want));
                    let g = ledger(&mut used, 10_000, second, want);
                    lease.granted(second, want, g);
                }
                Take::Wait(_) => panic!("alone, the budget is not spent"),
            }
        }
        // Each block is at most what this rate can post before the guard (a quarter more), not
        // the doubled block: 50, 100, 200, 400, then what the last 250 ms can take.
        for (at, want) in &wants {
            let usable = (Duration::from_secs(1) - GUARD).saturating_sub(*at).as_secs_f64();
            let bound = (1000.0 * usable * 1.25).ceil() as u64 + 2;
            assert!(*want <= bound.max(50), "at {at:?} asked {want} > {bound}: {wants:?}");
        }
        assert!(wants.len() >= 5, "{wants:?}");
    }

    proptest! {
        /// However many environments lease at whatever times, the posts started in any second
        /// never exceed the cap, and none starts in a second's guard.
        #[test]
        fn all_environments_together_never_exceed_the_cap(
            cap in 1u64..5000,
            envs in 1usize..6,
            steps in proptest::collection::vec((0usize..6, 0u64..40), 1..600),
        ) {
            let mut leases: Vec<Lease> = (0..envs).map(|_| Lease::new(cap)).collect();
            let mut used = std::collections::HashMap::new();
            let mut started: std::collections::HashMap<u64, u64> = Default::default();
            let mut now = Duration::from_secs(100);
            for (env, gap) in steps {
                now += MS(gap);
                let lease = &mut leases[env % envs];
                for _ in 0..3 {
                    match lease.take(now) {
                        Take::Go => {
                            let into = now - Duration::from_secs(now.as_secs());
                            prop_assert!(into < Duration::from_secs(1) - GUARD);
                            *started.entry(now.as_secs()).or_default() += 1;
                            break;
                        }
                        Take::Lease { second, want } => {
                            prop_assert!(want >= 1);
                            let g = ledger(&mut used, cap, second, want);
                            lease.granted(second, want, g);
                        }
                        Take::Wait(_) => break,
                    }
                }
            }
            for (second, n) in started {
                prop_assert!(n <= cap, "second {} started {} > {}", second, n, cap);
            }
        }

        /// One environment alone, posting as fast as it is let, starts at least 90% of the cap
        /// in a second, whatever the cap and however long a lease takes (up to 5 ms, a round
        /// trip to DynamoDB).
        #[test]
        fn one_environment_alone_uses_nearly_all_of_it(cap in 200u64..20_000, lease_ms in 0u64..5) {
            let mut lease = Lease::new(cap);
            let mut used = std::collections::HashMap::new();
            let start = Duration::from_secs(10);
            // Warm up through one second, then count the next whole second.
            let mut now = start;
            let step = Duration::from_secs_f64(1.0 / (cap as f64 * 1.5));
            let mut counted = 0u64;
            while now < start + Duration::from_secs(2) {
                match lease.take(now) {
                    Take::Go => {
                        if now.as_secs() == 11 {
                            counted += 1;
                        }
                        now += step;
                    }
                    Take::Lease { second, want } => {
                        let g = ledger(&mut used, cap, second, want);
                        now += MS(lease_ms);
                        lease.granted(second, want, g);
                    }
                    Take::Wait(w) => now += w,
                }
            }
            prop_assert!(counted as f64 >= 0.9 * cap as f64, "{} of {}", counted, cap);
        }
    }
}
