//! DynamoDB stream records (lambdas/stream-fanout classify): any record is a push, nothing, or a
//! `Malformed` error, never a panic; a push's frame is JSON for a channel that parses.
#![no_main]

use aws_lambda_events::dynamodb::EventRecord;
use libfuzzer_sys::fuzz_target;
use stream_fanout::{classify, RecordError};

fuzz_target!(|data: &[u8]| {
    let Ok(record) = serde_json::from_slice::<EventRecord>(data) else {
        return;
    };
    match classify(&record) {
        Ok(Some(push)) => {
            let frame: serde_json::Value = serde_json::from_str(&push.frame.to_json()).unwrap();
            assert!(frame["type"].is_string());
            assert_eq!(
                push.channel.to_string().parse::<wsfan_shared::ChannelId>().unwrap(),
                push.channel
            );
        }
        Ok(None) => {}
        Err(RecordError::Malformed(_)) => {}
        Err(other) => panic!("classify does no I/O, yet failed with {other}"),
    }
});
