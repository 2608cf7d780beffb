//! What the server was told to do besides answering truly (`fail`, `fail_randomly`,
//! `set_latency`, `set_token_bucket`, `inject`), and the gate every request passes first: its
//! signature, a held upgrade, then that behaviour.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::signature::{check_signature, RequestHead};
use super::{error, now_unix, status_response, Inner, UPGRADE_410};
use crate::faults::Faults;
use crate::logs::Logs;
use crate::per_second::Event;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
    /// Answer with this status for the next `remaining` requests (`None`: forever).
    Status { status: u16, remaining: Option<u32> },
}

pub(super) struct TokenBucket {
    pub(super) rate: f64,
    pub(super) burst: f64,
    pub(super) tokens: f64,
    pub(super) last: Instant,
}

impl TokenBucket {
    fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Default)]
pub(super) struct Behaviour {
    pub(super) rules: HashMap<String, Rule>,
    /// (fraction of requests, status) answered at random.
    pub(super) random_failure: Option<(f64, u16)>,
    pub(super) latency: Duration,
    pub(super) bucket: Option<TokenBucket>,
    pub(super) injection: Option<Injection>,
}

/// Faults drawn per request from a seeded generator, so that a run can be repeated.
pub(super) struct Injection {
    pub(super) faults: Faults,
    pub(super) rng: fastrand::Rng,
    /// Where each injected fault is logged (`wsfan dev`).
    pub(super) logs: Option<Logs>,
}

impl Behaviour {
    /// The status a rule for the connection, the random failures or the token bucket answer
    /// with, in that order (a request a rule answers takes no token).
    fn told_status(&mut self, connection_id: &str) -> Option<u16> {
        if let Some(Rule::Status { status, remaining }) = self.rules.get_mut(connection_id) {
            let status = *status;
            if let Some(n) = remaining {
                *n -= 1;
                if *n == 0 {
                    self.rules.remove(connection_id);
                }
            }
            return Some(status);
        }
        if let Some((fraction, status)) = self.random_failure {
            if fastrand::f64() < fraction {
                return Some(status);
            }
        }
        let throttled = self.bucket.as_mut().is_some_and(|bucket| !bucket.take());
        throttled.then_some(429)
    }
}

impl Inner {
    /// Applies latency, signing check and injected failures; `Some` is the answer to give instead.
    pub(super) async fn gate(&self, request: &RequestHead, body: &[u8], connection_id: &str) -> Option<Response> {
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let post = request.method == Method::POST;
        self.per_second.record(now_unix(), Event::Request { post });
        if let Some(refused) = self.refuse_signature(request, body, connection_id) {
            return Some(refused);
        }
        if self.sink.as_ref().is_some_and(|s| s.upgrading(connection_id)) {
            return Some(self.still_upgrading(request, connection_id));
        }
        let (latency, injected) = self.misbehaviour(request, connection_id);
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let status = injected?;
        if status == 429 {
            self.per_second.record(now_unix(), Event::Throttled);
        }
        let counter = match status {
            410 => &self.stats.gone,
            429 => &self.stats.throttled,
            _ => &self.stats.errors,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Some(status_response(status))
    }

    /// API Gateway's 403 for a request that is not SigV4-signed, or (when the server checks the
    /// key) not signed with the expected one.
    fn refuse_signature(&self, request: &RequestHead, body: &[u8], connection_id: &str) -> Option<Response> {
        let signed = request
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("AWS4-HMAC-SHA256 Credential="));
        if !signed {
            self.stats.unsigned.fetch_add(1, Ordering::Relaxed);
            return Some(error(
                StatusCode::FORBIDDEN,
                "ForbiddenException",
                "request is not SigV4-signed",
            ));
        }
        let secret = self.signing_secret.read().unwrap().clone();
        let (key_id, secret) = secret?;
        let why = check_signature(request, body, &key_id, &secret).err()?;
        self.stats.bad_signatures.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(connection = connection_id, %why, "@connections: bad signature");
        Some(error(StatusCode::FORBIDDEN, "InvalidSignatureException", &why))
    }

    /// The latency to add to this request, and the status to answer instead of the true
    /// answer, as the server was told or as `--inject` draws it.
    fn misbehaviour(&self, request: &RequestHead, connection_id: &str) -> (Duration, Option<u16>) {
        let mut guard = self.behaviour.lock().unwrap();
        let b = &mut *guard;
        let mut injected = b.told_status(connection_id);
        let mut latency = b.latency;
        // Only connections that are open draw faults: for one that is not (yet, or any
        // more) the true answer is already 410, and an injected 410 must close a socket.
        let open = self.sink.as_ref().is_none_or(|s| s.exists(connection_id));
        if let Some(injection) = &mut b.injection {
            latency += injection.faults.latency();
            if injected.is_none() && open {
                let drawn = injection.faults.draw(injection.rng.f64());
                if let Some(status) = drawn {
                    *self.injected.lock().unwrap().entry(status.to_string()).or_default() += 1;
                    if let Some(logs) = &injection.logs {
                        logs.injected(status, request.method.as_str(), connection_id);
                    }
                    if status == 410 {
                        b.rules.insert(
                            connection_id.to_owned(),
                            Rule::Status {
                                status: 410,
                                remaining: None,
                            },
                        );
                        if let Some(sink) = &self.sink {
                            sink.drop_gone(connection_id);
                        }
                    }
                }
                injected = drawn;
            }
        }
        (latency, injected)
    }

    /// The 410 for a request to a connection whose upgrade `upgrade-delay` holds: counted and
    /// logged as an injected fault, and the connection stays (it is about to open).
    fn still_upgrading(&self, request: &RequestHead, connection_id: &str) -> Response {
        *self.injected.lock().unwrap().entry(UPGRADE_410.to_owned()).or_default() += 1;
        if let Some(logs) = self
            .behaviour
            .lock()
            .unwrap()
            .injection
            .as_ref()
            .and_then(|i| i.logs.as_ref())
        {
            logs.injected_upgrading(request.method.as_str(), connection_id);
        }
        self.stats.gone.fetch_add(1, Ordering::Relaxed);
        status_response(410)
    }
}
