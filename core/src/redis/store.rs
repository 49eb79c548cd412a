//! The one store path every Redis-backed floodwall store takes.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ::redis::{Cmd, FromRedisValue};

use super::script::ScriptCall;
use super::{CallError, RedisConnection};
use crate::error::StoreError;
use crate::health::{DefaultGates, GateFactory, Health, HealthGate};
use crate::key::Keyspace;

/// How a store uses Redis: the connection, the keyspace, the bound on each call and the
/// health gate of each node. The limiter, the cache and the idempotency store all take one.
///
/// ```no_run
/// # async fn demo() -> Result<(), floodwall_core::StoreError> {
/// use std::time::Duration;
/// use floodwall_core::Keyspace;
/// use floodwall_core::redis::{RedisConnection, StoreOptions};
///
/// let conn = RedisConnection::standalone("redis://127.0.0.1:6379")
///     .call_timeout(Duration::from_millis(30)) // every store on this handle: 30 ms
///     .connect()
///     .await?;
/// let limiter_store = StoreOptions::new(conn.clone());
/// let cache_store = StoreOptions::new(conn)
///     .keyspace(Keyspace::new("profiles", 2).unwrap())
///     .call_timeout(Duration::from_millis(10)); // this store only
/// # let _ = (limiter_store, cache_store); Ok(()) }
/// ```
#[must_use = "StoreOptions do nothing until handed to a store"]
pub struct StoreOptions {
    conn: RedisConnection,
    keyspace: Option<Keyspace>,
    call_timeout: Option<Duration>,
    gates: Arc<dyn GateFactory>,
}

impl fmt::Debug for StoreOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreOptions")
            .field("conn", &self.conn)
            .field("keyspace", &self.keyspace)
            .field("call_timeout", &self.call_timeout)
            .finish_non_exhaustive()
    }
}

impl StoreOptions {
    /// Redis through `conn`, with the store's own keyspace, the connection's
    /// [`call_timeout`](RedisConnection::call_timeout) and a
    /// [`NodeBreaker`](crate::health::NodeBreaker) per node.
    pub fn new(conn: RedisConnection) -> Self {
        StoreOptions {
            conn,
            keyspace: None,
            call_timeout: None,
            gates: Arc::new(DefaultGates),
        }
    }

    /// The keyspace (namespace and version) of the store's keys. Default: the store's own
    /// (`fw-rl` v1 for the limiter, `fw-cache` v1 for the cache, `fw-idem` v1 for the
    /// idempotency store). Bumping the version starts the store afresh.
    pub fn keyspace(mut self, keyspace: Keyspace) -> Self {
        self.keyspace = Some(keyspace);
        self
    }

    /// The bound on each of this store's calls. Default: the connection's own
    /// ([`RedisConnector::call_timeout`](super::RedisConnector::call_timeout), 100 ms unless
    /// set). `Duration::MAX` waits without bound.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = Some(timeout);
        self
    }

    /// The gate of each node (see [`crate::health`]). Default: a
    /// [`NodeBreaker`](crate::health::NodeBreaker) per node, opening after 5 consecutive
    /// unhealthy calls for 1 s.
    pub fn health_gate(mut self, gates: impl GateFactory) -> Self {
        self.gates = Arc::new(gates);
        self
    }

    /// The store path these options describe; `default_keyspace` applies when no keyspace was
    /// set. Called by the stores.
    pub fn open(self, default_keyspace: Keyspace) -> StorePath {
        let timeout = self.call_timeout.unwrap_or(self.conn.call_timeout());
        StorePath {
            inner: Arc::new(PathInner {
                conn: self.conn.with_call_timeout(timeout),
                keyspace: self.keyspace.unwrap_or(default_keyspace),
                factory: self.gates,
                gates: RwLock::new(HashMap::new()),
                first: std::sync::OnceLock::new(),
            }),
        }
    }
}

/// A store's way to Redis: every call bounded, routed to its node, refused at once while that
/// node's gate is open, its failure mapped to a [`StoreError`] and its effect on the node's
/// health reported (see [`crate::health`]). Cheap to clone.
#[derive(Clone)]
pub struct StorePath {
    inner: Arc<PathInner>,
}

struct PathInner {
    conn: RedisConnection,
    keyspace: Keyspace,
    factory: Arc<dyn GateFactory>,
    gates: RwLock<HashMap<Arc<str>, Arc<dyn HealthGate>>>,
    /// The first node's gate, looked up without a lock (a standalone server is the only node).
    first: std::sync::OnceLock<(Arc<str>, Arc<dyn HealthGate>)>,
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StorePath")
            .field("conn", &self.inner.conn)
            .field("keyspace", &self.inner.keyspace)
            .finish_non_exhaustive()
    }
}

/// Whether a call may be refused by its node's gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gating {
    Gated,
    /// Finishing what the caller holds: made even while the gate is open; still reported.
    Bypass,
}

impl StorePath {
    /// The keyspace of this store's keys.
    pub fn keyspace(&self) -> &Keyspace {
        &self.inner.keyspace
    }

    /// The connection, with this store's call bound.
    pub fn connection(&self) -> &RedisConnection {
        &self.inner.conn
    }

    /// The bound on each call.
    pub fn call_timeout(&self) -> Duration {
        self.inner.conn.call_timeout()
    }

    /// The gate of `node`, made on first use.
    pub fn gate(&self, node: &Arc<str>) -> Arc<dyn HealthGate> {
        if let Some((first, g)) = self.inner.first.get()
            && first == node
        {
            return g.clone();
        }
        if let Some(g) = self.inner.gates.read().expect("not poisoned").get(node) {
            return g.clone();
        }
        let mut gates = self.inner.gates.write().expect("not poisoned");
        let gate = gates
            .entry(node.clone())
            .or_insert_with(|| self.inner.factory.gate(node))
            .clone();
        let _ = self.inner.first.set((node.clone(), gate.clone()));
        gate
    }

    /// Runs a script, routed and gated by its first key.
    pub async fn invoke<T: FromRedisValue>(&self, call: ScriptCall<'_>) -> Result<T, StoreError> {
        let node = self.node_for(call.first_key());
        self.run(node, Gating::Gated, |conn, t| async move {
            conn.invoke_raw(&call, t).await
        })
        .await
    }

    /// Runs a script like [`invoke`](Self::invoke), bounded by `deadline` when it comes before
    /// the call's own timeout. A call cut short at the deadline is reported to the node's gate
    /// as a timeout only when the node had at least half the call's own bound to answer: a
    /// caller whose deadline was spent elsewhere (on another node, in a queue) says nothing
    /// about this node.
    pub async fn invoke_until<T: FromRedisValue>(
        &self,
        call: ScriptCall<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<T, StoreError> {
        self.invoke_until_as(call, deadline, Gating::Gated).await
    }

    /// Runs a script that finishes what the caller holds (a give-back of what it consumed),
    /// like [`invoke_held`](Self::invoke_held), bounded by `deadline` when it comes before the
    /// call's own timeout.
    pub async fn invoke_held_until<T: FromRedisValue>(
        &self,
        call: ScriptCall<'_>,
        deadline: tokio::time::Instant,
    ) -> Result<T, StoreError> {
        self.invoke_until_as(call, deadline, Gating::Bypass).await
    }

    async fn invoke_until_as<T: FromRedisValue>(
        &self,
        call: ScriptCall<'_>,
        deadline: tokio::time::Instant,
        gating: Gating,
    ) -> Result<T, StoreError> {
        let node = self.node_for(call.first_key());
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let bound = left.min(self.call_timeout());
        self.run_within(node, gating, bound, |conn, t| async move {
            conn.invoke_raw(&call, t).await
        })
        .await
    }

    /// Runs a script that finishes what the caller holds (completing a claim, releasing a
    /// lease): the node's gate is neither asked nor told, so an open gate never refuses it.
    pub async fn invoke_held<T: FromRedisValue>(
        &self,
        call: ScriptCall<'_>,
    ) -> Result<T, StoreError> {
        let node = self.node_for(call.first_key());
        self.run(node, Gating::Bypass, |conn, t| async move {
            conn.invoke_raw(&call, t).await
        })
        .await
    }

    /// Sends a command, routed and gated by its first argument after the command name (its
    /// key, for every key-based command).
    pub async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StoreError> {
        let node = self.node_for(super::connection::route_of(cmd));
        self.run(node, Gating::Gated, |conn, t| async move {
            conn.query_raw(cmd, t).await
        })
        .await
    }

    /// Sends a command like [`query`](Self::query), bounded by `deadline` when it comes before
    /// the call's own timeout, as [`invoke_until`](Self::invoke_until) bounds a script.
    pub async fn query_until<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        deadline: tokio::time::Instant,
    ) -> Result<T, StoreError> {
        let node = self.node_for(super::connection::route_of(cmd));
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let bound = left.min(self.call_timeout());
        self.run_within(node, Gating::Gated, bound, |conn, t| async move {
            conn.query_raw(cmd, t).await
        })
        .await
    }

    /// The node that serves `route` and its gate. A standalone server's are borrowed: no
    /// reference count is touched on the way.
    fn node_for(&self, route: Option<&[u8]>) -> (Cow<'_, Arc<str>>, Cow<'_, Arc<dyn HealthGate>>) {
        if let Some(node) = self.inner.conn.fixed_node()
            && let Some((first, gate)) = self.inner.first.get()
            && first == node
        {
            return (Cow::Borrowed(node), Cow::Borrowed(gate));
        }
        let node = self.inner.conn.node_for(route.unwrap_or_default());
        let gate = self.gate(&node);
        (Cow::Owned(node), Cow::Owned(gate))
    }

    async fn run<'a, T, F, Fut>(
        &'a self,
        node: (Cow<'a, Arc<str>>, Cow<'a, Arc<dyn HealthGate>>),
        gating: Gating,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(&'a RedisConnection, Duration) -> Fut,
        Fut: Future<Output = Result<T, CallError>> + 'a,
    {
        let timeout = self.inner.conn.call_timeout();
        self.run_within(node, gating, timeout, call).await
    }

    /// Runs `call` bounded by `timeout`, asking the node's gate first (unless bypassed) and
    /// telling it how the call went.
    async fn run_within<'a, T, F, Fut>(
        &'a self,
        (node, gate): (Cow<'a, Arc<str>>, Cow<'a, Arc<dyn HealthGate>>),
        gating: Gating,
        timeout: Duration,
        call: F,
    ) -> Result<T, StoreError>
    where
        F: FnOnce(&'a RedisConnection, Duration) -> Fut,
        Fut: Future<Output = Result<T, CallError>> + 'a,
    {
        let conn = &self.inner.conn;
        let ticket = match gating {
            Gating::Bypass => None,
            Gating::Gated => match gate.try_pass() {
                Ok(t) => Some(t),
                Err(refused) => {
                    conn.topology_suspect();
                    return Err(StoreError::Unavailable {
                        message: format!("Redis node {node} is failing fast: {refused}"),
                        source: Some(Box::new(refused)),
                    });
                }
            },
        };
        match call(conn, timeout).await {
            Ok(v) => {
                if let Some(t) = ticket {
                    gate.report(t, Health::Healthy);
                }
                Ok(v)
            }
            Err(e) => {
                let health = match e {
                    // Less than half the node's own bound: the caller's deadline ran out, not
                    // (as far as anyone knows) the node's time to answer.
                    CallError::Timeout if timeout < conn.call_timeout() / 2 => Health::Neutral,
                    _ => e.health(),
                };
                if let Some(t) = ticket {
                    gate.report(t, health);
                }
                if health == Health::Unhealthy {
                    conn.topology_suspect();
                }
                Err(e.into_store_error(timeout))
            }
        }
    }
}
