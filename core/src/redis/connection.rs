//! The connection handle: calls, scripts, pub/sub.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::PubSub;
use ::redis::{Cmd, ConnectionInfo, FromRedisValue, ServerErrorKind};

use super::connector::{RedisConnector, TlsOptions};
use super::script::ScriptCall;
use super::topology::{Inner, Shared};
use super::{CallError, map_error};
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

/// A cheap-to-clone handle to Redis, Redis Cluster or a Sentinel-monitored master. See the
/// [module docs](super).
///
/// Clones share the underlying connection(s); commands from many tasks are pipelined on them.
#[derive(Clone)]
pub struct RedisConnection {
    pub(super) inner: Inner,
    pub(super) topology: Topology,
    pub(super) call_timeout: Duration,
    pub(super) shared: Arc<Shared>,
}

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
                candidates.push(connector.master_info(&node)?);
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
            let conn = self.conn();
            let route = call.first_key();
            match conn.query::<T>(&call.command(false), route).await {
                Err(e) if e.kind() == ::redis::ErrorKind::Server(ServerErrorKind::NoScript) => {
                    tracing::debug!(
                        sha1 = call.script.sha1(),
                        "script not cached on server; sending its source"
                    );
                    conn.query::<T>(&call.command(true), route).await
                }
                other => other,
            }
        };
        if timeout == Duration::MAX {
            // Unbounded: no timer to arm.
            return run.await.map_err(CallError::Redis);
        }
        // The connection's watchdog bounds the call: no timer per call (see `watch`).
        match self.shared.watch.within(timeout, run).await {
            Ok(result) => result.map_err(CallError::Redis),
            Err(_) => Err(CallError::Timeout),
        }
    }

    pub(crate) async fn query_raw<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<T, CallError> {
        let conn = self.conn();
        let route = route_of(cmd);
        if timeout == Duration::MAX {
            return conn.query::<T>(cmd, route).await.map_err(CallError::Redis);
        }
        match self
            .shared
            .watch
            .within(timeout, conn.query::<T>(cmd, route))
            .await
        {
            Ok(result) => result.map_err(CallError::Redis),
            Err(_) => Err(CallError::Timeout),
        }
    }

    fn conn(&self) -> Conn<'_> {
        match &self.inner {
            Inner::Standalone(c) => Conn::Manager(c.clone()),
            Inner::Cluster(nodes) => Conn::Cluster(self, nodes),
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

enum Conn<'a> {
    Manager(super::reconnect::Reconnecting),
    Cluster(&'a RedisConnection, &'a super::cluster::ClusterNodes),
}

impl Conn<'_> {
    /// Sends `cmd`; on a Cluster, to the master of `route`'s slot.
    async fn query<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        route: Option<&[u8]>,
    ) -> ::redis::RedisResult<T> {
        let value = match self {
            Conn::Manager(c) => c.send(cmd).await?.extract_error()?,
            Conn::Cluster(conn, nodes) => conn.cluster_send(nodes, cmd, route).await?,
        };
        Ok(::redis::from_redis_value(value)?)
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

/// What a command is routed (and gated) by: its first argument after the command name (its
/// key, for every key-based command).
pub(super) fn route_of(cmd: &Cmd) -> Option<&[u8]> {
    match cmd.args_iter().nth(1) {
        Some(::redis::Arg::Simple(b)) => Some(b),
        _ => None,
    }
}
