//! Who a connection is and what it may do. The authorizer builds an [`Identity`] from the token,
//! API Gateway hands its context to every later event, and the handlers ask it before each write.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::channel::{validate_id, ChannelId, ChannelKind, ChannelPattern};

/// API Gateway refuses authorizer contexts above this size, so the authorizer checks it.
pub const MAX_CONTEXT_BYTES: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads and writes in the channels its token allows.
    #[default]
    Member,
    /// Read-only: may join and subscribe, never send.
    Listener,
    /// A trusted operator or backend: every channel.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Listener => "listener",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "member" | "user" => Ok(Role::Member),
            "listener" => Ok(Role::Listener),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}")),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of a WebSocket route, as established on `$connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`; `None` for an anonymous listener.
    pub user_id: Option<String>,
    pub role: Role,
    pub channels: Vec<ChannelPattern>,
    /// The token's `exp` (epoch seconds), after which the connection is closed unless an `auth`
    /// frame refreshed it; `None` for an anonymous listener, which has no token to expire.
    pub expires: Option<i64>,
}

/// What an `auth` frame stored for a connection: from then on it stands in for the authorizer's
/// context, which API Gateway fixes for the connection's life. The user stays the same.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refreshed {
    pub role: Role,
    pub channels: Vec<ChannelPattern>,
    pub expires: i64,
}

impl Refreshed {
    /// Reads the stored attributes back (`role`, `channels` comma-joined, `tokenExp`).
    pub fn parse(role: &str, channels: &str, expires: i64) -> Result<Self, IdentityError> {
        Ok(Refreshed {
            role: role.parse().map_err(IdentityError::Malformed)?,
            channels: parse_patterns(channels).map_err(IdentityError::Malformed)?,
            expires,
        })
    }
}

/// The authorizer context key for [`Identity::expires`].
pub(crate) const TOKEN_EXP_CONTEXT: &str = "tokenExp";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the request carries no authorizer context")]
    Missing,
    #[error("authorizer context is malformed: {0}")]
    Malformed(String),
}

impl Identity {
    pub fn anonymous(channels: Vec<ChannelPattern>) -> Self {
        Identity {
            user_id: None,
            role: Role::Listener,
            channels,
            expires: None,
        }
    }

    /// This identity as a refresh left it.
    pub fn refreshed(mut self, refreshed: Option<Refreshed>) -> Identity {
        if let Some(r) = refreshed {
            self.role = r.role;
            self.channels = r.channels;
            self.expires = Some(r.expires);
        }
        self
    }

    /// Has the token expired at `now_secs`? Never for an identity without a token.
    pub fn expired(&self, now_secs: i64) -> bool {
        self.expires.is_some_and(|exp| exp <= now_secs)
    }

    /// The channels of `memberships` this identity may no longer read (after a narrower token).
    pub fn no_longer_allowed<'a>(&self, memberships: impl IntoIterator<Item = &'a ChannelId>) -> Vec<ChannelId> {
        memberships.into_iter().filter(|c| !self.may_read(c)).cloned().collect()
    }

    /// The personal channel every authenticated connection joins on `$connect`.
    pub fn personal_channel(&self) -> Option<ChannelId> {
        self.user_id.as_deref().and_then(|sub| ChannelId::user(sub).ok())
    }

    /// May this caller receive what is posted in `channel` (join, subscribe, history)?
    pub fn may_read(&self, channel: &ChannelId) -> bool {
        if self.role == Role::Admin {
            return true;
        }
        if channel.kind() == ChannelKind::User && self.user_id.as_deref() == Some(channel.id()) {
            return true;
        }
        self.channels.iter().any(|p| p.matches(channel))
    }

    /// May this caller post in `channel` (send, react, typing, read receipts)?
    pub fn may_write(&self, channel: &ChannelId) -> bool {
        self.user_id.is_some() && self.role != Role::Listener && self.may_read(channel)
    }

    /// The sender id stored on items this caller writes.
    pub fn sender_id(&self) -> &str {
        self.user_id.as_deref().unwrap_or("anonymous")
    }

    /// The flat context the authorizer returns; API Gateway only allows strings, numbers and
    /// booleans as values, so the channel patterns travel comma-joined.
    pub fn to_context(&self) -> HashMap<String, Value> {
        let mut ctx = HashMap::new();
        if let Some(user) = &self.user_id {
            ctx.insert("userId".to_owned(), Value::String(user.clone()));
        }
        ctx.insert("role".to_owned(), Value::String(self.role.as_str().to_owned()));
        let channels: Vec<String> = self.channels.iter().map(ToString::to_string).collect();
        ctx.insert("channels".to_owned(), Value::String(channels.join(",")));
        // A string, like every value of the context: what API Gateway passes on for certain.
        if let Some(exp) = self.expires {
            ctx.insert(TOKEN_EXP_CONTEXT.to_owned(), Value::String(exp.to_string()));
        }
        ctx
    }

    /// Reads the context back from `requestContext.authorizer` of a later event.
    pub fn from_context(ctx: &serde_json::Map<String, Value>) -> Result<Self, IdentityError> {
        let role = match ctx.get("role") {
            Some(Value::String(r)) => r.parse().map_err(IdentityError::Malformed)?,
            Some(_) => return Err(IdentityError::Malformed("role is not a string".into())),
            None => return Err(IdentityError::Missing),
        };
        let user_id = match ctx.get("userId") {
            Some(Value::String(u)) if !u.is_empty() => {
                validate_user_id(u).map_err(IdentityError::Malformed)?;
                Some(u.clone())
            }
            Some(Value::String(_)) | None | Some(Value::Null) => None,
            Some(_) => return Err(IdentityError::Malformed("userId is not a string".into())),
        };
        let channels = match ctx.get("channels") {
            Some(Value::String(s)) => parse_patterns(s).map_err(IdentityError::Malformed)?,
            None | Some(Value::Null) => Vec::new(),
            Some(_) => return Err(IdentityError::Malformed("channels is not a string".into())),
        };
        // A number from our authorizer; API Gateway may hand context values on as strings.
        let expires = match ctx.get(TOKEN_EXP_CONTEXT) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => n.as_i64(),
            Some(Value::String(s)) => s.parse().ok(),
            Some(_) => None,
        };
        Ok(Identity {
            user_id,
            role,
            channels,
            expires,
        })
    }
}

/// Checks a user id (a token's `sub`). It names the user's own channel `user:<sub>`, so it follows
/// the channel id rule: 1-128 characters of A-Z a-z 0-9 _ . @ -. That rule also keeps every key
/// built from it (`USER#<sub>`, `DEDUPE#<sub>#<clientMsgId>`, `CHAN#user:<sub>`) far under
/// DynamoDB's key limits (model.rs checks the longest), and keeps `#`, which separates key parts,
/// out of it. Cognito's UUID subs and e-mail-like ids pass; ids with `|` (Auth0's `auth0|…`) do not.
pub fn validate_user_id(sub: &str) -> Result<(), String> {
    validate_id(sub).map_err(|_| {
        format!(
            "sub must be 1-128 characters of A-Z a-z 0-9 _ . @ - (it names the channel user:<sub>); got {} bytes: {:?}",
            sub.len(),
            sub.chars().take(64).collect::<String>()
        )
    })
}

/// Parses a comma-separated list of channel patterns, ignoring blanks.
pub fn parse_patterns(s: &str) -> Result<Vec<ChannelPattern>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| p.parse::<ChannelPattern>().map_err(|e| e.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(channels: &str) -> Identity {
        Identity {
            user_id: Some("alice".into()),
            role: Role::Member,
            channels: parse_patterns(channels).unwrap(),
            expires: Some(2_000_000_000),
        }
    }

    #[test]
    fn member_reads_and_writes_allowed_channels_only() {
        let id = member("workspace:42,doc:*");
        let ws42 = "workspace:42".parse().unwrap();
        let ws43 = "workspace:43".parse().unwrap();
        let doc = "doc:1".parse().unwrap();
        assert!(id.may_read(&ws42) && id.may_write(&ws42));
        assert!(!id.may_read(&ws43) && !id.may_write(&ws43));
        assert!(id.may_read(&doc));
    }

    #[test]
    fn own_user_channel_is_always_readable() {
        let id = member("");
        assert!(id.may_read(&"user:alice".parse().unwrap()));
        assert!(!id.may_read(&"user:bob".parse().unwrap()));
        assert_eq!(id.personal_channel().unwrap().to_string(), "user:alice");
    }

    #[test]
    fn listeners_and_anonymous_never_write() {
        let mut id = member("workspace:42");
        id.role = Role::Listener;
        let ws42 = "workspace:42".parse().unwrap();
        assert!(id.may_read(&ws42) && !id.may_write(&ws42));
        let anon = Identity::anonymous(parse_patterns("workspace:42").unwrap());
        assert!(anon.may_read(&ws42) && !anon.may_write(&ws42));
        assert!(anon.personal_channel().is_none());
    }

    #[test]
    fn context_round_trips() {
        let id = member("workspace:42,doc:*");
        let ctx: serde_json::Map<String, Value> = id.to_context().into_iter().collect();
        assert_eq!(Identity::from_context(&ctx).unwrap(), id);
        let anon = Identity::anonymous(vec![]);
        let ctx: serde_json::Map<String, Value> = anon.to_context().into_iter().collect();
        assert_eq!(Identity::from_context(&ctx).unwrap(), anon);
        assert_eq!(
            Identity::from_context(&serde_json::Map::new()),
            Err(IdentityError::Missing)
        );
    }

    #[test]
    fn the_expiry_travels_in_the_context_and_a_narrower_token_names_what_it_leaves() {
        let mut ctx: serde_json::Map<String, Value> = member("").to_context().into_iter().collect();
        assert_eq!(Identity::from_context(&ctx).unwrap().expires, Some(2_000_000_000));
        ctx.insert(TOKEN_EXP_CONTEXT.into(), Value::String("123".into()));
        let id = Identity::from_context(&ctx).unwrap();
        assert!(id.expired(123) && !id.expired(122));
        assert!(!Identity::anonymous(vec![]).expired(i64::MAX));
        let narrow = member("doc:*");
        let joined: Vec<ChannelId> = ["workspace:1", "doc:1", "user:alice"]
            .iter()
            .map(|c| c.parse().unwrap())
            .collect();
        assert_eq!(
            narrow.no_longer_allowed(&joined),
            vec!["workspace:1".parse::<ChannelId>().unwrap()]
        );
    }

    #[test]
    fn user_ids_follow_the_channel_id_rule() {
        let max = "x".repeat(128);
        for good in [
            "a",
            "alice",
            "alice@example.com",
            "a.b_c-d",
            "0f6e5d9c-4a44-4fd2-9a36-2f1e6c4b8a11",
            &max,
        ] {
            assert_eq!(validate_user_id(good), Ok(()), "{good:?}");
        }
        let long = "x".repeat(129);
        let huge = "x".repeat(1100);
        for bad in [
            "",
            "a#b",
            "a/b",
            "a b",
            "a\0b",
            "auth0|123",
            "user:alice",
            "caf\u{e9}",
            "\u{1f600}",
            &long,
            &huge,
        ] {
            let why = validate_user_id(bad).expect_err(bad);
            assert!(why.contains("sub must be 1-128 characters"), "{why}");
            assert!(why.len() < 300, "a hostile sub is not copied whole into the log: {why}");
        }
    }

    #[test]
    fn a_context_with_a_bad_user_id_is_malformed() {
        let mut ctx: serde_json::Map<String, Value> = member("").to_context().into_iter().collect();
        ctx.insert("userId".into(), Value::String("a#b".into()));
        assert!(matches!(Identity::from_context(&ctx), Err(IdentityError::Malformed(m)) if m.contains("sub")));
    }
}
