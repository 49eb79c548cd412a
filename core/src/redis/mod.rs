//! One Redis handle over standalone Redis and Redis Cluster, with bounded calls and Lua scripts.
//!
//! [`RedisConnection`] is a cheap-to-clone handle. On a standalone server (and on a Sentinel
//! group's master) it holds one redis-rs multiplexed connection that reconnects by itself
//! (RESP3 by default, so a dropped connection is noticed and re-established even while idle);
//! on a Cluster it keeps one such connection per master and sends each call straight to the
//! master of its key's slot, following `MOVED` and `ASK` and re-reading the slot table in the
//! background, so one node's failure never holds another node's calls. Every call is bounded
//! by the handle's [`call_timeout`](RedisConnection::call_timeout) and every failure maps to a
//! small [`StoreError`], so the stores built on top can follow a declared failure policy.
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

mod cluster;
mod connection;
mod connector;
mod reconnect;
mod script;
/// Redis Cluster key slots (at the crate root, so that it needs no feature).
pub use crate::slot;
mod store;
mod topology;
mod watch;

pub use connection::{RedisConnection, Topology};
pub use connector::RedisConnector;
pub use script::{Script, ScriptCall};
pub use store::{StoreOptions, StorePath};

use std::time::Duration;

use ::redis::{ErrorKind, RedisError, ServerErrorKind};

use crate::error::StoreError;
use crate::health::Health;

/// The longest TTL a floodwall store gives a key: 100 years. Redis refuses an expiry past the
/// end of its clock, so a longer one (`Duration::MAX` means "never expires") saturates here.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

/// `ttl` as a `PX` argument: whole milliseconds, at least 1, at most [`MAX_TTL`].
///
/// ```
/// use std::time::Duration;
/// use floodwall_core::redis::{MAX_TTL, ttl_millis};
///
/// assert_eq!(ttl_millis(Duration::from_secs(2)), 2_000);
/// assert_eq!(ttl_millis(Duration::ZERO), 1);
/// assert_eq!(ttl_millis(Duration::MAX), ttl_millis(MAX_TTL));
/// ```
pub fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.min(MAX_TTL).as_millis())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// A call that did not produce a reply: the bound ran out, or redis-rs returned an error.
#[derive(Debug)]
pub(crate) enum CallError {
    Timeout,
    Redis(RedisError),
}

impl CallError {
    /// What the failure says about the node's health (see [`crate::health`]).
    pub(crate) fn health(&self) -> Health {
        match self {
            CallError::Timeout => Health::Unhealthy,
            CallError::Redis(e) => node_health(e),
        }
    }

    pub(crate) fn into_store_error(self, timeout: Duration) -> StoreError {
        match self {
            CallError::Timeout => StoreError::Timeout { after: timeout },
            CallError::Redis(e) => map_error(e, timeout),
        }
    }
}

/// Errors that say the node cannot serve anyone now, not that one key or value is wrong.
///
/// Unhealthy: timeouts, refused / reset / dropped connections, `LOADING`, `MASTERDOWN`,
/// `CLUSTERDOWN`, `TRYAGAIN` and `READONLY` (a write reached a node that is no longer a
/// master). Neutral: `OOM` — the node is alive and still serves reads, so failing fast on it
/// would refuse calls that succeed. Everything else (`WRONGTYPE`, a script's own error,
/// `CROSSSLOT`, a reply of the wrong shape) is an answer from a live node: healthy.
pub(crate) fn node_health(err: &RedisError) -> Health {
    if err.is_timeout() || err.is_io_error() || err.is_connection_dropped() {
        return Health::Unhealthy;
    }
    if node_cannot_serve(err) {
        Health::Unhealthy
    } else if err.code() == Some("OOM") {
        Health::Neutral
    } else {
        Health::Healthy
    }
}

/// Unreachable, or a server that says it cannot serve anyone now.
fn node_cannot_serve(err: &RedisError) -> bool {
    matches!(
        err.kind(),
        ErrorKind::Io
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
                    | ServerErrorKind::ReadOnly,
            )
    )
}

fn is_auth_failure(err: &RedisError) -> bool {
    err.kind() == ErrorKind::AuthenticationFailed
        || matches!(err.code(), Some("WRONGPASS" | "NOAUTH" | "NOPERM"))
}

/// Maps a redis-rs error to a [`StoreError`]; `timeout` is the bound reported for I/O timeouts.
pub(crate) fn map_error(err: RedisError, timeout: Duration) -> StoreError {
    if err.is_timeout() {
        return StoreError::Timeout { after: timeout };
    }
    if is_auth_failure(&err) {
        return StoreError::Config(format!(
            "Redis refused the credentials (check the user name and password in the URL): {}",
            err.detail().unwrap_or("authentication failed")
        ));
    }
    if err.code() == Some("OOM") || node_cannot_serve(&err) {
        return unavailable(err);
    }
    match err.kind() {
        ErrorKind::Server(
            ServerErrorKind::ResponseError | ServerErrorKind::NoScript | ServerErrorKind::CrossSlot,
        )
        | ErrorKind::Extension => StoreError::Script(err.to_string()),
        ErrorKind::InvalidClientConfig => StoreError::Config(err.to_string()),
        ErrorKind::MasterNameNotFoundBySentinel
        | ErrorKind::NoValidReplicasFoundBySentinel
        | ErrorKind::EmptySentinelList => unavailable(err),
        _ => StoreError::Protocol(err.to_string()),
    }
}

/// `url` with every credential the redis crate accepts replaced by `***`, for `Debug` output,
/// errors and logs: the userinfo's password (and a user name given without one, which may be
/// a token), and the values of query parameters that carry one (`pass`, `password` and the
/// like, as `redis+unix://` and `unix://` URLs take them). A text that is not a URL is shown
/// as it is.
pub(crate) fn redact(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let (head, rest) = url.split_at(scheme_end + 3);
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = String::with_capacity(url.len());
    out.push_str(head);
    match authority.rfind('@') {
        Some(at) => {
            match authority[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str("***"),
            }
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    let Some(q) = tail.find('?') else {
        out.push_str(tail);
        return out;
    };
    out.push_str(&tail[..=q]);
    let (query, fragment) = match tail[q + 1..].find('#') {
        Some(f) => tail[q + 1..].split_at(f),
        None => (&tail[q + 1..], ""),
    };
    for (i, pair) in query.split('&').enumerate() {
        if i > 0 {
            out.push('&');
        }
        match pair.split_once('=') {
            Some((name, _)) if is_secret_param(name) => {
                out.push_str(name);
                out.push_str("=***");
            }
            _ => out.push_str(pair),
        }
    }
    out.push_str(fragment);
    out
}

/// Whether a URL query parameter named `name` carries a credential.
fn is_secret_param(name: &str) -> bool {
    const SECRET: [&str; 7] = [
        "pass", "password", "passwd", "pwd", "auth", "token", "secret",
    ];
    let name = name.to_ascii_lowercase();
    SECRET
        .iter()
        .any(|s| name == *s || name.ends_with(&format!("_{s}")))
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
        let auth = RedisError::from((ErrorKind::AuthenticationFailed, "bad"));
        assert!(matches!(map_error(auth, t), StoreError::Config(_)));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("redis://:s3cret@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact("rediss://u:s3cret@h:6380"), "rediss://u:***@h:6380");
        assert_eq!(redact("redis://token@h"), "redis://***@h");
        assert_eq!(redact("redis://h:6379/1"), "redis://h:6379/1");
        assert_eq!(redact("redis://u:p@ss@h:1"), "redis://u:***@h:1");
        assert_eq!(redact("not a url"), "not a url");
        assert_eq!(
            redact("redis+unix:///tmp/r.sock?db=1&pass=s3cret"),
            "redis+unix:///tmp/r.sock?db=1&pass=***"
        );
        assert_eq!(
            redact("unix:///tmp/r.sock?user=u&PASSWORD=s3cret#x"),
            "unix:///tmp/r.sock?user=u&PASSWORD=***#x"
        );
        assert_eq!(
            redact("redis://u:s3cret@h:1/0?protocol=resp3&auth_token=t0k"),
            "redis://u:***@h:1/0?protocol=resp3&auth_token=***"
        );
    }
}
