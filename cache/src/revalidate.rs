//! Revalidating loads ([`TieredCache::get_or_revalidate`]): entries with lifetimes of their
//! own, a loader that sees the entry it replaces, and loads run by the caller itself.
//!
//! This is the protocol an HTTP cache needs: a response says how long it is fresh, how long
//! it may be served while it is refreshed (`stale-while-revalidate`) and how long it may stand
//! in for a failing origin (`stale-if-error`); once stale it is asked for again *with* its
//! validators, and a `304 Not Modified` keeps it. The rules, for an entry loaded at `t` with
//! lifetimes `(fresh, swr, sie)`, each capped by the cache's `ttl`:
//!
//! - `now < t + fresh`: served as it is ([`Served::Fresh`]);
//! - `now < t + fresh + swr`, when the caller can refresh in the background: served at once
//!   with a [`Refresh`] for one background load per key ([`Served::StaleWhileRevalidate`]);
//! - otherwise the loader runs with the entry (any age, until `t + ttl`) and its answer is
//!   settled: stored, kept as unchanged, passed on, or — when the source failed and
//!   `now < t + fresh + sie` — replaced by the entry ([`Served::StaleIfError`]).
//!
//! **Coalescing:** one load per key at a time in a process — a caller that finds one in
//! flight waits for its end and takes the entry it stored; if that entry does not answer it
//! (not stored, or refused by `accept`), it loads alone. The loader runs in the caller's task
//! (it may borrow from the caller), so a load is cancelled with its caller and its waiters
//! then load alone.

use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use floodwall_core::clock::duration_to_nanos;
use tokio::sync::watch;

use crate::TieredCache;
use crate::tiered::Entry;

/// How long a value may be used, as its loader says (an HTTP response says it with
/// `Cache-Control`). Counted from when its load ends; each is capped by the cache's `ttl`,
/// which is also how long the entry is kept at all (for the next load to revalidate).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lifetimes {
    /// Served without a load for this long.
    pub fresh: Duration,
    /// Then, for this long, served at once while one background load refreshes it (when the
    /// caller asks for [`Revalidation::in_background`]).
    pub stale_while_revalidate: Duration,
    /// From the end of `fresh`, how long it may stand in for a failed load.
    pub stale_if_error: Duration,
}

/// What a revalidating load's loader answers: what to store, and `R` for its caller.
#[derive(Debug)]
pub enum Revalidated<V, R> {
    /// A new value, stored with its lifetimes.
    Stored(V, Lifetimes, R),
    /// The entry replaced still holds (an HTTP `304`): this value (the old one, perhaps with
    /// updated metadata) is stored with new lifetimes and counted in
    /// [`StatsSnapshot::revalidated`](crate::StatsSnapshot::revalidated).
    Unchanged(V, Lifetimes, R),
    /// Nothing to store (an HTTP response marked `no-store`).
    Passed(R),
    /// The source failed: the entry replaced answers instead while inside its
    /// `stale_if_error`; else `R` does.
    Failed(R),
}

/// How [`TieredCache::get_or_revalidate`] answered.
#[derive(Debug)]
#[must_use = "a served value, or a refresh to run"]
pub enum Served<V, R, K: Hash + Eq = ()> {
    /// A fresh entry, no load.
    Fresh(V),
    /// A fresh entry stored by another caller's load this one waited for.
    Coalesced(V),
    /// A stale entry inside its `stale_while_revalidate`, served at once; the [`Refresh`]
    /// is this key's one background load (`None` while one runs already).
    StaleWhileRevalidate(V, Option<Refresh<K, V>>),
    /// The entry replaced, standing in for a failed load; and what the load answered.
    StaleIfError(V, R),
    /// What this caller's own load answered.
    Loaded(R),
}

/// What a caller of [`TieredCache::get_or_revalidate`] asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Revalidation {
    /// Load even when the entry is fresh (an HTTP request's `no-cache`); the loader still
    /// sees the entry.
    pub force: bool,
    /// Serve a stale entry inside its `stale_while_revalidate` at once and refresh it in the
    /// background; without it such an entry is revalidated in line.
    pub in_background: bool,
}

/// One load of a key at a time: the first caller leads; later ones wait for its end.
enum Flight<K: Hash + Eq, V> {
    Lead(FlightGuard<K, V>),
    Follow(watch::Receiver<()>),
}

/// Ends a flight when dropped (done, failed or cancelled): its waiters wake.
struct FlightGuard<K: Hash + Eq, V> {
    cache: TieredCache<K, V>,
    key: K,
    _done: watch::Sender<()>,
}

impl<K: Hash + Eq, V> Drop for FlightGuard<K, V> {
    fn drop(&mut self) {
        self.cache
            .inner
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
    }
}

impl<K: Hash + Eq, V> std::fmt::Debug for FlightGuard<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlightGuard").finish_non_exhaustive()
    }
}

/// A key's one background refresh, handed out with [`Served::StaleWhileRevalidate`]: run it
/// (in a task of the caller's) with a loader; until it ends, other callers' loads of the key
/// wait for it.
#[derive(Debug)]
pub struct Refresh<K: Hash + Eq, V> {
    guard: FlightGuard<K, V>,
    previous: Arc<Entry<V>>,
}

impl<K, V> Refresh<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// Runs `loader` with the stale value and settles its answer as a caller's load would
    /// (stored once this returns).
    pub async fn run<F, Fut, R>(self, loader: F) -> Served<V, R, K>
    where
        F: FnOnce(Option<V>) -> Fut,
        Fut: Future<Output = Revalidated<V, R>>,
    {
        let Refresh { guard, previous } = self;
        let cache = guard.cache.clone();
        let settled = cache
            .run_loader(&guard.key, Some(&previous), true, loader)
            .await;
        drop(guard);
        settled
    }
}

impl<K, V> TieredCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The value for `key` by the rules of [revalidating loads](crate::revalidate): a fresh
    /// entry `accept` takes is served; else `loader` runs — in this task, once per key
    /// however many callers ask at once — with the entry it replaces (any age `accept`
    /// takes), and its [`Revalidated`] answer is settled. Entries stored here carry their
    /// own [`Lifetimes`] (in L1 and, through Redis, for every instance); the cache's
    /// `soft_ttl`, `max_stale`, timeouts and cross-instance lease do not apply to them.
    ///
    /// ```
    /// use std::time::Duration;
    /// use floodwall_cache::{Lifetimes, Revalidated, Revalidation, Served, TieredCache};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() {
    /// let cache: TieredCache<&str, (String, u32)> = TieredCache::builder()
    ///     .ttl(Duration::from_secs(3600))
    ///     .build();
    /// let life = Lifetimes { fresh: Duration::ZERO, ..Lifetimes::default() };
    /// // A first load stores version 1; the next one sees it and finds it unchanged.
    /// for _ in 0..2 {
    ///     let served = cache
    ///         .get_or_revalidate("price", |_| true, Revalidation::default(), |old| async move {
    ///             match old {
    ///                 Some(v) => Revalidated::Unchanged(v, life, "not modified"),
    ///                 None => Revalidated::Stored(("9.99".to_string(), 1), life, "loaded"),
    ///             }
    ///         })
    ///         .await;
    ///     assert!(matches!(served, Served::Loaded(_)));
    /// }
    /// assert_eq!(cache.stats().revalidated, 1);
    /// # }
    /// ```
    pub async fn get_or_revalidate<A, F, Fut, R>(
        &self,
        key: K,
        accept: A,
        asked: Revalidation,
        loader: F,
    ) -> Served<V, R, K>
    where
        A: Fn(&V) -> bool,
        F: FnOnce(Option<V>) -> Fut,
        Fut: Future<Output = Revalidated<V, R>>,
    {
        let mut waited = false;
        let (guard, previous, l2_ok) = loop {
            let (found, l2_ok) = self.find(&key, &accept).await;
            let now = self.inner.clock.now_nanos();
            if let Some(e) = &found
                && let Some(v) = &e.value
                && !asked.force
            {
                if now < e.soft_at {
                    self.inner.stats.hit();
                    return if waited {
                        Served::Coalesced(v.clone())
                    } else {
                        Served::Fresh(v.clone())
                    };
                }
                if asked.in_background && now < e.hard_at {
                    self.inner.stats.hit();
                    self.inner.stats.stale();
                    let refresh = match self.flight(&key) {
                        Flight::Lead(guard) => Some(Refresh {
                            guard,
                            previous: e.clone(),
                        }),
                        Flight::Follow(_) => None,
                    };
                    return Served::StaleWhileRevalidate(v.clone(), refresh);
                }
            }
            match self.flight(&key) {
                Flight::Follow(mut done) if !waited => {
                    self.inner.stats.coalesced();
                    // Wakes when the leader's load ends, however it ends.
                    let _ = done.changed().await;
                    waited = true;
                }
                Flight::Follow(_) => break (None, found, l2_ok),
                Flight::Lead(guard) => {
                    // A load that ended between this caller's look and its lead stored its
                    // entry in L1 before its flight ended: look there once more.
                    if let Some(v) = self.fresh_in_l1(&key, &accept, &asked) {
                        drop(guard);
                        self.inner.stats.hit();
                        return Served::Coalesced(v);
                    }
                    break (Some(guard), found, l2_ok);
                }
            }
        };
        self.inner.stats.miss();
        let served = self
            .run_loader(&key, previous.as_ref(), l2_ok, loader)
            .await;
        drop(guard);
        served
    }

    /// The entry `accept` takes for `key`, any age: L1's (when it may be trusted), else
    /// Redis's (kept in L1); and `false` when Redis failed (the load then stores in L1 only,
    /// so an outage costs one bounded call, not two). Only entries a revalidating load stored
    /// count: one stored by [`set`](Self::set) or [`get_or_load`](Self::get_or_load) has no
    /// lifetimes of its own.
    async fn find(&self, key: &K, accept: &impl Fn(&V) -> bool) -> (Option<Arc<Entry<V>>>, bool) {
        let local = if self.l1_usable() {
            self.inner.l1.get(key)
        } else {
            None
        };
        let (found, l2_ok) = match local {
            Some(e) => (Some(e), true),
            None => match self.read_l2_entry(key, |_| true).await {
                Ok(found) => (found, true),
                Err(()) => (None, false),
            },
        };
        let found = found.filter(|e| {
            e.retain_until.is_some()
                && crate::tags::live(&e.tags)
                && e.value.as_ref().is_some_and(accept)
        });
        (found, l2_ok)
    }

    /// `key`'s value in L1 if an entry `accept` takes is there and fresh (and the caller did
    /// not force a load).
    fn fresh_in_l1(
        &self,
        key: &K,
        accept: &impl Fn(&V) -> bool,
        asked: &Revalidation,
    ) -> Option<V> {
        if asked.force || !self.l1_usable() {
            return None;
        }
        let e = self.inner.l1.get(key)?;
        let fresh = e.retain_until.is_some()
            && crate::tags::live(&e.tags)
            && self.inner.clock.now_nanos() < e.soft_at;
        e.value.as_ref().filter(|v| fresh && accept(v)).cloned()
    }

    /// Leads `key`'s load, or answers the channel of the one in flight.
    fn flight(&self, key: &K) -> Flight<K, V> {
        let mut flights = self
            .inner
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(done) = flights.get(key) {
            return Flight::Follow(done.clone());
        }
        let (tx, rx) = watch::channel(());
        flights.insert(key.clone(), rx);
        Flight::Lead(FlightGuard {
            cache: self.clone(),
            key: key.clone(),
            _done: tx,
        })
    }

    /// Runs `loader` with `previous`'s value and settles what it answers (in Redis too when
    /// `l2_ok`: its read did not fail).
    async fn run_loader<F, Fut, R>(
        &self,
        key: &K,
        previous: Option<&Arc<Entry<V>>>,
        l2_ok: bool,
        loader: F,
    ) -> Served<V, R, K>
    where
        F: FnOnce(Option<V>) -> Fut,
        Fut: Future<Output = Revalidated<V, R>>,
    {
        let inner = &self.inner;
        inner.stats.load();
        let started = inner.clock.now_nanos();
        let timer = inner.stats.start_load();
        let answer = loader(previous.and_then(|e| e.value.clone())).await;
        inner.stats.finish_load(timer);
        let now = inner.clock.now_nanos();
        let (value, life, r) = match answer {
            Revalidated::Stored(v, life, r) => (v, life, r),
            Revalidated::Unchanged(v, life, r) => {
                inner.stats.revalidated();
                (v, life, r)
            }
            Revalidated::Passed(r) => return Served::Loaded(r),
            Revalidated::Failed(r) => {
                let stand_in = previous
                    .filter(|e| now < e.keep_until)
                    .and_then(|e| e.value.clone());
                return match stand_in {
                    Some(v) => {
                        inner.stats.stale();
                        Served::StaleIfError(v, r)
                    }
                    None => Served::Loaded(r),
                };
            }
        };
        let entry = self.timed_entry(value, life, now, now.saturating_sub(started));
        if l2_ok {
            self.write_l2(key, &entry, now).await;
        }
        inner.l1.insert(key.clone(), Arc::new(entry));
        Served::Loaded(r)
    }

    /// An entry for `value` stored at `now` with its own lifetimes, each capped by `ttl`.
    fn timed_entry(&self, value: V, life: Lifetimes, now: u64, load_nanos: u64) -> Entry<V> {
        let ttl = duration_to_nanos(self.inner.options.ttl);
        let at = |d: Duration| now.saturating_add(duration_to_nanos(d).min(ttl));
        Entry {
            value: Some(value),
            soft_at: at(life.fresh),
            hard_at: at(life.fresh.saturating_add(life.stale_while_revalidate)),
            keep_until: at(life.fresh.saturating_add(life.stale_if_error)),
            retry_at: 0,
            load_nanos,
            tags: None,
            retain_until: Some(now.saturating_add(ttl)),
        }
    }
}
