//! [`SharedStore`]: the boundary between the limiter's protocol and a store shared by every
//! instance — what the protocol ([`shared`](crate::shared): all or nothing, give-backs, the
//! failure and insurance policies; [`lease`](crate::lease): token leases) asks of it, and
//! what the Redis store (`redis/`) implements. A leaf: it names the limiter's data types
//! (limits, quotas, decisions) and nothing of the protocol.

use std::future::Future;
use std::time::Duration;

use floodwall_core::StoreError;

use crate::{Decision, Limit, Quota};

/// A limit that applies to a request: its index among the limiter's limits, its key and
/// its quota (the lease-reduced one on a leased limit).
pub(crate) type Selected<'k> = Option<(u32, &'k str, Quota)>;

/// A store that decides limits for every instance at once. Each call is one atomic step on
/// the store's own clock; each is bounded by `deadline`.
pub(crate) trait SharedStore: Send + Sync {
    /// What a decision consumed, enough to give it back.
    type Receipt: Copy + Send + Sync;

    /// When a decision that starts now must be over, give-backs included.
    fn deadline(&self) -> tokio::time::Instant;

    /// The store's per-call bound (what a decision that timed out reports).
    fn call_timeout(&self) -> Duration;

    /// Decides one limit for `key`: consumes `cost` if `consume` and it is admitted.
    fn decide_one(
        &self,
        limit: &Limit,
        key: &str,
        quota: Quota,
        cost: u32,
        consume: bool,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<(Decision, Self::Receipt), StoreError>> + Send;

    /// Decides several limits of one request, one result per entry of `applicable`, in its
    /// order. On an error whatever was consumed has been given back.
    fn decide(
        &self,
        limits: &[Limit],
        applicable: &[Selected<'_>],
        cost: u32,
        consume: bool,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<Vec<(Decision, Self::Receipt)>, StoreError>> + Send;

    /// Gives back every consumed decision of `results` (best effort, waited for until
    /// `deadline`; what could not be given back only makes the limiter under-admit).
    fn refund(
        &self,
        limits: &[Limit],
        applicable: &[Selected<'_>],
        results: &[(Decision, Self::Receipt)],
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = ()> + Send;

    /// Consumes `n` tokens of `key` at once if they are all there (a lease's block): the
    /// decision, admitted iff they were taken.
    fn take(
        &self,
        limit: &Limit,
        key: &str,
        quota: Quota,
        n: u32,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<Decision, StoreError>> + Send;

    /// Gives `n` unused tokens of `key` back (a lease's leftovers).
    fn give_back(
        &self,
        limit: &Limit,
        key: &str,
        quota: Quota,
        n: u32,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
