//! The scheduled expiry sweep (`rate(1 minute)` in the template): closes the connections whose
//! token expired without a refresh, each told `token_expired` first (adapters/expiry.rs). The
//! schedule's event says nothing the sweep needs; the clock says what is due.

/// What this function reads from its environment, loaded once by its main. The variables it
/// reads are this type's (`wsfan_shared::config::FromEnv::vars`); the SAM template is checked
/// against them (tests/template.rs).
pub type Config = (
    wsfan_shared::config::StoreConfig,
    wsfan_shared::config::ConnectionsEndpoint,
);

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
