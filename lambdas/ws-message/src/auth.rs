//! `auth`: a fresh token for the connection's user.

use wsfan_shared::access::Identity;
use wsfan_shared::auth::AuthError;
use wsfan_shared::protocol::{ErrorCode, ProtocolError, ServerFrame};
use wsfan_shared::revocation::TokenVerifier;
use wsfan_shared::store::{IdentityStore, Store, StoreError};

use crate::refusals::{not_connected, store_error};
use crate::Route;

impl<S: Store + IdentityStore, V: TokenVerifier> Route<'_, S, V> {
    /// `auth`: a fresh token for the same user replaces the connection's identity.
    pub(crate) async fn auth(&self, current: &Identity, token: &str) -> Result<ServerFrame, ProtocolError> {
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
}
