//! What a handle knows of the topology: which node serves a key (the Cluster slot table, the
//! current Sentinel master), and how it re-learns it when a node fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ::redis::Value;

use super::cluster::ClusterNodes;
use super::connection::{RedisConnection, Topology};
use super::connector::RedisConnector;
use super::reconnect::Reconnecting;
use super::slot::key_slot;
use crate::error::StoreError;

#[derive(Clone)]
pub(super) enum Inner {
    Standalone(Reconnecting),
    Cluster(Arc<ClusterNodes>),
    Sentinel(Arc<SentinelState>),
}

pub(super) struct SentinelState {
    pub(super) current: RwLock<(Arc<str>, Reconnecting)>,
    pub(super) resolving: AtomicBool,
    pub(super) last_resolve: AtomicU64,
}

/// Which node serves a key.
pub(super) enum Nodes {
    Fixed(Arc<str>),
    Sentinel,
    Slots(SlotMap),
}

/// `(first slot, last slot, master "host:port")`, sorted by first slot.
pub(super) type SlotTable = Vec<(u16, u16, Arc<str>)>;

/// The Cluster's slot table as last read with `CLUSTER SLOTS`.
#[derive(Default)]
pub(super) struct SlotMap {
    pub(super) table: RwLock<SlotTable>,
    /// A read is under way (one at a time).
    pub(super) refreshing: AtomicBool,
    /// When the last read started (ms since the handle's origin).
    pub(super) last_refresh: AtomicU64,
    /// Woken when a read ends, successful or not.
    pub(super) refreshed: tokio::sync::Notify,
}

/// Ends a slot-table read however it ends (a caller whose bound ran out drops it mid-way):
/// the next read may start, and the calls waiting for this one go on.
struct ReadDone<'a>(&'a SlotMap);

impl Drop for ReadDone<'_> {
    fn drop(&mut self) {
        self.0.refreshing.store(false, Ordering::Release);
        self.0.refreshed.notify_waiters();
    }
}

pub(super) struct Shared {
    pub(super) nodes: Nodes,
    pub(super) origin: Instant,
    pub(super) connector: RedisConnector,
    /// Bounds every call of the connection, without a timer per call.
    pub(super) watch: Arc<super::watch::Watch>,
}

/// What [`RedisConnection::node_for`] names a key's node on a Cluster before any slot table
/// was read.
pub(super) const UNKNOWN_NODE: &str = "cluster";

/// How often a handle may re-read the topology (slot table, Sentinel master) while calls fail.
pub(super) const TOPOLOGY_RETRY: Duration = Duration::from_millis(200);
/// How often a Cluster handle re-reads its slot table while all is well.
pub(super) const SLOTS_MAX_AGE: Duration = Duration::from_secs(10);

impl RedisConnection {
    /// A standalone server's node name (it never changes); `None` for Cluster and Sentinel.
    pub(crate) fn fixed_node(&self) -> Option<&Arc<str>> {
        match &self.shared.nodes {
            Nodes::Fixed(node) => Some(node),
            _ => None,
        }
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
                let table = map.table.read().expect("not poisoned");
                let i = table.partition_point(|(_, end, _)| *end < slot);
                match table.get(i) {
                    Some((start, _, node)) if *start <= slot => node.clone(),
                    _ => Arc::from(UNKNOWN_NODE),
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
                (Nodes::Slots(map), _) => drop(ReadDone(map)),
                (_, Inner::Sentinel(s)) => s.resolving.store(false, Ordering::Release),
                _ => {}
            }
        });
    }

    /// Reads `CLUSTER SLOTS` (masters only) into the slot table: from the node that answered
    /// last, else each master and seed in turn, each within the call bound. Connections to
    /// nodes that left the table are dropped.
    pub(super) async fn refresh_slots(&self) -> Result<(), StoreError> {
        let (Nodes::Slots(map), Inner::Cluster(nodes)) = (&self.shared.nodes, &self.inner) else {
            return Ok(());
        };
        let mut last = StoreError::unavailable("no node answered CLUSTER SLOTS");
        let cmd = ::redis::cmd("CLUSTER").arg("SLOTS").clone();
        for node in nodes.candidates(&self.slot_table()) {
            let read = async {
                let conn = nodes.connection(&node, &self.shared.connector)?;
                conn.send(&cmd).await?.extract_error()
            };
            let reply = match tokio::time::timeout(self.call_timeout, read).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    last = super::map_error(e, self.call_timeout);
                    continue;
                }
                Err(_) => {
                    last = StoreError::Timeout {
                        after: self.call_timeout,
                    };
                    continue;
                }
            };
            let mut table = parse_slots(&reply)?;
            table.sort_unstable_by_key(|(start, _, _)| *start);
            nodes.answered(&node);
            nodes.retain(&table);
            *map.table.write().expect("not poisoned") = table;
            map.last_refresh.store(self.millis(), Ordering::Relaxed);
            return Ok(());
        }
        Err(last)
    }

    /// Re-reads the slot table now, for a call whose node failed: unless one was read in the
    /// last 200 ms (then that table stands); if a read is under way, waits for it instead of
    /// starting another. The caller's own bound applies around the wait.
    pub(super) async fn refresh_now(&self) {
        let Nodes::Slots(map) = &self.shared.nodes else {
            return;
        };
        let now = self.millis();
        if now.saturating_sub(map.last_refresh.load(Ordering::Relaxed))
            < TOPOLOGY_RETRY.as_millis() as u64
        {
            return;
        }
        let done = map.refreshed.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if map.refreshing.swap(true, Ordering::AcqRel) {
            done.await;
            return;
        }
        let _done = ReadDone(map);
        map.last_refresh.store(now, Ordering::Relaxed);
        let _ = self.refresh_slots().await;
    }

    /// The slot table as last read (empty before the first read, or when not a Cluster).
    pub(super) fn slot_table(&self) -> SlotTable {
        match &self.shared.nodes {
            Nodes::Slots(map) => map.table.read().expect("not poisoned").clone(),
            _ => Vec::new(),
        }
    }

    /// Asks the sentinels for the master again; switches to it if it moved.
    async fn re_resolve(&self) {
        let Inner::Sentinel(state) = &self.inner else {
            return;
        };
        let current = state.current.read().expect("not poisoned").0.clone();
        match self.shared.connector.sentinel_master(Some(&current)).await {
            Ok(Some((node, manager))) => {
                tracing::info!(from = %current, to = %node, "Sentinel master moved; following it");
                *state.current.write().expect("not poisoned") = (node, manager);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(error = %e, "could not ask the sentinels for the master"),
        }
    }
}

/// Parses a `CLUSTER SLOTS` reply into `(start, end, "host:port")` of each range's master.
pub(super) fn parse_slots(reply: &Value) -> Result<SlotTable, StoreError> {
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
