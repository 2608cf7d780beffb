//! Channel ids and the patterns of a token's `channels` claim (shared/src/domain/channel.rs, access.rs):
//! no panic, and whatever parses prints back to text that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsfan_shared::access::parse_patterns;
use wsfan_shared::channel::{ChannelId, ChannelPattern};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(channel) = text.parse::<ChannelId>() {
        let printed = channel.to_string();
        assert_eq!(printed, text, "a channel id has one spelling");
        assert_eq!(printed.parse::<ChannelId>().unwrap(), channel);
        // An exact pattern matches its channel and nothing of another kind.
        let pattern: ChannelPattern = printed.parse().unwrap();
        assert!(pattern.matches(&channel));
    }
    if let Ok(patterns) = parse_patterns(text) {
        let joined: Vec<String> = patterns.iter().map(ToString::to_string).collect();
        assert_eq!(parse_patterns(&joined.join(",")).unwrap(), patterns);
        for p in &patterns {
            assert!(!p.to_string().contains(','), "a pattern never carries the separator");
        }
    }
});
