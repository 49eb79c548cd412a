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
//! Every call takes floodwall-core's store path ([`StoreOptions`]): it is bounded (default:
//! the connection's own bound), and while the node that owns a key is failing its gate is
//! open, so claims for that node's keys answer [`StoreError::Unavailable`] at once rather
//! than after a timeout per call — keys on other nodes are unaffected, and an error about one
//! key (a key of the wrong type) is that caller's alone. Completing or releasing a claim the
//! caller holds, and renewing its lease, are never refused by a gate.
//!
//! # What Redis can lose, and what it means for duplicates
//!
//! At most once holds as long as Redis keeps what it acknowledged. It does not keep it when:
//!
//! - **it restarts without persistence** (no AOF, or an RDB snapshot older than the claim):
//!   every claim and stored result since the last save is gone, and a retry of one of those
//!   requests runs again;
//! - **it evicts keys** under `maxmemory` with any policy but `noeviction`: an evicted result
//!   means a second run; an evicted claim lets a concurrent duplicate run alongside;
//! - **a replica that had not yet received a write is promoted** (replication is
//!   asynchronous, Cluster and Sentinel alike): a claim or result acknowledged by the old
//!   master can be missing on the new one, so a retry in that window may run again. `WAIT`
//!   would narrow the window, not close it; this store does not use it.
//!
//! Recommended for an idempotency Redis: `maxmemory-policy noeviction` (a full Redis then
//! refuses new claims — `OOM`, answered as unavailable — instead of forgetting results),
//! `appendonly yes` with `appendfsync everysec` (at most about a second of acknowledged
//! writes lost on a crash) or `always` where a second's loss is too much, and a database
//! store where the business write and the recorded result must commit together.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use floodwall_core::redis::{Script, ScriptCall, StoreOptions, StorePath};
use floodwall_core::{Keyspace, StoreError};

use crate::record::{Abort, Begin, Fingerprint, Finish, Token};
use crate::store::{COMPLETION_GRACE, Store};

static BEGIN: Script = Script::new(include_str!("redis/begin.lua"));
static COMPLETE: Script = Script::new(include_str!("redis/complete.lua"));
static RELEASE: Script = Script::new(include_str!("redis/release.lua"));
static EXTEND: Script = Script::new(include_str!("redis/extend.lua"));

/// The keyspace namespace the store uses unless its [`StoreOptions`] name another.
pub const DEFAULT_NAMESPACE: &str = "fw-idem";

/// A [`Store`] on Redis, Redis Cluster or a Sentinel-monitored master. Cheap to clone.
///
/// ```no_run
/// # async fn demo() -> Result<(), floodwall_core::StoreError> {
/// use floodwall_core::redis::{RedisConnection, StoreOptions};
/// use floodwall_idempotency::redis::RedisStore;
///
/// let conn = RedisConnection::standalone("redis://127.0.0.1:6379").connect().await?;
/// let store = RedisStore::new(StoreOptions::new(conn));
/// # let _ = store; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    path: StorePath,
}

impl RedisStore {
    /// A store on the store path `options` describe: keyspace `fw-idem` v1 unless set, the
    /// connection's call bound unless overridden, a health gate per node.
    pub fn new(options: StoreOptions) -> RedisStore {
        RedisStore {
            path: options.open(Keyspace::new(DEFAULT_NAMESPACE, 1).expect("a valid namespace")),
        }
    }

    /// A claim attempt: gated by the key's node.
    async fn run<T: ::redis::FromRedisValue>(&self, call: ScriptCall<'_>) -> Result<T, StoreError> {
        self.path.invoke(call).await
    }

    /// Finishing a claim this caller holds: never refused by the node's gate.
    async fn finish<T: ::redis::FromRedisValue>(
        &self,
        call: ScriptCall<'_>,
    ) -> Result<T, StoreError> {
        self.path.invoke_held(call).await
    }
}

impl RedisStore {
    /// `COMPLETE`: stores `record` under the claim's token (completion or recorded failure).
    async fn store_record(
        &self,
        k: &floodwall_core::Key,
        token: Token,
        record: Vec<u8>,
        retention: Duration,
    ) -> Result<Finish, StoreError> {
        let done: i64 = self
            .finish(
                COMPLETE
                    .call()
                    .key(k)
                    .arg(token.0)
                    .arg(record)
                    .arg(millis(retention)),
            )
            .await?;
        Ok(finished(done))
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("keyspace", self.path.keyspace())
            .finish_non_exhaustive()
    }
}

/// The longest lease or retention kept in Redis: `Duration::MAX` ("until further notice") is
/// capped here, since Redis expiries must fit its clock.
use floodwall_core::redis::MAX_TTL;

/// A finishing script's reply: 1 done, 0 fenced.
fn finished(done: i64) -> Finish {
    if done == 1 {
        Finish::Done
    } else {
        Finish::Fenced
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

fn millis(d: Duration) -> u64 {
    floodwall_core::redis::ttl_millis(d)
}

impl Store for RedisStore {
    fn begin(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send {
        let k = self.path.keyspace().key(key).build();
        let fp = fingerprint.to_hex();
        async move {
            let reply: Vec<Vec<u8>> = self
                .run(
                    BEGIN
                        .call()
                        .key(&k)
                        .arg(&fp)
                        .arg(micros(lease.min(MAX_TTL)))
                        .arg(millis(lease.min(MAX_TTL) + COMPLETION_GRACE)),
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
        let k = self.path.keyspace().key(key).build();
        let record = record.to_vec();
        async move { self.store_record(&k, token, record, retention).await }
    }

    fn abort(
        &self,
        key: &str,
        token: Token,
        how: Abort<'_>,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        let k = self.path.keyspace().key(key).build();
        let record = match how {
            Abort::Release => None,
            Abort::Record { record, retention } => Some((record.to_vec(), retention)),
        };
        async move {
            let done: i64 = match record {
                None => {
                    self.finish(
                        RELEASE
                            .call()
                            .key(&k)
                            .arg(token.0)
                            .arg(millis(COMPLETION_GRACE)),
                    )
                    .await?
                }
                Some((record, retention)) => {
                    return self.store_record(&k, token, record, retention).await;
                }
            };
            Ok(finished(done))
        }
    }

    fn extend(
        &self,
        key: &str,
        token: Token,
        lease: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        let k = self.path.keyspace().key(key).build();
        async move {
            let done: i64 = self
                .finish(
                    EXTEND
                        .call()
                        .key(&k)
                        .arg(token.0)
                        .arg(micros(lease.min(MAX_TTL)))
                        .arg(millis(lease.min(MAX_TTL) + COMPLETION_GRACE)),
                )
                .await?;
            Ok(finished(done))
        }
    }
}
