//! Token leases for hot keys, as a protocol over any [`SharedStore`]: see [`Lease`]. The
//! store takes a block of tokens and takes back leftovers; sizing, local admission, refills
//! and the sweep that gives expired leases back are here.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use floodwall_core::StoreError;

use crate::store::SharedStore;
use crate::{Decision, Limit, Quota};

const SHARDS: usize = 16;

/// Token leases (opt-in, GCRA on a shared store — Redis): an instance takes a block of a hot
/// key's tokens in one script call and admits from that block locally, without a round trip.
///
/// # How
///
/// A lease of `k` tokens is one ordinary GCRA decision of cost `k` in the decision script
/// (`TAT' = max(TAT, now) + k·T`, granted iff `TAT' − now ≤ b'·T`): the tokens are taken in
/// Redis before any is admitted, so leasing never admits more than Redis granted. The
/// instance then admits up to `k − 1` more requests locally until the lease's lifetime `L`
/// has passed (counted from when the lease request was sent, so always within `L` of the
/// moment Redis took the tokens). Tokens unused when the lease expires are given back to
/// Redis (`TAT −= r·T`) by the next refill or by a sweep every `L/2`.
///
/// # Invariant: no window admits more than the limit
///
/// GCRA with burst `b` admits at most `b + ⌊W/T⌋` requests in any window of length `W`. A
/// leased token is admitted within `L` of being taken, so the requests admitted in
/// `[a, a + W]` were all taken in `[a − L, a + W]`, a window of length `W + L`. Every decision
/// on a leased limit therefore uses the burst `b' = b − ⌈L/T⌉`: what Redis grants in
/// `W + L` is at most `b' + ⌊(W + L)/T⌋ ≤ b + ⌊W/T⌋`. The sustained rate is unchanged; only
/// the burst shrinks, by the tokens one lifetime earns. Every instance must lease a limit
/// alike (as every instance must give it the same quota).
///
/// # What leasing costs
///
/// Capacity can be stranded in an instance that stops asking: at most its current lease
/// (`≤ max_tokens`) per key, for a lifetime and a half (expiry, then the sweep every half
/// lifetime that gives it back) plus the sweep's own round trip and any lateness of the
/// runtime's timers; across instances, `max_tokens × instances` per key.
/// The lease size adapts to each key's local rate: it doubles when a lease is used up before
/// it expires and halves when one expires with tokens left or Redis cannot grant it (then
/// the request is decided alone, as without leases). Near the limit leases shrink to single
/// decisions, exact as always. Which to pick: exact batching (the default) unless a few keys
/// take most of the traffic at rates far below their limit; leases for those.
///
/// The leases of one limit are held in a sharded table (a read lock and an atomic decrement
/// per leased admission), at most 16,384 keys; a key beyond that is decided without a lease.
///
/// When Redis is unreachable, a live lease keeps admitting (its tokens were taken before)
/// and a refill follows the failure policy within the call bound — a caller queued behind a
/// refill waits for it, so at most two bounds
/// (`limiter/tests/lease.rs::a_blackholed_redis_bounds_every_leased_decision`). When Redis
/// loses its data (a restart without persistence, `FLUSHALL`), the key starts afresh while
/// instances may still hold leased tokens: for one lifetime, at most `max_tokens` per instance
/// beyond the limit (`a_flushall_admits_at_most_the_leases_held_beyond_the_limit`).
///
/// Leases serve [`check`](crate::RateLimiter::check)s of cost 1 on requests this limit alone
/// applies to; peeks, larger costs and requests under several limits are decided on Redis as
/// usual (with the reduced burst). Decisions admitted from a lease say so
/// ([`Verdict::leased`](crate::Verdict::leased)); their `remaining` is what is left of this
/// instance's lease.
///
/// A `Lease` says how a limit leases: at most `max_tokens` per lease, each usable for
/// `lifetime`. Give it to [`Limit::lease`](crate::Limit::lease).
///
/// ```
/// use std::num::NonZeroU32;
/// use std::time::Duration;
/// use floodwall_limiter::{Algorithm, Lease, Limit, Quota, RateLimiter};
///
/// let n = |v| NonZeroU32::new(v).unwrap();
/// let tenant = Limit::new("tenant", Algorithm::Gcra, Quota::per_second(n(100_000)))
///     .keyed_by("tenant")
///     .lease(Lease::new(n(256), Duration::from_millis(20)));
/// // Leases need a shared store: with the `redis` feature, add `.redis(StoreOptions::new(conn))`
/// // to the builder. Without one, the builder says so.
/// let refused = RateLimiter::builder().limit(tenant).build().unwrap_err();
/// assert_eq!(refused.field, "lease");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    max_tokens: NonZeroU32,
    lifetime: Duration,
}

impl Lease {
    /// Leases of up to `max_tokens`, each usable for `lifetime` (at least 1 ms).
    pub fn new(max_tokens: NonZeroU32, lifetime: Duration) -> Lease {
        Lease {
            max_tokens,
            lifetime: lifetime.max(Duration::from_millis(1)),
        }
    }

    /// The most tokens one lease takes.
    pub fn max_tokens(&self) -> NonZeroU32 {
        self.max_tokens
    }

    /// How long a lease's tokens may be admitted.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// `quota` with the burst every decision on a leased limit uses, `b − ⌈L/T⌉`; `None` when
    /// nothing is left of the burst (the lifetime is too long for this quota).
    pub(crate) fn quota(&self, quota: Quota) -> Option<Quota> {
        let t = u128::from(quota.emission_interval_nanos());
        let earned = self.lifetime.as_nanos().div_ceil(t);
        let burst = u128::from(quota.burst().get()).checked_sub(earned)?;
        let burst = NonZeroU32::new(u32::try_from(burst).ok()?)?;
        Some(quota.allow_burst(burst))
    }
}

/// One key's lease on this instance.
struct Slot {
    /// Tokens left to admit locally.
    left: AtomicU32,
    /// Until when (ns on the table's clock) they may be admitted.
    until: AtomicU64,
    /// When the lease's reset falls (ns on the table's clock), for reporting.
    reset_at: AtomicU64,
    /// The size of the next lease.
    size: AtomicU32,
    /// Held by the one caller refilling the lease.
    refill: tokio::sync::Mutex<()>,
}

impl Slot {
    /// Takes one token if the lease is live: the tokens left after it.
    #[inline]
    fn take(&self, now: u64) -> Option<u32> {
        if now >= self.until.load(Ordering::Acquire) {
            return None;
        }
        self.left
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| l.checked_sub(1))
            .ok()
            .map(|l| l - 1)
    }
}

/// A leased limit's leases on this instance, one per key, bounded.
pub(crate) struct Leases {
    lease: Lease,
    shards: Vec<RwLock<HashMap<Box<str>, Arc<Slot>>>>,
    hasher: RandomState,
    per_shard: usize,
    epoch: Instant,
    sweeping: AtomicBool,
}

/// Keys one leased limit holds leases for, at most.
const MAX_LEASED_KEYS: usize = 16_384;

impl Leases {
    pub(crate) fn new(lease: Lease) -> Leases {
        Leases {
            lease,
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: MAX_LEASED_KEYS / SHARDS,
            epoch: Instant::now(),
            sweeping: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn shard(&self, key: &str) -> &RwLock<HashMap<Box<str>, Arc<Slot>>> {
        &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS]
    }

    /// A token from `key`'s live lease, without a round trip: the tokens left after it, and
    /// the time to the lease's reset.
    #[inline]
    pub(crate) fn take(&self, key: &str) -> Option<(u32, Duration)> {
        let now = self.now();
        let held = self.shard(key).read().unwrap_or_else(|e| e.into_inner());
        let slot = held.get(key)?;
        let left = slot.take(now)?;
        let reset = slot.reset_at.load(Ordering::Relaxed).saturating_sub(now);
        Some((left, Duration::from_nanos(reset)))
    }

    /// `key`'s slot, made on first use; `None` when the table is full.
    fn slot(&self, key: &str) -> Option<Arc<Slot>> {
        let shard = self.shard(key);
        if let Some(s) = shard.read().unwrap_or_else(|e| e.into_inner()).get(key) {
            return Some(s.clone());
        }
        let mut held = shard.write().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = held.get(key) {
            return Some(s.clone());
        }
        if held.len() >= self.per_shard {
            return None;
        }
        let slot = Arc::new(Slot {
            left: AtomicU32::new(0),
            until: AtomicU64::new(0),
            reset_at: AtomicU64::new(0),
            size: AtomicU32::new(1),
            refill: tokio::sync::Mutex::new(()),
        });
        held.insert(key.into(), slot.clone());
        Some(slot)
    }

    /// Takes every expired lease's unused tokens (to give back) and forgets keys whose lease
    /// is over and empty.
    fn expired(&self) -> Vec<(Box<str>, u32)> {
        let now = self.now();
        let mut out = Vec::new();
        for shard in &self.shards {
            let mut held = shard.write().unwrap_or_else(|e| e.into_inner());
            held.retain(|key, slot| {
                let until = slot.until.load(Ordering::Acquire);
                if now < until {
                    return true;
                }
                let left = slot.left.swap(0, Ordering::AcqRel);
                if left > 0 {
                    out.push((key.clone(), left));
                }
                // A slot idle for a whole lifetime past its lease goes, unless being refilled.
                now < until.saturating_add(self.lifetime_nanos()) || slot.refill.try_lock().is_err()
            });
        }
        out
    }

    /// Whether the caller should start the sweeper (the first time only).
    pub(crate) fn start_sweeping(&self) -> bool {
        !self.sweeping.swap(true, Ordering::AcqRel)
    }

    pub(crate) fn lifetime(&self) -> Duration {
        self.lease.lifetime
    }

    fn lifetime_nanos(&self) -> u64 {
        u64::try_from(self.lease.lifetime.as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A decision admitted from a lease.
pub(crate) fn leased_decision(quota: &Quota, left: u32, reset: Duration) -> Decision {
    Decision {
        allowed: true,
        limit: quota.burst().get(),
        remaining: left,
        reset_after: reset,
        retry_after: None,
    }
}

impl Leases {
    /// No token left in this instance's lease for the key: refills the lease on `store` (one
    /// caller at a time per key) and decides from it, else decides alone. The `bool` says
    /// whether the admission came from a lease. `quota` is the leased quota (its burst
    /// already reduced). Taking a token from a live lease is [`Leases::take`], which the
    /// caller tries first.
    pub(crate) async fn refill<S: SharedStore>(
        &self,
        store: &S,
        limit: &Limit,
        key: &str,
        quota: Quota,
        deadline: tokio::time::Instant,
    ) -> Result<(Decision, bool), StoreError> {
        let Some(slot) = self.slot(key) else {
            return Ok((store.take(limit, key, quota, 1, deadline).await?, false));
        };
        let Ok(_refilling) = tokio::time::timeout_at(deadline, slot.refill.lock()).await else {
            return Err(StoreError::Timeout {
                after: store.call_timeout(),
            });
        };
        let now = self.now();
        if let Some(left) = slot.take(now) {
            let reset = slot.reset_at.load(Ordering::Relaxed).saturating_sub(now);
            return Ok((
                leased_decision(&quota, left, Duration::from_nanos(reset)),
                true,
            ));
        }
        // The last lease is used up or over: size the next one, and give back what the last
        // one left.
        let max = self.lease.max_tokens.get().min(quota.burst().get());
        let live = now < slot.until.load(Ordering::Acquire);
        let leftover = slot.left.swap(0, Ordering::AcqRel);
        let size = slot.size.load(Ordering::Relaxed);
        let size = match (live, leftover) {
            (true, _) => size.saturating_mul(2),
            (false, 0) => size,
            (false, _) => size / 2,
        }
        .clamp(1, max);
        let give_back = async {
            if leftover > 0
                && let Err(e) = store.give_back(limit, key, quota, leftover, deadline).await
            {
                tracing::debug!(error = %e, "could not give back a lease's unused tokens");
            }
        };
        let lifetime = self.lifetime_nanos();
        let sent = self.now();
        let (taken, ()) =
            futures::future::join(store.take(limit, key, quota, size, deadline), give_back).await;
        let decision = taken?;
        if decision.allowed {
            let reset = u64::try_from(decision.reset_after.as_nanos()).unwrap_or(u64::MAX);
            slot.reset_at
                .store(sent.saturating_add(reset), Ordering::Relaxed);
            slot.size.store(size, Ordering::Relaxed);
            slot.left.store(size - 1, Ordering::Release);
            slot.until
                .store(sent.saturating_add(lifetime), Ordering::Release);
            return Ok((decision, false));
        }
        slot.size.store((size / 2).max(1), Ordering::Relaxed);
        if size == 1 {
            return Ok((decision, false));
        }
        Ok((store.take(limit, key, quota, 1, deadline).await?, false))
    }
}

/// Gives every expired lease's unused tokens back to `store`.
pub(crate) async fn give_back_expired<S: SharedStore>(
    store: &S,
    limits: &[Limit],
    leases: &[Option<Leases>],
) {
    for (idx, leases) in leases.iter().enumerate() {
        let Some(leases) = leases else { continue };
        let limit = &limits[idx];
        let Some(quota) = limit.quota.fixed().and_then(|q| leases.lease.quota(q)) else {
            continue;
        };
        for (key, left) in leases.expired() {
            let deadline = store.deadline();
            if let Err(e) = store.give_back(limit, &key, quota, left, deadline).await {
                tracing::debug!(error = %e, "could not give back a lease's unused tokens");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The reduced burst pays for a lifetime: whatever Redis grants in any `W + L`
        /// (at most `b' + ⌊(W + L)/T⌋`) never exceeds GCRA's bound for `W`, `b + ⌊W/T⌋`;
        /// the rate is unchanged; a lifetime that earns the whole burst is refused.
        #[test]
        fn the_reduced_burst_keeps_every_window_within_the_limit(
            limit in 1u32..100_000,
            period_ms in 1u64..100_000,
            burst in 1u32..200_000,
            lifetime_us in 1_000u64..5_000_000,
            w_us in 0u64..100_000_000,
        ) {
            let quota = Quota::new(NonZeroU32::new(limit).unwrap(), Duration::from_millis(period_ms))
                .allow_burst(NonZeroU32::new(burst).unwrap());
            let lease = Lease::new(NonZeroU32::new(8).unwrap(), Duration::from_micros(lifetime_us));
            let t = u128::from(quota.emission_interval_nanos());
            let (l, w) = (u128::from(lifetime_us) * 1000, u128::from(w_us) * 1000);
            match lease.quota(quota) {
                Some(leased) => {
                    let b2 = u128::from(leased.burst().get());
                    prop_assert!(b2 + (w + l) / t <= u128::from(burst) + w / t);
                    prop_assert_eq!(b2, u128::from(burst) - l.div_ceil(t));
                    prop_assert_eq!(leased.emission_interval_nanos(), quota.emission_interval_nanos());
                }
                None => prop_assert!(l.div_ceil(t) >= u128::from(burst)),
            }
        }
    }
}
