//! floodwall-redis-module, built once per test process, and servers that load it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::RedisCluster;
use crate::server::{RedisServer, SERVER_BIN, StartError, on_path, skip_or_panic};

/// The package that builds the module.
const PACKAGE: &str = "floodwall-redis-module";

/// The path of floodwall-redis-module's shared library, built (release, in a target directory
/// of its own under the workspace's `target/`, so it never waits on the build that runs the
/// tests) the first time a process asks. The build is cargo's: a second process finds it
/// done.
pub fn native_module() -> Result<PathBuf, StartError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(build).clone().map_err(StartError::Failed)
}

fn build() -> Result<PathBuf, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("testkit is not inside the workspace")?;
    let target = root.join("target").join("native-module");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(root)
        .args(["build", "--release", "--locked", "--quiet", "-p", PACKAGE])
        .arg("--target-dir")
        .arg(&target)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cargo build -p {PACKAGE}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build -p {PACKAGE} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let lib = target.join("release").join(format!(
        "{}floodwall_redis_module{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    match lib.is_file() {
        true => Ok(lib),
        false => Err(format!("{} was not built", lib.display())),
    }
}

/// `--loadmodule <the module>`; a missing `redis-server` first, as every start reports it.
fn load_args() -> Result<Vec<String>, StartError> {
    if !on_path(SERVER_BIN) {
        return Err(StartError::MissingBinary(SERVER_BIN));
    }
    let lib = native_module()?;
    Ok(vec!["--loadmodule".into(), lib.display().to_string()])
}

impl RedisServer {
    /// Starts a standalone server that loaded floodwall-redis-module (see [`native_module`]).
    pub fn start_native() -> Result<RedisServer, StartError> {
        Self::start_node_with(false, load_args()?)
    }

    /// [`start_native`](Self::start_native) for a test, with the skip rule of
    /// [`start_or_skip`](Self::start_or_skip).
    pub fn start_native_or_skip(test: &str) -> Option<RedisServer> {
        skip_or_panic(test, Self::start_native())
    }
}

impl RedisCluster {
    /// [`start`](Self::start) with floodwall-redis-module loaded on every node.
    pub fn start_native(masters: usize) -> Result<RedisCluster, StartError> {
        Self::start_inner(masters, 0, true, load_args()?)
    }

    /// [`start_native`](Self::start_native) for a test, with the skip rule of
    /// [`RedisServer::start_or_skip`].
    pub fn start_native_or_skip(test: &str, masters: usize) -> Option<RedisCluster> {
        skip_or_panic(test, Self::start_native(masters))
    }
}
