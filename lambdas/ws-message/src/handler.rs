//! Every route after `$connect`: `$default` and the protocol's actions.
//!
//! This handler only writes items (memberships, messages) and answers its own caller through the
//! route response; pushing to other connections is the stream fanout's job. Every bad frame gets
//! an `error` frame with a stable code, and the socket stays open.
//!
//! Every frame first passes the connection's limit (adapters/limiter.rs): one over it is answered
//! `rate_limited` with `retryAfterMs`, and nothing else is read or written for it.
//!
//! The identity a frame acts with is the authorizer's, unless an `auth` frame refreshed it: then
//! the one stored on the connection, which the limiter's write returns. A connection whose token
//! has expired gets `token_expired` for every frame until the expiry sweep closes it.
//! `{"action":"auth","token":…}` verifies the token as `$connect` does (signature, claims,
//! revocation), for the same user only, stores the new identity, and leaves the channels the new
//! token no longer allows: the answer `authed` lists them, and their members see a leave.

/// What this function reads from its environment, loaded once by its main. The variables it
/// reads are this type's (`wsfan_shared::config::FromEnv::vars`); the SAM template is checked
/// against them (tests/template.rs).
pub type Config = (
    wsfan_shared::config::StoreConfig,
    wsfan_shared::rate::RateLimit,
    wsfan_shared::config::AuthConfig,
);

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use wsfan_shared::access::{Identity, IdentityError, Role};
use wsfan_shared::auth::AuthError;
use wsfan_shared::channel::ChannelId;
use wsfan_shared::clock;
use wsfan_shared::config::Retention;
use wsfan_shared::limiter::FrameLimiter;
use wsfan_shared::model::{Membership, Message, MessageKind};
use wsfan_shared::protocol::{ClientFrame, ErrorCode, HistoryCursor, ProtocolError, ServerFrame, MAX_PRESENT_USERS};
use wsfan_shared::rate::Verdict;
use wsfan_shared::reactions::Reaction;
use wsfan_shared::reads::{ReadCursor, Reads, MAX_LISTED_READS};
use wsfan_shared::revocation::TokenVerifier;
use wsfan_shared::store::{IdentityStore, PostOutcome, Store, StoreError, SEQ_LOOKUP_DEPTH};
use wsfan_shared::websocket::{empty, frame, RouteRequest};

pub async fn handle<S: Store + IdentityStore, L: FrameLimiter, V: TokenVerifier>(
    store: &S,
    limiter: &L,
    verifier: &V,
    retention: &Retention,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let request = match RouteRequest::from_event(&event) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "dropping a route event");
            return empty(400);
        }
    };
    let mut refreshed = None;
    match limiter.admit_reading(&request.connection_id, clock::now_micros()).await {
        Ok((Verdict::Admit { .. }, stored)) => refreshed = stored,
        Ok((Verdict::Limited { retry_after_ms }, _)) => {
            tracing::info!(connection = %request.connection_id, retry_after_ms, "rate limited");
            let limit = limiter.limit();
            return frame(&ServerFrame::rate_limited(
                retry_after_ms,
                limit.per_second,
                limit.burst,
            ));
        }
        // The limit guards capacity; a table that cannot count a frame now would fail the frame's
        // own write too, and that answer is the one the client can act on.
        Err(e) => {
            tracing::warn!(connection = %request.connection_id, error = %e, "the limit could not be checked; admitting")
        }
    }
    let identity = request.identity.clone().map(|i| i.refreshed(refreshed));
    if let Ok(Identity { expires: Some(exp), .. }) = identity {
        if exp <= clock::now_secs() {
            tracing::info!(connection = %request.connection_id, exp, "token expired; the sweep closes the connection");
            return frame(&ServerFrame::token_expired(exp));
        }
    }
    let route = Route {
        store,
        verifier,
        retention,
        request: &request,
        identity,
    };
    match route.dispatch().await {
        Ok(Some(answer)) => frame(&answer),
        Ok(None) => empty(200),
        Err(e) => {
            tracing::info!(connection = %request.connection_id, code = e.code.as_str(), message = %e.message, "refused");
            frame(&ServerFrame::error(&e))
        }
    }
}

struct Route<'a, S, V> {
    store: &'a S,
    verifier: &'a V,
    retention: &'a Retention,
    request: &'a RouteRequest,
    /// The authorizer's identity, or the one the last `auth` stored.
    identity: Result<Identity, IdentityError>,
}

fn not_connected() -> ProtocolError {
    ProtocolError::new(
        ErrorCode::NotConnected,
        "this connection is no longer registered; reconnect",
    )
}

fn store_error(channel: &ChannelId, e: StoreError) -> ProtocolError {
    match e {
        StoreError::NotConnected => not_connected(),
        StoreError::NotMember => {
            ProtocolError::new(ErrorCode::NotMember, format!("join {channel} before posting to it"))
        }
        StoreError::Contended => {
            tracing::warn!(%channel, "sequence contention: gave up");
            ProtocolError::new(
                ErrorCode::Internal,
                format!("{channel} is too busy right now; send again with the same clientMsgId"),
            )
        }
        other => {
            tracing::error!(%channel, error = %other, "store failure");
            ProtocolError::new(ErrorCode::Internal, "the message could not be saved; try again")
        }
    }
}

fn require_read(identity: &Identity, channel: &ChannelId) -> Result<(), ProtocolError> {
    if identity.may_read(channel) {
        Ok(())
    } else {
        Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("your token does not allow {channel}"),
        ))
    }
}

fn require_write(identity: &Identity, channel: &ChannelId) -> Result<(), ProtocolError> {
    if identity.may_write(channel) {
        Ok(())
    } else if identity.user_id.is_none() || identity.role == Role::Listener {
        Err(ProtocolError::new(
            ErrorCode::ReadOnly,
            "listeners can read but not post",
        ))
    } else {
        Err(ProtocolError::new(
            ErrorCode::Forbidden,
            format!("your token does not allow {channel}"),
        ))
    }
}

impl<S: Store + IdentityStore, V: TokenVerifier> Route<'_, S, V> {
    fn identity(&self) -> Result<&Identity, ProtocolError> {
        self.identity.as_ref().map_err(|e| {
            tracing::error!(error = %e, "route event without authorizer context");
            ProtocolError::new(ErrorCode::Unauthorized, "this connection has no identity; reconnect")
        })
    }

    async fn dispatch(&self) -> Result<Option<ServerFrame>, ProtocolError> {
        let identity = self.identity()?;
        let frame = ClientFrame::parse(self.request.body.as_deref().unwrap_or(""))?;
        Ok(match frame {
            ClientFrame::Join { channel } | ClientFrame::Register { channel } => {
                self.join(identity, &channel).await?;
                let present = self
                    .store
                    .present(&channel, MAX_PRESENT_USERS)
                    .await
                    .map_err(|e| store_error(&channel, e))?;
                // Read after the membership committed: everything after it is pushed to us.
                let head = self.store.head(&channel).await.map_err(|e| store_error(&channel, e))?;
                let reads = self.reads(&channel).await?;
                Some(ServerFrame::Joined {
                    channel: channel.to_string(),
                    head,
                    present,
                    reads,
                })
            }
            ClientFrame::Leave { channel } => {
                let was_member = self
                    .store
                    .leave(&channel, &self.request.connection_id, identity.user_id.as_deref())
                    .await
                    .map_err(|e| store_error(&channel, e))?;
                Some(ServerFrame::Left {
                    channel: channel.to_string(),
                    was_member,
                })
            }
            ClientFrame::SendMessage {
                channel,
                body,
                client_msg_id,
            } => {
                let channel = self.channel_or_default(channel).await?;
                let mut message = self.message(identity, MessageKind::Message, &channel)?;
                message.body = Some(body);
                message.client_msg_id = client_msg_id;
                Some(self.post("sendMessage", message).await?)
            }
            ClientFrame::React {
                channel,
                message_id,
                emoji,
            } => {
                let channel = self.channel_or_default(channel).await?;
                // Not a message of its own: the reacted message's summary changes.
                let shape = self.message(identity, MessageKind::Reaction, &channel)?;
                let reaction = Reaction {
                    channel,
                    target_id: message_id,
                    message_id: shape.message_id,
                    sender_id: shape.sender_id,
                    emoji,
                    sent_at: shape.sent_at,
                    expires_at: shape.expires_at,
                };
                let outcome = self
                    .store
                    .react(&reaction, &self.request.connection_id)
                    .await
                    .map_err(|e| store_error(&reaction.channel, e))?;
                Some(ack("react", &reaction.channel, outcome, None))
            }
            ClientFrame::Read {
                channel,
                message_id,
                seq,
            } => {
                let channel = self.channel_or_default(channel).await?;
                // Not a message of its own: the user's read cursor moves forward.
                let shape = self.message(identity, MessageKind::Receipt, &channel)?;
                let seq = match seq {
                    Some(seq) => seq,
                    None => self
                        .store
                        .seq_of(&channel, &message_id)
                        .await
                        .map_err(|e| store_error(&channel, e))?
                        .ok_or_else(|| {
                            ProtocolError::new(
                                ErrorCode::InvalidField,
                                format!(
                                    "messageId is not among the last {SEQ_LOOKUP_DEPTH} messages of {channel}; \
                                     send the message's \"seq\" with it"
                                ),
                            )
                        })?,
                };
                let cursor = ReadCursor {
                    channel,
                    user_id: shape.sender_id,
                    seq,
                    target_id: message_id,
                    message_id: shape.message_id,
                    sent_at: shape.sent_at,
                    expires_at: clock::now_secs() + self.retention.message_secs,
                };
                let outcome = self
                    .store
                    .read(&cursor, &self.request.connection_id)
                    .await
                    .map_err(|e| store_error(&cursor.channel, e))?;
                Some(ack("read", &cursor.channel, outcome, None))
            }
            ClientFrame::Typing { channel } => {
                let channel = self.channel_or_default(channel).await?;
                // Typing is fire-and-forget: no ack, to keep the chatter down.
                let message = self.message(identity, MessageKind::Typing, &channel)?;
                self.post("typing", message).await?;
                None
            }
            ClientFrame::Subscribe { doc_id } => {
                let channel =
                    ChannelId::doc(&doc_id).map_err(|e| ProtocolError::new(ErrorCode::InvalidField, e.to_string()))?;
                self.join(identity, &channel).await?;
                let snapshot = self
                    .store
                    .progress(&doc_id)
                    .await
                    .map_err(|e| store_error(&channel, e))?;
                Some(ServerFrame::Subscribed { doc_id, snapshot })
            }
            ClientFrame::History { channel, cursor, limit } => {
                require_read(identity, &channel)?;
                let page = self
                    .store
                    .history(&channel, cursor, limit)
                    .await
                    .map_err(|e| store_error(&channel, e))?;
                // Recovery brings the read cursors up to date too.
                let reads = match cursor {
                    HistoryCursor::After(_) => Some(self.reads(&channel).await?),
                    _ => None,
                };
                Some(ServerFrame::History {
                    channel: channel.to_string(),
                    messages: page.frames(),
                    before: page.before,
                    after: page.after,
                    complete: page.complete,
                    reads,
                })
            }
            ClientFrame::Presence { channel } => {
                let channel = self.channel_or_default(channel).await?;
                require_read(identity, &channel)?;
                let present = self
                    .store
                    .present(&channel, MAX_PRESENT_USERS)
                    .await
                    .map_err(|e| store_error(&channel, e))?;
                Some(ServerFrame::Present {
                    channel: channel.to_string(),
                    present,
                })
            }
            ClientFrame::Ping => Some(ServerFrame::Pong {
                at: clock::now_millis(),
            }),
            ClientFrame::Auth { token } => Some(self.auth(identity, &token).await?),
        })
    }

    /// `auth`: a fresh token for the same user replaces the connection's identity.
    async fn auth(&self, current: &Identity, token: &str) -> Result<ServerFrame, ProtocolError> {
        let unauthorized = |why: String| ProtocolError::new(ErrorCode::Unauthorized, why);
        let Some(user) = current.user_id.as_deref() else {
            return Err(unauthorized(
                "an anonymous connection cannot take a token; reconnect with it".to_owned(),
            ));
        };
        let fresh = match self.verifier.verify(token).await {
            Ok(identity) => identity,
            Err(AuthError::Keys(why)) => {
                tracing::error!(%why, "auth: the token could not be checked");
                return Err(ProtocolError::new(
                    ErrorCode::Internal,
                    "the token could not be checked right now; send it again",
                ));
            }
            Err(e) => {
                return Err(unauthorized(format!(
                    "the token is refused ({e}); this connection keeps its current one"
                )))
            }
        };
        if fresh.user_id.as_deref() != Some(user) {
            return Err(unauthorized(format!(
                "the token is for another user; this connection is {user}'s (reconnect to change users)"
            )));
        }
        let Some(exp) = fresh.expires else {
            return Err(unauthorized("the token has no exp".to_owned()));
        };
        let connection_id = &self.request.connection_id;
        self.store
            .refresh(connection_id, &fresh, exp, current.expires)
            .await
            .map_err(|e| match e {
                StoreError::NotConnected => not_connected(),
                StoreError::TokenClaimed => ServerFrame::token_expired(current.expires.unwrap_or(exp)).into_error(),
                other => {
                    tracing::error!(error = %other, "auth: storing the identity");
                    ProtocolError::new(ErrorCode::Internal, "the token could not be stored; send it again")
                }
            })?;
        // What the new token no longer allows is left, as a `leave` would (members see it).
        let memberships = self.store.memberships(connection_id).await.map_err(|e| {
            tracing::error!(error = %e, "auth: reading the memberships");
            ProtocolError::new(
                ErrorCode::Internal,
                "the memberships could not be read; send the token again",
            )
        })?;
        let mut left = Vec::new();
        for channel in fresh.no_longer_allowed(memberships.iter().map(|m| &m.channel)) {
            self.store
                .leave(&channel, connection_id, Some(user))
                .await
                .map_err(|e| store_error(&channel, e))?;
            left.push(channel.to_string());
        }
        tracing::info!(connection = %connection_id, user, exp, left = left.len(), "identity refreshed");
        Ok(ServerFrame::Authed {
            user_id: fresh.user_id.clone(),
            role: fresh.role.as_str().to_owned(),
            channels: fresh.channels.iter().map(ToString::to_string).collect(),
            exp,
            left,
        })
    }

    /// The users' read cursors in a channel, as `joined` and recovery carry them.
    async fn reads(&self, channel: &ChannelId) -> Result<Reads, ProtocolError> {
        self.store
            .reads(channel, MAX_LISTED_READS)
            .await
            .map_err(|e| store_error(channel, e))
    }

    /// The channel a frame named, or else the connection's default channel (one read).
    async fn channel_or_default(&self, named: Option<ChannelId>) -> Result<ChannelId, ProtocolError> {
        if let Some(channel) = named {
            return Ok(channel);
        }
        let connection = self
            .store
            .connection(&self.request.connection_id)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "reading the connection item");
                ProtocolError::new(ErrorCode::Internal, "the connection could not be read; try again")
            })?
            .ok_or_else(not_connected)?;
        ClientFrame::default_channel(&connection.joined)
    }

    async fn join(&self, identity: &Identity, channel: &ChannelId) -> Result<(), ProtocolError> {
        require_read(identity, channel)?;
        let connected_secs = if self.request.connected_at > 0 {
            self.request.connected_at / 1000
        } else {
            clock::now_secs()
        };
        let membership = Membership {
            channel: channel.clone(),
            connection_id: self.request.connection_id.clone(),
            user_id: identity.user_id.clone(),
            role: identity.role,
            joined_at: clock::now_millis(),
            // A membership lives as long as its connection can.
            expires_at: connected_secs + self.retention.connection_secs,
            history: None,
            batch: self.request.batch,
        };
        self.store.join(&membership).await.map_err(|e| store_error(channel, e))
    }

    fn message(&self, identity: &Identity, kind: MessageKind, channel: &ChannelId) -> Result<Message, ProtocolError> {
        require_write(identity, channel)?;
        let now = clock::now_millis();
        let ttl = if kind.is_history() {
            self.retention.message_secs
        } else {
            self.retention.event_secs
        };
        Ok(Message {
            kind,
            channel: channel.clone(),
            message_id: ulid::Ulid::generate().to_string(),
            seq: None,
            sender_id: identity.sender_id().to_owned(),
            body: None,
            client_msg_id: None,
            target_id: None,
            emoji: None,
            sent_at: now,
            expires_at: now / 1000 + ttl,
        })
    }

    async fn post(&self, action: &str, message: Message) -> Result<ServerFrame, ProtocolError> {
        let outcome = self
            .store
            .post(&message, Some(&self.request.connection_id))
            .await
            .map_err(|e| store_error(&message.channel, e))?;
        Ok(ack(action, &message.channel, outcome, message.client_msg_id))
    }
}

fn ack(action: &str, channel: &ChannelId, outcome: PostOutcome, client_msg_id: Option<String>) -> ServerFrame {
    ServerFrame::Ack {
        action: action.to_owned(),
        channel: channel.to_string(),
        message_id: outcome.message_id,
        client_msg_id,
        seq: outcome.seq,
        duplicate: outcome.duplicate,
    }
}
