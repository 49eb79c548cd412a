//! The builder of a [`RedisConnection`]: URLs, TLS, Sentinel and how to connect.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ::redis::{Client, ConnectionInfo, IntoConnectionInfo, ProtocolVersion};

use super::cluster::ClusterNodes;
use super::connection::{RedisConnection, Topology};
use super::reconnect::Reconnecting;
use super::topology::{Inner, Nodes, SentinelState, Shared, SlotMap};
use super::{map_error, redact};
use crate::error::StoreError;

/// Builds a [`RedisConnection`]. Made by [`RedisConnection::standalone`],
/// [`RedisConnection::cluster`] or [`RedisConnection::sentinel`].
///
/// Its `Debug` output shows the URLs with passwords replaced by `***`.
#[derive(Clone)]
#[must_use = "a RedisConnector does nothing until `connect` is awaited"]
pub struct RedisConnector {
    pub(super) topology: Topology,
    pub(super) urls: Vec<String>,
    pub(super) master_name: Option<String>,
    pub(super) master_username: Option<String>,
    pub(super) master_password: Option<String>,
    pub(super) call_timeout: Duration,
    pub(super) connect_timeout: Duration,
    pub(super) resp3: bool,
    pub(super) tls: TlsOptions,
}

/// TLS settings for `rediss://` URLs.
#[derive(Clone, Default)]
pub(super) struct TlsOptions {
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    ca_pem: Option<Vec<u8>>,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    insecure: bool,
}

impl fmt::Debug for RedisConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls: Vec<String> = self.urls.iter().map(|u| redact(u)).collect();
        f.debug_struct("RedisConnector")
            .field("topology", &self.topology)
            .field("urls", &urls)
            .field("master_name", &self.master_name)
            .field("master_username", &self.master_username)
            .field(
                "master_password",
                &self.master_password.as_ref().map(|_| "***"),
            )
            .field("call_timeout", &self.call_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("resp3", &self.resp3)
            .field("tls_ca", &self.tls.ca_pem.is_some())
            .field("tls_insecure", &self.tls.insecure)
            .finish()
    }
}

impl RedisConnector {
    /// Bound on each call, from sending the command to decoding the reply, including a
    /// `NOSCRIPT` resend. Default: [`RedisConnection::DEFAULT_CALL_TIMEOUT`] (100 ms). The
    /// stores built on the handle use it unless their
    /// [`StoreOptions::call_timeout`](super::StoreOptions::call_timeout) overrides it.
    /// `Duration::MAX` waits without bound; zero is refused by [`connect`](Self::connect).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Bound on establishing a connection, both in [`connect`](Self::connect) and on each
    /// background reconnect attempt. Default: [`RedisConnection::DEFAULT_CONNECT_TIMEOUT`] (1 s).
    /// Zero is refused by [`connect`](Self::connect).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Speak RESP3 (default `true`; needs Redis 6 or Valkey). With RESP3 a standalone handle
    /// notices a dropped connection while idle and reconnects before the next call; with RESP2
    /// the first call after a drop fails with [`StoreError::Unavailable`] and triggers the
    /// reconnect.
    pub fn resp3(mut self, on: bool) -> Self {
        self.resp3 = on;
        self
    }

    /// Sentinel only: the user name and password of the Redis master (the sentinels' own are
    /// in their URLs). Default: none.
    pub fn master_auth(mut self, username: Option<String>, password: impl Into<String>) -> Self {
        self.master_username = username;
        self.master_password = Some(password.into());
        self
    }

    /// TLS (`rediss://` URLs, feature `tls`): trust the CA certificate(s) in this PEM file
    /// instead of the system's roots. Managed Redis services publish theirs; a self-signed
    /// server needs its own. Read when [`connect`](Self::connect) runs.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_ca_file(mut self, path: impl AsRef<std::path::Path>) -> Result<Self, StoreError> {
        let pem = std::fs::read(path.as_ref()).map_err(|e| {
            StoreError::Config(format!(
                "cannot read the TLS CA file {}: {e}",
                path.as_ref().display()
            ))
        })?;
        self.tls.ca_pem = Some(pem);
        Ok(self)
    }

    /// TLS (`rediss://` URLs, feature `tls`): do not verify the server's certificate or host
    /// name. Only for tests and private networks you trust: it gives up protection against a
    /// man in the middle. Default `false`.
    #[cfg(feature = "tls")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
    pub fn tls_insecure(mut self, on: bool) -> Self {
        self.tls.insecure = on;
        self
    }

    fn protocol(&self) -> ProtocolVersion {
        if self.resp3 {
            ProtocolVersion::RESP3
        } else {
            ProtocolVersion::RESP2
        }
    }

    /// Connects, waiting at most the connect timeout.
    ///
    /// Errors: [`StoreError::Config`] for a zero call or connect timeout, a bad URL, an empty
    /// node list, a `rediss://` URL without the `tls` feature or credentials the server
    /// refuses; [`StoreError::Timeout`] or [`StoreError::Unavailable`] when no server answers.
    pub async fn connect(self) -> Result<RedisConnection, StoreError> {
        for (field, value) in [
            ("call_timeout", self.call_timeout),
            ("connect_timeout", self.connect_timeout),
        ] {
            if value.is_zero() {
                return Err(StoreError::Config(format!(
                    "invalid RedisConnector `{field}`: must be more than zero"
                )));
            }
        }
        let (inner, nodes) = match self.topology {
            Topology::Standalone => {
                let url = self
                    .urls
                    .first()
                    .ok_or_else(|| StoreError::Config("no Redis URL given".into()))?;
                let info = self.connection_info(url)?;
                let node: Arc<str> = Arc::from(info.addr().to_string());
                let manager = self.manager(info).await?;
                (Inner::Standalone(manager), Nodes::Fixed(node))
            }
            Topology::Sentinel => {
                if self.urls.is_empty() {
                    return Err(StoreError::Config("no Sentinel URL given".into()));
                }
                let (node, manager) = self
                    .sentinel_master(None)
                    .await?
                    .expect("no master to skip");
                let state = SentinelState {
                    current: RwLock::new((node, manager)),
                    resolving: AtomicBool::new(false),
                    last_resolve: AtomicU64::new(0),
                };
                (Inner::Sentinel(Arc::new(state)), Nodes::Sentinel)
            }
            Topology::Cluster => {
                let (nodes, mut table) = ClusterNodes::connect(&self).await?;
                table.sort_unstable_by_key(|(start, _, _)| *start);
                let map = SlotMap::default();
                *map.table.write().expect("not poisoned") = table;
                (Inner::Cluster(Arc::new(nodes)), Nodes::Slots(map))
            }
        };
        let urls: Vec<String> = self.urls.iter().map(|u| redact(u)).collect();
        tracing::debug!(topology = ?self.topology, urls = ?urls, "connected to Redis");
        let conn = RedisConnection {
            inner,
            topology: self.topology,
            call_timeout: self.call_timeout,
            shared: Arc::new(Shared {
                nodes,
                origin: Instant::now(),
                connector: self,
                watch: Arc::default(),
            }),
        };
        Ok(conn)
    }

    pub(super) fn connection_info(&self, url: &str) -> Result<ConnectionInfo, StoreError> {
        #[cfg(not(feature = "tls"))]
        if url.starts_with("rediss://") {
            return Err(StoreError::Config(
                "a rediss:// URL needs floodwall-core's `tls` feature (floodwall's `redis-tls`)"
                    .into(),
            ));
        }
        #[cfg(feature = "tls")]
        let owned;
        #[cfg(feature = "tls")]
        let url = if self.tls.insecure && url.starts_with("rediss://") && !url.contains('#') {
            owned = format!("{url}#insecure");
            owned.as_str()
        } else {
            url
        };
        let info = url.into_connection_info().map_err(|e| {
            StoreError::Config(format!(
                "invalid Redis URL {}: {}",
                redact(url),
                redact_err(&e)
            ))
        })?;
        let settings = info.redis_settings().clone().set_protocol(self.protocol());
        Ok(info.set_redis_settings(settings))
    }

    pub(super) fn client(&self, info: ConnectionInfo) -> Result<Client, StoreError> {
        #[cfg(feature = "tls")]
        if let Some(ca) = &self.tls.ca_pem {
            return Client::build_with_tls(
                info,
                ::redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca.clone()),
                },
            )
            .map_err(|e| map_error(e, self.connect_timeout));
        }
        Client::open(info).map_err(|e| map_error(e, self.connect_timeout))
    }

    pub(super) async fn manager(&self, info: ConnectionInfo) -> Result<Reconnecting, StoreError> {
        let timeout = self.connect_timeout;
        let client = self.client(info)?;
        Reconnecting::connect(client, timeout)
            .await
            .map_err(|e| map_error(e, timeout))
    }

    /// Asks the sentinels, in turn, for the master's address and connects to it — unless it
    /// is `unless` (the master the handle is on already): then `None`, and no connection is
    /// opened just to be dropped.
    pub(super) async fn sentinel_master(
        &self,
        unless: Option<&str>,
    ) -> Result<Option<(Arc<str>, Reconnecting)>, StoreError> {
        let name = self
            .master_name
            .as_deref()
            .ok_or_else(|| StoreError::Config("no Sentinel master name given".into()))?;
        let timeout = self.connect_timeout;
        let mut last = StoreError::unavailable("no Sentinel answered");
        for url in &self.urls {
            let info = self.connection_info(url)?;
            let ask = async {
                let client = self.client(info)?;
                let mut conn = client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(|e| map_error(e, timeout))?;
                let addr: Option<(String, u16)> = ::redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(name)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| map_error(e, timeout))?;
                addr.ok_or_else(|| {
                    StoreError::Config(format!("Sentinel does not know a master named {name:?}"))
                })
            };
            let addr = match tokio::time::timeout(timeout, ask).await {
                Ok(Ok(addr)) => addr,
                Ok(Err(e @ StoreError::Config(_))) => return Err(e),
                Ok(Err(e)) => {
                    last = e;
                    continue;
                }
                Err(_) => {
                    last = StoreError::Timeout { after: timeout };
                    continue;
                }
            };
            let node = format!("{}:{}", addr.0, addr.1);
            if unless == Some(node.as_str()) {
                return Ok(None);
            }
            let info = self.master_info(&node)?;
            match self.manager(info).await {
                Ok(manager) => return Ok(Some((Arc::from(node), manager))),
                Err(e @ StoreError::Config(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }
}

impl RedisConnector {
    /// How to reach the Sentinel master at `node` (`host:port`): the sentinels' scheme
    /// (`rediss` if they use TLS) and the master's own credentials.
    pub(super) fn master_info(&self, node: &str) -> Result<ConnectionInfo, StoreError> {
        let scheme = if self.urls.iter().any(|u| u.starts_with("rediss://")) {
            "rediss"
        } else {
            "redis"
        };
        let auth = match (&self.master_username, &self.master_password) {
            (Some(u), Some(p)) => format!("{}:{}@", encode(u), encode(p)),
            (None, Some(p)) => format!(":{}@", encode(p)),
            _ => String::new(),
        };
        self.connection_info(&format!("{scheme}://{auth}{node}"))
    }
}

/// Percent-encodes a URL user-info part.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn redact_err(e: &::redis::RedisError) -> String {
    // redis-rs does not echo passwords in its URL errors; the text is safe, but cut it.
    e.to_string().chars().take(200).collect()
}
