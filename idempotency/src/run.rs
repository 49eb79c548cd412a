//! The plain API: [`Idempotency::run`] runs an operation at most once per key.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::StoreError;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::claim::{Claim, Fate};
use crate::metrics::{Counters, Op};
use crate::record::{Begin, Fingerprint, Kind, open, seal};
use crate::store::Store;

/// What to do when the key is already being run by another caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnConflict {
    /// Answer [`RunError::InProgress`] at once (the HTTP layer's 409).
    Reject,
    /// Wait up to this long for the other caller to finish, then replay its result; still
    /// in progress after that (or its lease ran out and this caller claimed the key), go on
    /// as usual.
    Wait(Duration),
}

/// A result, and whether it was produced now or replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome<T> {
    /// The operation ran now.
    Fresh(T),
    /// An earlier run's stored result.
    Replayed(T),
    /// The operation ran now, but its result could not be stored: the store failed until the
    /// claim's lease ended, or the lease ran out and another caller took the key over. A
    /// retry with the same key may run the operation again; act on the value, and tell the
    /// client so.
    Unrecorded(T),
}

impl<T> Outcome<T> {
    /// Whether it was replayed.
    pub fn is_replayed(&self) -> bool {
        matches!(self, Outcome::Replayed(_))
    }

    /// Whether it ran now but was not stored ([`Outcome::Unrecorded`]).
    pub fn is_unrecorded(&self) -> bool {
        matches!(self, Outcome::Unrecorded(_))
    }

    /// The value.
    pub fn into_inner(self) -> T {
        match self {
            Outcome::Fresh(v) | Outcome::Replayed(v) | Outcome::Unrecorded(v) => v,
        }
    }
}

/// Why [`Idempotency::run`] returned no result.
#[derive(Debug, thiserror::Error)]
pub enum RunError<E> {
    /// Another caller is running this key.
    #[error("an operation with this idempotency key is in progress; retry after {retry_after:?}")]
    InProgress {
        /// Time left on the other caller's lease.
        retry_after: Duration,
    },
    /// The key was used with a different payload.
    #[error("the idempotency key was used with a different payload")]
    FingerprintMismatch,
    /// The store could not be used: nothing was run (or, in a transactional run on
    /// PostgreSQL, the run's transaction did not commit, so nothing it wrote exists).
    #[error("idempotency store unavailable: {0}")]
    Store(#[source] StoreError),
    /// The operation ran and failed; its claim was released so a retry can run.
    #[error("{0}")]
    Operation(E),
    /// (Transactional runs on PostgreSQL.) The claim was lost before the run's transaction
    /// committed — its lease ran out and another caller took the key — so the transaction
    /// was rolled back: nothing this run wrote exists.
    #[error("the idempotency claim was lost before the transaction committed; nothing was written")]
    Fenced,
    /// The operation ran and failed, and its claim could not be released: retries are
    /// answered [`InProgress`](RunError::InProgress) until the claim's lease ends (at most
    /// one lease), then run.
    #[error("{error} (and the idempotency claim could not be released: {store})")]
    Unreleased {
        /// The operation's error.
        error: E,
        /// Why the release failed.
        store: StoreError,
    },
}

/// Runs operations at most once per key over a [`Store`]. Cheap to clone if the store is.
///
/// ```
/// use floodwall_idempotency::{Fingerprint, Idempotency, MemoryStore, Outcome};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let idem = Idempotency::new(MemoryStore::new());
/// let charge = || async { Ok::<_, std::io::Error>(format!("charged 42")) };
/// let fp = Fingerprint::of(b"amount=42");
/// let first = idem.run("order-7", &fp, charge).await.unwrap();
/// assert_eq!(first, Outcome::Fresh("charged 42".to_string()));
/// let again = idem.run("order-7", &fp, charge).await.unwrap();
/// assert_eq!(again, Outcome::Replayed("charged 42".to_string()));
/// # }
/// ```
#[derive(Clone)]
pub struct Idempotency<S> {
    store: S,
    lease: Duration,
    retention: Duration,
    on_conflict: OnConflict,
    name: Arc<str>,
    metrics: Arc<Counters>,
}

impl<S: fmt::Debug> fmt::Debug for Idempotency<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("store", &self.store)
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .field("on_conflict", &self.on_conflict)
            .field("name", &self.name)
            .finish()
    }
}

/// Builds an [`Idempotency`]: `Idempotency::builder(store).lease(..).build()?`.
#[must_use = "a builder does nothing until `build` is called"]
#[derive(Debug)]
pub struct IdempotencyBuilder<S> {
    inner: Idempotency<S>,
}

/// An [`IdempotencyBuilder`] setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid Idempotency `{field}`: {reason}")]
pub struct ConfigError {
    /// The setter whose value was rejected.
    pub field: &'static str,
    /// Why.
    pub reason: &'static str,
}

impl<S: Store> IdempotencyBuilder<S> {
    /// The claim's lease: how long a claim blocks other callers once its holder stops renewing
    /// it (crashed, or its `begin` reply was lost). While the operation runs, the lease is
    /// renewed every third of it, so it need not cover the operation's longest run. Default
    /// [`DEFAULT_LEASE`] (5 s); zero is rejected by `build`; `Duration::MAX` is capped by the
    /// store's own bound.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.inner.lease = lease;
        self
    }

    /// How long a result is replayed. Default 24 h; zero is rejected by `build`.
    pub fn retention(mut self, retention: Duration) -> Self {
        self.inner.retention = retention;
        self
    }

    /// The instance's name: the `idempotency` label of its metrics. Default
    /// `idempotency-<n>`, unique in the process.
    pub fn name(mut self, name: &str) -> Self {
        self.inner.name = name.into();
        self
    }

    /// What a concurrent duplicate gets. Default [`OnConflict::Reject`].
    pub fn on_conflict(mut self, on_conflict: OnConflict) -> Self {
        self.inner.on_conflict = on_conflict;
        self
    }

    /// Builds it, or names the setting that cannot work.
    pub fn build(self) -> Result<Idempotency<S>, ConfigError> {
        #[cfg(feature = "metrics")]
        crate::describe_metrics();
        if self.inner.lease.is_zero() {
            return Err(ConfigError {
                field: "lease",
                reason: "must be more than zero",
            });
        }
        if self.inner.retention.is_zero() {
            return Err(ConfigError {
                field: "retention",
                reason: "must be more than zero",
            });
        }
        let mut built = self.inner;
        built.metrics = Arc::new(Counters::named(&built.name));
        built.metrics.register();
        Ok(built)
    }
}

/// The default claim lease: a crashed holder blocks its key for at most this long after its
/// last renewal; a live one renews it every third of it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(5);

impl<S: Store> Idempotency<S> {
    /// Over `store`, with a [`DEFAULT_LEASE`] (5 s) lease renewed while the operation runs,
    /// 24 h retention and [`OnConflict::Reject`].
    pub fn new(store: S) -> Self {
        let idem = Self::unregistered(store);
        idem.metrics.register();
        idem
    }

    /// [`new`](Self::new)'s defaults, its series not yet registered (the builder registers
    /// them under the final name).
    fn unregistered(store: S) -> Self {
        #[cfg(feature = "metrics")]
        crate::describe_metrics();
        let name: Arc<str> = crate::metrics::default_name("idempotency").into();
        Idempotency {
            store,
            lease: DEFAULT_LEASE,
            retention: Duration::from_secs(24 * 3600),
            on_conflict: OnConflict::Reject,
            metrics: Arc::new(Counters::named(&name)),
            name,
        }
    }

    /// A builder over `store`, starting from [`new`](Self::new)'s defaults.
    pub fn builder(store: S) -> IdempotencyBuilder<S> {
        IdempotencyBuilder {
            inner: Self::unregistered(store),
        }
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The instance's name (its metrics' `idempotency` label).
    pub fn name(&self) -> &str {
        &self.name
    }

    #[cfg(any(feature = "http", feature = "postgres"))]
    pub(crate) fn counters(&self) -> &Counters {
        &self.metrics
    }

    #[cfg(feature = "http")]
    pub(crate) fn retention_duration(&self) -> Duration {
        self.retention
    }

    #[cfg(feature = "http")]
    pub(crate) fn lease_duration(&self) -> Duration {
        self.lease
    }

    /// Claims `key` or learns its state, waiting for a holder per the conflict policy.
    pub(crate) async fn begin_waiting(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
    ) -> Result<Begin, StoreError> {
        let deadline = match self.on_conflict {
            OnConflict::Reject => None,
            OnConflict::Wait(max) => Some(floodwall_core::clock::deadline_after(max)),
        };
        let mut pause = Duration::from_millis(5);
        loop {
            let call = self.store.begin(key, fingerprint, self.lease);
            let begin = self.metrics.timed(Op::Begin, call).await?;
            let Begin::InProgress { retry_after } = begin else {
                return Ok(begin);
            };
            let Some(deadline) = deadline else {
                return Ok(begin);
            };
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Ok(begin);
            }
            let wait = pause.min(retry_after).min(deadline - now);
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Claims `key` for a run (counted as an execution), or answers what a run may not
    /// start on: the stored result (`Err(Outcome::Replayed)`), a holder, a mismatch, or the
    /// store's failure.
    pub(crate) async fn claim<'a, T: DeserializeOwned, E>(
        &'a self,
        key: &'a str,
        fingerprint: &Fingerprint,
    ) -> Result<Result<Claim<'a, S>, Outcome<T>>, RunError<E>> {
        let token = match self
            .begin_waiting(key, fingerprint)
            .await
            .map_err(RunError::Store)?
        {
            Begin::Claimed(token) => token,
            Begin::Completed(record) => {
                let value = decode::<T>(&record).map_err(RunError::Store)?;
                self.metrics.replayed();
                return Ok(Err(Outcome::Replayed(value)));
            }
            Begin::InProgress { retry_after } => {
                self.metrics.conflict();
                return Err(RunError::InProgress { retry_after });
            }
            Begin::Mismatch => {
                self.metrics.mismatch();
                return Err(RunError::FingerprintMismatch);
            }
        };
        self.metrics.executed();
        Ok(Ok(Claim {
            store: &self.store,
            metrics: &self.metrics,
            key,
            token,
            lease: self.lease,
            retention: self.retention,
        }))
    }

    /// Runs `op` once for `key`: the first call runs it and stores its `Ok` value for the
    /// retention; later calls with the same key and fingerprint get that value back
    /// ([`Outcome::Replayed`]). An `Err` releases the claim (nothing is stored) so a retry can
    /// run. While `op` runs its claim's lease is renewed (see [`DEFAULT_LEASE`]); storing the
    /// result (or releasing the claim) is retried until the lease ends. A result the store
    /// could not take is [`Outcome::Unrecorded`]; a release that failed is
    /// [`RunError::Unreleased`] — never reported as if all went well.
    pub async fn run<T, E, F, Fut>(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        op: F,
    ) -> Result<Outcome<T>, RunError<E>>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let claim = match self.claim(key, fingerprint).await? {
            Ok(claim) => claim,
            Err(replayed) => return Ok(replayed),
        };
        claim.run_recorded(op()).await
    }
}

impl<S: Store> Claim<'_, S> {
    /// Runs `op` under this claim and stores its `Ok` value (JSON, in the envelope): the
    /// value, fresh or unrecorded, or why there is none.
    pub(crate) async fn run_recorded<T: Serialize, E>(
        self,
        op: impl Future<Output = Result<T, E>>,
    ) -> Result<Outcome<T>, RunError<E>> {
        let mut encoded = None;
        let (result, fate) = self
            .run(op, |value| match encode(value) {
                Ok(record) => Some(record),
                Err(e) => {
                    encoded = Some(e);
                    None
                }
            })
            .await;
        match (result, fate) {
            (Err(error), Fate::Unreleased(store)) => Err(RunError::Unreleased { error, store }),
            (Err(e), _) => Err(RunError::Operation(e)),
            (Ok(_), _) if encoded.is_some() => {
                Err(RunError::Store(encoded.expect("checked just now")))
            }
            (Ok(value), Fate::Recorded) => Ok(Outcome::Fresh(value)),
            (Ok(value), _) => Ok(Outcome::Unrecorded(value)),
        }
    }
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let json = serde_json::to_vec(value).map_err(|e| StoreError::Codec(e.to_string()))?;
    Ok(seal(Kind::Ok, &json))
}

pub(crate) fn decode<T: DeserializeOwned>(record: &[u8]) -> Result<T, StoreError> {
    match open(record)? {
        (Kind::Ok, json) => {
            serde_json::from_slice(json).map_err(|e| StoreError::Codec(e.to_string()))
        }
        (kind, _) => Err(StoreError::Codec(format!(
            "expected a stored result, found a {kind:?} record"
        ))),
    }
}
