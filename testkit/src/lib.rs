//! # floodwall-testkit
//!
//! Fixtures for floodwall's tests (and for users who test their own stacks):
//!
//! - [`RedisServer`] and [`RedisCluster`]: throwaway `redis-server` processes on free loopback
//!   ports, without persistence, killed on drop. A test never touches a server it did not start.
//! - [`RedisCluster::start_with_replicas`]: 3 masters + 3 replicas, a master killed with
//!   [`RedisCluster::kill`] and [`RedisCluster::wait_for_failover`].
//! - [`RedisSentinel`]: a master, a replica and a sentinel that promotes it; [`TlsFiles`] and
//!   [`RedisServer::start_tls`]: a TLS-only server with a throwaway CA.
//! - [`FaultProxy`]: a loopback TCP proxy in front of a server that can add latency, blackhole
//!   traffic, reset every connection or refuse new ones, and heal.
//! - [`PostgresServer`]: a throwaway PostgreSQL (`initdb` + `pg_ctl` into a scratch
//!   directory, as the unprivileged `nobody` when run as root), with a crash-like
//!   [`PostgresServer::restart_immediate`]; skipped unless installed, or required with
//!   `FLOODWALL_REQUIRE_POSTGRES=1`.
//! - [`RedisServer::start_native`] and [`RedisCluster::start_native`]: servers that loaded
//!   floodwall-redis-module, built once per test process by [`native_module`].
//! - [`Flaky`]: a scripted async service (a plain function and a `tower::Service`) that fails
//!   N times, adds latency and returns chosen error kinds.
//!
//! When `redis-server` is not on `PATH`, [`RedisServer::start_or_skip`] prints one skip line
//! and returns `None`; with `FLOODWALL_REQUIRE_REDIS=1` it panics naming the missing binary.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use floodwall_testkit::RedisServer;
//!
//! let Some(server) = RedisServer::start_or_skip("doc example") else { return };
//! assert!(server.url().starts_with("redis://127.0.0.1:"));
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod cluster;
mod flaky;
mod module;
mod postgres;
mod proxy;
mod reshard;
mod resp;
mod sentinel;
mod server;
mod tls;

pub use cluster::RedisCluster;
pub use flaky::{Flaky, FlakyError, FlakyErrorKind, Step};
pub use module::native_module;
pub use postgres::{PostgresServer, REQUIRE_POSTGRES_ENV};
pub use proxy::FaultProxy;
pub use reshard::SlotMove;
pub use sentinel::RedisSentinel;
pub use server::{REQUIRE_REDIS_ENV, RedisServer, StartError, Target, on_each_topology};
pub use tls::TlsFiles;
