//! The limiter's decisions on Redis: one limit, several, leased; folding Redis's verdicts
//! into one, seeding the insurance limiter, and the failure policy when Redis fails.

use std::sync::Arc;

use floodwall_core::StoreError;

use super::{Leases, RedisStore};
use crate::limiter::{Accumulator, Descriptor, insurance_share};
use crate::{
    Algorithm, Decision, Degraded, FailurePolicy, LimitError, MAX_LIMITS, Quota, RateLimiter,
    Verdict,
};

impl RateLimiter {
    /// One limit, the common case, is decided here with a future of a few hundred bytes;
    /// several go to [`decide_many_on_redis`](Self::decide_many_on_redis), boxed.
    pub(crate) async fn decide_on_redis(
        &self,
        redis: &RedisStore,
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
                    self.decide_many_on_redis(redis, applicable, count, cost, consume),
                )
                .await;
            }
        };
        let (idx, key, quota) = entry.expect("selected");
        let deadline = redis.deadline();
        if cost == 1
            && consume
            && let Some(leases) = &self.inner.leases[idx as usize]
        {
            return self
                .decide_leased(redis, leases, &[entry], (idx, key, quota), deadline)
                .await;
        }
        let limit = &self.inner.limits[idx as usize];
        let result = redis
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

    /// Several limits on Redis: decided together (see [`RedisStore::decide`]); on a denial,
    /// what the others consumed is given back.
    async fn decide_many_on_redis(
        &self,
        redis: &RedisStore,
        applicable: [Option<(u32, &str, Quota)>; MAX_LIMITS],
        count: usize,
        cost: u32,
        consume: bool,
    ) -> Result<Verdict, LimitError> {
        let applicable = &applicable[..count];
        let deadline = redis.deadline();
        let inner = &*self.inner;
        match redis
            .decide(&inner.limits, applicable, cost, consume, deadline)
            .await
        {
            Ok(results) => {
                let (verdict, denied) = self.combine_remote(applicable, &results);
                if denied {
                    redis
                        .refund(&inner.limits, applicable, &results, deadline)
                        .await;
                }
                Ok(verdict)
            }
            Err(e) => self.on_store_failure(e, applicable, cost, consume),
        }
    }

    /// A cost-1 decision on a leased limit (see [`Lease`](crate::redis::Lease)).
    async fn decide_leased(
        &self,
        redis: &RedisStore,
        leases: &Leases,
        applicable: &[Option<(u32, &str, Quota)>],
        (idx, key, quota): (u32, &str, Quota),
        deadline: tokio::time::Instant,
    ) -> Result<Verdict, LimitError> {
        if leases.start_sweeping() {
            // Supervised: a sweep that dies is started again, so idle leases are still
            // given back.
            let inner = Arc::downgrade(&self.inner);
            tokio::spawn(floodwall_core::task::supervised(
                floodwall_core::task::Task::LeaseSweep,
                move || Some(super::sweep(inner.clone())),
            ));
        }
        let limit = &self.inner.limits[idx as usize];
        let decided = match leases.take(key) {
            Some((left, reset)) => Ok((super::lease::leased_decision(&quota, left, reset), true)),
            // Boxed: the refill's future (two calls and a lock) is kilobytes, and a decision
            // from a lease, the common case, should not carry room for it.
            None => Box::pin(redis.refill_lease(leases, limit, key, quota, deadline)).await,
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

    /// Folds Redis's verdicts into one (seeding the insurance limiter); `true` when it is a
    /// denial, whose consumed decisions the caller gives back.
    pub(crate) fn combine_remote(
        &self,
        applicable: &[Option<(u32, &str, Quota)>],
        results: &[(Decision, super::RemoteReceipt)],
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

    /// Under the insurance policy, brings each key's insurance state to the verdict Redis just
    /// gave: if Redis fails next, the insurance limiter starts from it — a key Redis had
    /// exhausted is not handed a fresh quota. The insurance share's capacity minus what Redis
    /// says remains is taken as used.
    pub(crate) fn seed_insurance(
        &self,
        applicable: &[Option<(u32, &str, Quota)>],
        results: &[(Decision, super::RemoteReceipt)],
    ) {
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
        applicable: &[Option<(u32, &str, Quota)>],
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

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use floodwall_core::redis::{RedisConnection, StoreOptions};
    use floodwall_testkit::RedisServer;

    use crate::limiter::Store;
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
        let limiter = RateLimiter::builder()
            .limit(Limit::new("api", Algorithm::Gcra, quota).keyed_by("user"))
            .redis(StoreOptions::new(conn))
            .build()
            .unwrap();
        let Store::Redis(redis) = &limiter.inner.store else {
            panic!("a Redis store");
        };
        let decision = limiter.decide_on_redis(redis, &[("user", "a")], 1, true);
        let size = std::mem::size_of_val(&decision);
        println!("a one-limit decision on Redis: a future of {size} bytes");
        assert!(size <= 1024, "{size} bytes");
        assert!(decision.await.unwrap().allowed);
    }
}
