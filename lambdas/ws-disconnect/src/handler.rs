//! `$disconnect`: removes the connection item and every membership it had. API Gateway invokes
//! it once, best effort, and never retries a failed one, so it is idempotent (it may also arrive
//! twice) and tries again itself: a cleanup that fails on a transient DynamoDB error (a timeout,
//! a throttle that outlasted one operation's budget) runs again from the start until the
//! invocation's deadline. TTL catches only what it never gets.

/// What this function reads from its environment, loaded once by its main. The variables it
/// reads are this type's (`wsfan_shared::config::FromEnv::vars`); the SAM template is checked
/// against them (tests/template.rs).
pub type Config = wsfan_shared::config::StoreConfig;

use std::time::Duration;

use aws_lambda_events::apigw::{ApiGatewayProxyResponse, ApiGatewayWebsocketProxyRequest};
use tokio::time::Instant;
use wsfan_shared::store::{Connections, StoreError};
use wsfan_shared::websocket::{empty, RouteRequest};

/// Kept back from the invocation's deadline: the last round is cut off this long before it, so
/// the handler still logs what it could not remove and answers, rather than being killed.
pub const ANSWER_RESERVE: Duration = Duration::from_millis(500);

/// The pause before cleanup round n + 1 is jittered in [0, min(cap, base · 2ⁿ⁻¹)]: a mass leave
/// that overloaded the table is not answered by every cleanup trying again at once.
const ROUND_PAUSE_BASE: Duration = Duration::from_millis(100);
const ROUND_PAUSE_CAP: Duration = Duration::from_secs(2);

/// When an invocation that must end by `deadline_ms` (the Runtime API's deadline) stops trying.
pub fn stop_at(deadline_ms: u64) -> Instant {
    let left = wsfan_shared::clock::time_left(deadline_ms);
    Instant::now() + left.saturating_sub(ANSWER_RESERVE)
}

/// Whether another round may succeed where this one failed. A cleanup only deletes, so running
/// it again is safe; what is not transient (an item that does not match the model) would fail
/// the same way again.
fn transient(error: &StoreError) -> bool {
    matches!(error, StoreError::Timeout(_) | StoreError::Dynamo(_))
}

pub async fn handle<S: Connections>(
    store: &S,
    event: ApiGatewayWebsocketProxyRequest,
    stop_at: Instant,
) -> ApiGatewayProxyResponse {
    let request = match RouteRequest::from_event(&event) {
        Ok(r) => r,
        Err(e) => {
            tracing::error!(error = %e, "ignoring $disconnect");
            return empty(400);
        }
    };
    let connection = &request.connection_id;
    let mut round = 0u32;
    loop {
        round += 1;
        let error = match tokio::time::timeout_at(stop_at, store.disconnect(connection)).await {
            Ok(Ok(cleanup)) => {
                tracing::info!(
                    connection = %connection,
                    existed = cleanup.connection_existed,
                    memberships = cleanup.memberships_removed,
                    rounds = round,
                    "disconnected"
                );
                return empty(200);
            }
            Ok(Err(e)) => e,
            Err(_) => StoreError::Timeout(format!("cleanup round {round} cut off at the invocation's deadline")),
        };
        let ceiling = ROUND_PAUSE_BASE
            .saturating_mul(1 << (round - 1).min(16))
            .min(ROUND_PAUSE_CAP);
        let pause = ceiling.mul_f64(fastrand::f64());
        if !transient(&error) || Instant::now() + pause >= stop_at {
            tracing::error!(
                connection = %connection,
                error = %error,
                rounds = round,
                "cleanup failed; TTL will remove the items"
            );
            return empty(500);
        }
        tracing::warn!(
            connection = %connection,
            error = %error,
            round,
            pause_ms = pause.as_millis() as u64,
            "cleanup round failed; trying again"
        );
        tokio::time::sleep(pause).await;
    }
}
