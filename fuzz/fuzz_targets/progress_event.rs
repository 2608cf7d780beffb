//! Progress events from the queue (shared/src/domain/progress.rs): any body is an event or an error,
//! never a panic; a valid event survives a round trip through its JSON unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsfan_shared::progress::ProgressEvent;

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(event) = ProgressEvent::parse(body) {
        let json = serde_json::to_string(&event).unwrap();
        assert_eq!(
            ProgressEvent::parse(&json).expect("a valid event's JSON is valid"),
            event
        );
        // Its document always names a channel.
        assert!(wsfan_shared::channel::ChannelId::doc(&event.doc_id).is_ok());
    }
});
