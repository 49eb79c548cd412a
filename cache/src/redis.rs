//! The Redis tier (feature `redis`): values in a versioned envelope, a cross-instance load
//! lease, and every call on floodwall-core's store path ([`StoreOptions`]): bounded (default:
//! the connection's own bound) and gated per Redis node, so a failing node degrades the
//! cache to L1 + loader for its keys alone.
//!
//! # Keys
//!
//! `<namespace>:v<schema version>:{<key>}` (floodwall-core's escaped, hash-tagged keys): a
//! deploy that changes the value layout bumps the schema version and never reads old bytes.
//! The load lease of a key is `<namespace>:v<schema version>:{<key>}:lease`, on the same
//! Cluster node. Both also carry the namespace generation after the hash tag.
//!
//! # Namespace generation
//!
//! [`invalidate_namespace`](crate::TieredCache::invalidate_namespace) bumps a generation kept
//! in Redis (`…:{~generation}`); keys are read and written under the current one, so a bump
//! retires every key at once. Generations only grow, for every instance, even when Redis
//! loses the key (restart without persistence, `FLUSHALL`, failover to a lagging replica): an
//! instance that finds the stored generation below its own puts its own back (at its next
//! check, every `generation_check`), and a bump takes the largest of one above the stored
//! generation, one above the bumping instance's, and Redis's time in ms — above every
//! generation any instance used before the loss — so an invalidation after a data loss
//! reaches every instance, including ones started since.
//!
//! # Envelope
//!
//! floodwall-core's shared [`Envelope`](floodwall_core::envelope::Envelope): `FWC`, format version (1), codec ([`Binary`] = 2,
//! the default; [`Json`] = 1), then written-at, soft expiry and hard expiry as Unix
//! milliseconds (big-endian `u64`), then the codec's bytes; a `null` payload is a
//! cached "not found". Bytes that are not such an envelope, of another format version or
//! codec, or whose payload does not decode, are a miss (counted as an L2 decode error) — never
//! a panic. Expiry is judged on each instance's wall clock.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use floodwall_core::redis::{RedisConnection, Script, StoreOptions, StorePath};
use floodwall_core::{Key, Keyspace, StoreError};

mod bus;
mod codec;
mod tags;

use crate::store::{BoxFut, Expiry, Found, Tier2};
pub(crate) use bus::Drop;
pub use codec::{Binary, Codec, FORMAT_VERSION, Json};
use codec::{Stamps, open, seal, unix_ms};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The keyspace namespace of the tier unless its [`StoreOptions`] name another.
pub const DEFAULT_NAMESPACE: &str = "fw-cache";

/// How a [`TieredCache`](crate::TieredCache) uses Redis.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use floodwall_core::Keyspace;
/// use floodwall_core::redis::{RedisConnection, StoreOptions};
/// use floodwall_cache::{TieredCache, redis::RedisTier};
///
/// let conn = RedisConnection::standalone("redis://127.0.0.1:6379").connect().await?;
/// // Namespace `user`, value layout (schema) version 2.
/// let options = StoreOptions::new(conn).keyspace(Keyspace::new("user", 2)?);
/// let cache: TieredCache<u64, String> = TieredCache::builder()
///     .ttl(Duration::from_secs(300))
///     .redis(RedisTier::new(options).lease(Duration::from_secs(5)).invalidation(true))
///     .build();
/// # let _ = cache; Ok(()) }
/// ```
pub struct RedisTier<C = Binary> {
    options: StoreOptions,
    lease: Option<Duration>,
    pubsub: bool,
    pubsub_conn: Option<RedisConnection>,
    generation_check: Duration,
    heartbeat: Duration,
    codec: C,
}

impl<C> fmt::Debug for RedisTier<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisTier")
            .field("options", &self.options)
            .field("lease", &self.lease)
            .field("invalidation", &self.pubsub)
            .finish_non_exhaustive()
    }
}

impl RedisTier<Binary> {
    /// Values on the store path `options` describe: keyspace `fw-cache` v1 unless set (the
    /// keyspace's version is the values' schema version: a deploy that changes the value
    /// layout bumps it and never reads old bytes), the connection's call bound unless
    /// overridden, a health gate per node; no lease, no invalidation messages.
    pub fn new(options: StoreOptions) -> RedisTier<Binary> {
        RedisTier {
            options,
            lease: None,
            pubsub: false,
            pubsub_conn: None,
            generation_check: Duration::from_secs(1),
            heartbeat: Duration::from_secs(1),
            codec: Binary,
        }
    }
}

impl<C: Codec> RedisTier<C> {
    /// The codec of values in Redis (default [`Binary`]; [`Json`] is readable with
    /// `redis-cli`).
    pub fn codec<C2: Codec>(self, codec: C2) -> RedisTier<C2> {
        RedisTier {
            options: self.options,
            lease: self.lease,
            pubsub: self.pubsub,
            pubsub_conn: self.pubsub_conn,
            generation_check: self.generation_check,
            heartbeat: self.heartbeat,
            codec,
        }
    }

    /// Coalesce loads across instances: a missing key is loaded by the instance that takes
    /// its lease (`SET NX PX`, held at most `ttl`); the others poll Redis for the value until
    /// the lease ends, then take the lease themselves (the holder died).
    pub fn lease(mut self, ttl: Duration) -> Self {
        self.lease = Some(ttl);
        self
    }

    /// Cross-instance invalidation (default off): `set`, `invalidate` and
    /// `invalidate_namespace` publish a value-free message on the namespace's channel, and
    /// every instance subscribed — on the same connection's server, the Sentinel master, or
    /// any reachable Cluster node (classic pub/sub reaches every node) — drops its L1 copy.
    /// While its subscription is down an instance answers no hits from its L1 (its last known
    /// values still stand in for a failing load, under fail-safe), and it clears L1 when the
    /// subscription is back, so it never serves a fresh hit whose invalidation it may have
    /// missed. A subscription that stops delivering without closing (a blackholed
    /// connection) is caught by a heartbeat: each instance publishes one every
    /// [`bus_heartbeat`](Self::bus_heartbeat) (1 s), and a subscription that hears nothing
    /// for 3 of them is dropped as down and made again — on any node that can serve it: the
    /// first retry comes 50 ms after the loss (doubling to 2 s while it fails), and each
    /// attempt tries the seed nodes in order, one connect timeout at most per node, so on a
    /// Cluster whose node died the bus is back on another node within 50 ms plus one refused
    /// connect (`tests/redis.rs::the_bus_moves_to_another_node_when_its_node_is_killed`
    /// holds it to 1 s). The subscriber is a Tokio task: build the cache inside a runtime.
    pub fn invalidation(mut self, on: bool) -> Self {
        self.pubsub = on;
        self
    }

    /// Turns invalidation on and subscribes through `conn` instead of the tier's own
    /// connection (another route to the same Redis, such as a separate network path).
    pub fn invalidation_through(mut self, conn: RedisConnection) -> Self {
        self.pubsub = true;
        self.pubsub_conn = Some(conn);
        self
    }

    /// How often the invalidation bus publishes its heartbeat (default 1 s; at least 1 ms, a
    /// zero is taken as 1 ms): a subscription silent for 3 heartbeats is taken for down, so a
    /// blackholed subscription is detected within 3 × this (plus one call bound).
    /// With `Duration::MAX` a silent subscription is never taken for down (only a closed
    /// connection is noticed).
    pub fn bus_heartbeat(mut self, every: Duration) -> Self {
        self.heartbeat = every.max(Duration::from_millis(1));
        self
    }

    /// How often an instance re-reads the namespace generation from Redis when no pub/sub
    /// message told it of a bump (default 1 s): the bound on how long an instance without
    /// pub/sub serves a bumped namespace's old values from L1.
    pub fn generation_check(mut self, every: Duration) -> Self {
        self.generation_check = every;
        self
    }

    pub(crate) fn into_store(self) -> (RedisStoreInner, C) {
        let path = self
            .options
            .open(Keyspace::new(DEFAULT_NAMESPACE, 1).expect("a valid namespace"));
        let keyspace = path.keyspace();
        let channel = format!(
            "{}:v{}:invalidations",
            keyspace.namespace(),
            keyspace.version()
        );
        let store = RedisStoreInner {
            pubsub_conn: self
                .pubsub_conn
                .unwrap_or_else(|| path.connection().clone()),
            path,
            lease: self.lease,
            owner: format!("{}-{}", std::process::id(), rand::random::<u64>()),
            generation: AtomicU64::new(0),
            generation_checked_ms: AtomicU64::new(0),
            generation_check: self.generation_check,
            unsubscribed: AtomicBool::new(self.pubsub),
            heartbeat: self.heartbeat,
            channel,
            pubsub: self.pubsub,
        };
        (store, self.codec)
    }
}

pub(crate) struct RedisStoreInner {
    path: StorePath,
    pubsub_conn: RedisConnection,
    pub(crate) lease: Option<Duration>,
    owner: String,
    /// The namespace generation this instance last saw, and when it last asked Redis.
    generation: AtomicU64,
    generation_checked_ms: AtomicU64,
    generation_check: Duration,
    /// Pub/sub: whether it is on, and whether the subscription is down (L1 bypassed).
    pubsub: bool,
    pub(crate) unsubscribed: AtomicBool,
    /// The bus heartbeat interval; a subscription silent for 3 of them is down.
    pub(crate) heartbeat: Duration,
    channel: String,
}

/// Takes the lease unless another instance holds it (one this instance holds is its own).
static TAKE_LEASE: Script = Script::new(include_str!("redis/take_lease.lua"));
/// Deletes the lease only if this instance still holds it.
static RELEASE_LEASE: Script = Script::new(include_str!("redis/release_lease.lua"));
/// Bumps the namespace generation past the stored one, the caller's and Redis's time in ms.
static BUMP_GENERATION: Script = Script::new(include_str!("redis/bump_generation.lua"));
/// Raises the stored namespace generation to the caller's, never lowers it.
static RAISE_GENERATION: Script = Script::new(include_str!("redis/raise_generation.lua"));

/// The type-erased second tier over a [`RedisStoreInner`].
pub(crate) struct Adapter<K, V, C> {
    store: Arc<RedisStoreInner>,
    codec: C,
    _types: std::marker::PhantomData<fn(K, V)>,
}

impl<K, V, C> Adapter<K, V, C> {
    pub(crate) fn new((store, codec): (RedisStoreInner, C)) -> Self {
        Adapter {
            store: Arc::new(store),
            codec,
            _types: std::marker::PhantomData,
        }
    }
}

impl<K, V, C: Codec> Tier2<K, V> for Adapter<K, V, C>
where
    K: fmt::Display + std::str::FromStr + Send + Sync,
    V: Serialize + DeserializeOwned + Send + Sync,
{
    fn read<'a>(&'a self, key: &'a K) -> BoxFut<'a, Result<Option<Found<V>>, StoreError>> {
        Box::pin(async move {
            // The generation check (when due) and the read go out together, so a read waits at
            // most one call bound. The generation key lives on one node: if that node is
            // failing, the last generation seen is kept rather than fail reads of keys on
            // healthy nodes. A generation that moved meanwhile means one more read, under it.
            let k = key.to_string();
            let (refreshed, mut got) =
                futures::future::join(self.store.refresh_generation(false), self.store.get(&k))
                    .await;
            match refreshed {
                Ok(true) => got = self.store.get(&k).await,
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e, "could not re-read the namespace generation"),
            }
            match got? {
                None => Ok(None),
                Some(bytes) => open(&self.codec, &bytes, unix_ms()),
            }
        })
    }

    fn write<'a>(
        &'a self,
        key: &'a K,
        value: &'a Option<V>,
        tags: &'a [(&'a str, u64)],
        expiry: Expiry,
    ) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let now = unix_ms();
            let ms =
                |d: Duration| now.saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            let at = Stamps {
                soft_at: ms(expiry.soft),
                hard_at: ms(expiry.hard),
                kept_until: ms(expiry.keep),
                fail_safe_until: expiry.fail_safe.map(ms),
            };
            let bytes = seal(&self.codec, value, tags, at)?;
            let k = key.to_string();
            self.store
                .set(&k, bytes, expiry.keep.max(Duration::from_millis(1)))
                .await?;
            self.store.publish(&format!("k {k}")).await;
            Ok(())
        })
    }

    fn remove<'a>(&'a self, key: &'a K) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let k = key.to_string();
            self.store.delete(&k).await?;
            self.store.publish(&format!("k {k}")).await;
            Ok(())
        })
    }

    fn generation(&self) -> u64 {
        self.store.generation()
    }

    fn bypass_l1(&self) -> bool {
        self.store.unsubscribed.load(Ordering::Acquire)
    }

    fn bump_namespace(&self) -> BoxFut<'_, Result<u64, StoreError>> {
        Box::pin(async move { self.store.bump_generation().await })
    }

    fn publishes(&self) -> bool {
        self.store.pubsub
    }

    fn lease_ttl(&self) -> Option<Duration> {
        self.store.lease
    }

    fn take_lease<'a>(&'a self, key: &'a K, ttl: Duration) -> BoxFut<'a, Result<bool, StoreError>> {
        Box::pin(async move { self.store.take_lease(&key.to_string(), ttl).await })
    }

    fn release_lease<'a>(&'a self, key: &'a K) -> BoxFut<'a, Result<(), StoreError>> {
        Box::pin(async move { self.store.release_lease(&key.to_string()).await })
    }

    fn tag_version<'a>(
        &'a self,
        tag: &'a str,
        known: u64,
        ttl: Duration,
    ) -> BoxFut<'a, Result<(u64, bool), StoreError>> {
        Box::pin(self.store.tag_version(tag, known, ttl))
    }

    fn bump_tag<'a>(
        &'a self,
        tag: &'a str,
        known: u64,
        ttl: Duration,
    ) -> BoxFut<'a, Result<u64, StoreError>> {
        Box::pin(self.store.bump_tag(tag, known, ttl))
    }
}

impl RedisStoreInner {
    pub(crate) fn key(&self, key: &str) -> Key {
        let g = self.generation.load(Ordering::Acquire);
        self.path.keyspace().key(key).part_u64(g).build()
    }

    fn lease_key(&self, key: &str) -> Key {
        let g = self.generation.load(Ordering::Acquire);
        self.path
            .keyspace()
            .key(key)
            .part_u64(g)
            .part("lease")
            .build()
    }

    fn generation_key(&self) -> Key {
        self.path.keyspace().key("~generation").build()
    }

    /// Re-reads the namespace generation if the last check is older than the interval (or
    /// `force`). Returns whether it changed.
    pub(crate) async fn refresh_generation(&self, force: bool) -> Result<bool, StoreError> {
        let now = unix_ms();
        let last = self.generation_checked_ms.load(Ordering::Relaxed);
        if !force && now.saturating_sub(last) < self.generation_check.as_millis() as u64 {
            return Ok(false);
        }
        self.generation_checked_ms.store(now, Ordering::Relaxed);
        let key = self.generation_key();
        let stored: u64 = self
            .path
            .query::<Option<u64>>(::redis::cmd("GET").arg(&key))
            .await?
            .unwrap_or(0);
        let mine = self.generation();
        if stored < mine {
            // Redis lost the generation (or holds an older one): put back the one this
            // instance used, so that instances started since do not split from it.
            tracing::warn!(
                stored,
                mine,
                "the cache namespace generation in Redis went back; restoring it"
            );
            let now_stored: u64 = self
                .path
                .invoke(RAISE_GENERATION.call().key(&key).arg(mine))
                .await?;
            return Ok(self.set_generation(now_stored));
        }
        Ok(self.set_generation(stored))
    }

    /// Adopts generation `g` if it is newer; whether it changed.
    pub(crate) fn set_generation(&self, g: u64) -> bool {
        self.generation.fetch_max(g, Ordering::AcqRel) < g
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Bumps the namespace generation (O(1): old keys are no longer read and expire by TTL).
    /// Generations only grow, for every instance, even after Redis lost the key: the new one
    /// is above the stored one, above this instance's, and at least Redis's time in ms.
    pub(crate) async fn bump_generation(&self) -> Result<u64, StoreError> {
        let g: u64 = self
            .path
            .invoke(
                BUMP_GENERATION
                    .call()
                    .key(self.generation_key())
                    .arg(self.generation()),
            )
            .await?;
        self.set_generation(g);
        self.publish(&format!("g {g}")).await;
        Ok(g)
    }

    /// Publishes an invalidation message (when pub/sub is on); failures are logged.
    pub(crate) async fn publish(&self, what: &str) {
        if let Err(e) = self.send(what).await {
            tracing::warn!(error = %e, "could not publish a cache invalidation");
        }
    }

    /// Publishes the bus heartbeat; a failure is logged at debug level (the subscription's
    /// silence is what counts).
    pub(crate) async fn publish_heartbeat(&self) {
        if let Err(e) = self.send("h").await {
            tracing::debug!(error = %e, "could not publish the cache bus heartbeat");
        }
    }

    async fn send(&self, what: &str) -> Result<(), StoreError> {
        if !self.pubsub {
            return Ok(());
        }
        let msg = format!("{} {what}", self.owner);
        self.path
            .query::<i64>(::redis::cmd("PUBLISH").arg(&self.channel).arg(msg))
            .await
            .map(|_| ())
    }

    pub(crate) async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let k = self.key(key);
        self.path.query(::redis::cmd("GET").arg(&k)).await
    }

    pub(crate) async fn set(
        &self,
        key: &str,
        bytes: Vec<u8>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let k = self.key(key);
        let ms = floodwall_core::redis::ttl_millis(ttl);
        self.path
            .query::<()>(::redis::cmd("SET").arg(&k).arg(bytes).arg("PX").arg(ms))
            .await
    }

    pub(crate) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let k = self.key(key);
        self.path.query::<()>(::redis::cmd("DEL").arg(&k)).await
    }

    /// Takes the load lease of `key` for `ttl`; `true` if this instance now holds it (also
    /// when an earlier take whose reply was lost left it this instance's).
    pub(crate) async fn take_lease(&self, key: &str, ttl: Duration) -> Result<bool, StoreError> {
        let k = self.lease_key(key);
        let ms = floodwall_core::redis::ttl_millis(ttl);
        let held: i64 = self
            .path
            .invoke(TAKE_LEASE.call().key(&k).arg(&self.owner).arg(ms))
            .await?;
        Ok(held == 1)
    }

    pub(crate) async fn release_lease(&self, key: &str) -> Result<(), StoreError> {
        let k = self.lease_key(key);
        self.path
            .invoke_held::<i64>(RELEASE_LEASE.call().key(&k).arg(&self.owner))
            .await
            .map(|_| ())
    }
}
