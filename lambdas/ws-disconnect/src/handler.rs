//! `$disconnect`: removes the connection item and every membership it had. It is best effort on
//! API Gateway's side and may arrive twice, so it is idempotent; TTL catches any it never gets.

/// The environment variables this function reads (the SAM template is checked against it).
pub const ENV: &[&str] = &["TABLE_NAME", "DYNAMODB_TIMEOUT_MS"];

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use wsfan_shared::store::Store;
use wsfan_shared::websocket::{empty, RouteRequest};

pub async fn handle<S: Store>(store: &S, event: ApiGatewayWebsocketProxyRequest) -> ApiGatewayProxyResponse {
    let request = match RouteRequest::from_event(&event) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "ignoring $disconnect");
            return empty(400);
        }
    };
    match store.disconnect(&request.connection_id).await {
        Ok(cleanup) => {
            tracing::info!(
                connection = %request.connection_id,
                existed = cleanup.connection_existed,
                memberships = cleanup.memberships_removed,
                "disconnected"
            );
            empty(200)
        }
        Err(e) => {
            tracing::error!(connection = %request.connection_id, error = %e, "cleanup failed; TTL will remove the items");
            empty(500)
        }
    }
}
