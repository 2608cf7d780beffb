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

mod auth;
mod channels;
mod posts;
mod refusals;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use wsfan_shared::access::{Identity, IdentityError};
use wsfan_shared::clock;
use wsfan_shared::config::Retention;
use wsfan_shared::limiter::FrameLimiter;
use wsfan_shared::protocol::{ClientFrame, ErrorCode, ProtocolError, ServerFrame};
use wsfan_shared::rate::Verdict;
use wsfan_shared::revocation::TokenVerifier;
use wsfan_shared::store::{IdentityStore, Store};
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

impl<S: Store + IdentityStore, V: TokenVerifier> Route<'_, S, V> {
    fn identity(&self) -> Result<&Identity, ProtocolError> {
        self.identity.as_ref().map_err(|e| {
            tracing::error!(error = %e, "route event without authorizer context");
            ProtocolError::new(ErrorCode::Unauthorized, "this connection has no identity; reconnect")
        })
    }

    /// Answers one frame: the action's answer, `None` for none (typing), or the refusal.
    async fn dispatch(&self) -> Result<Option<ServerFrame>, ProtocolError> {
        let identity = self.identity()?;
        let frame = ClientFrame::parse(self.request.body.as_deref().unwrap_or(""))?;
        Ok(match frame {
            ClientFrame::Join { channel } | ClientFrame::Register { channel } => {
                Some(self.joined(identity, channel).await?)
            }
            ClientFrame::Leave { channel } => Some(self.leave(identity, channel).await?),
            ClientFrame::SendMessage {
                channel,
                body,
                client_msg_id,
            } => Some(self.send_message(identity, channel, body, client_msg_id).await?),
            ClientFrame::React {
                channel,
                message_id,
                emoji,
            } => Some(self.react(identity, channel, message_id, emoji).await?),
            ClientFrame::Read {
                channel,
                message_id,
                seq,
            } => Some(self.mark_read(identity, channel, message_id, seq).await?),
            ClientFrame::Typing { channel } => {
                self.typing(identity, channel).await?;
                None
            }
            ClientFrame::Subscribe { doc_id } => Some(self.subscribe(identity, doc_id).await?),
            ClientFrame::History { channel, cursor, limit } => {
                Some(self.history(identity, channel, cursor, limit).await?)
            }
            ClientFrame::Presence { channel } => Some(self.presence(identity, channel).await?),
            ClientFrame::Ping => Some(ServerFrame::Pong {
                at: clock::now_millis(),
            }),
            ClientFrame::Auth { token } => Some(self.auth(identity, &token).await?),
        })
    }
}
