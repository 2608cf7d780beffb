//! Records that fail: the destination of those that can never be used, and how one failure
//! holds up the rest of its channel's records.

use aws_lambda_events::dynamodb::EventRecord;
use wsfan_shared::broadcaster::Counters;

use crate::RecordError;

/// What the failure destination receives: the reason and the record as the stream gave it.
pub fn failure_body(record: &EventRecord, reason: &str) -> String {
    serde_json::json!({
        "condition": "UnusableRecord",
        "reason": reason,
        "function": "stream-fanout",
        "record": record,
    })
    .to_string()
}

/// What a channel's records came to: an outcome per record, in order.
pub(crate) type ChannelOutcomes = Vec<Result<Counters, RecordError>>;

/// Record `first` failed with `error`: it and every later record of its channel are retried, the
/// later ones behind it, so the retry replays them in order.
pub(crate) fn fail_from(outcomes: &mut ChannelOutcomes, first: usize, error: RecordError) {
    let reason = error.to_string();
    outcomes[first] = Err(error);
    for later in outcomes.iter_mut().skip(first + 1) {
        *later = Err(RecordError::Blocked(reason.clone()));
    }
}
