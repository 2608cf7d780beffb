//! Kept-alive connections by origin, and opening new ones (DNS cached, TLS with rustls).

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_smithy_runtime_api::client::result::ConnectorError;
use tokio::net::TcpStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use super::client::Http1Client;
use super::connection::{Connection, Stream};
use super::request::Target;

/// Idle connections older than this are closed rather than reused.
const IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// Idle connections kept, over all hosts: enough for every post in flight.
const MAX_IDLE: usize = 1024;
/// How long a host's addresses are reused. A fanout opens hundreds of connections at once, and
/// each would otherwise ask the system resolver on a blocking thread of its own.
const DNS_TTL: Duration = Duration::from_secs(30);

struct Idle {
    origin: Arc<str>,
    connection: Connection,
    since: Instant,
}

/// A client's connections, shared by its clones: the idle ones, and what opening one needs.
pub(super) struct Pool {
    idle: Mutex<Vec<Idle>>,
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    /// Trusted besides the system's certificates (tests).
    extra_roots: Vec<CertificateDer<'static>>,
    /// Resolved addresses by origin; the lock makes concurrent connects share one lookup.
    pub(super) addresses: tokio::sync::Mutex<HashMap<Arc<str>, Resolved>>,
    /// Spreads new connections over a host's addresses.
    next_address: AtomicUsize,
}

/// A host's addresses, and when they were looked up.
type Resolved = (Vec<SocketAddr>, Instant);

impl Pool {
    pub(super) fn new(extra_roots: Vec<CertificateDer<'static>>) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            tls: OnceLock::new(),
            extra_roots,
            addresses: Default::default(),
            next_address: AtomicUsize::new(0),
        }
    }

    /// How many connections wait in the pool.
    pub(super) fn idle_connections(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

impl Http1Client {
    pub(super) fn checkout(&self, origin: &str) -> Option<Connection> {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        idle.retain(|c| now.duration_since(c.since) < IDLE_TIMEOUT);
        let at = idle.iter().rposition(|c| &*c.origin == origin)?;
        Some(idle.swap_remove(at).connection)
    }

    pub(super) fn checkin(&self, origin: Arc<str>, connection: Connection) {
        let mut idle = self.pool.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push(Idle {
                origin,
                connection,
                since: Instant::now(),
            });
        }
    }

    /// The host's addresses, looked up at most once per [`DNS_TTL`], rotated by one for each
    /// new connection.
    async fn addresses(&self, target: &Target) -> io::Result<Vec<SocketAddr>> {
        let mut cache = self.pool.addresses.lock().await;
        let mut addresses = match cache.get(&target.origin) {
            Some((addresses, at)) if at.elapsed() < DNS_TTL => addresses.clone(),
            _ => {
                let found: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
                    .await?
                    .collect();
                if found.is_empty() {
                    return Err(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{} has no address", target.host),
                    ));
                }
                cache.insert(target.origin.clone(), (found.clone(), Instant::now()));
                found
            }
        };
        drop(cache);
        let turn = self.pool.next_address.fetch_add(1, Ordering::Relaxed);
        let len = addresses.len();
        addresses.rotate_left(turn % len);
        Ok(addresses)
    }

    pub(super) async fn connect(&self, target: &Target) -> Result<Connection, ConnectorError> {
        let connect = async {
            let addresses = self.addresses(target).await?;
            TcpStream::connect(&addresses[..]).await
        };
        let tcp = match self.connect_timeout {
            Some(limit) => tokio::time::timeout(limit, connect).await.map_err(|_| {
                ConnectorError::timeout(format!("connecting to {} took over {limit:?}", target.origin).into())
            })?,
            None => connect.await,
        }
        .map_err(|e| ConnectorError::io(e.into()))?;
        // Requests and answers are small: send them at once.
        tcp.set_nodelay(true).map_err(|e| ConnectorError::io(e.into()))?;
        let io: Box<dyn Stream> = if target.tls {
            let config = self
                .pool
                .tls
                .get_or_init(|| tls_config(&self.pool.extra_roots))
                .clone()
                .map_err(|e| ConnectorError::user(e.into()))?;
            let name = ServerName::try_from(target.host.clone()).map_err(|e| ConnectorError::user(e.into()))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| ConnectorError::io(e.into()))?;
            Box::new(tls)
        } else {
            Box::new(tcp)
        };
        Ok(Connection {
            io,
            buf: Vec::with_capacity(1024),
        })
    }
}

fn tls_config(extra_roots: &[CertificateDer<'static>]) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    roots.add_parsable_certificates(extra_roots.iter().cloned());
    if roots.is_empty() {
        return Err(format!(
            "no trusted CA certificates: the system store had none ({:?})",
            native.errors
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
