//! The expiry sweep: closes the connections whose token expired without a refresh (`auth`).
//!
//! Run on a schedule (the template's `rate(1 minute)`; `wsfan dev` runs the same schedule, at
//! `--schedule-every` in tests), it reads the due connections from the minute buckets
//! (store/expiry.rs), claims each, pushes it an `error` frame `token_expired` so the client knows
//! to fetch a new token, closes it (`DELETE @connections`) and removes its memberships at once,
//! as revocation does: members see the user leave without waiting for `$disconnect`.
//! docs/DESIGN-NOTES.md ("Refresh and expiry") says why a sweep and not the table's TTL.

use aws_sdk_apigatewaymanagement::primitives::Blob;

use crate::protocol::ServerFrame;
use crate::revocation::{close, RevokeError};
use crate::store::{Connections, DynamoStore, Expired, StoreError};

/// What one sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Swept {
    /// Connections told `token_expired` and closed.
    pub closed: Vec<String>,
    /// Due connections a refresh (or another sweep) took first.
    pub skipped: usize,
    /// Connections that could not be closed now; their bucket is put back for the next sweep.
    pub failed: usize,
}

pub struct Sweeper {
    store: DynamoStore,
    connections: aws_sdk_apigatewaymanagement::Client,
}

impl Sweeper {
    /// `connections`: a Management API client for the stage (`CONNECTIONS_ENDPOINT`).
    pub fn new(store: DynamoStore, connections: aws_sdk_apigatewaymanagement::Client) -> Self {
        Sweeper { store, connections }
    }

    /// The sweeper a Lambda uses: the store, and a client of the stage's @connections endpoint.
    pub fn connect(
        sdk: &aws_config::SdkConfig,
        store: DynamoStore,
        endpoint: crate::config::ConnectionsEndpoint,
    ) -> Self {
        let config = aws_sdk_apigatewaymanagement::config::Builder::from(sdk)
            .endpoint_url(endpoint.0)
            .build();
        Sweeper::new(store, aws_sdk_apigatewaymanagement::Client::from_conf(config))
    }

    /// Closes every connection whose token expired at or before `now_secs`.
    pub async fn sweep(&self, now_secs: i64) -> Result<Swept, StoreError> {
        let due = self.store.due_expiries(now_secs).await?;
        let mut swept = Swept::default();
        let mut resume = due.next_minute;
        for expired in &due.expired {
            if !self.store.claim_expiry(expired).await? {
                swept.skipped += 1;
                continue;
            }
            match self.close(expired).await {
                Ok(()) => swept.closed.push(expired.connection_id.clone()),
                Err(e) => {
                    tracing::warn!(connection = %expired.connection_id, error = %e, "closing an expired connection failed; the next sweep tries again");
                    self.store.restore_expiry(expired).await?;
                    resume = resume.min(crate::model::keys::minute(expired.token_exp));
                    swept.failed += 1;
                }
            }
        }
        self.store.advance_sweep(resume).await?;
        Ok(swept)
    }

    async fn close(&self, expired: &Expired) -> Result<(), RevokeError> {
        let frame = ServerFrame::token_expired(expired.token_exp).to_json();
        let posted = self
            .connections
            .post_to_connection()
            .connection_id(&expired.connection_id)
            .data(Blob::new(frame.into_bytes()))
            .send()
            .await;
        match posted {
            Ok(_) => {}
            // Gone already: only its items are left to remove.
            Err(e) if e.as_service_error().is_some_and(|s| s.is_gone_exception()) => {}
            Err(e) => {
                return Err(RevokeError::Close {
                    connection: expired.connection_id.clone(),
                    message: aws_sdk_apigatewaymanagement::error::DisplayErrorContext(&e).to_string(),
                })
            }
        }
        close(&self.connections, &expired.connection_id).await?;
        // `$disconnect` follows the close and cleans up too; doing it here means the memberships
        // are gone when the sweep ends, whatever API Gateway's timing (as revocation does).
        self.store.disconnect(&expired.connection_id).await?;
        Ok(())
    }
}
