//! The WebSocket route events API Gateway sends, reduced to what handlers decide on, and the
//! route responses they return.

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use aws_lambda_events::encodings::Body;

use crate::access::{Identity, IdentityError};
use crate::protocol::ServerFrame;

/// The facts of one route invocation. The connection id always comes from the request context,
/// never from the body, so a client cannot act for another connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRequest {
    pub connection_id: String,
    pub route_key: String,
    pub connected_at: i64,
    pub request_time: i64,
    pub source_ip: Option<String>,
    pub domain_name: Option<String>,
    pub stage: Option<String>,
    pub identity: Result<Identity, IdentityError>,
    /// The connection asked for batch frames at connect (crate::connect::BATCH_CONTEXT).
    pub batch: bool,
    pub body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the event has no requestContext.connectionId")]
pub struct NoConnectionId;

impl RouteRequest {
    pub fn from_event(event: &ApiGatewayWebsocketProxyRequest) -> Result<Self, NoConnectionId> {
        let ctx = &event.request_context;
        let connection_id = ctx
            .connection_id
            .clone()
            .filter(|c| !c.is_empty())
            .ok_or(NoConnectionId)?;
        // API Gateway passes the authorizer's context flat under requestContext.authorizer.
        let mut authorizer = ctx.authorizer.other.clone();
        authorizer.extend(ctx.authorizer.fields.clone());
        Ok(RouteRequest {
            connection_id,
            route_key: ctx.route_key.clone().unwrap_or_default(),
            connected_at: ctx.connected_at,
            request_time: ctx.request_time_epoch,
            source_ip: ctx.identity.source_ip.clone(),
            domain_name: ctx.domain_name.clone(),
            stage: ctx.stage.clone(),
            identity: Identity::from_context(&authorizer),
            batch: authorizer
                .get(crate::connect::BATCH_CONTEXT)
                .is_some_and(|v| v == true || v.as_str().is_some_and(|s| crate::connect::batch_requested(Some(s)))),
            body: event.body.clone(),
        })
    }
}

/// A route response with no body: API Gateway sends nothing back to the client.
pub fn empty(status: i64) -> ApiGatewayProxyResponse {
    let mut r = ApiGatewayProxyResponse::default();
    r.status_code = status;
    r
}

/// A route response carrying one frame to the caller.
pub fn frame(frame: &ServerFrame) -> ApiGatewayProxyResponse {
    let mut r = empty(200);
    r.body = Some(Body::Text(frame.to_json()));
    r
}
