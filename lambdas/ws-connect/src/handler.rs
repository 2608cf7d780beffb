//! `$connect`: writes the connection item (and the `user:<sub>` membership) before the socket
//! opens, so the fanout can always find the connection and `$disconnect` always has something to
//! clean up. A failed write refuses the connection rather than leaving it half open.
//!
//! Channels named in the URL (`?channels=`, and the older clients' `booking_id`, `workspaceId`,
//! `session_id`) are joined in the same transaction, under the rules of `join`. A channel the
//! token does not allow refuses the upgrade with 403, a malformed one with 400, and the log says
//! which and why; nothing is joined half. `?history=N` is written on those memberships, and the
//! stream fanout answers it (this handler only writes items).
//!
//! A client that offers subprotocols (`Sec-WebSocket-Protocol: wsfan.v1, bearer.<token>`) gets
//! `wsfan.v1` back in the response's header: API Gateway passes the integration's
//! `Sec-WebSocket-Protocol` to the client, and a browser fails the handshake without it. An offer
//! without `wsfan.v1` is refused with 400 here, where the log can say why, rather than by the
//! browser with no reason at all.

/// What this function reads from its environment, loaded once by its main. The variables it
/// reads are this type's (`wsfan_shared::config::FromEnv::vars`); the SAM template is checked
/// against them (tests/template.rs).
pub type Config = wsfan_shared::config::StoreConfig;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use wsfan_shared::access::IdentityError;
use wsfan_shared::clock;
use wsfan_shared::config::Retention;
use wsfan_shared::connect::ConnectParams;
use wsfan_shared::model::Connection;
use wsfan_shared::protocol::ErrorCode;
use wsfan_shared::store::Connections;
use wsfan_shared::subprotocol;
use wsfan_shared::websocket::{empty, RouteRequest};

const PROTOCOL_HEADER: &str = "sec-websocket-protocol";

/// The subprotocol to answer with: `Ok(None)` when the client offered none.
fn chosen_subprotocol(event: &ApiGatewayWebsocketProxyRequest) -> Result<Option<&'static str>, String> {
    let offered: Vec<&str> = event
        .headers
        .get_all(PROTOCOL_HEADER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    let header = offered.join(",");
    let offer = subprotocol::parse(&header).map_err(|e| e.to_string())?;
    offer.chosen().map(Some).ok_or_else(|| {
        format!(
            "Sec-WebSocket-Protocol offers {} but not {}",
            offer.protocols.join(", "),
            subprotocol::SUBPROTOCOL
        )
    })
}

pub async fn handle<S: Connections>(
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
    let protocol = match chosen_subprotocol(&event) {
        Ok(p) => p,
        Err(reason) => {
            tracing::warn!(connection = %request.connection_id, %reason, "refusing $connect: bad subprotocol offer");
            return empty(400);
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
        // The expiry sweep closes the connection after this, unless `auth` moves it.
        token_exp: identity.expires,
    };
    match store.connect(&connection, &params.channels).await {
        Ok(()) => {
            tracing::info!(connection = %connection.connection_id, user = identity.sender_id(), "connected");
            let mut answer = empty(200);
            if let Some(protocol) = protocol {
                answer.headers.insert(
                    PROTOCOL_HEADER,
                    aws_lambda_events::http::HeaderValue::from_static(protocol),
                );
            }
            answer
        }
        Err(e) => {
            tracing::error!(connection = %connection.connection_id, error = %e, "could not write the connection item");
            empty(500)
        }
    }
}
