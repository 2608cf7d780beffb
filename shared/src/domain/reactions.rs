//! A message's reactions, kept as one summary per message instead of one history item each.
//!
//! The summary item (`REACT#<messageId>` in the channel's partition) holds one string set,
//! `reactions`, with an entry `"<user> <emoji>"` per user and emoji: a reaction is a set `ADD`
//! conditioned on the entry being absent, so a retried reaction counts once, and the counts are
//! the set's sizes, never a number that could drift from it. User ids have no spaces
//! (`access::validate_user_id`), so the first space splits an entry. The item also names the
//! latest reaction (`messageId`, `senderId`, `emoji`, `sentAt`): the stream record of a change then
//! says everything the pushed `reaction` frame needs. Pure: the store and the fanout use it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::channel::ChannelId;
use crate::protocol::ChatEvent;

/// The attribute holding the summary's entries.
pub(crate) const ENTRIES: &str = "reactions";

/// How many users a frame lists per emoji; the count is always exact. A frame must stay far
/// under `@connections`' 128 KB, whatever the size of the channel.
pub(crate) const MAX_LISTED_USERS: usize = 100;

/// One emoji's reactions to a message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub count: u64,
    /// Who reacted, sorted; at most `MAX_LISTED_USERS` of them.
    pub users: Vec<String>,
}

/// A message's reactions: each emoji's tally.
pub(crate) type Summary = BTreeMap<String, Tally>;

/// One user's reaction with an emoji to a message, as a handler hands it to the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reaction {
    pub channel: ChannelId,
    /// The message reacted to.
    pub target_id: String,
    /// This reaction's own id (a ULID), pushed as the frame's `messageId`.
    pub message_id: String,
    pub sender_id: String,
    pub emoji: String,
    pub sent_at: i64,
    /// When the summary may go: the message retention from the first reaction.
    pub expires_at: i64,
}

/// The set entry for a user's reaction with an emoji.
pub fn entry(user: &str, emoji: &str) -> String {
    format!("{user} {emoji}")
}

/// The summary item as stored (and as the stream's images carry it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SummaryItem {
    pub target_id: String,
    #[serde(default)]
    pub reactions: Vec<String>,
    /// The latest reaction: its id (what clients dedupe the pushed frame on), who, and with what.
    pub message_id: String,
    pub sender_id: String,
    pub emoji: String,
    pub sent_at: i64,
}

/// Each emoji's tally from the set's entries.
pub(crate) fn summarize<'a>(entries: impl IntoIterator<Item = &'a String>) -> Summary {
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in entries {
        if let Some((user, emoji)) = e.split_once(' ') {
            users.entry(emoji.to_owned()).or_default().push(user.to_owned());
        }
    }
    users
        .into_iter()
        .map(|(emoji, mut who)| {
            who.sort();
            let count = who.len() as u64;
            who.truncate(MAX_LISTED_USERS);
            (emoji, Tally { count, users: who })
        })
        .collect()
}

impl SummaryItem {
    pub fn summary(&self) -> Summary {
        summarize(&self.reactions)
    }

    /// The `reaction` frame pushed when the summary changed: the latest reaction, in the shape
    /// reactions always had (without `seq`: they are not in the channel's sequence), with the
    /// message's whole summary after it.
    pub fn to_event(&self, channel: &ChannelId) -> ChatEvent {
        ChatEvent {
            channel: channel.to_string(),
            message_id: self.message_id.clone(),
            seq: None,
            sender_id: self.sender_id.clone(),
            body: None,
            client_msg_id: None,
            target_id: Some(self.target_id.clone()),
            emoji: Some(self.emoji.clone()),
            reactions: Some(self.summary()),
            read_seq: None,
            sent_at: self.sent_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_count_every_user_and_list_at_most_the_limit() {
        let mut entries = vec![entry("bob", "❤️"), entry("al", "❤️"), entry("al", "a b")];
        entries.extend((0..150).map(|i| entry(&format!("u{i:03}"), "👍")));
        let summary = summarize(&entries);
        assert_eq!(
            summary["❤️"],
            Tally {
                count: 2,
                users: vec!["al".into(), "bob".into()]
            }
        );
        assert_eq!(summary["a b"].users, vec!["al".to_owned()], "an emoji may hold spaces");
        assert_eq!(summary["👍"].count, 150);
        assert_eq!(summary["👍"].users.len(), MAX_LISTED_USERS);
        assert_eq!(summary["👍"].users[0], "u000");
    }
}
