//! The client the SDK is given: one post is a checkout, an exchange and a checkin.

use std::sync::Arc;
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use tokio_rustls::rustls::pki_types::CertificateDer;

use super::connection::{exchange, Failure};
use super::pool::Pool;
use super::request::{serialize, Target};
use super::{too_late, TooLate};

/// The HTTP client to give `config::Builder::http_client`; clones share one pool.
#[derive(Clone)]
pub struct Http1Client {
    pub(super) pool: Arc<Pool>,
    pub(super) connect_timeout: Option<Duration>,
}

impl std::fmt::Debug for Http1Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http1Client").finish_non_exhaustive()
    }
}

impl Default for Http1Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Http1Client {
    pub fn new() -> Self {
        Self::with_roots(Vec::new())
    }

    /// A client that also trusts `roots`, for servers with certificates of their own.
    pub(crate) fn with_roots(roots: Vec<CertificateDer<'static>>) -> Self {
        Http1Client {
            pool: Arc::new(Pool::new(roots)),
            connect_timeout: None,
        }
    }

    /// Idle connections in the pool (tests).
    pub fn idle_connections(&self) -> usize {
        self.pool.idle_connections()
    }

    /// Sends `request` and reads the whole answer.
    pub async fn send(&self, request: HttpRequest) -> Result<HttpResponse, ConnectorError> {
        let target = Target::parse(request.uri()).map_err(|e| ConnectorError::user(e.into()))?;
        let bytes = serialize(&request, &target).map_err(|e| ConnectorError::user(e.into()))?;
        let (mut connection, reused) = match self.checkout(&target.origin) {
            Some(c) => (c, true),
            None => (self.connect(&target).await?, false),
        };
        if too_late() {
            self.checkin(target.origin, connection);
            return Err(ConnectorError::other(Box::new(TooLate), None));
        }
        let answer = match exchange(&mut connection, &bytes).await {
            // The server closed a kept-alive connection before this request reached it.
            Err(Failure::Closed(_)) if reused => {
                connection = self.connect(&target).await?;
                exchange(&mut connection, &bytes).await
            }
            other => other,
        };
        match answer {
            Ok((response, keep_alive)) => {
                if keep_alive {
                    self.checkin(target.origin, connection);
                }
                Ok(response)
            }
            Err(Failure::Closed(e) | Failure::Io(e)) => Err(ConnectorError::io(e.into())),
            Err(Failure::Protocol(why)) => Err(ConnectorError::other(why.into(), None)),
        }
    }
}

impl HttpConnector for Http1Client {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let client = self.clone();
        HttpConnectorFuture::new(async move { client.send(request).await })
    }
}

impl HttpClient for Http1Client {
    fn http_connector(&self, settings: &HttpConnectorSettings, _components: &RuntimeComponents) -> SharedHttpConnector {
        let mut client = self.clone();
        client.connect_timeout = settings.connect_timeout();
        SharedHttpConnector::new(client)
    }
}
