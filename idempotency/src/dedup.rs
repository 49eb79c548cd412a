//! [`Deduplicator`]: process each queue message at most once within a window.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use crate::claim::{Claim, Fate};
use crate::record::{Begin, Fingerprint, Kind, open, seal};
use crate::run::RunError;
use crate::store::Store;

/// What [`Deduplicator::process`] did with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<T> {
    /// The message was processed now.
    Done(T),
    /// It had been processed already (within the window): skipped.
    Duplicate,
    /// It was processed now, but that could not be recorded (the store failed until the
    /// claim's lease ended, or the lease ran out under it): a redelivery may process it again.
    Unrecorded(T),
}

/// Consumer-side deduplication for at-least-once queues: each message id is processed at
/// most once within `window`, with the same claim, lease and fencing as
/// [`Idempotency`](crate::Idempotency). A redelivery while the first delivery is still being
/// processed gets [`RunError::InProgress`] (leave it for redelivery); a failed processing
/// releases the id so the redelivery runs.
///
/// ```
/// use std::time::Duration;
/// use floodwall_idempotency::{Deduplicator, MemoryStore, Processed};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let dedup = Deduplicator::new(MemoryStore::new(), Duration::from_secs(3600));
/// let first = dedup.process("msg-1", || async { Ok::<_, std::io::Error>(1) }).await.unwrap();
/// assert_eq!(first, Processed::Done(1));
/// let again = dedup.process("msg-1", || async { Ok::<_, std::io::Error>(2) }).await.unwrap();
/// assert_eq!(again, Processed::Duplicate);
/// # }
/// ```
#[derive(Clone)]
pub struct Deduplicator<S> {
    store: S,
    window: Duration,
    lease: Duration,
    name: std::sync::Arc<str>,
    metrics: std::sync::Arc<crate::metrics::Counters>,
}

impl<S: fmt::Debug> fmt::Debug for Deduplicator<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deduplicator")
            .field("store", &self.store)
            .field("window", &self.window)
            .field("lease", &self.lease)
            .field("name", &self.name)
            .finish()
    }
}

impl<S: Store> Deduplicator<S> {
    /// Remembers processed ids for `window`; a processing claim lasts 60 s.
    pub fn new(store: S, window: Duration) -> Self {
        let name: std::sync::Arc<str> = crate::metrics::default_name("dedup").into();
        Deduplicator {
            store,
            window,
            lease: crate::run::DEFAULT_LEASE,
            metrics: std::sync::Arc::new(crate::metrics::Counters::named(&name)),
            name,
        }
    }

    /// The instance's name: the `idempotency` label of its metrics (its series exist from
    /// its first message on). Default `dedup-<n>`, unique in the process.
    pub fn name(mut self, name: &str) -> Self {
        self.name = name.into();
        self.metrics = std::sync::Arc::new(crate::metrics::Counters::named(name));
        self
    }

    /// How long a processing claim blocks redeliveries once the consumer stops renewing it
    /// (it died): renewed every third of it while the message is processed. Default
    /// [`DEFAULT_LEASE`](crate::DEFAULT_LEASE) (5 s).
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Processes the message `id` with `op` unless it was processed already.
    pub async fn process<T, E, F, Fut>(&self, id: &str, op: F) -> Result<Processed<T>, RunError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.metrics.register();
        let begin = self.store.begin(id, &Fingerprint::NONE, self.lease);
        let token = match self
            .metrics
            .timed(crate::metrics::Op::Begin, begin)
            .await
            .map_err(RunError::Store)?
        {
            Begin::Claimed(token) => token,
            Begin::Completed(record) => {
                open(&record).map_err(RunError::Store)?;
                self.metrics.duplicate();
                return Ok(Processed::Duplicate);
            }
            Begin::InProgress { retry_after } => return Err(RunError::InProgress { retry_after }),
            Begin::Mismatch => return Err(RunError::FingerprintMismatch),
        };
        let claim = Claim {
            store: &self.store,
            metrics: &self.metrics,
            key: id,
            token,
            lease: self.lease,
            retention: self.window,
        };
        match claim.run(op(), |_| Some(seal(Kind::Done, &[]))).await {
            (Ok(value), Fate::Recorded) => Ok(Processed::Done(value)),
            (Ok(value), _) => Ok(Processed::Unrecorded(value)),
            (Err(error), Fate::Unreleased(store)) => Err(RunError::Unreleased { error, store }),
            (Err(e), _) => Err(RunError::Operation(e)),
        }
    }
}
