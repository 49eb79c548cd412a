//! Loading: one load per key in flight (coalescing), the loader cut at its timeouts, the
//! result written to both tiers; XFetch's early-refresh test and the TTL jitter of new
//! entries.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use floodwall_core::BoxError;
use floodwall_core::clock::{duration_to_nanos, mul_f64_saturating};
use futures::FutureExt;

use crate::tiered::{Entry, Load};
use crate::{CacheError, Fetched, TieredCache};

impl<K, V> TieredCache<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + Sync + 'static,
{
    pub(crate) fn xfetch_due(&self, e: &Entry<V>, now: u64) -> bool {
        let Some(beta) = self.inner.options.xfetch_beta else {
            return false;
        };
        // u in (0, 1]: ln(u) <= 0, so the term is a non-negative head start.
        let u = 1.0 - rand::random::<f64>();
        let early = (e.load_nanos as f64) * beta * -u.ln();
        now as f64 + early >= e.soft_at as f64
    }

    pub(crate) fn refresh_in_background<F, Fut, E>(&self, key: K, loader: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        // Joining an in-flight load starts nothing new: one refresh per key at a time.
        drop(self.load(key, loader, true));
    }

    /// The shared load for `key`: joins the one in flight or starts one (driven to the end
    /// by a task of its own, whoever still waits for it).
    ///
    /// Unless `refresh`, a load that finds a fresh entry (written by a load that ended between
    /// the caller's lookup and this one) answers it without calling the loader.
    pub(crate) fn load<F, Fut, E>(&self, key: K, loader: F, refresh: bool) -> Load<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let mut inflight = self
            .inner
            .inflight
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(load) = inflight.get(&key) {
            // A caller that waits for another's load; a background refresh that finds one in
            // flight waits for nothing and is not counted.
            if !refresh {
                self.inner.stats.coalesced();
            }
            return load.clone();
        }
        let this = self.clone();
        let k = key.clone();
        let fut = async move {
            let result = this.load_now(&k, loader, refresh).await;
            this.inner
                .inflight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&k);
            result
        }
        .boxed()
        .shared();
        inflight.insert(key, fut.clone());
        tokio::spawn(fut.clone());
        fut
    }

    /// The body of one load: a fresh L1 entry or an L2 value if one appeared meanwhile,
    /// else the cross-instance lease (when configured), the loader, and the stores.
    async fn load_now<F, Fut, E>(
        &self,
        k: &K,
        loader: F,
        refresh: bool,
    ) -> Result<Option<V>, CacheError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let inner = &self.inner;
        let started = inner.clock.now_nanos();
        // The load's one bound: waiting for another instance's lease and the loader together.
        let deadline = inner
            .options
            .hard_timeout
            .map(floodwall_core::clock::deadline_after);
        let started_ms = crate::tags::unix_ms();
        if !refresh
            && self.l1_trusted()
            && let Some(e) = inner.l1.get(k)
            && started < e.soft_at
            && crate::tags::live(&e.tags)
        {
            return Ok(e.value.clone());
        }
        // The second tier: another instance may have loaded it already.
        let mut l2_ok = inner.l2.is_some();
        match self.read_l2(k, !refresh).await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(()) => l2_ok = false,
        }
        let lease = if l2_ok {
            crate::lease::acquire(self, k, deadline).await
        } else {
            crate::lease::Lease::Unavailable
        };
        let lease_held = match lease {
            crate::lease::Lease::Found(value) => return Ok(value),
            crate::lease::Lease::Held => true,
            crate::lease::Lease::NotUsed | crate::lease::Lease::WaitedOut => false,
            crate::lease::Lease::Unavailable => {
                l2_ok = false;
                false
            }
        };
        let result = self
            .call_loader(k, loader, (started, started_ms), l2_ok, deadline)
            .await;
        if lease_held {
            crate::lease::release(self, k).await;
        }
        result
    }

    /// Calls the loader (cut at the load's `hard_timeout` deadline) and stores what it
    /// answered.
    async fn call_loader<F, Fut, E>(
        &self,
        k: &K,
        loader: F,
        (started, started_ms): (u64, u64),
        l2_ok: bool,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<V>, CacheError>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Fetched<V>, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let inner = &self.inner;
        inner.stats.load();
        let timer = inner.stats.start_load();
        let result = match (deadline, inner.options.hard_timeout) {
            (Some(deadline), Some(hard)) => match tokio::time::timeout_at(deadline, loader()).await
            {
                Ok(r) => r.map_err(|e| CacheError::Loader(Arc::new(e.into()))),
                Err(_) => Err(CacheError::Timeout(hard)),
            },
            _ => loader()
                .await
                .map_err(|e| CacheError::Loader(Arc::new(e.into()))),
        };
        inner.stats.finish_load(timer);
        let (result, store, tags) = match result {
            Ok(Fetched::Value(v)) => (Ok(Some(v)), true, None),
            Ok(Fetched::Missing) => (Ok(None), true, None),
            Ok(Fetched::Uncacheable(v)) => (Ok(Some(v)), false, None),
            Ok(Fetched::Tagged(v, tags)) => {
                // Stored only if no tag may have been invalidated during the load.
                match self.tags_after_load(&tags, started, started_ms).await {
                    Some(tags) => (Ok(Some(v)), true, tags),
                    None => (Ok(Some(v)), false, None),
                }
            }
            Err(e) => (Err(e), false, None),
        };
        let now = inner.clock.now_nanos();
        if store && let Ok(value) = &result {
            if value.is_some() || inner.options.negative_ttl.is_some() {
                let mut entry = self.entry(value.clone(), now, now.saturating_sub(started));
                entry.tags = tags;
                if l2_ok {
                    self.write_l2(k, &entry, now).await;
                }
                inner.l1.insert(k.clone(), Arc::new(entry));
            } else {
                inner.l1.invalidate(k);
            }
        }
        result
    }

    /// An entry for `value` written at `now`, TTLs jittered.
    pub(crate) fn entry(&self, value: Option<V>, now: u64, load_nanos: u64) -> Entry<V> {
        let o = &self.inner.options;
        let stretch = if o.jitter > 0.0 {
            1.0 + o.jitter * rand::random::<f64>()
        } else {
            1.0
        };
        let (soft, hard) = match &value {
            Some(_) => (o.soft_ttl.unwrap_or(o.ttl).min(o.ttl), o.ttl),
            None => {
                let n = o.negative_ttl.unwrap_or_default();
                (n, n)
            }
        };
        let hard_at = now.saturating_add(duration_to_nanos(mul_f64_saturating(hard, stretch)));
        Entry {
            value,
            soft_at: now.saturating_add(duration_to_nanos(mul_f64_saturating(soft, stretch))),
            hard_at,
            keep_until: hard_at.saturating_add(duration_to_nanos(o.max_stale.unwrap_or_default())),
            retry_at: 0,
            load_nanos,
            tags: None,
            retain_until: None,
        }
    }
}
