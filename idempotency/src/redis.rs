//! The Redis and Redis Cluster store (feature `redis`).
//!
//! A key is one hash, `fw-idem:v1:{<key>}`, with fields `s` (state: `p` in progress, `c`
//! completed, `x` released), `f` (the last fencing token), `fp` (fingerprint, hex), `lu`
//! (lease end, µs of Redis time) and `r` (the record). Each step is one Lua script — one
//! round trip — on Redis `TIME`, setting the key's TTL itself: the lease plus
//! [`crate::COMPLETION_GRACE`] while in progress, the retention once
//! completed. Tokens are `max(last token + 1, now in µs)`, so they grow across releases and
//! expiries alike. One key lives on one Cluster node.
//!
//! Every call is bounded ([`RedisStoreBuilder::timeout`], default 100 ms) and goes through a
//! circuit breaker, so a dead Redis answers [`StoreError::Unavailable`] at once rather than
//! after a timeout per call.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use floodwall_core::redis::{RedisConnection, Script};
use floodwall_core::{Keyspace, StoreError};
use floodwall_resilience::circuit_breaker::CircuitBreaker;

use crate::record::{Abort, Begin, Fingerprint, Finish, Token};
use crate::store::{COMPLETION_GRACE, Store};

/// `begin`: ARGV fingerprint hex, lease µs, in-progress TTL ms.
/// Replies `{'n', token}`, `{'c', record}`, `{'i', lease left µs}` or `{'m'}`.
pub static BEGIN: Script = Script::new(
    r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local h = redis.call('HMGET', KEYS[1], 's', 'fp', 'lu', 'r', 'f')
local s = h[1]
if s == 'c' then
  if h[2] ~= ARGV[1] then return {'m'} end
  return {'c', h[4]}
end
if s == 'p' and tonumber(h[3]) > now then
  if h[2] ~= ARGV[1] then return {'m'} end
  return {'i', string.format('%.0f', tonumber(h[3]) - now)}
end
local tok = math.max(tonumber(h[5] or '0') + 1, now)
local ftok = string.format('%.0f', tok)
redis.call('HSET', KEYS[1], 's', 'p', 'fp', ARGV[1], 'lu', string.format('%.0f', now + tonumber(ARGV[2])), 'f', ftok)
redis.call('HDEL', KEYS[1], 'r')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'n', ftok}
"#,
);

/// `complete` / record a failure: ARGV token, record, retention ms. Replies 1 or 0 (fenced).
pub static COMPLETE: Script = Script::new(
    r#"
local h = redis.call('HMGET', KEYS[1], 's', 'f')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', 'c', 'r', ARGV[2])
redis.call('HDEL', KEYS[1], 'lu')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#,
);

/// `abort` by release: ARGV token, fence TTL ms. Keeps the last token for a while so the
/// next claim's token is larger. Replies 1 or 0 (fenced).
pub static RELEASE: Script = Script::new(
    r#"
local h = redis.call('HMGET', KEYS[1], 's', 'f')
if h[1] ~= 'p' or h[2] ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 's', 'x')
redis.call('HDEL', KEYS[1], 'r', 'lu', 'fp')
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"#,
);

/// The default keyspace namespace.
pub const DEFAULT_NAMESPACE: &str = "fw-idem";

/// A [`Store`] on Redis or Redis Cluster. Cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    conn: RedisConnection,
    keyspace: Keyspace,
    breaker: CircuitBreaker,
}

/// Builds a [`RedisStore`].
pub struct RedisStoreBuilder {
    conn: RedisConnection,
    keyspace: Keyspace,
    timeout: Duration,
    breaker: Option<CircuitBreaker>,
}

impl RedisStore {
    /// A store on `conn`: keyspace `fw-idem` version 1, a 100 ms bound per call and the
    /// default breaker (opens at 50% failures over the last 20 calls, at least 5; probes after
    /// 1 s).
    pub fn builder(conn: RedisConnection) -> RedisStoreBuilder {
        RedisStoreBuilder {
            conn,
            keyspace: Keyspace::new(DEFAULT_NAMESPACE, 1).expect("a valid namespace"),
            timeout: Duration::from_millis(100),
            breaker: None,
        }
    }

    /// A store with the defaults.
    pub fn new(conn: RedisConnection) -> RedisStore {
        Self::builder(conn)
            .build()
            .expect("the default breaker is valid")
    }

    async fn run<T: ::redis::FromRedisValue>(
        &self,
        call: floodwall_core::redis::ScriptCall<'_>,
    ) -> Result<T, StoreError> {
        self.breaker.guard_store(self.conn.invoke::<T>(call)).await
    }
}

impl RedisStoreBuilder {
    /// The keyspace (namespace and version) of the records.
    pub fn keyspace(mut self, keyspace: Keyspace) -> Self {
        self.keyspace = keyspace;
        self
    }

    /// The most one call may wait for Redis.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The circuit breaker around Redis.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }

    /// Builds the store.
    pub fn build(self) -> Result<RedisStore, StoreError> {
        let breaker = match self.breaker {
            Some(b) => b,
            None => CircuitBreaker::for_store("floodwall-idempotency-redis"),
        };
        Ok(RedisStore {
            conn: self.conn.with_call_timeout(self.timeout),
            keyspace: self.keyspace,
            breaker,
        })
    }
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("keyspace", &self.keyspace)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("keyspace", &self.keyspace)
            .finish_non_exhaustive()
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl Store for RedisStore {
    fn begin(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send {
        let k = self.keyspace.key(key).build();
        let fp = fingerprint.to_hex();
        async move {
            let reply: Vec<Vec<u8>> = self
                .run(
                    BEGIN
                        .call()
                        .key(&k)
                        .arg(&fp)
                        .arg(micros(lease))
                        .arg(millis(lease + COMPLETION_GRACE)),
                )
                .await?;
            let bad = || StoreError::Protocol(format!("begin replied {reply:?}"));
            let num = |b: &[u8]| -> Option<u64> { std::str::from_utf8(b).ok()?.parse().ok() };
            match reply.first().map(Vec::as_slice) {
                Some(b"n") => Ok(Begin::Claimed(Token(
                    reply.get(1).and_then(|b| num(b)).ok_or_else(bad)?,
                ))),
                Some(b"c") => Ok(Begin::Completed(reply.get(1).cloned().ok_or_else(bad)?)),
                Some(b"i") => Ok(Begin::InProgress {
                    retry_after: Duration::from_micros(
                        reply.get(1).and_then(|b| num(b)).ok_or_else(bad)?,
                    ),
                }),
                Some(b"m") => Ok(Begin::Mismatch),
                _ => Err(bad()),
            }
        }
    }

    fn complete(
        &self,
        key: &str,
        token: Token,
        record: &[u8],
        retention: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        let k = self.keyspace.key(key).build();
        let record = record.to_vec();
        async move {
            let done: i64 = self
                .run(
                    COMPLETE
                        .call()
                        .key(&k)
                        .arg(token.0)
                        .arg(record)
                        .arg(millis(retention)),
                )
                .await?;
            Ok(if done == 1 {
                Finish::Done
            } else {
                Finish::Fenced
            })
        }
    }

    fn abort(
        &self,
        key: &str,
        token: Token,
        how: Abort<'_>,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        let k = self.keyspace.key(key).build();
        let record = match how {
            Abort::Release => None,
            Abort::Record { record, retention } => Some((record.to_vec(), retention)),
        };
        async move {
            let done: i64 = match record {
                None => {
                    self.run(
                        RELEASE
                            .call()
                            .key(&k)
                            .arg(token.0)
                            .arg(millis(COMPLETION_GRACE)),
                    )
                    .await?
                }
                Some((record, retention)) => {
                    self.run(
                        COMPLETE
                            .call()
                            .key(&k)
                            .arg(token.0)
                            .arg(record)
                            .arg(millis(retention)),
                    )
                    .await?
                }
            };
            Ok(if done == 1 {
                Finish::Done
            } else {
                Finish::Fenced
            })
        }
    }
}
