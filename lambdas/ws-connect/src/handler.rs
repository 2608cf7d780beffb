//! `$connect`: writes the connection item (and the `user:<sub>` membership) before the socket
//! opens, so the fanout can always find the connection and `$disconnect` always has something to
//! clean up. A failed write refuses the connection rather than leaving it half open.
//!
//! Channels named in the URL (`?channels=`, and the older clients' `booking_id`, `workspaceId`,
//! `session_id`) are joined in the same transaction, under the rules of `join`. A channel the
//! token does not allow refuses the upgrade with 403, a malformed one with 400, and the log says
//! which and why; nothing is joined half. `?history=N` is written on those memberships, and the
//! stream fanout answers it (this handler only writes items).

/// The environment variables this function reads (the SAM template is checked against it).
pub const ENV: &[&str] = &["TABLE_NAME", "DYNAMODB_TIMEOUT_MS", "CONNECTION_TTL_SECONDS"];

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use wsfan_shared::access::IdentityError;
use wsfan_shared::clock;
use wsfan_shared::config::Retention;
use wsfan_shared::connect::ConnectParams;
use wsfan_shared::model::Connection;
use wsfan_shared::protocol::ErrorCode;
use wsfan_shared::store::Store;
use wsfan_shared::websocket::{empty, RouteRequest};

pub async fn handle<S: Store>(
    store: &S,
    retention: &Retention,
    event: ApiGatewayWebsocketProxyRequest,
) -> ApiGatewayProxyResponse {
    let request = match RouteRequest::from_event(&event) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "refusing $connect");
            return empty(400);
        }
    };
    let identity = match request.identity {
        Ok(identity) => identity,
        Err(e @ IdentityError::Missing) => {
            tracing::error!(
                connection = %request.connection_id,
                error = %e,
                "refusing $connect: is the authorizer attached to the $connect route?"
            );
            return empty(403);
        }
        // Only a context our authorizer did not make gets here (it denies bad subs itself).
        Err(e) => {
            tracing::error!(connection = %request.connection_id, error = %e, "refusing $connect");
            return empty(403);
        }
    };
    let query = &event.query_string_parameters;
    let params = match ConnectParams::from_query(|name| query.first(name)) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(connection = %request.connection_id, code = e.code.as_str(), reason = %e.message, "refusing $connect: bad query parameters");
            return empty(400);
        }
    };
    if let Some(forbidden) = params.channels.iter().find(|c| !identity.may_read(c)) {
        tracing::warn!(
            connection = %request.connection_id,
            user = identity.sender_id(),
            code = ErrorCode::Forbidden.as_str(),
            channel = %forbidden,
            "refusing $connect: the token does not allow a channel named in the URL"
        );
        return empty(403);
    }
    let connected_at = if request.connected_at > 0 {
        request.connected_at
    } else {
        clock::now_millis()
    };
    let connection = Connection {
        connection_id: request.connection_id.clone(),
        user_id: identity.user_id.clone(),
        role: identity.role,
        channels: identity.channels.iter().map(ToString::to_string).collect(),
        connected_at,
        source_ip: request.source_ip,
        domain_name: request.domain_name,
        stage: request.stage,
        expires_at: connected_at / 1000 + retention.connection_secs,
        joined: Vec::new(),
        history: params.history,
        batch: request.batch,
    };
    match store.connect(&connection, &params.channels).await {
        Ok(()) => {
            tracing::info!(connection = %connection.connection_id, user = identity.sender_id(), "connected");
            empty(200)
        }
        Err(e) => {
            tracing::error!(connection = %connection.connection_id, error = %e, "could not write the connection item");
            empty(500)
        }
    }
}
