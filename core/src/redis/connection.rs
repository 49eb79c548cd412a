//! The connection handle and its builder.

use std::fmt;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::cluster::ClusterClient;
use ::redis::cluster_async::ClusterConnection;
use ::redis::{Client, Cmd, FromRedisValue, IntoConnectionInfo, ProtocolVersion, ServerErrorKind};

use super::map_error;
use super::script::ScriptCall;
use crate::error::StoreError;

/// Whether a handle talks to one server or to a Cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One Redis (or Valkey) server, through a reconnecting connection.
    Standalone,
    /// A Redis Cluster; commands are routed by the slot of their first key.
    Cluster,
}

/// Builds a [`RedisConnection`]. Made by [`RedisConnection::standalone`] or
/// [`RedisConnection::cluster`].
#[derive(Debug, Clone)]
#[must_use = "a RedisConnector does nothing until `connect` is awaited"]
pub struct RedisConnector {
    topology: Topology,
    urls: Vec<String>,
    call_timeout: Duration,
    connect_timeout: Duration,
    resp3: bool,
}

impl RedisConnector {
    /// Bound on each call, from sending the command to decoding the reply, including a
    /// `NOSCRIPT` resend. Default: [`RedisConnection::DEFAULT_CALL_TIMEOUT`] (100 ms).
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

    /// Connects, waiting at most the connect timeout.
    ///
    /// Errors: [`StoreError::Config`] for a bad URL or an empty node list,
    /// [`StoreError::Timeout`] or [`StoreError::Unavailable`] when no server answers.
    pub async fn connect(self) -> Result<RedisConnection, StoreError> {
        let protocol = if self.resp3 {
            ProtocolVersion::RESP3
        } else {
            ProtocolVersion::RESP2
        };
        let timeout = self.connect_timeout;
        let inner = match self.topology {
            Topology::Standalone => {
                let url = self
                    .urls
                    .first()
                    .ok_or_else(|| StoreError::Config("no Redis URL given".into()))?;
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| StoreError::Config(format!("invalid Redis URL: {e}")))?;
                let settings = info.redis_settings().clone().set_protocol(protocol);
                let client = Client::open(info.set_redis_settings(settings))
                    .map_err(|e| map_error(e, timeout))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(None)
                    .set_number_of_retries(4)
                    .set_min_delay(Duration::from_millis(10))
                    .set_max_delay(Duration::from_millis(500));
                let manager = tokio::time::timeout(
                    timeout,
                    ConnectionManager::new_with_config(client, config),
                )
                .await
                .map_err(|_| StoreError::Timeout { after: timeout })?
                .map_err(|e| map_error(e, timeout))?;
                Inner::Standalone(manager)
            }
            Topology::Cluster => {
                if self.urls.is_empty() {
                    return Err(StoreError::Config("no Redis Cluster node URL given".into()));
                }
                let client = ClusterClient::builder(self.urls.iter().map(String::as_str))
                    .connection_timeout(timeout)
                    .use_protocol(protocol)
                    .build()
                    .map_err(|e| StoreError::Config(format!("invalid Redis Cluster URLs: {e}")))?;
                let conn = tokio::time::timeout(timeout, client.get_async_connection())
                    .await
                    .map_err(|_| StoreError::Timeout { after: timeout })?
                    .map_err(|e| map_error(e, timeout))?;
                Inner::Cluster(conn)
            }
        };
        tracing::debug!(topology = ?self.topology, urls = ?self.urls, "connected to Redis");
        Ok(RedisConnection {
            inner,
            topology: self.topology,
            call_timeout: self.call_timeout,
        })
    }
}

#[derive(Clone)]
enum Inner {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A cheap-to-clone handle to Redis or Redis Cluster. See the [module docs](super).
///
/// Clones share the underlying connection(s); commands from many tasks are pipelined on them.
#[derive(Clone)]
pub struct RedisConnection {
    inner: Inner,
    topology: Topology,
    call_timeout: Duration,
}

impl RedisConnection {
    /// Default bound on one call: 100 ms.
    pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_millis(100);
    /// Default bound on establishing a connection: 1 s.
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

    /// A standalone server at `url` (`redis://[user:pass@]host:port[/db]`, `rediss://` for TLS
    /// when redis-rs is built with TLS).
    pub fn standalone(url: impl Into<String>) -> RedisConnector {
        Self::connector(Topology::Standalone, vec![url.into()])
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
        )
    }

    fn connector(topology: Topology, urls: Vec<String>) -> RedisConnector {
        RedisConnector {
            topology,
            urls,
            call_timeout: Self::DEFAULT_CALL_TIMEOUT,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            resp3: true,
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

    /// Standalone or Cluster.
    pub fn topology(&self) -> Topology {
        self.topology
    }

    /// Runs a script: `EVALSHA`, and once more as `EVAL` if the server answers `NOSCRIPT`.
    /// The whole call is bounded by [`call_timeout`](Self::call_timeout).
    ///
    /// On a Cluster the call is routed by its first key and must have at least one key; all its
    /// keys must share a hash tag (Redis answers `CROSSSLOT` otherwise, reported as
    /// [`StoreError::Script`]).
    pub async fn invoke<T: FromRedisValue>(&self, call: ScriptCall<'_>) -> Result<T, StoreError> {
        if self.topology == Topology::Cluster && call.num_keys() == 0 {
            return Err(StoreError::Config(
                "a script run on Redis Cluster needs at least one key to route by".into(),
            ));
        }
        let timeout = self.call_timeout;
        let run = async {
            let mut conn = self.inner.clone();
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
            Ok(result) => result.map_err(|e| map_error(e, timeout)),
            Err(_) => Err(StoreError::Timeout { after: timeout }),
        }
    }

    /// Sends any command, bounded by [`call_timeout`](Self::call_timeout).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let timeout = self.call_timeout;
        let mut conn = self.inner.clone();
        match tokio::time::timeout(timeout, conn.query::<T>(cmd)).await {
            Ok(result) => result.map_err(|e| map_error(e, timeout)),
            Err(_) => Err(StoreError::Timeout { after: timeout }),
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

impl Inner {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> ::redis::RedisResult<T> {
        match self {
            Inner::Standalone(c) => cmd.query_async(c).await,
            Inner::Cluster(c) => cmd.query_async(c).await,
        }
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("topology", &self.topology)
            .field("call_timeout", &self.call_timeout)
            .finish()
    }
}
