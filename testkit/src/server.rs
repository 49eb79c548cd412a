//! Throwaway `redis-server` processes and Redis Clusters.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::resp;

/// Set this environment variable to `1` to make a missing `redis-server` a test failure
/// instead of a skip (CI does).
pub const REQUIRE_REDIS_ENV: &str = "FLOODWALL_REQUIRE_REDIS";

const SERVER_BIN: &str = "redis-server";
const CLI_BIN: &str = "redis-cli";
const START_ATTEMPTS: usize = 5;
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a server or cluster could not be started.
#[derive(Debug)]
#[non_exhaustive]
pub enum StartError {
    /// A binary is not on `PATH`.
    MissingBinary(&'static str),
    /// The server or `redis-cli` failed; the message says how.
    Failed(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::MissingBinary(bin) => write!(
                f,
                "`{bin}` was not found on PATH (install Debian's redis-server and redis-tools)"
            ),
            StartError::Failed(msg) => f.write_str(msg),
        }
    }
}

impl std::error::Error for StartError {}

impl From<io::Error> for StartError {
    fn from(e: io::Error) -> Self {
        StartError::Failed(e.to_string())
    }
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
        .unwrap_or(false)
}

fn require_redis() -> bool {
    std::env::var(REQUIRE_REDIS_ENV).is_ok_and(|v| v == "1")
}

/// Handles a start failure the way every test should: a missing binary is one skip line on the
/// terminal (or a panic naming it when [`REQUIRE_REDIS_ENV`] is `1`); any other failure panics.
fn skip_or_panic<T>(test: &str, result: Result<T, StartError>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(StartError::MissingBinary(bin)) if !require_redis() => {
            // Written to the process's stderr directly, so libtest's output capture does not
            // hide it.
            let _ = writeln!(
                io::stderr(),
                "SKIPPED {test}: `{bin}` not found on PATH; install redis-server and redis-tools \
                 to run it ({REQUIRE_REDIS_ENV}=1 makes this a failure)"
            );
            None
        }
        Err(e @ StartError::MissingBinary(_)) => {
            panic!("{test}: {e}, and {REQUIRE_REDIS_ENV}=1 requires it")
        }
        Err(e) => panic!("{test}: could not start Redis: {e}"),
    }
}

static NEXT_DIR: AtomicU64 = AtomicU64::new(0);

fn scratch_dir(tag: &str) -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "floodwall-testkit-{}-{}-{tag}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A loopback port that was free a moment ago; with `cluster_bus`, `port + 10000` too.
fn free_port(cluster_bus: bool) -> io::Result<u16> {
    for _ in 0..100 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let port = listener.local_addr()?.port();
        if !cluster_bus {
            return Ok(port);
        }
        if port <= u16::MAX - 10_000
            && TcpListener::bind((Ipv4Addr::LOCALHOST, port + 10_000)).is_ok()
        {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free loopback port pair found"))
}

/// A `redis-server` process on a loopback port, with no persistence, killed on drop.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    cluster: bool,
}

impl RedisServer {
    /// Starts a standalone server on a free loopback port and waits until it answers `PING`.
    pub fn start() -> Result<RedisServer, StartError> {
        Self::start_node(false)
    }

    /// [`start`](Self::start) for a test: `None` (after one skip line) when `redis-server` is
    /// missing, a panic when [`REQUIRE_REDIS_ENV`] is `1` or the server fails.
    pub fn start_or_skip(test: &str) -> Option<RedisServer> {
        skip_or_panic(test, Self::start())
    }

    fn start_node(cluster: bool) -> Result<RedisServer, StartError> {
        if !on_path(SERVER_BIN) {
            return Err(StartError::MissingBinary(SERVER_BIN));
        }
        let dir = scratch_dir(if cluster { "cluster-node" } else { "server" })?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port(cluster)?;
            let mut server = RedisServer {
                child: None,
                port,
                dir: dir.clone(),
                cluster,
            };
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                // The port may have been taken between probing and binding: try another.
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| StartError::Failed("redis-server did not start".into())))
    }

    fn spawn_and_wait(&mut self) -> Result<(), StartError> {
        let log = File::create(self.dir.join(format!("redis-{}.log", self.port)))?;
        let mut cmd = Command::new(SERVER_BIN);
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir);
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-node-timeout", "2000"])
                .arg("--cluster-config-file")
                .arg(format!("nodes-{}.conf", self.port));
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if resp::command(self.addr(), &["PING"]).is_ok_and(|pong| pong == "PONG") {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                return Err(StartError::Failed(format!(
                    "redis-server on port {} exited with {status}: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(StartError::Failed(format!(
                    "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}",
                    self.port
                )));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(self.dir.join(format!("redis-{}.log", self.port)))
            .unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The loopback address it listens on.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the process (clients see their connections drop); [`restart`](Self::restart)
    /// brings it back on the same port, empty.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Kills the process if running and starts a fresh one on the same port.
    pub fn restart(&mut self) -> Result<(), StartError> {
        self.kill();
        self.spawn_and_wait()
    }

    /// Runs a command through a fresh blocking connection and returns the reply as text.
    /// Meant for test set-up and assertions (`DBSIZE`, `CONFIG SET`, `CLUSTER INFO`).
    pub fn command(&self, args: &[&str]) -> Result<String, StartError> {
        resp::command(self.addr(), args).map_err(|e| StartError::Failed(format!("{args:?}: {e}")))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        if !self.cluster {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

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
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            nodes.push(RedisServer::start_node(true)?);
        }
        let cluster = RedisCluster { nodes };
        let mut create = Command::new(CLI_BIN);
        create.args(["--cluster", "create"]);
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
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
        let slot: u16 = self.nodes[0]
            .command(&["CLUSTER", "KEYSLOT", key])?
            .parse()
            .map_err(|e| StartError::Failed(format!("CLUSTER KEYSLOT: {e}")))?;
        let table = self.nodes[0].command(&["CLUSTER", "NODES"])?;
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
            if serves && let Some(node) = self.nodes.iter().find(|n| Some(n.port) == port) {
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
