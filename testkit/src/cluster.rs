//! A throwaway Redis Cluster: 3 or more masters, optionally with a replica each, joined with
//! `redis-cli --cluster create`; nodes killed or suspended to fail over from.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::server::{CLI_BIN, RedisServer, SERVER_BIN, StartError, on_path, skip_or_panic};

/// A Redis Cluster of `n` masters (no replicas) on loopback ports, torn down on drop.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (at least 3) cluster-enabled servers, joins them with
    /// `redis-cli --cluster create`, and waits until every node reports `cluster_state:ok`,
    /// knows all the others and sees all 16384 slots served.
    pub fn start(masters: usize) -> Result<RedisCluster, StartError> {
        Self::start_inner(masters, 0, true, Vec::new())
    }

    /// Starts `masters` masters with one replica each (3 + 3 for `masters = 3`), with
    /// `cluster-require-full-coverage` set as given and a 1 s node timeout, so a killed
    /// master's replica is promoted within a few seconds. With full coverage required
    /// (Redis's default) every node refuses every key (`CLUSTERDOWN`) while any slot is
    /// unserved; without it, the healthy masters keep serving their own slots.
    pub fn start_with_replicas(
        masters: usize,
        require_full_coverage: bool,
    ) -> Result<RedisCluster, StartError> {
        Self::start_inner(masters, 1, require_full_coverage, Vec::new())
    }

    /// [`start_with_replicas`](Self::start_with_replicas) for a test, with the skip rule of
    /// [`RedisServer::start_or_skip`].
    pub fn start_with_replicas_or_skip(
        test: &str,
        masters: usize,
        require_full_coverage: bool,
    ) -> Option<RedisCluster> {
        skip_or_panic(
            test,
            Self::start_with_replicas(masters, require_full_coverage),
        )
    }

    pub(crate) fn start_inner(
        masters: usize,
        replicas: usize,
        full_coverage: bool,
        mut extra: Vec<String>,
    ) -> Result<RedisCluster, StartError> {
        if masters < 3 {
            return Err(StartError::Failed(
                "a Redis Cluster needs at least 3 masters".into(),
            ));
        }
        if !on_path(SERVER_BIN) {
            return Err(StartError::MissingBinary(SERVER_BIN));
        }
        if !on_path(CLI_BIN) {
            return Err(StartError::MissingBinary(CLI_BIN));
        }
        let total = masters * (1 + replicas);
        let mut nodes = Vec::with_capacity(total);
        if replicas > 0 {
            extra.extend([
                "--cluster-node-timeout".into(),
                "1000".into(),
                "--cluster-replica-validity-factor".into(),
                "0".into(),
                "--cluster-require-full-coverage".into(),
                if full_coverage { "yes" } else { "no" }.into(),
            ]);
        }
        for _ in 0..total {
            nodes.push(RedisServer::start_node_with(true, extra.clone())?);
        }
        let cluster = RedisCluster { nodes };
        let mut create = Command::new(CLI_BIN);
        create.args(["--cluster", "create"]);
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(StartError::Failed(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// [`start`](Self::start) for a test, with the same skip rule as
    /// [`RedisServer::start_or_skip`].
    pub fn start_or_skip(test: &str, masters: usize) -> Option<RedisCluster> {
        skip_or_panic(test, Self::start(masters))
    }

    fn wait_ready(&self) -> Result<(), StartError> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let want_nodes = format!("cluster_known_nodes:{}", self.nodes.len());
        loop {
            let ready = self.nodes.iter().all(|n| {
                n.command(&["CLUSTER", "INFO"]).is_ok_and(|info| {
                    info.contains("cluster_state:ok")
                        && info.contains("cluster_slots_ok:16384")
                        && info.contains(&want_nodes)
                }) && n.command(&["INFO", "replication"]).is_ok_and(|info| {
                    info.contains("role:master") || info.contains("master_link_status:up")
                })
            });
            if ready {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(StartError::Failed(
                    "Redis Cluster did not reach cluster_state:ok in 30 s".into(),
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills (`SIGKILL`) the node listening on `port`, as a crashed host would.
    pub fn kill(&mut self, port: u16) {
        if let Some(node) = self.nodes.iter_mut().find(|n| n.port == port) {
            node.stop();
        }
    }

    /// Stops (`SIGSTOP`) the node listening on `port`, as a hung host would: it keeps its
    /// connections and answers nothing, so the Cluster fails over from it as from a dead one.
    pub fn suspend(&mut self, port: u16) -> Result<(), StartError> {
        match self.nodes.iter_mut().find(|n| n.port == port) {
            Some(node) => node.suspend(),
            None => Err(StartError::Failed(format!("no node on :{port}"))),
        }
    }

    /// Waits until the Cluster has failed over from the killed node on `port`: every running
    /// node marks it failed (`fail`, not just suspected), it owns no slot any more, and every
    /// running node sees all 16384 slots served. Returns how long that took from the call.
    pub fn wait_for_failover(&self, port: u16, timeout: Duration) -> Result<Duration, StartError> {
        let started = Instant::now();
        let needle = format!("127.0.0.1:{port}@");
        loop {
            let running = self.nodes.iter().filter(|n| n.answers());
            let done = running.clone().all(|n| {
                let marked = n.command(&["CLUSTER", "NODES"]).is_ok_and(|table| {
                    table.lines().any(|line| {
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        fields.get(1).is_some_and(|a| a.starts_with(&needle))
                            && fields
                                .get(2)
                                .is_some_and(|f| f.split(',').any(|flag| flag == "fail"))
                            && fields.len() <= 8
                    })
                });
                marked
                    && n.command(&["CLUSTER", "INFO"])
                        .is_ok_and(|info| info.contains("cluster_slots_ok:16384"))
            });
            if done {
                return Ok(started.elapsed());
            }
            if started.elapsed() > timeout {
                return Err(StartError::Failed(format!(
                    "the Cluster did not fail over from :{port} within {timeout:?}"
                )));
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The seed URLs of all nodes.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node serving `key`'s slot, from `CLUSTER KEYSLOT` and `CLUSTER NODES`.
    pub fn node_for_key(&self, key: &str) -> Result<&RedisServer, StartError> {
        let asked = self
            .nodes
            .iter()
            .find(|n| n.answers())
            .ok_or_else(|| StartError::Failed("no node is running".into()))?;
        let slot: u16 = asked
            .command(&["CLUSTER", "KEYSLOT", key])?
            .parse()
            .map_err(|e| StartError::Failed(format!("CLUSTER KEYSLOT: {e}")))?;
        let table = asked.command(&["CLUSTER", "NODES"])?;
        for line in table.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some(addr) = fields.get(1) else { continue };
            let port: Option<u16> = addr.split(['@', ':']).nth(1).and_then(|p| p.parse().ok());
            let serves = fields
                .iter()
                .skip(8)
                .any(|range| match range.split_once('-') {
                    Some((a, b)) => {
                        a.parse::<u16>().is_ok_and(|a| a <= slot)
                            && b.parse::<u16>().is_ok_and(|b| slot <= b)
                    }
                    None => range.parse::<u16>() == Ok(slot),
                });
            let master = fields
                .get(2)
                .is_some_and(|f| f.contains("master") && !f.contains("fail"));
            if serves
                && master
                && let Some(node) = self.nodes.iter().find(|n| Some(n.port) == port)
            {
                return Ok(node);
            }
        }
        Err(StartError::Failed(format!("no node serves slot {slot}")))
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        let dirs: Vec<PathBuf> = self.nodes.iter().map(|n| n.dir.clone()).collect();
        self.nodes.clear();
        for d in dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}
