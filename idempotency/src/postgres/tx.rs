//! Transactional runs: the stored result commits with the business writes, and phased runs
//! that resume from their last committed recovery point.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use floodwall_core::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::PgConnection;

use super::{Args, Extra, PostgresStore, Step};
use crate::claim::Fate;
use crate::record::{Abort, Finish, Token};
use crate::run::{Idempotency, Outcome, RunError, encode};
use crate::store::Store;

/// The future an operation inside a transaction returns: boxed, borrowing the transaction's
/// connection for `'c`. Write it as `Box::pin(async move { … })`.
pub type TxFuture<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// Why a run failed inside its transaction.
enum TxFail<E> {
    Operation(E),
    Fenced,
    Store(StoreError),
}

/// Releases a claim whose run was dropped midway (its task aborted): the transaction rolled
/// back with its connection, and the release lets a retry run at once instead of after the
/// lease. Without a runtime left, the lease ends it.
struct ReleaseOnDrop {
    store: PostgresStore,
    key: String,
    token: Token,
    armed: bool,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            let key = std::mem::take(&mut self.key);
            let token = self.token;
            rt.spawn(async move {
                let _ = store.abort(&key, token, Abort::Release).await;
            });
        }
    }
}

impl Idempotency<PostgresStore> {
    /// Runs `op` once for `key` inside one PostgreSQL transaction that also stores its
    /// result: the business writes `op` makes on the transaction and the recorded result
    /// commit together, or neither does.
    ///
    /// - `op` fails: the transaction rolls back and the claim is released
    ///   ([`RunError::Operation`]); a retry runs again, against a database without the
    ///   failed run's writes.
    /// - The process dies or the task is dropped before the commit: PostgreSQL rolls the
    ///   transaction back; the claim is released (dropped task) or its lease ends (dead
    ///   process).
    /// - The claim's lease ran out and another caller took the key before the commit: the
    ///   completion is refused inside the transaction, which rolls back
    ///   ([`RunError::Fenced`]) — the other caller's result stands.
    /// - The commit's reply is lost: the row is read back; if the result is there the run
    ///   answers it, else [`RunError::Store`] (and nothing was written).
    ///
    /// A retry with the same key and fingerprint gets the committed value
    /// ([`Outcome::Replayed`]). The claim's lease is renewed while `op` runs.
    pub async fn run_in_transaction<T, E, F>(
        &self,
        key: &str,
        fingerprint: &crate::Fingerprint,
        op: F,
    ) -> Result<Outcome<T>, RunError<E>>
    where
        T: Serialize + DeserializeOwned + Send,
        F: for<'c> FnOnce(&'c mut PgConnection) -> TxFuture<'c, T, E>,
    {
        let claim = match self.claim(key, fingerprint).await? {
            Ok(claim) => claim,
            Err(replayed) => return Ok(replayed),
        };
        let store = self.store();
        let mut guard = ReleaseOnDrop {
            store: store.clone(),
            key: key.to_owned(),
            token: claim.token,
            armed: true,
        };
        let retention = claim.retention;
        let work = committed(store, key, claim.token, retention, op);
        let (result, lease_end) = claim.heartbeat_while(work).await;
        guard.armed = false;
        match result {
            Ok(value) => Ok(Outcome::Fresh(value)),
            Err(TxFail::Fenced) => {
                self.counters().unrecorded();
                Err(RunError::Fenced)
            }
            Err(TxFail::Operation(error)) => match claim.release(lease_end).await {
                Fate::Unreleased(store) => Err(RunError::Unreleased { error, store }),
                _ => Err(RunError::Operation(error)),
            },
            Err(TxFail::Store(e)) => {
                claim.release(lease_end).await;
                Err(RunError::Store(e))
            }
        }
    }

    /// Runs a multi-phase operation once for `key`, resuming from the last recovery point an
    /// earlier attempt committed. Each phase is its own transaction that also records the
    /// point reached ([`Phases::commit`]); calls to outside systems (a payment API) go
    /// between phases. An attempt that fails or dies after a phase leaves the point behind,
    /// and the retry — same key, same fingerprint — sees it in [`Phases::reached`] and skips
    /// what was done. The final value is stored as in [`run`](Idempotency::run).
    ///
    /// The pattern (Stripe's "atomic phases"): phase 1 records the intent (an order row);
    /// the outside call is made with an idempotency key of its own (so repeating it is
    /// safe); phase 2 records its answer. A retry after phase 2 never calls out again.
    ///
    /// ```no_run
    /// # async fn charge_card(order: &str) -> Result<String, String> { Ok(String::new()) }
    /// # async fn demo(idem: floodwall_idempotency::Idempotency<floodwall_idempotency::postgres::PostgresStore>)
    /// # -> Result<(), Box<dyn std::error::Error>> {
    /// use floodwall_idempotency::Fingerprint;
    ///
    /// let fp = Fingerprint::of(b"order-5:4200");
    /// let receipt = idem
    ///     .run_phased("order-5", &fp, |mut phases| async move {
    ///         if phases.reached().is_none() {
    ///             phases
    ///                 .commit("order_created", |tx| Box::pin(async move {
    ///                     sqlx::query("INSERT INTO orders (id) VALUES ('order-5')")
    ///                         .execute(&mut *tx)
    ///                         .await
    ///                 }))
    ///                 .await
    ///                 .map_err(|e| e.to_string())?;
    ///         }
    ///         if phases.reached() == Some("order_created") {
    ///             // Outside the database: the payment API, with its own idempotency key.
    ///             let charge = charge_card("order-5").await?;
    ///             phases
    ///                 .commit("charged", |tx| Box::pin(async move {
    ///                     sqlx::query("UPDATE orders SET charge = $1 WHERE id = 'order-5'")
    ///                         .bind(charge)
    ///                         .execute(&mut *tx)
    ///                         .await
    ///                 }))
    ///                 .await
    ///                 .map_err(|e| e.to_string())?;
    ///         }
    ///         Ok::<_, String>("paid".to_string())
    ///     })
    ///     .await?;
    /// # let _ = receipt; Ok(()) }
    /// ```
    pub async fn run_phased<T, E, F, Fut>(
        &self,
        key: &str,
        fingerprint: &crate::Fingerprint,
        op: F,
    ) -> Result<Outcome<T>, RunError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce(Phases) -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let claim = match self.claim(key, fingerprint).await? {
            Ok(claim) => claim,
            Err(replayed) => return Ok(replayed),
        };
        let store = self.store();
        let stored_key = PostgresStore::stored_key(key);
        let reached = match store.reached(&stored_key, claim.token).await {
            Ok(reached) => reached,
            Err(e) => {
                claim
                    .release(floodwall_core::clock::deadline_after(claim.lease))
                    .await;
                return Err(RunError::Store(e));
            }
        };
        let phases = Phases {
            store: store.clone(),
            key: stored_key,
            token: claim.token,
            retention: claim.retention,
            reached,
        };
        claim.run_recorded(op(phases)).await
    }
}

/// `op` in a transaction that stores its encoded result under `token` and commits.
async fn committed<T, E, F>(
    store: &PostgresStore,
    key: &str,
    token: Token,
    retention: Duration,
    op: F,
) -> Result<T, TxFail<E>>
where
    T: Serialize,
    F: for<'c> FnOnce(&'c mut PgConnection) -> TxFuture<'c, T, E>,
{
    let stored_key = PostgresStore::stored_key(key);
    let mut tx = store
        .bounded(store.pool().begin())
        .await
        .map_err(TxFail::Store)?;
    let value = op(&mut tx).await.map_err(TxFail::Operation)?;
    let record = encode(&value).map_err(TxFail::Store)?;
    let args = Args {
        key: &stored_key,
        token,
        extra: Extra::Record(&record, retention),
    };
    match store.finish_on(&mut *tx, Step::Complete, args).await {
        Ok(Finish::Done) => {}
        Ok(Finish::Fenced) => return Err(TxFail::Fenced),
        Err(e) => return Err(TxFail::Store(e)),
    }
    match store.bounded(tx.commit()).await {
        Ok(()) => Ok(value),
        // The commit's reply was lost: it may have landed. The row tells.
        Err(e) => match store.completed_by(&stored_key, token).await {
            Ok(true) => Ok(value),
            _ => Err(TxFail::Store(e)),
        },
    }
}

/// A phased run's handle: where an earlier attempt got to, and how to commit the next phase.
#[derive(Debug)]
pub struct Phases {
    store: PostgresStore,
    key: Vec<u8>,
    token: Token,
    retention: Duration,
    reached: Option<String>,
}

/// Why [`Phases::commit`] did not commit its phase.
#[derive(Debug, thiserror::Error)]
pub enum PhaseError<E> {
    /// The phase's operation failed; its transaction rolled back.
    #[error("{0}")]
    Operation(E),
    /// The claim was lost (its lease ran out and another caller took the key); the phase's
    /// transaction rolled back.
    #[error("the idempotency claim was lost; the phase was not committed")]
    Fenced,
    /// The database failed; the phase did not commit (or its commit's reply was lost).
    #[error("idempotency store unavailable: {0}")]
    Store(#[source] StoreError),
}

impl Phases {
    /// The last recovery point an earlier attempt of this key committed (or this attempt, once
    /// it committed one); `None` for a first attempt.
    pub fn reached(&self) -> Option<&str> {
        self.reached.as_deref()
    }

    /// Runs `op` in a transaction that also records `point` as reached, and commits: both or
    /// neither. The row is then kept at least the run's retention, so a retry much later
    /// still resumes from `point`.
    pub async fn commit<R, E, F>(&mut self, point: &str, op: F) -> Result<R, PhaseError<E>>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> TxFuture<'c, R, E>,
    {
        let store = &self.store;
        let mut tx = store
            .bounded(store.pool().begin())
            .await
            .map_err(PhaseError::Store)?;
        let value = op(&mut tx).await.map_err(PhaseError::Operation)?;
        let args = Args {
            key: &self.key,
            token: self.token,
            extra: Extra::Point(point, self.retention),
        };
        match store.finish_on(&mut *tx, Step::Reach, args).await {
            Ok(Finish::Done) => {}
            Ok(Finish::Fenced) => return Err(PhaseError::Fenced),
            Err(e) => return Err(PhaseError::Store(e)),
        }
        store
            .bounded(tx.commit())
            .await
            .map_err(PhaseError::Store)?;
        self.reached = Some(point.to_owned());
        Ok(value)
    }
}
