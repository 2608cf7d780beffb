//! The scheduled expiry sweep (`rate(1 minute)` in the template): closes the connections whose
//! token expired without a refresh, each told `token_expired` first (adapters/expiry.rs). The
//! schedule's event says nothing the sweep needs; the clock says what is due.

/// The environment variables this function reads (the SAM template is checked against it).
pub const ENV: &[&str] = &["TABLE_NAME", "DYNAMODB_TIMEOUT_MS", "CONNECTIONS_ENDPOINT"];

use wsfan_shared::expiry::{Sweeper, Swept};

/// One sweep. An error fails the invocation: the schedule runs the next one a minute later, and
/// the cursor still points at the minutes not swept (the `Errors` alarm counts it).
pub async fn handle(sweeper: &Sweeper, now_secs: i64) -> Result<Swept, wsfan_shared::store::StoreError> {
    let swept = sweeper.sweep(now_secs).await?;
    if !swept.closed.is_empty() || swept.failed > 0 {
        tracing::info!(
            closed = swept.closed.len(),
            skipped = swept.skipped,
            failed = swept.failed,
            "expired connections closed"
        );
    }
    Ok(swept)
}
