//! The connection handle and its builder.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSub};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{
    Client, Cmd, ConnectionInfo, FromRedisValue, IntoConnectionInfo, ProtocolVersion,
    ServerErrorKind, Value,
};

use super::script::ScriptCall;
use super::slot::key_slot;
use super::{CallError, map_error, redact};
use crate::error::StoreError;

/// Whether a handle talks to one server, to a Cluster, or to the master a Sentinel names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Topology {
    /// One Redis (or Valkey) server, through a reconnecting connection.
    Standalone,
    /// A Redis Cluster; commands are routed by the slot of their first key.
    Cluster,
    /// The master of a Sentinel-monitored group; the handle follows failovers.
    Sentinel,
}

/// Builds a [`RedisConnection`]. Made by [`RedisConnection::standalone`],
/// [`RedisConnection::cluster`] or [`RedisConnection::sentinel`].
///
/// Its `Debug` output shows the URLs with passwords replaced by `***`.
#[derive(Clone)]
#[must_use = "a RedisConnector does nothing until `connect` is awaited"]
pub struct RedisConnector {
    topology: Topology,
    urls: Vec<String>,
    master_name: Option<String>,
    master_username: Option<String>,
    master_password: Option<String>,
    call_timeout: Duration,
    connect_timeout: Duration,
    resp3: bool,
    tls: TlsOptions,
}

/// TLS settings for `rediss://` URLs.
#[derive(Clone, Default)]
struct TlsOptions {
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
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Bound on establishing a connection, both in [`connect`](Self::connect) and on each
    /// background reconnect attempt. Default: [`RedisConnection::DEFAULT_CONNECT_TIMEOUT`] (1 s).
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
    /// Errors: [`StoreError::Config`] for a bad URL, an empty node list, a `rediss://` URL
    /// without the `tls` feature or credentials the server refuses; [`StoreError::Timeout`] or
    /// [`StoreError::Unavailable`] when no server answers.
    pub async fn connect(self) -> Result<RedisConnection, StoreError> {
        let timeout = self.connect_timeout;
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
                let (node, manager) = self.sentinel_master().await?;
                let state = SentinelState {
                    current: RwLock::new((node, manager)),
                    resolving: AtomicBool::new(false),
                    last_resolve: AtomicU64::new(0),
                };
                (Inner::Sentinel(Arc::new(state)), Nodes::Sentinel)
            }
            Topology::Cluster => {
                if self.urls.is_empty() {
                    return Err(StoreError::Config("no Redis Cluster node URL given".into()));
                }
                for url in &self.urls {
                    self.connection_info(url)?;
                }
                let builder = ClusterClient::builder(self.urls.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .use_protocol(self.protocol());
                #[cfg(feature = "tls")]
                let builder = self.cluster_tls(builder);
                let client = builder.build().map_err(|e| {
                    StoreError::Config(format!("invalid Redis Cluster URLs: {}", redact_err(&e)))
                })?;
                let conn = tokio::time::timeout(timeout, client.get_async_connection())
                    .await
                    .map_err(|_| StoreError::Timeout { after: timeout })?
                    .map_err(|e| map_error(e, timeout))?;
                (Inner::Cluster(conn), Nodes::Slots(SlotMap::default()))
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
            }),
        };
        if conn.topology == Topology::Cluster {
            // Best effort: until the slot table is known, every key maps to one node name.
            let _ = conn.refresh_slots().await;
        }
        Ok(conn)
    }

    fn connection_info(&self, url: &str) -> Result<ConnectionInfo, StoreError> {
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

    fn client(&self, info: ConnectionInfo) -> Result<Client, StoreError> {
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

    #[cfg(feature = "tls")]
    fn cluster_tls(
        &self,
        mut builder: ::redis::cluster::ClusterClientBuilder,
    ) -> ::redis::cluster::ClusterClientBuilder {
        if !self.urls.iter().any(|u| u.starts_with("rediss://")) {
            return builder;
        }
        if self.tls.insecure {
            builder = builder.tls(::redis::TlsMode::Insecure);
        }
        if let Some(ca) = &self.tls.ca_pem {
            builder = builder.certs(::redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca.clone()),
            });
        }
        builder
    }

    async fn manager(&self, info: ConnectionInfo) -> Result<ConnectionManager, StoreError> {
        let timeout = self.connect_timeout;
        let client = self.client(info)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(None)
            .set_number_of_retries(4)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(500));
        tokio::time::timeout(timeout, ConnectionManager::new_with_config(client, config))
            .await
            .map_err(|_| StoreError::Timeout { after: timeout })?
            .map_err(|e| map_error(e, timeout))
    }

    /// Asks the sentinels, in turn, for the master's address and connects to it.
    async fn sentinel_master(&self) -> Result<(Arc<str>, ConnectionManager), StoreError> {
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
            let scheme = if url.starts_with("rediss://") {
                "rediss"
            } else {
                "redis"
            };
            let auth = match (&self.master_username, &self.master_password) {
                (Some(u), Some(p)) => format!("{}:{}@", encode(u), encode(p)),
                (None, Some(p)) => format!(":{}@", encode(p)),
                _ => String::new(),
            };
            let master_url = format!("{scheme}://{auth}{}:{}", addr.0, addr.1);
            let info = self.connection_info(&master_url)?;
            match self.manager(info).await {
                Ok(manager) => {
                    return Ok((Arc::from(format!("{}:{}", addr.0, addr.1)), manager));
                }
                Err(e @ StoreError::Config(_)) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
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

#[derive(Clone)]
enum Inner {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(Arc<SentinelState>),
}

struct SentinelState {
    current: RwLock<(Arc<str>, ConnectionManager)>,
    resolving: AtomicBool,
    last_resolve: AtomicU64,
}

/// Which node serves a key.
enum Nodes {
    Fixed(Arc<str>),
    Sentinel,
    Slots(SlotMap),
}

/// `(first slot, last slot, master "host:port")`, sorted by first slot.
type SlotTable = Vec<(u16, u16, Arc<str>)>;

/// The Cluster's slot table as last read with `CLUSTER SLOTS`.
#[derive(Default)]
struct SlotMap {
    table: RwLock<Arc<SlotTable>>,
    refreshing: AtomicBool,
    last_refresh: AtomicU64,
}

struct Shared {
    nodes: Nodes,
    origin: Instant,
    connector: RedisConnector,
}

/// A cheap-to-clone handle to Redis, Redis Cluster or a Sentinel-monitored master. See the
/// [module docs](super).
///
/// Clones share the underlying connection(s); commands from many tasks are pipelined on them.
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
    topology: Topology,
    call_timeout: Duration,
    shared: Arc<Shared>,
}

/// How often a handle may re-read the topology (slot table, Sentinel master) while calls fail.
const TOPOLOGY_RETRY: Duration = Duration::from_millis(200);
/// How often a Cluster handle re-reads its slot table while all is well.
const SLOTS_MAX_AGE: Duration = Duration::from_secs(10);

impl RedisConnection {
    /// Default bound on one call: 100 ms.
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(100);
    /// Default bound on establishing a connection: 1 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

    /// A standalone server at `url` (`redis://[user:pass@]host:port[/db]`; `rediss://` for TLS
    /// with the `tls` feature).
    pub fn standalone(url: impl Into<String>) -> RedisConnector {
        Self::connector(Topology::Standalone, vec![url.into()], None)
    }

    /// A Redis Cluster, discovered from one or more seed node URLs.
    pub fn cluster<I, S>(urls: I) -> RedisConnector
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::connector(
            Topology::Cluster,
            urls.into_iter().map(Into::into).collect(),
            None,
        )
    }

    /// The master named `master_name` of a Sentinel-monitored group, found through the
    /// sentinels at `sentinel_urls` (tried in turn). After a failover the handle asks the
    /// sentinels again and follows the new master; give the master's own credentials with
    /// [`RedisConnector::master_auth`].
    pub fn sentinel<I, S>(master_name: impl Into<String>, sentinel_urls: I) -> RedisConnector
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::connector(
            Topology::Sentinel,
            sentinel_urls.into_iter().map(Into::into).collect(),
            Some(master_name.into()),
        )
    }

    fn connector(
        topology: Topology,
        urls: Vec<String>,
        master_name: Option<String>,
    ) -> RedisConnector {
        RedisConnector {
            topology,
            urls,
            master_name,
            master_username: None,
            master_password: None,
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            resp3: true,
            tls: TlsOptions::default(),
        }
    }

    /// The bound applied to each call.
    pub fn call_timeout(&self) -> Duration {
        self.call_timeout
    }

    /// A handle sharing this connection with another per-call bound.
    pub fn with_call_timeout(&self, timeout: Duration) -> RedisConnection {
        RedisConnection {
            call_timeout: timeout,
            ..self.clone()
        }
    }

    /// Standalone, Cluster or Sentinel.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// The node (`host:port`) that serves `key`, as far as this handle knows: the server, the
    /// current Sentinel master, or the Cluster master that owned the key's slot when the
    /// handle last read the slot table (`"cluster"` before it could read one).
    pub fn node_for(&self, key: &[u8]) -> Arc<str> {
        match &self.shared.nodes {
            Nodes::Fixed(node) => node.clone(),
            Nodes::Sentinel => match &self.inner {
                Inner::Sentinel(s) => s.current.read().expect("not poisoned").0.clone(),
                _ => Arc::from("sentinel"),
            },
            Nodes::Slots(map) => {
                self.refresh_if_old(map);
                let slot = key_slot(key);
                let table = map.table.read().expect("not poisoned").clone();
                let i = table.partition_point(|(_, end, _)| *end < slot);
                match table.get(i) {
                    Some((start, _, node)) if *start <= slot => node.clone(),
                    _ => Arc::from("cluster"),
                }
            }
        }
    }

    fn millis(&self) -> u64 {
        self.shared.origin.elapsed().as_millis() as u64
    }

    fn refresh_if_old(&self, map: &SlotMap) {
        let last = map.last_refresh.load(Ordering::Relaxed);
        if self.millis().saturating_sub(last) >= SLOTS_MAX_AGE.as_millis() as u64 {
            self.topology_suspect();
        }
    }

    /// Tells the handle that a node failed or refused: the topology may have changed. A
    /// Cluster handle re-reads its slot table, a Sentinel handle asks the sentinels for the
    /// master, in the background and at most every 200 ms.
    pub(crate) fn topology_suspect(&self) {
        let now = self.millis();
        let (flag, last) = match (&self.shared.nodes, &self.inner) {
            (Nodes::Slots(map), _) => (&map.refreshing, &map.last_refresh),
            (Nodes::Sentinel, Inner::Sentinel(s)) => (&s.resolving, &s.last_resolve),
            _ => return,
        };
        if now.saturating_sub(last.load(Ordering::Relaxed)) < TOPOLOGY_RETRY.as_millis() as u64
            || flag.swap(true, Ordering::AcqRel)
        {
            return;
        }
        last.store(now, Ordering::Relaxed);
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            flag.store(false, Ordering::Release);
            return;
        };
        let conn = self.clone();
        handle.spawn(async move {
            match conn.topology {
                Topology::Sentinel => conn.re_resolve().await,
                _ => {
                    let _ = conn.refresh_slots().await;
                }
            }
            match (&conn.shared.nodes, &conn.inner) {
                (Nodes::Slots(map), _) => map.refreshing.store(false, Ordering::Release),
                (_, Inner::Sentinel(s)) => s.resolving.store(false, Ordering::Release),
                _ => {}
            }
        });
    }

    /// Reads `CLUSTER SLOTS` (masters only) into the slot table.
    async fn refresh_slots(&self) -> Result<(), StoreError> {
        let Nodes::Slots(map) = &self.shared.nodes else {
            return Ok(());
        };
        let mut last = StoreError::unavailable("no node answered CLUSTER SLOTS");
        for _ in 0..3 {
            match self
                .query::<Value>(::redis::cmd("CLUSTER").arg("SLOTS"))
                .await
            {
                Ok(reply) => {
                    let mut table = parse_slots(&reply)?;
                    table.sort_unstable_by_key(|(start, _, _)| *start);
                    *map.table.write().expect("not poisoned") = Arc::new(table);
                    map.last_refresh.store(self.millis(), Ordering::Relaxed);
                    return Ok(());
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Asks the sentinels for the master again; switches to it if it moved.
    async fn re_resolve(&self) {
        let Inner::Sentinel(state) = &self.inner else {
            return;
        };
        let current = state.current.read().expect("not poisoned").0.clone();
        match self.shared.connector.sentinel_master().await {
            Ok((node, manager)) if node != current => {
                tracing::info!(from = %current, to = %node, "Sentinel master moved; following it");
                *state.current.write().expect("not poisoned") = (node, manager);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "could not ask the sentinels for the master"),
        }
    }

    /// A new pub/sub connection to a node that can serve it: the server, the current Sentinel
    /// master, or any reachable Cluster node (classic pub/sub reaches every node of a
    /// Cluster). Bounded by the connect timeout per node tried.
    pub async fn pubsub(&self) -> Result<PubSub, StoreError> {
        let connector = &self.shared.connector;
        let timeout = connector.connect_timeout;
        let mut candidates: Vec<ConnectionInfo> = Vec::new();
        match &self.inner {
            Inner::Sentinel(state) => {
                let node = state.current.read().expect("not poisoned").0.clone();
                let scheme = if connector.urls.iter().any(|u| u.starts_with("rediss://")) {
                    "rediss"
                } else {
                    "redis"
                };
                let auth = match (&connector.master_username, &connector.master_password) {
                    (Some(u), Some(p)) => format!("{}:{}@", encode(u), encode(p)),
                    (None, Some(p)) => format!(":{}@", encode(p)),
                    _ => String::new(),
                };
                candidates.push(connector.connection_info(&format!("{scheme}://{auth}{node}"))?);
            }
            _ => {
                for url in &connector.urls {
                    candidates.push(connector.connection_info(url)?);
                }
            }
        }
        let mut last = StoreError::unavailable("no node to subscribe on");
        for info in candidates {
            let client = connector.client(info)?;
            match tokio::time::timeout(timeout, client.get_async_pubsub()).await {
                Ok(Ok(pubsub)) => return Ok(pubsub),
                Ok(Err(e)) => last = map_error(e, timeout),
                Err(_) => last = StoreError::Timeout { after: timeout },
            }
        }
        Err(last)
    }

    /// Runs a script: `EVALSHA`, and once more as `EVAL` if the server answers `NOSCRIPT`.
    /// The whole call is bounded by [`call_timeout`](Self::call_timeout).
    ///
    /// On a Cluster the call is routed by its first key and must have at least one key; all its
    /// keys must share a hash tag (Redis answers `CROSSSLOT` otherwise, reported as
    /// [`StoreError::Script`]).
    pub async fn invoke<T: FromRedisValue>(&self, call: ScriptCall<'_>) -> Result<T, StoreError> {
        let result = self.invoke_raw(&call, self.call_timeout).await;
        self.finish(result)
    }

    /// Sends any command, bounded by [`call_timeout`](Self::call_timeout).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let result = self.query_raw(cmd, self.call_timeout).await;
        self.finish(result)
    }

    fn finish<T>(&self, result: Result<T, CallError>) -> Result<T, StoreError> {
        result.map_err(|e| {
            if e.health() == crate::health::Health::Unhealthy {
                self.topology_suspect();
            }
            e.into_store_error(self.call_timeout)
        })
    }

    pub(crate) async fn invoke_raw<T: FromRedisValue>(
        &self,
        call: &ScriptCall<'_>,
        timeout: Duration,
    ) -> Result<T, CallError> {
        if self.topology == Topology::Cluster && call.num_keys() == 0 {
            return Err(CallError::Redis(::redis::RedisError::from((
                ::redis::ErrorKind::InvalidClientConfig,
                "a script run on Redis Cluster needs at least one key to route by",
            ))));
        }
        let run = async {
            let mut conn = self.conn();
            match conn.query::<T>(&call.command(false)).await {
                Err(e) if e.kind() == ::redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                    tracing::debug!(
                        sha1 = call.script.sha1(),
                        "script not cached on server; sending its source"
                    );
                    conn.query::<T>(&call.command(true)).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(timeout, run).await {
            Ok(result) => result.map_err(CallError::Redis),
            Err(_) => Err(CallError::Timeout),
        }
    }

    pub(crate) async fn query_raw<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let mut conn = self.conn();
        match tokio::time::timeout(timeout, conn.query::<T>(cmd)).await {
            Ok(result) => result.map_err(CallError::Redis),
            Err(_) => Err(CallError::Timeout),
        }
    }

    fn conn(&self) -> Conn {
        match &self.inner {
            Inner::Standalone(c) => Conn::Manager(c.clone()),
            Inner::Cluster(c) => Conn::Cluster(c.clone()),
            Inner::Sentinel(s) => Conn::Manager(s.current.read().expect("not poisoned").1.clone()),
        }
    }

    /// `PING`, bounded like any call. On a Cluster it is answered by one node.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let pong: String = self.query(&::redis::cmd("PING")).await?;
        if pong == "PONG" {
            Ok(())
        } else {
            Err(StoreError::Protocol(format!("PING answered {pong:?}")))
        }
    }
}

/// Parses a `CLUSTER SLOTS` reply into `(start, end, "host:port")` of each range's master.
fn parse_slots(reply: &Value) -> Result<SlotTable, StoreError> {
    let bad = || StoreError::Protocol("unexpected CLUSTER SLOTS reply".into());
    let Value::Array(ranges) = reply else {
        return Err(bad());
    };
    let mut out = Vec::with_capacity(ranges.len());
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(bad());
        };
        let int = |v: Option<&Value>| match v {
            Some(Value::Int(n)) => u16::try_from(*n).ok(),
            _ => None,
        };
        let (Some(start), Some(end)) = (int(fields.first()), int(fields.get(1))) else {
            return Err(bad());
        };
        let Some(Value::Array(master)) = fields.get(2) else {
            return Err(bad());
        };
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return Err(bad()),
        };
        let port = int(master.get(1)).ok_or_else(bad)?;
        out.push((start, end, Arc::from(format!("{host}:{port}"))));
    }
    Ok(out)
}

enum Conn {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> ::redis::RedisResult<T> {
        match self {
            Conn::Manager(c) => cmd.query_async(c).await,
            Conn::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("topology", &self.topology)
            .field("call_timeout", &self.call_timeout)
            .field("connector", &self.shared.connector)
            .finish()
    }
}
