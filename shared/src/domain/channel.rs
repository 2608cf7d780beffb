//! Channels: `<kind>:<id>`, the one concept behind chats, sessions, bookings, documents and
//! personal notifications. Anything that does not parse is rejected before it is stored.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

pub(crate) const MAX_ID_LEN: usize = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ChannelKind {
    Workspace,
    Session,
    Booking,
    Doc,
    User,
}

impl ChannelKind {
    pub const ALL: [ChannelKind; 5] = [
        ChannelKind::Workspace,
        ChannelKind::Session,
        ChannelKind::Booking,
        ChannelKind::Doc,
        ChannelKind::User,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChannelKind::Workspace => "workspace",
            ChannelKind::Session => "session",
            ChannelKind::Booking => "booking",
            ChannelKind::Doc => "doc",
            ChannelKind::User => "user",
        }
    }

    /// Conversations are what a connection talks in; its personal `user:` channel and the
    /// `doc:` channels it follows progress in are not, so they never make a default channel.
    pub(crate) fn is_conversation(self) -> bool {
        !matches!(self, ChannelKind::User | ChannelKind::Doc)
    }

    fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    #[error("channel must look like <kind>:<id>, got {0:?}")]
    Shape(String),
    #[error("unknown channel kind {0:?}; expected one of workspace, session, booking, doc, user")]
    Kind(String),
    #[error("channel id must be 1-128 characters of A-Z a-z 0-9 _ . @ -, got {0:?}")]
    Id(String),
}

/// Checks an id against the channel id alphabet; doc ids and session ids use the same rule.
pub(crate) fn validate_id(id: &str) -> Result<(), ChannelError> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'@' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ChannelError::Id(truncate_for_message(id)))
    }
}

fn truncate_for_message(s: &str) -> String {
    s.chars().take(64).collect()
}

/// A validated channel id such as `workspace:42` or `doc:report-7`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelId {
    kind: ChannelKind,
    id: String,
}

impl ChannelId {
    pub fn new(kind: ChannelKind, id: &str) -> Result<Self, ChannelError> {
        validate_id(id)?;
        Ok(ChannelId {
            kind,
            id: id.to_owned(),
        })
    }

    pub fn user(sub: &str) -> Result<Self, ChannelError> {
        Self::new(ChannelKind::User, sub)
    }

    pub fn doc(doc_id: &str) -> Result<Self, ChannelError> {
        Self::new(ChannelKind::Doc, doc_id)
    }

    pub fn kind(&self) -> ChannelKind {
        self.kind
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl FromStr for ChannelId {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (kind, id) = s
            .split_once(':')
            .ok_or_else(|| ChannelError::Shape(truncate_for_message(s)))?;
        let kind = ChannelKind::parse(kind).ok_or_else(|| ChannelError::Kind(truncate_for_message(kind)))?;
        ChannelId::new(kind, id)
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind.as_str(), self.id)
    }
}

impl Serialize for ChannelId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ChannelId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A pattern from a token's `channels` claim: `workspace:42`, `doc:*`, or `*` for every channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChannelPattern {
    Any,
    AnyOfKind(ChannelKind),
    Exact(ChannelId),
}

impl ChannelPattern {
    pub fn matches(&self, channel: &ChannelId) -> bool {
        match self {
            ChannelPattern::Any => true,
            ChannelPattern::AnyOfKind(kind) => channel.kind() == *kind,
            ChannelPattern::Exact(c) => c == channel,
        }
    }
}

impl FromStr for ChannelPattern {
    type Err = ChannelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "*" {
            return Ok(ChannelPattern::Any);
        }
        match s.split_once(':') {
            Some((kind, "*")) => ChannelKind::parse(kind)
                .map(ChannelPattern::AnyOfKind)
                .ok_or_else(|| ChannelError::Kind(truncate_for_message(kind))),
            _ => s.parse().map(ChannelPattern::Exact),
        }
    }
}

impl fmt::Display for ChannelPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChannelPattern::Any => f.write_str("*"),
            ChannelPattern::AnyOfKind(k) => write!(f, "{}:*", k.as_str()),
            ChannelPattern::Exact(c) => c.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind() {
        for kind in ChannelKind::ALL {
            let c: ChannelId = format!("{}:a-b_c.d@e", kind.as_str()).parse().unwrap();
            assert_eq!(c.kind(), kind);
            assert_eq!(c.id(), "a-b_c.d@e");
            assert_eq!(c.to_string(), format!("{}:a-b_c.d@e", kind.as_str()));
        }
    }

    #[test]
    fn rejects_bad_channels() {
        assert!(matches!("workspace".parse::<ChannelId>(), Err(ChannelError::Shape(_))));
        assert!(matches!("team:1".parse::<ChannelId>(), Err(ChannelError::Kind(_))));
        assert!(matches!("workspace:".parse::<ChannelId>(), Err(ChannelError::Id(_))));
        assert!(matches!("workspace:a b".parse::<ChannelId>(), Err(ChannelError::Id(_))));
        assert!(matches!("workspace:a#b".parse::<ChannelId>(), Err(ChannelError::Id(_))));
        assert!(matches!("doc:a:b".parse::<ChannelId>(), Err(ChannelError::Id(_))));
        let long = format!("doc:{}", "x".repeat(129));
        assert!(matches!(long.parse::<ChannelId>(), Err(ChannelError::Id(_))));
        let max = format!("doc:{}", "x".repeat(128));
        assert!(max.parse::<ChannelId>().is_ok());
    }

    #[test]
    fn patterns_match() {
        let ws42: ChannelId = "workspace:42".parse().unwrap();
        let ws43: ChannelId = "workspace:43".parse().unwrap();
        let doc: ChannelId = "doc:9".parse().unwrap();
        let exact: ChannelPattern = "workspace:42".parse().unwrap();
        let kind: ChannelPattern = "doc:*".parse().unwrap();
        let any: ChannelPattern = "*".parse().unwrap();
        assert!(exact.matches(&ws42) && !exact.matches(&ws43) && !exact.matches(&doc));
        assert!(kind.matches(&doc) && !kind.matches(&ws42));
        assert!(any.matches(&ws42) && any.matches(&doc));
        assert!("nope:*".parse::<ChannelPattern>().is_err());
        assert_eq!(kind.to_string(), "doc:*");
    }
}
