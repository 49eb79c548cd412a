//! The Redis and Redis Cluster store (feature `redis`).
//!
//! Decisions are made by one Lua script (`limit.lua`), run with `EVALSHA` in one round trip.
//! The script reads the time from Redis `TIME` — instances whose clocks disagree still agree
//! on every decision — and keeps every key's TTL itself, so idle state expires on the server.
//!
//! **Layout 2: states in shards.** A limit's states are spread over shards, each a hash tag
//! of the store's own (`{#2.<S>.<j>.<n>}`; one shard on a standalone or Sentinel server,
//! [`DEFAULT_CLUSTER_SHARDS`] on Cluster, set with
//! [`redis_shards`](crate::RateLimiterBuilder::redis_shards)). A key's shard is the one whose
//! part of the slot space holds the slot the key itself would have, so shards spread over a
//! Cluster's masters as slots do, and all limits keyed by one value are in one shard. A GCRA
//! limit keeps each key's state as a **field of its shard's hash**
//! (`fw-rl:v1:{#2.…}:<limit>`, field: the encoded key, value: the TAT as 8 bytes), so a batch
//! reads a shard's states with one `HMGET` and writes them with one `HSET`; a state whose TAT
//! has passed equals an absent one, and a sweep the writing calls run in steps removes such
//! fields, 128 a step, the steps of one hash at least `S` × 2 ms apart for a limit of `S`
//! shards (so a limit's sweep work does not grow with its shards) and a pass over a hash
//! spread over at least a second (a small hash is not scanned again and again): while a hash
//! of `N` fields is written that often, a stale field is gone within two passes of
//! `max(1 s, ⌈N / 128⌉ · S · 2 ms)` (a limit's states spread evenly, 2 s up to 64,000 of
//! them and 3.1 s for 100,000, whatever `S`; a hash written less often takes a step per
//! write), and a hash nobody writes any more
//! expires whole: its TTL, raised whenever a write's TAT goes past it, ends that TAT's
//! remaining time (at least 1 s) after the TAT. Window counters and logs keep one key per limited key under the shard's tag
//! (`fw-rl:v1:{#2.…}:<limit>:<key>`). [`RateLimiter::redis_location`](crate::RateLimiter::redis_location)
//! says where a key's state is. No key of layout 2 is a key of the layout before it
//! (`fw-rl:v1:{<key>}:<limit>`): a limiter of this version and one of an earlier version never
//! read or write each other's states (see the CHANGELOG for a rolling upgrade). When Redis
//! loses its data (a restart without persistence, `FLUSHALL`, a failover to a replica that
//! lagged), the states it lost are gone: each of those keys starts afresh, and may be
//! admitted up to its limit again; the shard's hash, its sweep and its TTL start over with
//! the next write (`limiter/tests/redis_layout.rs::after_flushall_every_key_starts_afresh`).
//!
//! **Exact batching** (on by default). A decision that finds its node idle is sent at once,
//! alone — no timer, no added wait on an idle connection. One that finds a call in flight
//! waits, and when a call returns, everything waiting for that node (up to
//! [`redis_max_batch`](crate::RateLimiterBuilder::redis_max_batch), 128 by default) goes as
//! one script call; on a standalone or Sentinel server, 16 waiting decisions also go at once
//! while fewer than 4 calls are in flight (32 while fewer than 3 with the native command: its
//! cost to Redis is almost all per call; a Cluster master has one call in flight). The script decides the batch's decisions in arrival order, each seeing the
//! state the ones before it left, exactly as if each had been its own call; decisions on the
//! same key read it once and write it once (the sliding log works on its sorted set step by
//! step). A batch of GCRA decisions that consume — the common case — takes a short path: each
//! shard's hash named once, its quota once, then one field per decision. An error about one
//! key (a hash or key of the wrong type, a value not ours) is the reply of the decisions on it
//! alone; the rest of the batch is decided. On Cluster a batch is one master's decisions,
//! whatever their slots: keys of several slots go to the script run with Redis 7's
//! `allow-cross-slot-keys` flag, routed by the first key, and a decision whose key has moved
//! to another master since is sent again alone, following the redirect. Waiting counts against
//! the decision's call bound, like the call itself: every decision is answered by its own
//! bound — with a timeout if its batch has not answered by then (one timer per batch, not per
//! decision), unsent if the bound passed while it waited.
//!
//! **The native command** (where the server has it). A server that loaded
//! floodwall-redis-module (`redis-server --loadmodule libfloodwall_redis_module.so`) decides
//! a batch of GCRA decisions that consume with one `FLOODWALL.GCRA` command instead of the
//! script — the batch's shard hashes as segments, the same states and verdicts
//! (`limiter/tests/redis_native.rs`), for a fraction of Redis's CPU per decision (`benches/limiter_redis.rs`). The limiter tries
//! the command first; a server that does not know it refuses it having decided nothing, and
//! the limiter then uses the script and tries the command again every 30 s. Instances with
//! and without the module share states exactly; a replica sees plain hash commands
//! and needs no module. [`redis_native_command(false)`](crate::RateLimiterBuilder::redis_native_command)
//! always uses the script. Every other decision (peeks, refunds, groups, the window
//! algorithms) is the script's.
//!
//! **Several limits, one call.** A request's limits whose keys share a slot — always on a
//! standalone or Sentinel server; on Cluster, limits keyed by the same value, which share a
//! shard — go as one group: the script peeks at every one and consumes only if all admit, so
//! the decision is atomic and a denial takes nothing. Limits in different slots are decided
//! concurrently and, on a denial, what was consumed is given back within the same call bound.
//! Under load, Redis runs one script per batch instead of one per decision
//! (`benches/limiter_redis.rs`); `redis_max_batch(1)` sends every decision alone.
//!
//! **Token leases** (opt-in, GCRA, [`Limit::lease`](crate::Limit::lease)): for hot keys, an
//! instance takes a block of a key's tokens in one call and admits from it locally, never
//! more than the limit in any window; see [`Lease`].
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use std::num::NonZeroU32;
//! use floodwall_core::redis::{RedisConnection, StoreOptions};
//! use floodwall_limiter::{Algorithm, FailurePolicy, Limit, Quota, RateLimiter};
//!
//! // Standalone here; `RedisConnection::cluster([..])` or `::sentinel(name, [..])` alike.
//! let conn = RedisConnection::standalone("redis://127.0.0.1:6379").connect().await?;
//! let limiter = RateLimiter::builder()
//!     .limit(Limit::new("api", Algorithm::Gcra, Quota::per_second(NonZeroU32::new(10).unwrap())))
//!     .redis(StoreOptions::new(conn))
//!     .failure_policy(FailurePolicy::FailOpen)
//!     .build()?;
//! # let _ = limiter; Ok(()) }
//! ```
//!
//! Redis keeps time in microseconds: durations in decisions from Redis are whole
//! microseconds, and GCRA's emission interval is kept as a fraction of a microsecond.
//!
//! Redis is configured once for every floodwall store, with
//! [`StoreOptions`] (connection, keyspace — default
//! `fw-rl` v1 —, per-call bound — default the connection's own — and health gate), handed to
//! [`RateLimiterBuilder::redis`](crate::RateLimiterBuilder::redis). Every call takes
//! floodwall-core's store path: it is bounded, and while the node that owns a key is failing
//! (timeouts, refused connections, `LOADING`, `CLUSTERDOWN`, …) that node's gate is open and
//! decisions for its keys go straight to the [`FailurePolicy`](crate::FailurePolicy) without
//! waiting, adding microseconds. Keys on other nodes keep being decided on Redis, and an
//! error about one key (a key of the wrong type) is that request's failure alone.

mod batch;
mod build;
pub(crate) mod concurrency;
mod native;
mod shards;
mod single;
mod units;
mod verdict;

pub use shards::{Location, MAX_SHARDS};

/// Token leases' settings (also at the crate root).
pub use crate::lease::Lease;
pub(crate) use build::Settings;

use std::sync::Arc;
use std::time::Duration;

use floodwall_core::redis::{Script, StoreOptions, StorePath};
use floodwall_core::{Keyspace, StoreError};

use batch::Batcher;
use shards::Shards;
use units::{Fields, Item, Unit};
use verdict::{micros, parse_verdict, remote_decision};

use crate::store::{Selected, SharedStore};
use crate::{Algorithm, Decision, Limit, Quota};

/// The decision script, shared by every algorithm (see its header for arguments and reply).
static LIMIT_SCRIPT: Script = Script::new(include_str!("limit.lua"));

/// The same script flagged to touch keys of several slots, for a Cluster node's batch (Redis
/// 7 script flags; the keys are then its arguments, see the script's header).
static LIMIT_SCRIPT_NODE: Script = Script::new(concat!(
    "#!lua flags=allow-cross-slot-keys\n",
    include_str!("limit.lua")
));

/// The keyspace the limiter uses unless its [`StoreOptions`] name another.
pub const DEFAULT_NAMESPACE: &str = "fw-rl";

/// The most decisions one script call carries, unless the builder sets another.
pub const DEFAULT_MAX_BATCH: usize = 128;

/// The shards a limit's states are spread over on Redis Cluster, unless the builder sets
/// another count (see [`redis_shards`](crate::RateLimiterBuilder::redis_shards)).
pub const DEFAULT_CLUSTER_SHARDS: u16 = 16;

pub(crate) struct RedisStore {
    path: StorePath,
    shards: Shards,
    /// Each GCRA limit's shard hashes.
    hashes: shards::ShardHashes,
    /// `None`: batching off, every decision its own call.
    batcher: Option<Arc<Batcher>>,
    /// The native command, where the server has it.
    native: Arc<native::Native>,
}

/// What a remote decision consumed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RemoteReceipt {
    consumed: bool,
    cost: u32,
    receipt: i64,
}

impl RedisStore {
    /// The store of a limiter with `limits`.
    pub(crate) fn new(options: StoreOptions, settings: &Settings, limits: &[Limit]) -> RedisStore {
        let path = options.open(Keyspace::new(DEFAULT_NAMESPACE, 1).expect("a valid namespace"));
        let cluster = path.connection().topology() == floodwall_core::redis::Topology::Cluster;
        let shards = (settings.shards).unwrap_or(if cluster { DEFAULT_CLUSTER_SHARDS } else { 1 });
        let native = Arc::new(native::Native::new(settings.native));
        let shards = Shards::new(shards);
        RedisStore {
            batcher: (settings.max_batch > 1)
                .then(|| Batcher::new(path.clone(), settings.max_batch, native.clone())),
            hashes: shards::ShardHashes::new(path.keyspace(), &shards, limits),
            shards,
            native,
            path,
        }
    }

    /// One decision's part of a script call.
    fn item(
        &self,
        limit: &Limit,
        key: &str,
        quota: Quota,
        cost: u32,
        mode: &'static str,
        receipt: i64,
    ) -> Item {
        let (base, field, seq) = self.keys(limit, key);
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
        // GCRA's fields are whole numbers (T in ns, the burst): integers format and parse far
        // cheaper than floats on both sides; the script works in µs with T fractional.
        let fields = if limit.algorithm() == Algorithm::Gcra {
            Fields::Gcra {
                t_nanos: quota.emission_interval_nanos(),
                burst: quota.burst().get(),
            }
        } else {
            Fields::Counter {
                limit: quota.limit().get(),
                period_us: micros(quota.period()),
                receipt,
            }
        };
        Item {
            key: base,
            field,
            seq,
            op,
            cost,
            fields,
        }
    }

    /// Sends `unit` (batched unless batching is off) and returns its verdict.
    async fn send(
        &self,
        unit: Unit,
        deadline: tokio::time::Instant,
    ) -> Result<::redis::Value, StoreError> {
        match &self.batcher {
            Some(batcher) => batcher.submit(unit, deadline).await,
            None => single::send_single(&self.path, &self.native, &unit, deadline).await,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn one(
        &self,
        limit: &Limit,
        key: &str,
        quota: Quota,
        cost: u32,
        mode: &'static str,
        receipt: i64,
        deadline: tokio::time::Instant,
    ) -> Result<[i64; 5], StoreError> {
        let item = self.item(limit, key, quota, cost, mode, receipt);
        self.send_item(item, cost, deadline).await
    }

    /// Sends one decision's item alone and parses its verdict.
    async fn send_item(
        &self,
        item: Item,
        cost: u32,
        deadline: tokio::time::Instant,
    ) -> Result<[i64; 5], StoreError> {
        let fields = item.fields;
        let verdict = self.send(Unit::One(item), deadline).await?;
        parse_verdict(verdict, fields, cost)
    }

    /// A request's limits whose keys share one slot, decided all or nothing in one script
    /// call: a denial takes nothing, so there is nothing to give back.
    async fn group(
        &self,
        items: Vec<Item>,
        cost: u32,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<[i64; 5]>, StoreError> {
        let fields: Vec<Fields> = items.iter().map(|i| i.fields).collect();
        let verdict = self.send(Unit::Group(items), deadline).await?;
        let ::redis::Value::Array(parts) = verdict else {
            return Err(StoreError::Protocol(format!(
                "limit script replied {verdict:?} for a group"
            )));
        };
        if parts.len() != fields.len() {
            return Err(StoreError::Protocol(format!(
                "limit script replied {} verdicts for a group of {}",
                parts.len(),
                fields.len()
            )));
        }
        parts
            .into_iter()
            .zip(fields)
            .map(|(v, f)| parse_verdict(v, f, cost))
            .collect()
    }

    /// Whether the keys of `items` all live in one slot (always, off Cluster), so one script
    /// may decide them together.
    fn one_slot(&self, items: &[Item]) -> bool {
        self.path.connection().topology() != floodwall_core::redis::Topology::Cluster
            || units::items_in_one_slot(items)
    }
}

impl SharedStore for RedisStore {
    type Receipt = RemoteReceipt;

    fn call_timeout(&self) -> Duration {
        self.path.call_timeout()
    }

    async fn take(
        &self,
        limit: &Limit,
        key: &str,
        quota: Quota,
        n: u32,
        deadline: tokio::time::Instant,
    ) -> Result<Decision, StoreError> {
        let r = self.one(limit, key, quota, n, "c", 0, deadline).await?;
        Ok(remote_decision(limit, quota, &r, r[0] == 1, n).0)
    }

    async fn give_back(
        &self,
        limit: &Limit,
        key: &str,
        quota: Quota,
        n: u32,
        deadline: tokio::time::Instant,
    ) -> Result<(), StoreError> {
        self.one(limit, key, quota, n, "r", 0, deadline)
            .await
            .map(drop)
    }

    /// Decides one limit alone.
    async fn decide_one(
        &self,
        limit: &Limit,
        key: &str,
        quota: Quota,
        cost: u32,
        consume: bool,
        deadline: tokio::time::Instant,
    ) -> Result<(Decision, RemoteReceipt), StoreError> {
        // The item goes straight to `send` (not through `one`): each layer of future keeps its
        // own copy of what it is handed, and this path's future is boxed per decision.
        let mode = if consume { "c" } else { "p" };
        let item = self.item(limit, key, quota, cost, mode, 0);
        let fields = item.fields;
        let verdict = self.send(Unit::One(item), deadline).await?;
        let r = parse_verdict(verdict, fields, cost)?;
        Ok(remote_decision(
            limit,
            quota,
            &r,
            r[0] == 1 && consume,
            cost,
        ))
    }

    /// Decides several limits: in one script when their keys share a slot, else
    /// concurrently. On any failure, whatever was consumed is given back (best effort) and the
    /// error returned.
    async fn decide(
        &self,
        limits: &[Limit],
        applicable: &[Selected<'_>],
        cost: u32,
        consume: bool,
        deadline: tokio::time::Instant,
    ) -> Result<Vec<(Decision, RemoteReceipt)>, StoreError> {
        let mode = if consume { "c" } else { "p" };
        let mut grouped_denial = false;
        let items: Vec<Item> = applicable
            .iter()
            .map(|e| {
                let (idx, key, quota) = e.expect("filled by the caller");
                self.item(&limits[idx as usize], key, quota, cost, mode, 0)
            })
            .collect();
        let replies: Vec<_> = if self.one_slot(&items) {
            // All in one slot: one script decides them all or nothing; a denial consumed
            // nothing, so nothing is to be given back.
            let verdicts = self.group(items, cost, deadline).await?;
            grouped_denial = verdicts.iter().any(|v| v[0] != 1);
            verdicts.into_iter().map(Ok).collect()
        } else {
            let calls = items
                .into_iter()
                .map(|item| self.send_item(item, cost, deadline));
            futures::future::join_all(calls).await
        };
        let mut out = Vec::with_capacity(replies.len());
        let mut failure = None;
        for (entry, reply) in applicable.iter().zip(replies) {
            let (idx, _, quota) = entry.expect("filled by the caller");
            match reply {
                Ok(r) => {
                    let consumed = r[0] == 1 && consume && !grouped_denial;
                    out.push(remote_decision(
                        &limits[idx as usize],
                        quota,
                        &r,
                        consumed,
                        cost,
                    ));
                }
                Err(e) => {
                    failure.get_or_insert(e);
                    let none = Decision {
                        allowed: false,
                        limit: 0,
                        remaining: 0,
                        reset_after: Duration::ZERO,
                        retry_after: None,
                    };
                    let receipt = RemoteReceipt {
                        consumed: false,
                        cost,
                        receipt: 0,
                    };
                    out.push((none, receipt));
                }
            }
        }
        match failure {
            None => Ok(out),
            Some(e) => {
                self.refund(limits, applicable, &out, deadline).await;
                Err(e)
            }
        }
    }

    /// When a decision that started now must be over, give-backs included: one call bound.
    fn deadline(&self) -> tokio::time::Instant {
        floodwall_core::clock::deadline_after(self.path.call_timeout())
    }

    /// Gives back every consumed decision, concurrently. A give-back returns what the caller
    /// holds: it is never refused by a node's gate nor counted against a node's health, and it
    /// has a call bound of its own from when it starts — a decision whose deadline was spent
    /// waiting on a failing node still gives back what a healthy node consumed. The caller
    /// waits for the give-backs until `deadline` (the decision's own bound, so a denial never
    /// takes longer than one call bound); those still under way then finish on their own
    /// task. What could not be given back stays consumed until it expires — the limiter may
    /// then under-admit, never over-admit. Failures are logged.
    async fn refund(
        &self,
        limits: &[Limit],
        applicable: &[Selected<'_>],
        results: &[(Decision, RemoteReceipt)],
        deadline: tokio::time::Instant,
    ) {
        let items: Vec<(String, Unit)> = applicable
            .iter()
            .zip(results)
            .filter(|(_, (_, r))| r.consumed)
            .map(|(e, (_, r))| {
                let (idx, key, quota) = e.expect("filled by the caller");
                let limit = &limits[idx as usize];
                let item = self.item(limit, key, quota, r.cost, "r", r.receipt);
                (limit.name().to_owned(), Unit::One(item))
            })
            .collect();
        if items.is_empty() {
            return;
        }
        let path = self.path.clone();
        let own_bound = self.deadline();
        let giving_back = tokio::spawn(async move {
            let calls = items.iter().map(|(name, item)| {
                let path = &path;
                async move { (name, single::send_held(path, item, own_bound).await) }
            });
            for (name, result) in futures::future::join_all(calls).await {
                if let Err(e) = result {
                    tracing::warn!(limit = %name, error = %e, "could not give back a rate-limit decision");
                }
            }
        });
        if tokio::time::timeout_at(deadline, giving_back)
            .await
            .is_err()
        {
            tracing::debug!("a rate-limit give-back goes on past the decision's bound");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use floodwall_core::redis::{RedisConnection, StoreOptions};
    use floodwall_testkit::RedisServer;

    use super::{RedisStore, Settings};
    use crate::{Algorithm, Limit, Quota, RateLimiter};

    /// `RateLimiter::decide` boxes a Redis decision's future once per decision: for one
    /// limit it stays under a kilobyte (it was about 8 KB, allocated and copied each time,
    /// before the rarer paths were boxed apart).
    #[tokio::test]
    async fn a_one_limit_decision_future_stays_under_a_kilobyte() {
        let Some(server) = RedisServer::start_or_skip("a_one_limit_decision_future_stays_small")
        else {
            return;
        };
        let conn = RedisConnection::standalone(server.url())
            .connect()
            .await
            .unwrap();
        let quota = Quota::per_second(NonZeroU32::new(10).unwrap());
        // The limiter's protocol on this store, as a limiter built with `.redis(…)` runs it.
        let limiter = RateLimiter::builder()
            .limit(Limit::new("api", Algorithm::Gcra, quota).keyed_by("user"))
            .build()
            .unwrap();
        let redis = RedisStore::new(StoreOptions::new(conn), &Settings::default(), &[]);
        let decision = limiter.decide_on_shared(&redis, &[("user", "a")], 1, true);
        let size = std::mem::size_of_val(&decision);
        println!("a one-limit decision on Redis: a future of {size} bytes");
        assert!(size <= 1024, "{size} bytes");
        assert!(decision.await.unwrap().allowed);
    }
}
