//! Wall-clock helpers: items store epoch milliseconds for ordering and epoch seconds for TTL.

use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_millis() -> i64 {
    since_epoch().as_millis() as i64
}

/// The wall clock as a duration since the epoch (zero if the clock is before it).
pub(crate) fn since_epoch() -> std::time::Duration {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default()
}

pub fn now_secs() -> i64 {
    now_millis() / 1000
}

/// Microseconds: the limit per connection keeps its state at this resolution.
pub fn now_micros() -> i64 {
    since_epoch().as_micros() as i64
}

/// What is left until `deadline_ms` (milliseconds since the epoch, as Lambda's Runtime API gives
/// an invocation's deadline); zero once it has passed.
pub fn time_left(deadline_ms: u64) -> std::time::Duration {
    let now_ms = u64::try_from(now_millis()).unwrap_or(0);
    std::time::Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}
