//! What a client asks for in its connect URL, besides its token: channels to join at once and
//! how much of their history to receive.
//!
//! `?channels=booking:1,workspace:W` names channels for everyone. The parameters of the clients
//! wsfan replaces map onto it: `type=chat&booking_id=1` is `booking:1`, `workspaceId=W` is
//! `workspace:W`, `session_id=S` is `session:S`. `?history=50` asks for the last 50 messages of
//! each named channel, pushed by the stream fanout once the membership is written.

use std::collections::BTreeSet;

use crate::channel::{ChannelId, ChannelKind};
use crate::protocol::{ErrorCode, ProtocolError, MAX_HISTORY_LIMIT};

/// History pushed on connect to the seed's chat page (`?type=chat&booking_id=…` without
/// `history`): the page handles a `history` frame but never asks for one. `history=0` opts out.
pub(crate) const SEED_CHAT_HISTORY: u32 = 50;

/// Channels one connect may name; each is two writes of the connect transaction (100 at most).
pub(crate) const MAX_CONNECT_CHANNELS: usize = 20;

/// Every query parameter wsfan reads on `$connect` (the AsyncAPI document lists each).
pub const QUERY_PARAMETERS: &[&str] = &[
    "token",
    "channels",
    "history",
    "type",
    "booking_id",
    "workspaceId",
    "session_id",
    "batch",
];

/// The authorizer context key that carries `?batch=1` to every route: the connection takes several
/// frames in one post, as `{"type":"batch","frames":[...]}`. The authorizer is the one place that
/// sees the connect URL and hands something to every later event, so `join` learns it there.
pub const BATCH_CONTEXT: &str = "batch";

/// Whether `?batch=` asks for batch frames (`1` or `true`; anything else keeps one frame a post,
/// which is what every client that does not know about batches expects).
pub fn batch_requested(value: Option<&str>) -> bool {
    matches!(value.map(str::trim), Some("1" | "true"))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectParams {
    /// In the order named, without repeats.
    pub channels: Vec<ChannelId>,
    /// Messages of history each named channel's membership asks the fanout for.
    pub history: Option<u32>,
}

fn named(kind: ChannelKind, id: &str, parameter: &str) -> Result<ChannelId, ProtocolError> {
    ChannelId::new(kind, id)
        .map_err(|e| ProtocolError::new(ErrorCode::InvalidChannel, format!("query parameter {parameter}: {e}")))
}

impl ConnectParams {
    /// Reads the parameters; `get` looks one up by name.
    pub fn from_query<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Result<ConnectParams, ProtocolError> {
        let mut channels = Vec::new();
        for name in get("channels")
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
        {
            let channel = name.parse().map_err(|e: crate::channel::ChannelError| {
                ProtocolError::new(ErrorCode::InvalidChannel, format!("query parameter channels: {e}"))
            })?;
            channels.push(channel);
        }
        // A booking id means a booking chat only with type=chat; other types are not chats.
        let seed_chat = get("type") == Some("chat") && get("booking_id").is_some();
        if get("type") == Some("chat") {
            if let Some(id) = get("booking_id") {
                channels.push(named(ChannelKind::Booking, id, "booking_id")?);
            }
        }
        if let Some(id) = get("workspaceId") {
            channels.push(named(ChannelKind::Workspace, id, "workspaceId")?);
        }
        if let Some(id) = get("session_id") {
            channels.push(named(ChannelKind::Session, id, "session_id")?);
        }
        let mut seen = BTreeSet::new();
        channels.retain(|c| seen.insert(c.clone()));
        if channels.len() > MAX_CONNECT_CHANNELS {
            return Err(ProtocolError::new(
                ErrorCode::TooLarge,
                format!(
                    "{} channels named at connect; the limit is {MAX_CONNECT_CHANNELS} (join the rest)",
                    channels.len()
                ),
            ));
        }
        let history = match get("history") {
            None if seed_chat => Some(SEED_CHAT_HISTORY),
            None | Some("") | Some("0") => None,
            Some(n) => match n.parse::<u32>() {
                Ok(n) if n <= MAX_HISTORY_LIMIT => Some(n),
                _ => {
                    return Err(ProtocolError::new(
                        ErrorCode::InvalidField,
                        format!("query parameter history must be a whole number from 0 to {MAX_HISTORY_LIMIT}"),
                    ))
                }
            },
        };
        Ok(ConnectParams { channels, history })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn params(query: &[(&str, &str)]) -> Result<ConnectParams, ProtocolError> {
        let map: HashMap<&str, &str> = query.iter().copied().collect();
        ConnectParams::from_query(|k| map.get(k).copied())
    }

    fn names(p: &ConnectParams) -> Vec<String> {
        p.channels.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_old_clients_parameters_name_channels() {
        let p = params(&[("type", "chat"), ("booking_id", "1"), ("history", "50")]).unwrap();
        assert_eq!(names(&p), ["booking:1"]);
        assert_eq!(p.history, Some(50));
        assert_eq!(names(&params(&[("workspaceId", "W")]).unwrap()), ["workspace:W"]);
        assert_eq!(names(&params(&[("session_id", "s-1")]).unwrap()), ["session:s-1"]);
        // The seed's page never asks for history but expects it; history=0 opts out.
        let seed = params(&[("type", "chat"), ("booking_id", "1")]).unwrap();
        assert_eq!(
            (names(&seed), seed.history),
            (vec!["booking:1".to_owned()], Some(SEED_CHAT_HISTORY))
        );
        assert_eq!(
            params(&[("type", "chat"), ("booking_id", "1"), ("history", "0")])
                .unwrap()
                .history,
            None
        );
        assert_eq!(params(&[("workspaceId", "W")]).unwrap().history, None);
        // Without type=chat a booking id names no chat.
        assert!(params(&[("booking_id", "1")]).unwrap().channels.is_empty());
        let p = params(&[("channels", "booking:1, workspace:W,"), ("workspaceId", "W")]).unwrap();
        assert_eq!(names(&p), ["booking:1", "workspace:W"], "in order, once each");
        assert_eq!(params(&[("token", "x")]).unwrap(), ConnectParams::default());
    }

    #[test]
    fn bad_parameters_are_refused_with_the_reason() {
        let e = params(&[("channels", "team:1")]).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidChannel);
        assert!(e.message.contains("channels"), "{}", e.message);
        assert_eq!(
            params(&[("workspaceId", "a b")]).unwrap_err().code,
            ErrorCode::InvalidChannel
        );
        assert_eq!(params(&[("history", "101")]).unwrap_err().code, ErrorCode::InvalidField);
        assert_eq!(params(&[("history", "-1")]).unwrap_err().code, ErrorCode::InvalidField);
        let many: Vec<String> = (0..=MAX_CONNECT_CHANNELS).map(|i| format!("doc:{i}")).collect();
        let many = many.join(",");
        assert_eq!(params(&[("channels", &many)]).unwrap_err().code, ErrorCode::TooLarge);
    }
}
