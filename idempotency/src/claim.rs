//! The claim protocol, written once: `begin` claimed the key; the operation runs while a
//! heartbeat renews the claim's lease; its result is stored under the claim's fencing token
//! (`complete`, retried within the lease), or the claim is released so a retry can run
//! (`abort`). `Idempotency::run`, the `Deduplicator` and the HTTP layer all finish their
//! claims here, and each learns what became of the claim ([`Fate`]).
//!
//! # Leases and the heartbeat
//!
//! A claim is taken for one lease `L` and renewed every `L / 3` while the operation runs, each
//! renewal extending it to `L` from then. So a holder that crashes blocks its key for at most
//! `L` after its last renewal (a claim whose `begin` reply was lost, never renewed: `L` after
//! it landed), while a live holder keeps its key however long the operation runs; a
//! renewal may fail (a Redis blip) and the next, a third of a lease later, still lands within
//! the lease.

use std::future::Future;
use std::pin::pin;
use std::task::Poll;
use std::time::Duration;

use floodwall_core::StoreError;
use tokio::time::Instant;

use crate::metrics::Op;
use crate::record::{Abort, Finish, Token};
use crate::store::Store;

/// A key this caller holds, with the token that fences it.
#[derive(Debug)]
pub(crate) struct Claim<'a, S> {
    pub(crate) store: &'a S,
    /// The counters of the instance that claimed.
    pub(crate) metrics: &'a crate::metrics::Counters,
    pub(crate) key: &'a str,
    pub(crate) token: Token,
    /// The lease the claim was taken with, renewed by the heartbeat.
    pub(crate) lease: Duration,
    pub(crate) retention: Duration,
}

/// What became of a claim once its operation finished.
#[derive(Debug)]
pub(crate) enum Fate {
    /// The result is stored: retries replay it.
    Recorded,
    /// The claim was released (the operation failed, or its result is not to be kept): a retry
    /// runs the operation.
    Released,
    /// The result could not be stored (logged): the claim was lost to another caller after
    /// its lease ran out, or the store failed until the lease ended. A retry may run the
    /// operation again.
    Unrecorded,
    /// The claim could not be released: retries are answered "in progress" until its lease
    /// ends (at most one lease).
    Unreleased(StoreError),
}

/// The first pause between attempts to finish a claim; doubled up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(10);
const MAX_PAUSE: Duration = Duration::from_millis(200);

impl<S: Store> Claim<'_, S> {
    /// Runs `op` under the heartbeat. On `Ok`, stores `record(&value)` for the retention — or
    /// releases the claim when `record` gives `None` (a result not to be kept); on `Err`,
    /// releases the claim. The operation's own result comes back whatever the store did, with
    /// what became of the claim.
    pub(crate) async fn run<T, E>(
        self,
        op: impl Future<Output = Result<T, E>>,
        record: impl FnOnce(&T) -> Option<Vec<u8>>,
    ) -> (Result<T, E>, Fate) {
        let (result, lease_end) = self.heartbeat_while(op).await;
        let fate = match &result {
            Ok(value) => match record(value) {
                Some(bytes) => self.complete(&bytes, lease_end).await,
                None => self.release(lease_end).await,
            },
            Err(_) => self.release(lease_end).await,
        };
        (result, fate)
    }

    /// Polls `op` to the end while renewing the lease every third of it; returns its output
    /// and when the lease ends as last renewed.
    pub(crate) async fn heartbeat_while<F: Future>(&self, op: F) -> (F::Output, Instant) {
        let started = Instant::now();
        let lease_end = std::sync::Mutex::new(floodwall_core::clock::deadline_after(self.lease));
        let interval = (self.lease / 3).max(Duration::from_millis(1));
        let heartbeat = async {
            let mut next = started;
            loop {
                next = floodwall_core::clock::deadline_after_from(next, interval);
                tokio::time::sleep_until(next).await;
                let asked = Instant::now();
                let renew = self.store.extend(self.key, self.token, self.lease);
                match self.metrics.timed(Op::Extend, renew).await {
                    Ok(Finish::Done) => {
                        *lease_end.lock().unwrap_or_else(|e| e.into_inner()) =
                            floodwall_core::clock::deadline_after_from(asked, self.lease);
                    }
                    Ok(Finish::Fenced) => {
                        tracing::warn!(
                            key = self.key,
                            "idempotency claim lost while its operation runs (its lease ran out)"
                        );
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(key = self.key, error = %e, "idempotency lease renewal failed")
                    }
                }
            }
        };
        let mut op = pin!(op);
        let mut heartbeat = pin!(heartbeat);
        let mut beating = true;
        let output = std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = op.as_mut().poll(cx) {
                return Poll::Ready(out);
            }
            if beating && heartbeat.as_mut().poll(cx).is_ready() {
                beating = false;
            }
            Poll::Pending
        })
        .await;
        let end = *lease_end.lock().unwrap_or_else(|e| e.into_inner());
        (output, end)
    }

    /// Stores the record, retrying a failed attempt until the lease ends.
    async fn complete(&self, record: &[u8], lease_end: Instant) -> Fate {
        let attempt = || {
            let call = self
                .store
                .complete(self.key, self.token, record, self.retention);
            self.metrics.timed(Op::Complete, call)
        };
        match retry_until(lease_end, attempt).await {
            Ok(Finish::Done) => Fate::Recorded,
            Ok(Finish::Fenced) => {
                tracing::warn!(
                    key = self.key,
                    "idempotency claim was lost before completion; result not stored"
                );
                self.metrics.unrecorded();
                Fate::Unrecorded
            }
            Err(e) => {
                tracing::warn!(key = self.key, error = %e, "could not store an idempotent result");
                self.metrics.unrecorded();
                Fate::Unrecorded
            }
        }
    }

    /// Releases the claim, retrying a failed attempt until the lease ends.
    pub(crate) async fn release(&self, lease_end: Instant) -> Fate {
        let attempt = || {
            let call = self.store.abort(self.key, self.token, Abort::Release);
            self.metrics.timed(Op::Abort, call)
        };
        match retry_until(lease_end, attempt).await {
            // Fenced: the lease ran out and the key is free already, or another caller has it.
            Ok(_) => Fate::Released,
            Err(e) => {
                tracing::warn!(key = self.key, error = %e, "could not release an idempotency claim");
                self.metrics.unreleased();
                Fate::Unreleased(e)
            }
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the next try would start after
/// `deadline`. Only failures that may pass by themselves ([`StoreError::is_transient`]) are
/// retried; the store's finishing steps are idempotent for the holder, so an attempt whose
/// reply was lost is safe to repeat.
async fn retry_until<T, F, Fut>(deadline: Instant, mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut pause = FIRST_PAUSE;
    loop {
        match attempt().await {
            Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            other => return other,
        }
    }
}
