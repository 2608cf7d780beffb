//! DynamoDB stream records (lambdas/stream-fanout classify): any record is work (a push, or a
//! history page for one connection), nothing, or a `Malformed` error, never a panic; a push's
//! frame is JSON that fits one post, for a channel that parses.
#![no_main]

use aws_lambda_events::dynamodb::EventRecord;
use libfuzzer_sys::fuzz_target;
use stream_fanout::{classify, RecordError, Work};

fuzz_target!(|data: &[u8]| {
    let Ok(record) = serde_json::from_slice::<EventRecord>(data) else {
        return;
    };
    match classify(&record) {
        Ok(Some(Work::Push(push))) => {
            let json = push.frame.to_json();
            assert!(
                json.len() <= wsfan_shared::broadcaster::MAX_PAYLOAD_BYTES,
                "a push fits one post"
            );
            let frame: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert!(frame["type"].is_string());
            assert_eq!(
                push.channel.to_string().parse::<wsfan_shared::ChannelId>().unwrap(),
                push.channel
            );
        }
        Ok(Some(Work::History { channel, limit, .. })) => {
            assert_eq!(channel.to_string().parse::<wsfan_shared::ChannelId>().unwrap(), channel);
            assert!(limit >= 1);
        }
        Ok(None) => {}
        Err(RecordError::Malformed(_)) => {}
        Err(other) => panic!("classify does no I/O, yet failed with {other}"),
    }
});
