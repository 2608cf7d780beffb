//! The cadence of a busy channel: how long a stream-fanout invocation holds its stream lane so
//! that the lane's next batch brings several of the channel's records, and each member that
//! takes batches gets them in one post.
//!
//! Lambda hands a lane its next batch only once the invocation before has ended, and that batch
//! holds what arrived meanwhile. The template has no batching window (it would delay every
//! channel's frames, typing and presence included, by its length), so a batch holds what arrived
//! in about one poll (a quarter of a second). A channel of 1,000 members at 5 messages a second
//! then gets one or two messages a batch, and every member a post for each one or two frames:
//! thousands of posts a second, each billed and each drawn from `FanoutMaxRps`.
//!
//! So when a channel is busy (its batching members would take at least `BUSY_FRAMES_PER_SECOND`
//! frames a second), the invocation that carried it ends no sooner than the window in which
//! `FRAMES_PER_POST` of its records arrive, and never later than the configured maximum after
//! it began. A quiet channel, or one whose members take a frame a post, is never held.
//!
//! The rate is the channel's messages a second, from their own sequence numbers and times
//! (`seq`, `sentAt`). Lambda hands a lane's batches to whichever environment of the function is
//! free, so an environment may see one batch of a channel in three: a rate from the batches it
//! saw would be a third of the real one, and a rate from one batch of one or two messages is
//! noise. A channel's sequence is gapless, so the messages between the last one this environment
//! saw and the newest of this batch are all the channel's, whoever delivered them: that span
//! gives the rate. An environment that has not seen the channel in the last 5 s (`STALE_MS`)
//! uses the batch's own span when it holds at least three messages, else does not hold.
//! Presence, typing, receipts and reactions carry no sequence number and do not count. A wrong
//! rate costs frames per post or latency within the maximum, never a frame.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Frames one post should carry for a busy channel's batching members. Eight, not five: a batch
/// holds what the polls brought during the window, a quarter of a second either way, so a window
/// of five records' length gave 4.9 a post at 20 messages a second (`bench hot`).
pub(crate) const FRAMES_PER_POST: f64 = 8.0;

/// Below this many frames a second to batching members, a channel is not held: its posts cost
/// little, and its members' latency is worth more.
pub(crate) const BUSY_FRAMES_PER_SECOND: f64 = 1_000.0;

/// A last message older than this says nothing of the rate now: the channel went quiet.
const STALE_MS: i64 = 5_000;

/// Environments remember at most this many channels; past it they start again.
const REMEMBERED: usize = 10_000;

/// A message of the channel's sequence: its number and when it was written (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sequenced {
    pub seq: u64,
    pub sent_at_ms: i64,
}

/// One environment's memory of the channels it fanned out (the newest message of each it saw),
/// and the hold its current invocation asks for. A Lambda environment runs one invocation at a
/// time, so the hold is that one's.
#[derive(Debug)]
pub struct Cadence {
    max_window: Duration,
    busy_frames_per_second: f64,
    newest: HashMap<String, Sequenced>,
    hold: Option<Instant>,
}

impl Cadence {
    /// `max_window`: the longest a batch may be held (`FANOUT_COALESCE_MS`); zero never holds.
    pub fn new(max_window: Duration) -> Self {
        Cadence {
            max_window,
            busy_frames_per_second: BUSY_FRAMES_PER_SECOND,
            newest: HashMap::new(),
            hold: None,
        }
    }

    /// The same, busy from `frames_per_second` to batching members on.
    pub fn busy_from(mut self, frames_per_second: f64) -> Self {
        self.busy_frames_per_second = frames_per_second;
        self
    }

    /// A batch taken at `taken_at` carried `messages` of `channel` (in any order), for its
    /// members, `batching` of whom take several frames a post. Returns the window the invocation
    /// should last (zero for none) and keeps the latest end asked for, for [`Cadence::take_hold`].
    pub fn observe(&mut self, channel: &str, messages: &[Sequenced], batching: usize, taken_at: Instant) -> Duration {
        let (Some(first), Some(last)) = (
            messages.iter().min_by_key(|m| m.seq),
            messages.iter().max_by_key(|m| m.seq),
        ) else {
            return Duration::ZERO;
        };
        let before = self
            .newest
            .get(channel)
            .copied()
            .filter(|seen| seen.seq < last.seq && last.sent_at_ms - seen.sent_at_ms <= STALE_MS);
        let rate = match before {
            Some(seen) => rate_between(seen, *last),
            None if messages.len() >= 3 => rate_between(*first, *last),
            None => None,
        };
        if self.newest.len() >= REMEMBERED && !self.newest.contains_key(channel) {
            self.newest.clear();
        }
        let newest = self.newest.entry(channel.to_owned()).or_insert(*last);
        if last.seq >= newest.seq {
            *newest = *last;
        }
        let window = self.window(rate, batching);
        if !window.is_zero() {
            let until = taken_at + window;
            self.hold = Some(self.hold.map_or(until, |held| held.max(until)));
        }
        window
    }

    fn window(&self, rate: Option<f64>, batching: usize) -> Duration {
        let Some(rate) = rate.filter(|r| *r > 0.0) else {
            return Duration::ZERO;
        };
        // Held only where the longest window gathers at least half the frames a post is for: a
        // hold costs its members the whole window, and for two or three frames a post it is not
        // worth that (a 1,000-member channel at 2 messages a second: `bench local`'s p99 went
        // from 0.37 to 1.6 s for 0.4 posts a frame).
        let gathers = rate * self.max_window.as_secs_f64() >= FRAMES_PER_POST / 2.0;
        if !gathers || batching as f64 * rate < self.busy_frames_per_second {
            return Duration::ZERO;
        }
        Duration::from_secs_f64(FRAMES_PER_POST / rate).min(self.max_window)
    }

    /// The end the current invocation's busy channels asked for, if any; and forgets it.
    pub fn take_hold(&mut self) -> Option<Instant> {
        self.hold.take()
    }
}

/// Messages a second from one message of the sequence to a later one.
fn rate_between(from: Sequenced, to: Sequenced) -> Option<f64> {
    let span_ms = to.sent_at_ms - from.sent_at_ms;
    (to.seq > from.seq && span_ms > 0).then(|| (to.seq - from.seq) as f64 * 1000.0 / span_ms as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// Messages `from..to` of a channel at `per_second`, written from t = 10 s.
    fn run(from: u64, to: u64, per_second: f64) -> Vec<Sequenced> {
        (from..to)
            .map(|seq| Sequenced {
                seq,
                sent_at_ms: 10_000 + (seq as f64 * 1000.0 / per_second) as i64,
            })
            .collect()
    }

    fn close(a: Duration, b: Duration) -> bool {
        a.abs_diff(b) < Duration::from_millis(2)
    }

    #[test]
    fn a_busy_channel_is_held_for_eight_messages_and_never_past_the_maximum() {
        let now = Instant::now();
        // 1,000 batching members, 5 messages a second: eight would take 1.6 s, so the longest.
        let mut cadence = Cadence::new(SECOND);
        assert!(
            cadence.observe("c", &run(1, 3, 5.0), 1_000, now).is_zero(),
            "two say nothing yet"
        );
        assert_eq!(cadence.observe("c", &run(3, 4, 5.0), 1_000, now), SECOND);
        assert_eq!(cadence.take_hold(), Some(now + SECOND));
        // 100 members at 20 a second: 400 ms gathers eight.
        let mut cadence = Cadence::new(SECOND);
        assert!(close(cadence.observe("c", &run(1, 6, 20.0), 100, now), SECOND * 2 / 5));
        // 200 a second: eight arrive in 40 ms.
        let mut cadence = Cadence::new(SECOND);
        assert!(close(cadence.observe("c", &run(1, 51, 200.0), 100, now), SECOND / 25));
    }

    #[test]
    fn batches_this_environment_did_not_see_still_count_through_the_sequence() {
        // The environment sees messages 1-2, then (two batches later, elsewhere) 9-10: 10 a
        // second, not the 4 it would count from its own batches.
        let now = Instant::now();
        let mut cadence = Cadence::new(SECOND * 2);
        cadence.observe("c", &run(1, 3, 10.0), 1_000, now);
        assert!(close(
            cadence.observe("c", &run(9, 11, 10.0), 1_000, now),
            SECOND * 4 / 5
        ));
        // One message alone, with the memory: still the channel's rate.
        assert!(close(
            cadence.observe("c", &run(14, 15, 10.0), 1_000, now),
            SECOND * 4 / 5
        ));
    }

    #[test]
    fn quiet_channels_and_members_taking_a_frame_a_post_are_not_held() {
        let now = Instant::now();
        let held = |batching: usize, per_second: f64, max: Duration| {
            let mut cadence = Cadence::new(max);
            cadence.observe("c", &run(1, 5, per_second), batching, now);
            !cadence.observe("c", &run(5, 9, per_second), batching, now).is_zero()
        };
        assert!(held(100, 20.0, SECOND));
        // 20 a second to 10 batching members: 200 frames a second.
        assert!(!held(10, 20.0, SECOND));
        // 5,000 members, none batching.
        assert!(!held(0, 20.0, SECOND));
        // A message a second to 100,000, or 3 a second to 1,000: the longest window would
        // gather fewer than four.
        assert!(!held(100_000, 1.0, SECOND));
        assert!(!held(1_000, 3.0, SECOND));
        assert!(held(1_000, 4.0, SECOND));
        // Off.
        assert!(!held(1_000, 20.0, Duration::ZERO));
    }

    #[test]
    fn records_without_a_sequence_and_a_channel_quiet_for_long_say_nothing() {
        let now = Instant::now();
        let mut cadence = Cadence::new(SECOND);
        assert!(cadence.observe("c", &[], 1_000, now).is_zero());
        cadence.observe("c", &run(1, 2, 5.0), 1_000, now);
        assert!(!cadence.observe("c", &run(2, 3, 5.0), 1_000, now).is_zero());
        // Sixty seconds later: the old message is no baseline, and one new one is not enough.
        let late = [Sequenced {
            seq: 3,
            sent_at_ms: 70_000,
        }];
        assert!(cadence.observe("c", &late, 1_000, now).is_zero());
        // All at the same millisecond: no rate.
        let same = [2, 3, 4].map(|seq| Sequenced { seq, sent_at_ms: 5 });
        assert!(Cadence::new(SECOND).observe("d", &same, 1_000, now).is_zero());
    }

    #[test]
    fn the_hold_is_the_latest_end_asked_for_in_the_invocation_and_is_taken_once() {
        let mut cadence = Cadence::new(SECOND);
        let now = Instant::now();
        cadence.observe("a", &run(1, 6, 20.0), 1_000, now); // 400 ms
        cadence.observe("b", &run(1, 6, 16.0), 1_000, now); // 500 ms
        assert!(cadence.take_hold().is_some_and(|until| close(until - now, SECOND / 2)));
        assert_eq!(cadence.take_hold(), None);
    }
}
