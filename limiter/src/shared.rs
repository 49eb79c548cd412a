//! The limiter's protocol on a [`SharedStore`] (Redis): one limit, several (all or
//! nothing, what a denial consumed given back), leased; folding the store's verdicts into
//! one, seeding the insurance limiter, and the failure policy when the store fails. The
//! store itself only decides, takes and gives back (`redis/`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use floodwall_core::StoreError;

use crate::lease::Leases;
use crate::limiter::{Accumulator, Descriptor, insurance_share};
use crate::store::{Selected, SharedStore};
use crate::{
    Algorithm, Decision, Degraded, FailurePolicy, LimitError, MAX_LIMITS, Quota, RateLimiter,
    Verdict,
};

/// Every half lifetime, gives back the unused tokens of this limiter's expired leases, until
/// the limiter is dropped: a lease's leftovers are back in the store at most a lifetime and a
/// half after it was taken.
async fn sweep(inner: Weak<crate::limiter::Inner>) -> floodwall_core::task::Exit {
    use floodwall_core::task::Exit;
    let Some(every) = inner
        .upgrade()
        .and_then(|i| i.leases.iter().flatten().map(Leases::lifetime).min())
    else {
        return Exit::Done;
    };
    let mut tick = tokio::time::interval((every / 2).max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return Exit::Done;
        };
        let crate::limiter::Store::Redis(store) = &inner.store else {
            return Exit::Done;
        };
        crate::lease::give_back_expired(store, &inner.limits, &inner.leases).await;
    }
}

impl RateLimiter {
    /// One limit, the common case, is decided here with a future of a few hundred bytes;
    /// several go to [`decide_many_on_shared`](Self::decide_many_on_shared), boxed.
    pub(crate) async fn decide_on_shared<S: SharedStore>(
        &self,
        store: &S,
        descriptor: Descriptor<'_, '_>,
        cost: u32,
        consume: bool,
    ) -> Result<Verdict, LimitError> {
        let (applicable, count) = self.select(descriptor, cost)?;
        let entry = match count {
            0 => return Ok(Verdict::open(None)),
            1 => applicable[0],
            _ => {
                // Several limits: their selection, joins and give-backs are kilobytes of
                // future, kept off the one-limit path.
                return Box::pin(
                    self.decide_many_on_shared(store, applicable, count, cost, consume),
                )
                .await;
            }
        };
        let (idx, key, quota) = entry.expect("selected");
        let deadline = store.deadline();
        if cost == 1
            && consume
            && let Some(leases) = &self.inner.leases[idx as usize]
        {
            return self
                .decide_leased(store, leases, &[entry], (idx, key, quota), deadline)
                .await;
        }
        let limit = &self.inner.limits[idx as usize];
        let result = store
            .decide_one(limit, key, quota, cost, consume, deadline)
            .await;
        // Rebuilt after the call, not kept across it: the future stays smaller.
        let one = [Some((idx, key, quota))];
        match result {
            // One limit's denial consumed nothing: there is nothing to give back.
            Ok(result) => Ok(self.combine_remote(&one, &[result]).0),
            Err(e) => self.on_store_failure(e, &one, cost, consume),
        }
    }

    /// Several limits on the store: decided together (see [`SharedStore::decide`]); on a
    /// denial, what the others consumed is given back.
    async fn decide_many_on_shared<S: SharedStore>(
        &self,
        store: &S,
        applicable: [Selected<'_>; MAX_LIMITS],
        count: usize,
        cost: u32,
        consume: bool,
    ) -> Result<Verdict, LimitError> {
        let applicable = &applicable[..count];
        let deadline = store.deadline();
        let inner = &*self.inner;
        match store
            .decide(&inner.limits, applicable, cost, consume, deadline)
            .await
        {
            Ok(results) => {
                let (verdict, denied) = self.combine_remote(applicable, &results);
                if denied {
                    store
                        .refund(&inner.limits, applicable, &results, deadline)
                        .await;
                }
                Ok(verdict)
            }
            Err(e) => self.on_store_failure(e, applicable, cost, consume),
        }
    }

    /// A cost-1 decision on a leased limit (see [`Lease`](crate::Lease)).
    async fn decide_leased<S: SharedStore>(
        &self,
        store: &S,
        leases: &Leases,
        applicable: &[Selected<'_>],
        (idx, key, quota): (u32, &str, Quota),
        deadline: tokio::time::Instant,
    ) -> Result<Verdict, LimitError> {
        if leases.start_sweeping() {
            // Supervised: a sweep that dies is started again, so idle leases are still
            // given back.
            let inner = Arc::downgrade(&self.inner);
            tokio::spawn(floodwall_core::task::supervised(
                floodwall_core::task::Task::LeaseSweep,
                move || Some(sweep(inner.clone())),
            ));
        }
        let limit = &self.inner.limits[idx as usize];
        let decided = match leases.take(key) {
            Some((left, reset)) => Ok((crate::lease::leased_decision(&quota, left, reset), true)),
            // Boxed: the refill's future (two calls and a lock) is kilobytes, and a decision
            // from a lease, the common case, should not carry room for it.
            None => Box::pin(leases.refill(store, limit, key, quota, deadline)).await,
        };
        match decided {
            Ok((decision, leased)) => {
                let mut acc = Accumulator::default();
                acc.add(quota, decision, self.is_enforced(idx), limit);
                let mut verdict = acc.finish(None);
                verdict.leased = leased;
                Ok(verdict)
            }
            Err(e) => self.on_store_failure(e, applicable, 1, true),
        }
    }

    /// Folds the store's verdicts into one (seeding the insurance limiter); `true` when it is
    /// a denial, whose consumed decisions the caller gives back.
    pub(crate) fn combine_remote<R>(
        &self,
        applicable: &[Selected<'_>],
        results: &[(Decision, R)],
    ) -> (Verdict, bool) {
        let inner = &*self.inner;
        self.seed_insurance(applicable, results);
        let mut acc = Accumulator::default();
        for (entry, (decision, _)) in applicable.iter().zip(results) {
            let (idx, _, quota) = entry.expect("filled above");
            acc.add(
                quota,
                *decision,
                self.is_enforced(idx),
                &inner.limits[idx as usize],
            );
        }
        let denied = acc.denied;
        (acc.finish(None), denied)
    }

    /// Under the insurance policy, brings each key's insurance state to the verdict the store just
    /// gave: if the store fails next, the insurance limiter starts from it — a key the store had
    /// exhausted is not handed a fresh quota. The insurance share's capacity minus what the store
    /// says remains is taken as used.
    pub(crate) fn seed_insurance<R>(&self, applicable: &[Selected<'_>], results: &[(Decision, R)]) {
        let inner = &*self.inner;
        if !matches!(inner.policy, FailurePolicy::Insurance { .. }) {
            return;
        }
        let now = inner.memory.now();
        for (entry, (decision, _)) in applicable.iter().zip(results) {
            let (idx, key, quota) = entry.expect("filled above");
            let limit = &inner.limits[idx as usize];
            let share = insurance_share(quota, inner.policy);
            let capacity = match limit.algorithm {
                Algorithm::Gcra => share.burst().get(),
                _ => share.limit().get(),
            };
            let used = capacity.saturating_sub(decision.remaining.min(capacity));
            inner
                .memory
                .seed(idx, limit.algorithm, &share, key, now, used);
        }
    }

    pub(crate) fn on_store_failure(
        &self,
        error: StoreError,
        applicable: &[Selected<'_>],
        cost: u32,
        consume: bool,
    ) -> Result<Verdict, LimitError> {
        let inner = &*self.inner;
        tracing::warn!(error = %error, policy = ?inner.policy, "rate-limit store failed");
        crate::metrics::store_failures(inner.policy, 1);
        match inner.policy {
            FailurePolicy::FailOpen => Ok(Verdict::open(Some(Degraded::FailedOpen))),
            FailurePolicy::FailClosed => Err(LimitError::Unavailable(error)),
            FailurePolicy::Insurance { .. } => Ok(self.decide_memory(
                &inner.memory,
                applicable,
                cost,
                consume,
                Some(Degraded::Insurance),
            )),
        }
    }
}
