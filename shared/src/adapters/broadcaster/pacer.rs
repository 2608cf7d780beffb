//! This environment's pace: the governor that answers 429s, and its lease of the budget all
//! fanout shares (crate::budget).

use std::time::{Duration, Instant};

use crate::budget::{Lease, Take};
use crate::governor::Governor;
use crate::store::{BudgetLedger, StoreError};

/// This environment's pace, on the clock: the AIMD governor that answers 429s, and the lease of
/// the budget all fanout shares.
pub(super) struct Pacer {
    governor: std::sync::Mutex<Governor>,
    epoch: Instant,
    budget: Option<SharedBudget>,
}

/// An object-safe face of [`BudgetLedger`], so the broadcaster's type does not name the store.
pub(super) trait Ledger: Send + Sync {
    fn lease(&self, second: u64, want: u64, cap: u64) -> futures::future::BoxFuture<'_, Result<u64, StoreError>>;
}

impl<L: BudgetLedger> Ledger for L {
    fn lease(&self, second: u64, want: u64, cap: u64) -> futures::future::BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(BudgetLedger::lease(self, second, want, cap))
    }
}

/// The posts this environment holds of the shared per-second budget (crate::budget).
struct SharedBudget {
    lease: std::sync::Mutex<Lease>,
    /// One lease in flight at a time: the posts waiting for it all take from its grant.
    leasing: tokio::sync::Mutex<()>,
    ledger: Box<dyn Ledger>,
}

/// When the table cannot be reached for a lease, posts go on at this fraction of the cap per
/// lease asked for: slowly, rather than not at all, and far under the cap even with every
/// environment doing the same.
const UNLEASED_FRACTION: f64 = 1.0 / 200.0;

impl SharedBudget {
    /// Waits until this environment holds a post of the current second; returns that second's
    /// end (wall clock), by which the post must be sent.
    async fn take(&self) -> Duration {
        loop {
            let now = crate::clock::since_epoch();
            let step = self.lease.lock().unwrap().take(now);
            match step {
                Take::Go => return Duration::from_secs(now.as_secs() + 1),
                // A millisecond past the boundary: the next second has surely begun.
                Take::Wait(wait) => tokio::time::sleep(wait + Duration::from_millis(1)).await,
                Take::Lease { .. } => {
                    let _leasing = self.leasing.lock().await;
                    // Another post may have leased while this one waited for the lock.
                    let now = crate::clock::since_epoch();
                    let step = self.lease.lock().unwrap().take(now);
                    let Take::Lease { second, want } = step else {
                        if step == Take::Go {
                            return Duration::from_secs(now.as_secs() + 1);
                        }
                        continue;
                    };
                    let cap = self.lease.lock().unwrap().cap();
                    let granted = match self.ledger.lease(second, want, cap).await {
                        Ok(granted) => granted,
                        Err(e) => {
                            tracing::warn!(error = %e, "could not lease @connections budget; posting slowly meanwhile");
                            ((cap as f64 * UNLEASED_FRACTION).ceil() as u64).clamp(1, want)
                        }
                    };
                    self.lease.lock().unwrap().granted(second, want, granted);
                }
            }
        }
    }
}

impl Pacer {
    /// A pace of `max_rps` for this environment alone: its lease of the shared budget, once it
    /// [shares](Pacer::share) one, is what keeps every environment together under it.
    pub(super) fn new(max_rps: u64) -> Pacer {
        Pacer {
            governor: std::sync::Mutex::new(Governor::new(max_rps as f64, Duration::ZERO)),
            epoch: Instant::now(),
            budget: None,
        }
    }

    /// Leases `cap` posts a second from `ledger`, shared with every other environment.
    pub(super) fn share(&mut self, cap: u64, ledger: Box<dyn Ledger>) {
        self.budget = Some(SharedBudget {
            lease: std::sync::Mutex::new(Lease::new(cap)),
            leasing: tokio::sync::Mutex::new(()),
            ledger,
        });
    }

    /// Leases of the shared budget so far, and the posts they granted.
    pub(super) fn leases(&self) -> (u64, u64) {
        self.budget.as_ref().map_or((0, 0), |b| {
            let lease = b.lease.lock().unwrap();
            (lease.leases, lease.leased)
        })
    }

    /// How many times 429s lowered the rate so far.
    pub(super) fn backoffs(&self) -> u64 {
        self.governor.lock().unwrap().decreases()
    }

    /// Waits for this post's turn; returns how long that took, and with a shared budget the
    /// end of the second its token belongs to (the post must be sent before it).
    pub(super) async fn wait_turn(&self) -> (Duration, Option<Duration>) {
        let started = Instant::now();
        let wait = self.governor.lock().unwrap().reserve(self.epoch.elapsed());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let send_by = match &self.budget {
            Some(budget) => Some(budget.take().await),
            None => None,
        };
        (started.elapsed(), send_by)
    }

    pub(super) fn throttled(&self) {
        self.governor.lock().unwrap().throttled(self.epoch.elapsed());
    }
}
