//! Cache tags: invalidate every entry tagged `user:42` at once, on every instance.
//!
//! # How
//!
//! Each tag has a **version**. An entry remembers the version of each of its tags when it was
//! stored, and is live only while every one of them is still current — so
//! [`invalidate_tag`](TieredCache::invalidate_tag) is one version bump, O(1) whatever the
//! number of entries. With Redis the version lives in its own key (`…:{~tag:<tag>}`), the bump
//! is one script on Redis `TIME` (`max(stored + 1, known + 1, now in ms)`), and the new
//! version goes out on the invalidation bus, so every instance's L1 stops answering the tag's
//! entries within the bus bound; L2 copies are judged the same way when read.
//!
//! - **Bounded cost per hit.** An entry holds at most [`Tags::MAX`] tags, each a pointer to
//!   this instance's record of the tag; a hit compares that many versions, no lookup, no
//!   lock.
//! - **Versions only move forward**, and a tag key Redis lost (restart, `FLUSHALL`, its TTL)
//!   is re-created at Redis's time in ms: a version that differs from every one written
//!   before, so entries stored before the loss are never live again — a loss invalidates,
//!   it never brings an old value back.
//! - **A load racing a bump.** A tag known before a load carries its version from before the
//!   load ([`get_or_load_tagged`](TieredCache::get_or_load_tagged)); tags known only from the
//!   loaded value ([`Fetched::Tagged`](crate::Fetched::Tagged), e.g. an HTTP response's
//!   `Cache-Tag`) are checked after it: the value is not stored if this instance saw a tag
//!   change during the load, or if a tag's version in Redis is not at least a second older
//!   than the load (allowing for clock skew), so a bump during the load never leaves the
//!   old value live.
//! - **Invariant:** an entry is served only while, for each of its tags, its version equals
//!   the version this instance holds for the tag (kept current by the bus, re-read from Redis
//!   for L2 reads at least every `generation_check`).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::TieredCache;

/// A validated set of tags: at most [`Tags::MAX`], each 1 to [`Tags::MAX_LEN`] bytes without
/// control characters, duplicates removed.
///
/// ```
/// use floodwall_cache::Tags;
///
/// let tags = Tags::new(["user:42", "product-list"]).unwrap();
/// assert_eq!(tags.len(), 2);
/// assert!(Tags::new([""]).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tags(Box<[Arc<str>]>);

/// Why a set of tags was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cache tags: {0}")]
pub struct TagError(&'static str);

impl Tags {
    /// The most tags one entry may carry.
    pub const MAX: usize = 16;
    /// The longest tag, in bytes.
    pub const MAX_LEN: usize = 256;

    /// Validates `tags`.
    pub fn new<I, S>(tags: I) -> Result<Tags, TagError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut out: Vec<Arc<str>> = Vec::new();
        for t in tags {
            let t = t.as_ref();
            if t.is_empty() || t.len() > Tags::MAX_LEN {
                return Err(TagError("a tag must be 1 to 256 bytes"));
            }
            if t.chars().any(char::is_control) {
                return Err(TagError("a tag must not hold control characters"));
            }
            if !out.iter().any(|o| &**o == t) {
                out.push(Arc::from(t));
            }
            if out.len() > Tags::MAX {
                return Err(TagError("at most 16 tags per entry"));
            }
        }
        Ok(Tags(out.into_boxed_slice()))
    }

    /// How many tags.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No tags.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tags.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|t| &**t)
    }
}

/// This instance's record of one tag.
#[derive(Debug)]
pub(crate) struct TagState {
    pub(crate) name: Arc<str>,
    version: AtomicU64,
    /// The cache clock's reading when the version last changed here (0: never).
    changed: AtomicU64,
    /// Unix ms when the version was last read from Redis (0: never).
    checked_ms: AtomicU64,
}

impl TagState {
    pub(crate) fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    pub(crate) fn checked_ms(&self) -> u64 {
        self.checked_ms.load(Ordering::Acquire)
    }

    /// Moves the version on by one (no Redis: this process's own count), at clock reading
    /// `now`; two bumps at once make two versions.
    pub(crate) fn bump(&self, now: u64) {
        // `changed` first: a load that sees the new version also sees it changed.
        self.changed.store(now.max(1), Ordering::Release);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    /// Adopts `v` if it is newer, at clock reading `now`; marks it read from Redis at
    /// `checked_ms` when given.
    pub(crate) fn advance(&self, v: u64, now: u64, checked_ms: Option<u64>) {
        // `changed` first: a load that sees the new version also sees it changed.
        if v > self.version() {
            self.changed.store(now.max(1), Ordering::Release);
            self.version.fetch_max(v, Ordering::AcqRel);
        }
        if let Some(ms) = checked_ms {
            self.checked_ms.store(ms, Ordering::Release);
        }
    }
}

/// An entry's tags and the version of each it was stored under.
pub(crate) type EntryTags = Option<Box<[(Arc<TagState>, u64)]>>;

/// Whether every tag of an entry still has the version it was stored under.
#[inline]
pub(crate) fn live(tags: &EntryTags) -> bool {
    match tags {
        None => true,
        Some(t) => t.iter().all(|(s, v)| s.version() == *v),
    }
}

/// The tags this instance knows, by name. Entries hold their tags' records, so a record is
/// dropped only once no entry (and no load) holds it.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    map: Mutex<HashMap<Arc<str>, Arc<TagState>>>,
    sweep_at: AtomicU64,
    /// The cache clock's reading at the last sweep that dropped a record.
    swept: AtomicU64,
}

/// What an invalidation bus (a second tier's; Redis's today) does to the registry.
#[allow(dead_code, reason = "called by a second tier's invalidation bus")]
impl Registry {
    /// A version announced on the bus for `name`, at clock reading `now`; a tag no entry of
    /// this instance holds is not recorded.
    pub(crate) fn announced(&self, name: &str, v: u64, now: u64) {
        let known = self
            .map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned();
        if let Some(state) = known {
            state.advance(v, now, Some(unix_ms()));
        }
    }

    /// Marks every record unread from Redis (the bus was down: anything may have changed).
    pub(crate) fn distrust_all(&self) {
        for s in self.map.lock().unwrap_or_else(|e| e.into_inner()).values() {
            s.checked_ms.store(0, Ordering::Release);
        }
    }
}

impl Registry {
    /// The record of `name`, made if absent; `true` when it was just made.
    pub(crate) fn intern(&self, name: &Arc<str>, now: u64) -> (Arc<TagState>, bool) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = map.get(name) {
            return (s.clone(), false);
        }
        if map.len() as u64 >= self.sweep_at.load(Ordering::Relaxed).max(1024) {
            let before = map.len();
            map.retain(|_, s| Arc::strong_count(s) > 1);
            if map.len() < before {
                self.swept.store(now.max(1), Ordering::Release);
            }
            self.sweep_at.store(2 * map.len() as u64, Ordering::Relaxed);
        }
        let s = Arc::new(TagState {
            name: name.clone(),
            version: AtomicU64::new(0),
            changed: AtomicU64::new(0),
            checked_ms: AtomicU64::new(0),
        });
        map.insert(name.clone(), s.clone());
        (s, true)
    }

    fn swept(&self) -> u64 {
        self.swept.load(Ordering::Acquire)
    }
}

/// Wall-clock Unix milliseconds (when a tag was last read from Redis; a load's start).
pub(crate) fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A tag's version is re-read from Redis when reading an L2 entry if it was last read longer
/// ago than this.
const RECHECK_MS: u64 = 1_000;
/// How much older than a load a tag's Redis version must be for a value whose tags were
/// learnt only after the load to be stored: the clock skew allowed between Redis and an
/// instance.
const SKEW_MS: u64 = 1_000;

impl<K, V> TieredCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Invalidates every entry tagged `tag`, on every instance: its version is bumped (in
    /// Redis, and announced on the invalidation bus), so no instance serves those entries
    /// again, from L1 or L2. Without Redis, in this process.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), floodwall_core::StoreError> {
        let inner = &self.inner;
        let now = inner.clock.now_nanos();
        let (state, _) = inner.tags.intern(&Arc::from(tag), now);
        match &inner.l2 {
            Some(l2) => {
                let v = l2.bump_tag(tag, state.version(), self.tag_ttl()).await?;
                state.advance(v, now, Some(unix_ms()));
                if l2.publishes() {
                    inner.stats.invalidation_sent();
                }
            }
            None => state.bump(now),
        }
        Ok(())
    }

    /// Invalidates everything — every key and every tag — on every instance: the namespace
    /// generation is bumped (see [`invalidate_namespace`](Self::invalidate_namespace)).
    pub async fn clear(&self) -> Result<(), floodwall_core::StoreError> {
        self.invalidate_namespace().await
    }

    /// Stores `value` for `key` under `tags` (fresh for the configured TTLs), in Redis and
    /// L1, as [`set`](Self::set) does.
    pub async fn set_tagged(&self, key: K, value: V, tags: &Tags) {
        let now = self.inner.clock.now_nanos();
        let Some(tags) = self.tags_now(tags).await else {
            // A tag's version could not be read: storing under a guessed one could keep the
            // value live after an invalidation. Drop the stale copies instead.
            self.invalidate(&key).await;
            return;
        };
        let mut entry = self.entry(Some(value), now, 0);
        entry.tags = tags;
        self.write_l2(&key, &entry, now).await;
        self.inner.l1.insert(key, Arc::new(entry));
    }

    /// [`get_or_load`](Self::get_or_load) for a value stored under `tags`: the tags' versions
    /// are taken before the loader runs, so an invalidation during the load leaves the loaded
    /// value dead.
    pub async fn get_or_load_tagged<F, Fut, E>(
        &self,
        key: K,
        tags: &Tags,
        loader: F,
    ) -> Result<Option<V>, crate::CacheError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Option<V>, E>> + Send + 'static,
        E: Into<floodwall_core::BoxError>,
    {
        // Known and read before the load starts: the exact rule applies when it ends.
        let held = self.tags_now(tags).await;
        let tags = tags.clone();
        self.get_or_fetch(key, move || async move {
            let _held = held;
            loader().await.map(|v| match v {
                Some(v) => crate::Fetched::Tagged(v, tags),
                None => crate::Fetched::Missing,
            })
        })
        .await
    }

    /// How long a tag's key lives in Redis (refreshed on every read): twice the longest an
    /// entry is kept, and at least an hour.
    pub(crate) fn tag_ttl(&self) -> std::time::Duration {
        let o = &self.inner.options;
        o.ttl
            .saturating_add(o.max_stale.unwrap_or_default())
            .saturating_mul(2)
            .max(std::time::Duration::from_secs(3600))
    }

    /// The tags' records and current versions, read from Redis where this instance has not
    /// yet; `None` if Redis could not say.
    pub(crate) async fn tags_now(&self, tags: &Tags) -> Option<EntryTags> {
        if tags.is_empty() {
            return Some(None);
        }
        let now = self.inner.clock.now_nanos();
        let mut out = Vec::with_capacity(tags.len());
        for name in tags.0.iter() {
            let (state, _) = self.inner.tags.intern(name, now);
            if self.inner.l2.is_some() && state.checked_ms() == 0 {
                self.read_tag(&state).await.ok()?;
            }
            let v = state.version();
            out.push((state, v));
        }
        Some(Some(out.into_boxed_slice()))
    }

    /// Reads `state`'s version from Redis (making the key if Redis has none); whether it was
    /// just made.
    async fn read_tag(&self, state: &TagState) -> Result<(u64, bool), ()> {
        let Some(l2) = &self.inner.l2 else {
            return Ok((state.version(), false));
        };
        match l2
            .tag_version(&state.name, state.version(), self.tag_ttl())
            .await
        {
            Ok((v, made)) => {
                state.advance(v, self.inner.clock.now_nanos(), Some(unix_ms()));
                Ok((v, made))
            }
            Err(e) => {
                self.inner.stats.l2_error();
                tracing::warn!(error = %e, "could not read a cache tag's version from Redis");
                Err(())
            }
        }
    }

    /// The tags of a value that a load that started at clock reading `started` (Unix ms
    /// `started_ms`) answered, with their versions — or `None` when the value must not be
    /// stored, because a tag may have been invalidated during the load.
    pub(crate) async fn tags_after_load(
        &self,
        tags: &Tags,
        started: u64,
        started_ms: u64,
    ) -> Option<EntryTags> {
        let inner = &self.inner;
        let now = inner.clock.now_nanos();
        let mut out = Vec::with_capacity(tags.len());
        for name in tags.0.iter() {
            let (state, made) = inner.tags.intern(name, now);
            // The version before `changed`: a bump stores `changed` first, so a version read
            // here that is already bumped comes with its `changed`.
            let seen = state.version();
            let changed = state.changed.load(Ordering::Acquire) >= started;
            let v = match &inner.l2 {
                // In this process alone: exact. A record made now may have replaced one a
                // sweep dropped during the load, with its bump.
                None if changed || (made && inner.tags.swept() >= started) => return None,
                None => seen,
                Some(_) if !made && state.checked_ms() != 0 => {
                    if changed {
                        return None;
                    }
                    seen
                }
                // Unknown here: Redis's version, which must predate the load.
                Some(_) => {
                    let (v, created) = self.read_tag(&state).await.ok()?;
                    if !created && v.saturating_add(SKEW_MS) >= started_ms {
                        return None;
                    }
                    v
                }
            };
            out.push((state, v));
        }
        Some((!out.is_empty()).then(|| out.into_boxed_slice()))
    }

    /// The tags of an entry read from Redis, checked against this instance's versions (read
    /// again from Redis when older than a second): `None` when one was invalidated.
    pub(crate) async fn tags_from_l2(&self, found: &[(String, u64)]) -> Option<EntryTags> {
        if found.is_empty() {
            return Some(None);
        }
        let now = self.inner.clock.now_nanos();
        let now_ms = unix_ms();
        let mut out = Vec::with_capacity(found.len());
        for (name, v) in found {
            let (state, _) = self.inner.tags.intern(&Arc::from(name.as_str()), now);
            if now_ms.saturating_sub(state.checked_ms()) >= RECHECK_MS || state.version() < *v {
                self.read_tag(&state).await.ok()?;
            }
            if state.version() != *v {
                return None;
            }
            out.push((state, *v));
        }
        Some(Some(out.into_boxed_slice()))
    }
}
