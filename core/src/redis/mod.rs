//! One Redis handle over standalone Redis and Redis Cluster, with bounded calls and Lua scripts.
//!
//! [`RedisConnection`] is a cheap-to-clone handle. On a standalone server it wraps redis-rs's
//! reconnecting `ConnectionManager` (RESP3 by default, so a dropped connection is noticed and
//! re-established even while idle); on a Cluster it wraps redis-rs's `cluster-async`
//! connection, which follows slot moves. Every call is bounded by the handle's
//! [`call_timeout`](RedisConnection::call_timeout) and every failure maps to a small
//! [`StoreError`], so the stores built on top can follow a declared failure policy.
//!
//! Distributed state changes go through [`Script`]: one `EVALSHA` round trip; when the server
//! does not know the script yet (`NOSCRIPT`, e.g. after a restart or on a new cluster node) the
//! call is sent again once as `EVAL`, which also caches it. Scripts must name every key they
//! touch in `KEYS`, and all keys of one call must share a hash tag
//! (see [`Keyspace::key`](crate::key::Keyspace::key)) so the same script runs on a Cluster.
//!
//! ```no_run
//! # async fn demo() -> Result<(), floodwall_core::StoreError> {
//! use std::time::Duration;
//! use floodwall_core::key::Keyspace;
//! use floodwall_core::redis::{RedisConnection, Script};
//!
//! let conn = RedisConnection::standalone("redis://127.0.0.1:6379")
//!     .call_timeout(Duration::from_millis(50))
//!     .connect()
//!     .await?;
//! // Redis Cluster: RedisConnection::cluster(["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"])
//!
//! static INCR_BOTH: Script = Script::new(
//!     "redis.call('INCRBY', KEYS[1], ARGV[1]); redis.call('PEXPIRE', KEYS[1], ARGV[2]);
//!      redis.call('INCRBY', KEYS[2], ARGV[1]); redis.call('PEXPIRE', KEYS[2], ARGV[2]);
//!      return redis.call('GET', KEYS[1]) + redis.call('GET', KEYS[2])",
//! );
//! let hits = Keyspace::new("hits", 1).unwrap();
//! let total: i64 = conn
//!     .invoke(
//!         INCR_BOTH.call()
//!             .key(hits.key("user-42").part("a").build())
//!             .key(hits.key("user-42").part("b").build())
//!             .arg(1)
//!             .arg(60_000),
//!     )
//!     .await?;
//! # let _ = total; Ok(()) }
//! ```

mod connection;
mod script;

pub use connection::{RedisConnection, RedisConnector, Topology};
pub use script::{Script, ScriptCall};

use std::time::Duration;

use ::redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::StoreError;

/// Maps a redis-rs error to a [`StoreError`]; `timeout` is the bound reported for I/O timeouts.
pub(crate) fn map_error(err: RedisError, timeout: Duration) -> StoreError {
    if err.is_timeout() {
        return StoreError::Timeout { after: timeout };
    }
    match err.kind() {
        ErrorKind::Io | ErrorKind::ClusterConnectionNotFound => unavailable(err),
        ErrorKind::Server(
            ServerErrorKind::ClusterDown
            | ServerErrorKind::TryAgain
            | ServerErrorKind::MasterDown
            | ServerErrorKind::BusyLoading
            | ServerErrorKind::ReadOnly,
        ) => unavailable(err),
        ErrorKind::Server(
            ServerErrorKind::ResponseError | ServerErrorKind::NoScript | ServerErrorKind::CrossSlot,
        )
        | ErrorKind::Extension => StoreError::Script(err.to_string()),
        ErrorKind::InvalidClientConfig | ErrorKind::AuthenticationFailed => {
            StoreError::Config(err.to_string())
        }
        _ => StoreError::Protocol(err.to_string()),
    }
}

fn unavailable(err: RedisError) -> StoreError {
    StoreError::Unavailable {
        message: err.to_string(),
        source: Some(Box::new(err)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_mapping() {
        let t = Duration::from_millis(20);
        let io = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(matches!(map_error(io, t), StoreError::Unavailable { .. }));
        let to = RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(matches!(map_error(to, t), StoreError::Timeout { after } if after == t));
        let cfg = RedisError::from((ErrorKind::InvalidClientConfig, "bad url"));
        assert!(matches!(map_error(cfg, t), StoreError::Config(_)));
        let ty = RedisError::from((ErrorKind::UnexpectedReturnType, "not an int"));
        assert!(matches!(map_error(ty, t), StoreError::Protocol(_)));
    }
}
