//! Redis Cluster routing: one reconnecting multiplexed connection per master, each call sent
//! straight to the master of its key's slot as the handle's slot table knows it.
//!
//! A node's failure stays that node's. A refused, reset or hung master fails (or times out)
//! only the calls routed to it; the slot table is re-read in the background, at most every
//! 200 ms (`topology_suspect`), and calls follow it once the Cluster has failed over. No call
//! to one node ever waits on another node's connection or on a slot-table read — the reason
//! floodwall routes Cluster calls itself: redis-rs's cluster connection rebuilds its slot table
//! in the one task that sends every node's calls, so while a killed master refused connections
//! the calls to healthy masters waited behind each rebuild.
//!
//! Redirections are followed per call, within the call's bound and at most [`MAX_HOPS`] hops:
//! `MOVED` sends the call on to the node it names and has the slot table re-read; `ASK` sends
//! `ASKING` and the call to the node it names; `TRYAGAIN` and `CLUSTERDOWN` try again after a
//! short pause. A node that cannot be reached (refused, reset) has the failing call re-read
//! the slot table (one read at a time, at most every 200 ms; calls meanwhile wait for it) and
//! follow its slot to the node serving it now — after a failover, the promoted replica.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ::redis::{Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, ServerErrorKind, Value};

use super::connection::RedisConnection;
use super::connector::RedisConnector;
use super::map_error;
use super::reconnect::Reconnecting;
use super::topology::{SlotTable, UNKNOWN_NODE, parse_slots};
use crate::error::StoreError;

/// The most nodes one call is sent to (its first node and the redirections it follows).
pub(super) const MAX_HOPS: usize = 5;

/// The connections of a Cluster handle, by node (`host:port`).
pub(super) struct ClusterNodes {
    /// Each seed's node name and how to reach it.
    seeds: Vec<(Arc<str>, ConnectionInfo)>,
    /// A connection per node the handle has called, made on its first call.
    conns: RwLock<HashMap<Arc<str>, Reconnecting>>,
    /// The node that last answered a key-less call (`CLUSTER SLOTS`, `PING`): tried first.
    preferred: RwLock<Option<Arc<str>>>,
}

impl ClusterNodes {
    /// Reads the slot table from the first seed that answers, each seed bounded by the
    /// connect timeout (connecting and `CLUSTER SLOTS` together).
    pub(super) async fn connect(
        connector: &RedisConnector,
    ) -> Result<(ClusterNodes, SlotTable), StoreError> {
        if connector.urls.is_empty() {
            return Err(StoreError::Config("no Redis Cluster node URL given".into()));
        }
        let mut seeds = Vec::with_capacity(connector.urls.len());
        for url in &connector.urls {
            let info = connector.connection_info(url)?;
            if matches!(info.addr(), ConnectionAddr::Unix(_)) {
                return Err(StoreError::Config(
                    "a Redis Cluster is reached over TCP, not a unix socket".into(),
                ));
            }
            seeds.push((Arc::<str>::from(info.addr().to_string()), info));
        }
        let timeout = connector.connect_timeout;
        let mut last = StoreError::unavailable("no Redis Cluster seed answered");
        for (node, info) in &seeds {
            let client = connector.client(info.clone())?;
            let read = async {
                let conn = Reconnecting::connect(client, timeout)
                    .await
                    .map_err(|e| map_error(e, timeout))?;
                let reply = conn
                    .send(::redis::cmd("CLUSTER").arg("SLOTS"))
                    .await
                    .and_then(Value::extract_error)
                    .map_err(|e| map_error(e, timeout))?;
                Ok::<_, StoreError>((conn, parse_slots(&reply)?))
            };
            match tokio::time::timeout(timeout, read).await {
                Ok(Ok((conn, table))) => {
                    let nodes = ClusterNodes {
                        conns: RwLock::new(HashMap::from([(node.clone(), conn)])),
                        preferred: RwLock::new(Some(node.clone())),
                        seeds: seeds.clone(),
                    };
                    return Ok((nodes, table));
                }
                Ok(Err(e @ StoreError::Config(_))) => return Err(e),
                Ok(Err(e)) => last = e,
                Err(_) => last = StoreError::Timeout { after: timeout },
            }
        }
        Err(last)
    }

    /// The connection to `node`, made (lazily: its first call waits for it) if there is none.
    pub(super) fn connection(
        &self,
        node: &Arc<str>,
        connector: &RedisConnector,
    ) -> Result<Reconnecting, RedisError> {
        if let Some(conn) = self.conns.read().expect("not poisoned").get(node) {
            return Ok(conn.clone());
        }
        let info = self.info_for(node)?;
        let client = connector
            .client(info)
            .map_err(|e| invalid(format!("cannot reach Cluster node {node}: {e}")))?;
        let mut conns = self.conns.write().expect("not poisoned");
        let conn = conns
            .entry(node.clone())
            .or_insert_with(|| Reconnecting::lazy(client, connector.connect_timeout));
        Ok(conn.clone())
    }

    /// How to reach `node`: a seed's own URL, or the first seed's (scheme, TLS, credentials,
    /// protocol) with the node's address.
    fn info_for(&self, node: &str) -> Result<ConnectionInfo, RedisError> {
        if let Some((_, info)) = self.seeds.iter().find(|(n, _)| &**n == node) {
            return Ok(info.clone());
        }
        let (host, port) = node
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            .filter(|(h, _)| !h.is_empty() && *h != "?")
            .ok_or_else(|| invalid(format!("unusable Cluster node address {node:?}")))?;
        let template = &self.seeds[0].1;
        let addr = match template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host: host.to_owned(),
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host.to_owned(), port),
        };
        Ok(template.clone().set_addr(addr))
    }

    /// Nodes to send a key-less call to, in order: the one that answered last, the masters of
    /// `table`, the seeds; each once.
    pub(super) fn candidates(&self, table: &SlotTable) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = Vec::with_capacity(table.len() + self.seeds.len() + 1);
        let preferred = self.preferred.read().expect("not poisoned").clone();
        let all = preferred
            .into_iter()
            .chain(table.iter().map(|(_, _, node)| node.clone()))
            .chain(self.seeds.iter().map(|(node, _)| node.clone()));
        for node in all {
            if !out.contains(&node) {
                out.push(node);
            }
        }
        out
    }

    /// `node` answered a key-less call: try it first next time.
    pub(super) fn answered(&self, node: &Arc<str>) {
        let mut preferred = self.preferred.write().expect("not poisoned");
        if preferred.as_ref() != Some(node) {
            *preferred = Some(node.clone());
        }
    }

    /// Drops the connections to nodes that are neither a master in `table` nor a seed (a
    /// failed-over master): their reconnect attempts stop with them.
    pub(super) fn retain(&self, table: &SlotTable) {
        let mut conns = self.conns.write().expect("not poisoned");
        conns.retain(|node, _| {
            table.iter().any(|(_, _, n)| n == node) || self.seeds.iter().any(|(n, _)| n == node)
        });
    }
}

fn invalid(message: String) -> RedisError {
    RedisError::from((
        ErrorKind::InvalidClientConfig,
        "Redis Cluster routing",
        message,
    ))
}

/// Whether `e` says the node itself is unreachable (not an answer it gave).
fn lost(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal()
}

/// Where a Cluster reply sends the call next.
enum Next {
    /// `MOVED`: the slot lives on this node now.
    Moved(Arc<str>),
    /// `ASK`: this one call goes to this node, after `ASKING`.
    Ask(Arc<str>),
    /// `TRYAGAIN` / `CLUSTERDOWN`: the same node, after a pause.
    Again,
}

fn next_hop(e: &RedisError) -> Option<Next> {
    match e.kind() {
        ErrorKind::Server(ServerErrorKind::Moved) => e
            .redirect_node()
            .map(|(node, _)| Next::Moved(Arc::from(node))),
        ErrorKind::Server(ServerErrorKind::Ask) => e
            .redirect_node()
            .map(|(node, _)| Next::Ask(Arc::from(node))),
        ErrorKind::Server(ServerErrorKind::TryAgain | ServerErrorKind::ClusterDown) => {
            Some(Next::Again)
        }
        _ => None,
    }
}

impl RedisConnection {
    /// Sends `cmd` to the master of `route`'s slot (any answering node when `route` is
    /// `None`), following redirections.
    pub(super) async fn cluster_send(
        &self,
        nodes: &ClusterNodes,
        cmd: &Cmd,
        route: Option<&[u8]>,
    ) -> Result<Value, RedisError> {
        let connector = &self.shared.connector;
        let Some(key) = route else {
            return self.send_keyless(nodes, cmd).await;
        };
        let mut node = self.node_for(key);
        if &*node == UNKNOWN_NODE {
            return self.send_keyless(nodes, cmd).await;
        }
        let mut asking = false;
        let mut hop = 0;
        loop {
            hop += 1;
            let conn = nodes.connection(&node, connector)?;
            // A node whose connection is lost: before waiting for it to come back, see
            // whether its slot is served elsewhere now (a failover).
            if conn.is_down() && hop < MAX_HOPS {
                self.refresh_now().await;
                let now_at = self.node_for(key);
                if now_at != node && &*now_at != UNKNOWN_NODE {
                    (node, asking) = (now_at, false);
                    continue;
                }
            }
            let sent = match asking {
                true => conn.send_asking(cmd).await,
                false => conn.send(cmd).await,
            };
            let reply = match sent {
                Ok(reply) => reply,
                // The node is gone (refused, reset): if the Cluster has failed over, its
                // slot is served elsewhere now — re-read the table and follow it.
                Err(e) if hop < MAX_HOPS && lost(&e) => {
                    self.refresh_now().await;
                    let now_at = self.node_for(key);
                    if now_at == node || &*now_at == UNKNOWN_NODE {
                        return Err(e);
                    }
                    (node, asking) = (now_at, false);
                    continue;
                }
                Err(e) => return Err(e),
            };
            let e = match reply.extract_error() {
                Ok(value) => return Ok(value),
                Err(e) => e,
            };
            match next_hop(&e) {
                Some(_) if hop >= MAX_HOPS => return Err(e),
                Some(Next::Moved(to)) => {
                    self.topology_suspect();
                    (node, asking) = (to, false);
                }
                Some(Next::Ask(to)) => (node, asking) = (to, true),
                Some(Next::Again) => {
                    tokio::time::sleep(Duration::from_millis(10 * hop as u64)).await;
                }
                None => return Err(e),
            }
        }
    }

    /// A key-less call (or one made before any slot table was read): the candidates in turn
    /// until one answers, each within what is left of the caller's bound.
    async fn send_keyless(&self, nodes: &ClusterNodes, cmd: &Cmd) -> Result<Value, RedisError> {
        let candidates = nodes.candidates(&self.slot_table());
        let mut last = None;
        for node in candidates.iter().take(MAX_HOPS) {
            let conn = nodes.connection(node, &self.shared.connector)?;
            match conn.send(cmd).await {
                Ok(value) => {
                    nodes.answered(node);
                    return Ok(value);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| invalid("no Cluster node to send to".into())))
    }
}
