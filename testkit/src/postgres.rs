//! A throwaway PostgreSQL server: `initdb` and `pg_ctl` into a scratch directory, on a free
//! loopback port, stopped and removed on drop.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI does) the data
//! directory belongs to the unprivileged `nobody` user and every `initdb` / `pg_ctl` call is
//! made through `runuser -u nobody`.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::server::{StartError, free_port, scratch_dir};

/// Set this environment variable to `1` to make a missing PostgreSQL a test failure instead
/// of a skip (CI does).
pub const REQUIRE_POSTGRES_ENV: &str = "FLOODWALL_REQUIRE_POSTGRES";

/// The user that runs the server when the tests run as root.
const UNPRIVILEGED: &str = "nobody";

/// A PostgreSQL server on a loopback port with one database (`floodwall`) and trust
/// authentication for the `postgres` user; `fsync` off (the data is thrown away). Stopped
/// (immediately) and its directory removed on drop.
pub struct PostgresServer {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_user: Option<&'static str>,
    running: bool,
}

impl fmt::Debug for PostgresServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresServer")
            .field("port", &self.port)
            .field("dir", &self.dir)
            .field("running", &self.running)
            .finish()
    }
}

/// The tools a server needs, all in one directory.
const TOOLS: [&str; 3] = ["initdb", "pg_ctl", "createdb"];

/// The directory holding [`TOOLS`]: Debian's `/usr/lib/postgresql/<version>/bin` (newest
/// version first), else one on `PATH`.
fn find_bin() -> Option<PathBuf> {
    let complete = |dir: &PathBuf| TOOLS.iter().all(|t| dir.join(t).is_file());
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let e = e.ok()?;
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            complete(&bin).then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths).find(complete)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn require_postgres() -> bool {
    std::env::var(REQUIRE_POSTGRES_ENV).is_ok_and(|v| v == "1")
}

impl PostgresServer {
    /// Starts a server, or reports why it could not.
    pub fn start() -> Result<PostgresServer, StartError> {
        let bin = find_bin().ok_or(StartError::MissingBinary("pg_ctl"))?;
        let as_user = is_root().then_some(UNPRIVILEGED);
        let dir = scratch_dir("postgres")?;
        let mut server = PostgresServer {
            bin,
            dir,
            port: 0,
            as_user,
            running: false,
        };
        if let Some(user) = as_user {
            let chown = Command::new("chown")
                .args(["-R", user])
                .arg(&server.dir)
                .output()?;
            check("chown", &chown)?;
        }
        let data = server.data_dir();
        let init = server.tool("initdb", |c| {
            c.arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]);
        })?;
        check("initdb", &init)?;
        let mut last = None;
        for _ in 0..5 {
            server.port = free_port(false)?;
            match server.pg_ctl_start() {
                Ok(()) => {
                    server.running = true;
                    server.create_database()?;
                    return Ok(server);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| StartError::Failed("postgres did not start".into())))
    }

    /// Starts a server, or returns `None` after one skip line when PostgreSQL is not
    /// installed (a panic when [`REQUIRE_POSTGRES_ENV`] is `1`). Any other failure panics.
    pub fn start_or_skip(test: &str) -> Option<PostgresServer> {
        match Self::start() {
            Ok(s) => Some(s),
            Err(StartError::MissingBinary(bin)) if !require_postgres() => {
                let _ = writeln!(
                    io::stderr(),
                    "SKIPPED {test}: `{bin}` not found; install Debian's postgresql to run it \
                     ({REQUIRE_POSTGRES_ENV}=1 makes this a failure)"
                );
                None
            }
            Err(e @ StartError::MissingBinary(_)) => {
                panic!("{test}: {e}, and {REQUIRE_POSTGRES_ENV}=1 requires it")
            }
            Err(e) => panic!("{test}: could not start PostgreSQL: {e}"),
        }
    }

    /// `postgres://postgres@127.0.0.1:<port>/floodwall`.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/floodwall", self.port)
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Restarts it the way a crash does: `pg_ctl restart -m immediate` (no clean shutdown;
    /// the server recovers from its WAL). Returns once it accepts connections again.
    pub fn restart_immediate(&mut self) -> Result<(), StartError> {
        let data = self.data_dir();
        let log = self.dir.join("postgres.log");
        let opts = self.server_options();
        // With a log file: the new server must not inherit (and hold open) our output pipe.
        let out = self.tool("pg_ctl", |c| {
            c.arg("-D").arg(&data).arg("-l").arg(&log).args([
                "-m",
                "immediate",
                "-w",
                "-t",
                "30",
                "-o",
                &opts,
                "restart",
            ]);
        })?;
        check("pg_ctl restart", &out)
    }

    /// Stops it immediately.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let data = self.data_dir();
        let _ = self.tool("pg_ctl", |c| {
            c.arg("-D")
                .arg(&data)
                .args(["-m", "immediate", "-w", "stop"]);
        });
        self.running = false;
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn server_options(&self) -> String {
        format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.display()
        )
    }

    fn pg_ctl_start(&self) -> Result<(), StartError> {
        let data = self.data_dir();
        let log = self.dir.join("postgres.log");
        let opts = self.server_options();
        let out = self.tool("pg_ctl", |c| {
            c.arg("-D")
                .arg(&data)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "30", "-o", &opts, "start"]);
        })?;
        check("pg_ctl start", &out).map_err(|e| {
            let tail = fs::read_to_string(&log).unwrap_or_default();
            StartError::Failed(format!("{e}; log: {tail}"))
        })
    }

    fn create_database(&self) -> Result<(), StartError> {
        let started = Instant::now();
        loop {
            let out = self.tool("createdb", |c| {
                c.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                    .args(["-U", "postgres", "floodwall"]);
            })?;
            if out.status.success() {
                return Ok(());
            }
            if started.elapsed() > Duration::from_secs(10) {
                return check("createdb", &out);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs one of the server's tools, as the unprivileged user when running as root.
    fn tool(&self, name: &str, args: impl FnOnce(&mut Command)) -> Result<Output, StartError> {
        let path = self.bin.join(name);
        let mut cmd = match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&path);
                c
            }
            None => Command::new(&path),
        };
        args(&mut cmd);
        cmd.stdin(Stdio::null()).current_dir(&self.dir);
        cmd.output().map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => StartError::MissingBinary("runuser"),
            _ => StartError::Failed(format!("{name}: {e}")),
        })
    }
}

fn check(what: &str, out: &Output) -> Result<(), StartError> {
    if out.status.success() {
        return Ok(());
    }
    Err(StartError::Failed(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
