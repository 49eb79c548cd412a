//! The Redis and Redis Cluster store (feature `redis`).
//!
//! Each limit's decision for one key is one Lua script ([`LIMIT_SCRIPT`]), run with `EVALSHA`
//! in one round trip. The script reads the time from Redis `TIME` — instances whose clocks
//! disagree still agree on every decision — and sets the key's TTL itself, so idle keys
//! expire on the server. Keys are versioned and hash-tagged by the limited key:
//! `fw-rl:v1:{<key>}:<limit>` (a global limit is tagged by its name), so one key's state lives
//! on one Cluster node and different keys spread over the cluster.
//!
//! Redis keeps time in microseconds: durations in decisions from Redis are whole
//! microseconds, and GCRA's emission interval is kept as a fraction of a microsecond.
//!
//! Every call is bounded ([`RedisOptions::timeout`], default 50 ms) and goes through a
//! circuit breaker: while Redis is failing, the breaker opens and decisions go straight to
//! the [`FailurePolicy`](crate::FailurePolicy) without waiting, adding microseconds.

use std::fmt;
use std::time::Duration;

use floodwall_core::redis::{RedisConnection, Script};
use floodwall_core::{Key, Keyspace, StoreError};
use floodwall_resilience::circuit_breaker::CircuitBreaker;

use crate::{Algorithm, Decision, Limit, Quota};

/// The decision script, shared by every algorithm (see its header for arguments and reply).
pub static LIMIT_SCRIPT: Script = Script::new(include_str!("limit.lua"));

/// The keyspace the limiter uses unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "fw-rl";

/// The default bound on one Redis decision.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(50);

/// How a [`RateLimiter`](crate::RateLimiter) uses Redis.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use floodwall_core::redis::RedisConnection;
/// use floodwall_limiter::redis::RedisOptions;
///
/// let conn = RedisConnection::standalone("redis://127.0.0.1:6379").connect().await?;
/// let options = RedisOptions::new(conn).timeout(Duration::from_millis(30));
/// # let _ = options; Ok(()) }
/// ```
pub struct RedisOptions {
    conn: RedisConnection,
    keyspace: Keyspace,
    timeout: Duration,
    breaker: Option<CircuitBreaker>,
}

impl RedisOptions {
    /// Redis through `conn`, keyspace `fw-rl` version 1, a 50 ms bound and the default breaker
    /// (opens at 50% failures over the last 20 calls, at least 5; probes after 1 s).
    pub fn new(conn: RedisConnection) -> Self {
        RedisOptions {
            conn,
            keyspace: Keyspace::new(DEFAULT_NAMESPACE, 1).expect("a valid namespace"),
            timeout: DEFAULT_TIMEOUT,
            breaker: None,
        }
    }

    /// The keyspace (namespace and version) of the limiter's keys. Bumping the version starts
    /// every limit afresh.
    pub fn keyspace(mut self, keyspace: Keyspace) -> Self {
        self.keyspace = keyspace;
        self
    }

    /// The most one decision may wait for Redis before the failure policy decides.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The circuit breaker around Redis.
    pub fn breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.breaker = Some(breaker);
        self
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisOptions")
            .field("keyspace", &self.keyspace)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

pub(crate) struct RedisStore {
    conn: RedisConnection,
    keyspace: Keyspace,
    breaker: CircuitBreaker,
}

/// What a remote decision consumed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteReceipt {
    consumed: bool,
    cost: u32,
    receipt: i64,
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// GCRA's one-integer reply (see the script) as `{allowed, remaining, reset, retry, 0}`.
fn gcra_reply(v: i64, t: f64, cap: f64, cost: u32, burst: u32) -> [i64; 5] {
    let allowed = v >= 0;
    let level = if allowed { v } else { -(v + 1) } as f64;
    let remaining = ((cap - level) / t + 1e-9)
        .floor()
        .clamp(0.0, f64::from(burst)) as i64;
    let retry = if allowed {
        -1
    } else {
        (level + f64::from(cost) * t - cap).ceil().max(0.0) as i64
    };
    [i64::from(allowed), remaining, level as i64, retry, 0]
}

impl RedisStore {
    pub(crate) fn new(options: RedisOptions) -> RedisStore {
        let breaker = match options.breaker {
            Some(b) => b,
            None => CircuitBreaker::for_store("floodwall-limiter-redis"),
        };
        RedisStore {
            conn: options.conn.with_call_timeout(options.timeout),
            keyspace: options.keyspace,
            breaker,
        }
    }

    fn keys(&self, limit: &Limit, key: &str) -> (Key, Option<Key>) {
        let routing = if limit.key_name().is_some() {
            key
        } else {
            limit.name()
        };
        let base = self.keyspace.key(routing).part(limit.name()).build();
        let seq = (limit.algorithm() == Algorithm::SlidingLog).then(|| {
            self.keyspace
                .key(routing)
                .part(limit.name())
                .part("seq")
                .build()
        });
        (base, seq)
    }

    async fn one(
        &self,
        limit: &Limit,
        key: &str,
        quota: Quota,
        cost: u32,
        mode: &'static str,
        receipt: i64,
    ) -> Result<[i64; 5], StoreError> {
        let (base, seq) = self.keys(limit, key);
        let mut call = LIMIT_SCRIPT.call().key(&base);
        if let Some(seq) = &seq {
            call = call.key(seq);
        }
        let op = match (limit.algorithm(), mode) {
            (Algorithm::Gcra, "c") => "gc",
            (Algorithm::Gcra, "p") => "gp",
            (Algorithm::Gcra, _) => "gr",
            (Algorithm::FixedWindow, "c") => "fc",
            (Algorithm::FixedWindow, "p") => "fp",
            (Algorithm::FixedWindow, _) => "fr",
            (Algorithm::SlidingCounter, "c") => "sc",
            (Algorithm::SlidingCounter, "p") => "sp",
            (Algorithm::SlidingCounter, _) => "sr",
            (Algorithm::SlidingLog, "c") => "lc",
            (Algorithm::SlidingLog, "p") => "lp",
            (Algorithm::SlidingLog, _) => "lr",
        };
        let call = call.arg(op).arg(cost);
        if limit.algorithm() == Algorithm::Gcra {
            // T and b * T in microseconds, fractions kept.
            let t = quota.emission_interval_nanos() as f64 / 1_000.0;
            let burst = quota.burst().get();
            let cap = t * f64::from(burst);
            let level: i64 = self.conn.invoke(call.arg(t).arg(cap)).await?;
            return Ok(gcra_reply(level, t, cap, cost, burst));
        }
        let call = call
            .arg(quota.limit().get())
            .arg(micros(quota.period()))
            .arg(receipt);
        let reply: Vec<i64> = self.conn.invoke(call).await?;
        <[i64; 5]>::try_from(reply)
            .map_err(|r| StoreError::Protocol(format!("limit script replied {r:?}")))
    }

    /// Decides every applicable limit concurrently. On any failure, whatever was consumed is
    /// given back (best effort) and the error returned.
    pub(crate) async fn decide(
        &self,
        limits: &[Limit],
        applicable: &[Option<(u32, &str, Quota)>],
        cost: u32,
        consume: bool,
    ) -> Result<Vec<(Decision, RemoteReceipt)>, StoreError> {
        let permit = self
            .breaker
            .try_acquire()
            .map_err(|r| StoreError::unavailable(format!("Redis circuit breaker: {r}")))?;
        let mode = if consume { "c" } else { "p" };
        let replies = if let [Some((idx, key, quota))] = applicable {
            // One limit (the common case): no join.
            vec![
                self.one(&limits[*idx as usize], key, *quota, cost, mode, 0)
                    .await,
            ]
        } else {
            let calls = applicable.iter().map(|e| {
                let (idx, key, quota) = e.expect("filled by the caller");
                self.one(&limits[idx as usize], key, quota, cost, mode, 0)
            });
            futures::future::join_all(calls).await
        };
        let mut out = Vec::with_capacity(replies.len());
        let mut failure = None;
        for (entry, reply) in applicable.iter().zip(replies) {
            let (idx, _, quota) = entry.expect("filled by the caller");
            match reply {
                Ok(r) => {
                    let limit = &limits[idx as usize];
                    let capacity = match limit.algorithm() {
                        Algorithm::Gcra => quota.burst().get(),
                        _ => quota.limit().get(),
                    };
                    let allowed = r[0] == 1;
                    let us = |v: i64| Duration::from_micros(v.max(0) as u64);
                    out.push((
                        Decision {
                            allowed,
                            limit: capacity,
                            remaining: r[1].clamp(0, i64::from(capacity)) as u32,
                            reset_after: us(r[2]),
                            retry_after: (!allowed).then(|| us(r[3])),
                        },
                        RemoteReceipt {
                            consumed: allowed && consume,
                            cost,
                            receipt: r[4],
                        },
                    ));
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    out.push((
                        Decision {
                            allowed: false,
                            limit: 0,
                            remaining: 0,
                            reset_after: Duration::ZERO,
                            retry_after: None,
                        },
                        RemoteReceipt {
                            consumed: false,
                            cost,
                            receipt: 0,
                        },
                    ));
                }
            }
        }
        match failure {
            None => {
                permit.success();
                Ok(out)
            }
            Some(e) => {
                permit.failure();
                self.refund(limits, applicable, &out).await;
                Err(e)
            }
        }
    }

    /// Gives back every consumed decision, concurrently; failures are logged.
    pub(crate) async fn refund(
        &self,
        limits: &[Limit],
        applicable: &[Option<(u32, &str, Quota)>],
        results: &[(Decision, RemoteReceipt)],
    ) {
        let calls = applicable
            .iter()
            .zip(results)
            .filter(|(_, (_, r))| r.consumed)
            .map(|(e, (_, r))| {
                let (idx, key, quota) = e.expect("filled by the caller");
                let limit = &limits[idx as usize];
                async move {
                    (
                        limit.name(),
                        self.one(limit, key, quota, r.cost, "r", r.receipt).await,
                    )
                }
            });
        for (name, result) in futures::future::join_all(calls).await {
            if let Err(e) = result {
                tracing::warn!(limit = name, error = %e, "could not give back a rate-limit decision");
            }
        }
    }
}
