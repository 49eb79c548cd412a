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

use crate::RedisCluster;
use crate::resp;

/// Set this environment variable to `1` to make a missing `redis-server` a test failure
/// instead of a skip (CI does).
pub const REQUIRE_REDIS_ENV: &str = "FLOODWALL_REQUIRE_REDIS";

pub(crate) const SERVER_BIN: &str = "redis-server";
pub(crate) const CLI_BIN: &str = "redis-cli";
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

pub(crate) fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(bin).is_file()))
        .unwrap_or(false)
}

fn require_redis() -> bool {
    std::env::var(REQUIRE_REDIS_ENV).is_ok_and(|v| v == "1")
}

/// Handles a start failure the way every test should: a missing binary is one skip line on the
/// terminal (or a panic naming it when [`REQUIRE_REDIS_ENV`] is `1`); any other failure panics.
pub(crate) fn skip_or_panic<T>(test: &str, result: Result<T, StartError>) -> Option<T> {
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

pub(crate) fn scratch_dir(tag: &str) -> io::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "floodwall-testkit-{}-{}-{tag}",
        std::process::id(),
        NEXT_DIR.fetch_add(1, Ordering::Relaxed)
    ));
    fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// A loopback port that was free a moment ago; with `cluster_bus`, `port + 10000` too.
pub(crate) fn free_port(cluster_bus: bool) -> io::Result<u16> {
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
    pub(crate) port: u16,
    pub(crate) dir: PathBuf,
    cluster: bool,
    extra: Vec<String>,
    /// Stopped by `SIGSTOP` and not yet resumed: running, answering nothing.
    suspended: bool,
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

    /// Starts a standalone server with extra `redis-server` arguments (`["--requirepass",
    /// "x"]`, TLS settings, …).
    pub fn start_with(args: &[&str]) -> Result<RedisServer, StartError> {
        Self::start_node_with(false, args.iter().map(|a| a.to_string()).collect())
    }

    fn start_node(cluster: bool) -> Result<RedisServer, StartError> {
        Self::start_node_with(cluster, Vec::new())
    }

    pub(crate) fn start_node_with(
        cluster: bool,
        extra: Vec<String>,
    ) -> Result<RedisServer, StartError> {
        if !on_path(SERVER_BIN) {
            return Err(StartError::MissingBinary(SERVER_BIN));
        }
        Self::start_on_ports(cluster, extra, || free_port(cluster))
    }

    /// Starts a server on the first of `ports`' ports it can bind, trying at most
    /// `START_ATTEMPTS` of them.
    fn start_on_ports(
        cluster: bool,
        extra: Vec<String>,
        mut ports: impl FnMut() -> io::Result<u16>,
    ) -> Result<RedisServer, StartError> {
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            // A directory for each attempt: a failed attempt's server is dropped, and a
            // standalone server removes its directory when dropped.
            let dir = scratch_dir(if cluster { "cluster-node" } else { "server" })?;
            let mut server = RedisServer {
                child: None,
                port: ports()?,
                dir,
                cluster,
                extra: extra.clone(),
                suspended: false,
            };
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                // The port may have been taken between probing and binding: try another.
                Err(e) => {
                    if cluster {
                        // A Cluster node's directory is its Cluster's to remove; this one
                        // never joined.
                        let _ = fs::remove_dir_all(&server.dir);
                    }
                    last_err = Some(e);
                }
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
        let port = self.port.to_string();
        cmd.args(
            self.extra
                .iter()
                .map(|a| if a == "{port}" { port.as_str() } else { a }),
        );
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.ready() {
                if self.answered_by_ours() {
                    return Ok(());
                }
                // Another test's server took the port between the probe and the bind: ours
                // could not bind it. Try another port.
                self.kill();
                return Err(StartError::Failed(format!(
                    "port {} is another server's",
                    self.port
                )));
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

    /// Whether what answers on the port is this process: its `INFO server` names our child's
    /// pid (a TLS-only server: whether our child is still running).
    fn answered_by_ours(&mut self) -> bool {
        let Some(child) = self.child.as_mut() else {
            return false;
        };
        let pid = child.id();
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        if self.extra.iter().any(|a| a == "--tls-port") {
            return true;
        }
        resp::command(self.addr(), &["INFO", "server"]).is_ok_and(|info| {
            info.lines()
                .any(|l| l.trim() == format!("process_id:{pid}"))
        })
    }

    /// Whether the server answers `PING` (a TLS-only server: whether its port accepts).
    fn ready(&self) -> bool {
        if self.extra.iter().any(|a| a == "--tls-port") {
            return std::net::TcpStream::connect(self.addr()).is_ok();
        }
        resp::command(self.addr(), &["PING"]).is_ok_and(|pong| pong == "PONG")
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
        self.suspended = false;
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

    /// The directory the server runs in (its log and files).
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Kills the process (`SIGKILL`: clients see their connections drop);
    /// [`restart`](Self::restart)
    /// brings it back on the same port, empty.
    pub fn stop(&mut self) {
        self.kill();
    }

    /// Stops the process without ending it (`SIGSTOP`), as a hung host would: connections
    /// stay open and nothing answers. [`resume`](Self::resume) lets it go on.
    pub fn suspend(&mut self) -> Result<(), StartError> {
        self.signal("-STOP")?;
        self.suspended = true;
        Ok(())
    }

    /// Lets a [`suspend`](Self::suspend)ed process go on (`SIGCONT`).
    pub fn resume(&mut self) -> Result<(), StartError> {
        self.signal("-CONT")?;
        self.suspended = false;
        Ok(())
    }

    /// Running and not suspended: it answers.
    pub(crate) fn answers(&self) -> bool {
        self.child.is_some() && !self.suspended
    }

    fn signal(&self, signal: &str) -> Result<(), StartError> {
        let pid = self
            .child
            .as_ref()
            .ok_or_else(|| StartError::Failed("the server is not running".into()))?
            .id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(StartError::Failed(format!("kill {signal} {pid}: {status}")))
        }
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

    /// How many times the server has run any of `commands` (lower case, e.g. `evalsha`), as
    /// `INFO commandstats` counts them.
    pub fn command_calls(&self, commands: &[&str]) -> Result<u64, StartError> {
        let stats = self.command(&["INFO", "commandstats"])?;
        Ok(commands
            .iter()
            .map(|cmd| {
                stats
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("cmdstat_{cmd}:calls=")))
                    .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .sum())
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

/// Where [`on_each_topology`] runs a test body: the seed URLs, and whether they are a Cluster's.
#[derive(Debug, Clone)]
pub struct Target {
    /// `redis://` URLs: the server's, or every Cluster node's.
    pub urls: Vec<String>,
    /// Whether `urls` are a Cluster's nodes.
    pub cluster: bool,
}

/// Runs one test body on a throwaway standalone server, then on a throwaway 3-master Cluster,
/// so a test is written once and proven on both topologies. Each server or Cluster lives for
/// its run alone. Skips (or fails, with [`REQUIRE_REDIS_ENV`]) like
/// [`RedisServer::start_or_skip`].
pub async fn on_each_topology<F, Fut>(test: &str, mut body: F)
where
    F: FnMut(Target) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let Some(server) = RedisServer::start_or_skip(test) else {
        return;
    };
    let _ = writeln!(io::stderr(), "{test}: on a standalone server");
    body(Target {
        urls: vec![server.url()],
        cluster: false,
    })
    .await;
    drop(server);
    let Some(cluster) = RedisCluster::start_or_skip(test, 3) else {
        return;
    };
    let _ = writeln!(io::stderr(), "{test}: on a 3-master Cluster");
    body(Target {
        urls: cluster.urls(),
        cluster: true,
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server is taken as started only when what answers on its port is its own process:
    /// another server on the port (a test that took it between the probe and the bind) is
    /// told apart by its pid, and the start tries another port.
    #[test]
    fn a_port_answered_by_another_server_is_not_ours() {
        let Some(mut other) = RedisServer::start_or_skip("a_port_answered_by_another_server")
        else {
            return;
        };
        assert!(other.answered_by_ours(), "a server is its own");
        let impostor = Command::new("sleep").arg("30").spawn().unwrap();
        let mut fake = RedisServer {
            child: Some(impostor),
            port: other.port,
            dir: scratch_dir("impostor").unwrap(),
            cluster: false,
            extra: Vec::new(),
            suspended: false,
        };
        assert!(fake.ready(), "the port answers PING");
        assert!(!fake.answered_by_ours(), "but not with this child's pid");
    }

    /// A start whose first port turns out taken tries the next one, in a directory of its
    /// own: the failed attempt's server, dropped, removes only its own directory (it once
    /// removed the one the next attempt was handed, which then could not create its log).
    #[test]
    fn a_start_that_found_its_port_taken_starts_on_the_next() {
        let Some(other) = RedisServer::start_or_skip("a_start_that_found_its_port_taken") else {
            return;
        };
        let mut ports = vec![free_port(false).unwrap(), other.port];
        let mut server =
            RedisServer::start_on_ports(false, Vec::new(), || Ok(ports.pop().expect("two ports")))
                .expect("started on the second port");
        assert!(ports.is_empty(), "the first port was tried and refused");
        assert_ne!(server.port, other.port);
        assert!(server.answered_by_ours());
        assert!(server.dir.is_dir(), "its directory is there");
        println!(
            "taken port {} refused; started on {}",
            other.port, server.port
        );
    }
}
