//! A throwaway Sentinel group: a master, a replica and one sentinel.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::resp;
use crate::server::{RedisServer, StartError, free_port, on_path, scratch_dir, skip_or_panic};

const SENTINEL_BIN: &str = "redis-sentinel";

/// A master, one replica of it, and a `redis-sentinel` watching them as `mymaster` with a
/// quorum of 1, 500 ms down-after and a 2 s failover timeout, so killing the master promotes
/// the replica within a few seconds. Everything is killed on drop.
#[derive(Debug)]
pub struct RedisSentinel {
    servers: Vec<RedisServer>,
    sentinel: Option<Child>,
    port: u16,
    dir: PathBuf,
}

impl RedisSentinel {
    /// The master name the sentinel monitors.
    pub const MASTER: &'static str = "mymaster";

    /// Starts the group and waits until the sentinel sees the master and its replica.
    pub fn start() -> Result<RedisSentinel, StartError> {
        if !on_path(SENTINEL_BIN) {
            return Err(StartError::MissingBinary(SENTINEL_BIN));
        }
        let master = RedisServer::start()?;
        let master_port = master.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &master_port])?;
        let dir = scratch_dir("sentinel")?;
        let port = free_port(false)?;
        let conf = dir.join("sentinel.conf");
        fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {}\n\
                 sentinel monitor {m} 127.0.0.1 {master_port} 1\n\
                 sentinel down-after-milliseconds {m} 500\n\
                 sentinel failover-timeout {m} 2000\n\
                 sentinel parallel-syncs {m} 1\n",
                dir.display(),
                m = Self::MASTER
            ),
        )?;
        let log = File::create(dir.join("sentinel.log"))?;
        let child = Command::new(SENTINEL_BIN)
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .spawn()?;
        let group = RedisSentinel {
            servers: vec![master, replica],
            sentinel: Some(child),
            port,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let seen = group
                .sentinel_command(&["SENTINEL", "replicas", Self::MASTER])
                .is_ok_and(|r| r.contains("slave") && !r.contains("disconnected"));
            let linked = group.servers[1]
                .command(&["INFO", "replication"])
                .is_ok_and(|i| i.contains("master_link_status:up"));
            if seen && linked {
                return Ok(group);
            }
            if Instant::now() > deadline {
                return Err(StartError::Failed(
                    "the sentinel did not see the master and its replica in 20 s".into(),
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`start`](Self::start) for a test, with the skip rule of
    /// [`RedisServer::start_or_skip`].
    pub fn start_or_skip(test: &str) -> Option<RedisSentinel> {
        skip_or_panic(test, Self::start())
    }

    /// `redis://127.0.0.1:<sentinel port>`.
    pub fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The first master's port (the replica's after a failover is
    /// [`replica_port`](Self::replica_port)).
    pub fn master_port(&self) -> u16 {
        self.servers[0].port()
    }

    /// The replica's port.
    pub fn replica_port(&self) -> u16 {
        self.servers[1].port()
    }

    /// Kills (`SIGKILL`) the first master.
    pub fn kill_master(&mut self) {
        self.servers[0].stop();
    }

    /// Runs a command on the sentinel.
    pub fn sentinel_command(&self, args: &[&str]) -> Result<String, StartError> {
        resp::command(SocketAddr::from((Ipv4Addr::LOCALHOST, self.port)), args)
            .map_err(|e| StartError::Failed(format!("{args:?}: {e}")))
    }
}

impl Drop for RedisSentinel {
    fn drop(&mut self) {
        if let Some(mut child) = self.sentinel.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.servers.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
