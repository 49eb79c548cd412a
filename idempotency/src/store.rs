//! The [`Store`] trait and the in-memory store.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_core::clock::duration_to_nanos;
use floodwall_core::{Clock, StoreError, SystemClock};

use crate::record::{Abort, Begin, Fingerprint, Finish, Token};

/// Where claims and results live. Implemented by [`MemoryStore`] and (feature `redis`)
/// `RedisStore`, which all follow the protocol below.
///
/// # The protocol
///
/// Each key is absent, *in progress* (claimed by one holder, with a fencing token and a lease
/// that ends at `lease_until`), or *completed* (with a record and a retention TTL).
///
/// - `begin(key, fp, lease)`: a completed key answers its record (or `Mismatch` if `fp`
///   differs); a key in progress whose lease has not ended answers `InProgress` (or
///   `Mismatch`); otherwise — absent, released, or its lease over — the caller claims it
///   with a new, larger token.
/// - `complete(key, token, record, retention)`: stores the record if `token` is still the
///   key's claim (also up to [`COMPLETION_GRACE`] after its lease ended, as long as no one
///   took over), else `Fenced`.
/// - `abort(key, token, Release | Record)`: releases the claim or records a failure, under
///   the same token check.
/// - `extend(key, token, lease)`: renews the claim's lease to `lease` from now, under the same
///   token check — the holder's heartbeat while its operation runs.
///
/// Finishing is idempotent for the holder: repeating a `complete` or a release that already
/// took effect under the same token answers `Done` again, so a holder whose reply was lost
/// may safely try again.
///
/// Lease and retention are separate: the lease bounds how long a crashed holder blocks
/// retries; the retention how long a result is replayed.
pub trait Store: Send + Sync + 'static {
    /// Claims `key`, or reports its record, a holder, or a fingerprint mismatch.
    fn begin(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send;

    /// Stores `record` as `key`'s result if `token` still holds it.
    fn complete(
        &self,
        key: &str,
        token: Token,
        record: &[u8],
        retention: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send;

    /// Ends `token`'s claim on `key` without a result (release) or with a failure record.
    fn abort(
        &self,
        key: &str,
        token: Token,
        how: Abort<'_>,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send;

    /// Renews `token`'s claim on `key` for `lease` from now, or answers `Fenced` if the claim
    /// is no longer `token`'s.
    fn extend(
        &self,
        key: &str,
        token: Token,
        lease: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send;
}

impl<S: Store> Store for Arc<S> {
    fn begin(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send {
        (**self).begin(key, fingerprint, lease)
    }

    fn complete(
        &self,
        key: &str,
        token: Token,
        record: &[u8],
        retention: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        (**self).complete(key, token, record, retention)
    }

    fn abort(
        &self,
        key: &str,
        token: Token,
        how: Abort<'_>,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        (**self).abort(key, token, how)
    }

    fn extend(
        &self,
        key: &str,
        token: Token,
        lease: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        (**self).extend(key, token, lease)
    }
}

#[derive(Debug, Clone)]
enum State {
    InProgress {
        token: u64,
        fingerprint: Fingerprint,
        lease_until: u64,
    },
    Completed {
        /// The token that completed it: repeating the completion answers `Done` again.
        token: u64,
        fingerprint: Fingerprint,
        record: Arc<[u8]>,
    },
    /// Released by `token`, kept for [`COMPLETION_GRACE`] so that repeating the release
    /// answers `Done` again.
    Released { token: u64 },
}

#[derive(Debug, Clone)]
struct Entry {
    state: State,
    /// The entry is forgotten at this time.
    expires_at: u64,
}

/// How long after its lease ended a holder may still complete, if no one took the key over.
pub const COMPLETION_GRACE: Duration = Duration::from_secs(60);

/// The default bound on records a [`MemoryStore`] holds.
pub const DEFAULT_MAX_RECORDS: usize = 100_000;

const SHARDS: usize = 16;

/// An in-memory [`Store`] for one process (tests, single-instance services). Cheap to clone;
/// clones share the records.
///
/// Bounded: at most `max_records` keys (default [`DEFAULT_MAX_RECORDS`]); when full, expired
/// records are dropped, and if none has expired a new claim fails with
/// [`StoreError::Unavailable`] (the failure policy then applies) rather than forgetting a
/// result that may still be replayed.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<MemoryInner>,
}

struct MemoryInner {
    shards: Vec<Mutex<HashMap<String, Entry>>>,
    shard_cap: usize,
    tokens: AtomicU64,
    clock: Arc<dyn Clock>,
    hasher: RandomState,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("max_records", &(self.inner.shard_cap * SHARDS))
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// A store on the system clock holding at most [`DEFAULT_MAX_RECORDS`] records.
    pub fn new() -> Self {
        Self::with_clock(SystemClock::new(), DEFAULT_MAX_RECORDS)
    }

    /// A store on `clock` (a [`ManualClock`](floodwall_core::ManualClock) in tests) holding at
    /// most `max_records` records.
    pub fn with_clock(clock: impl Clock, max_records: usize) -> Self {
        MemoryStore {
            inner: Arc::new(MemoryInner {
                shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
                shard_cap: max_records.div_ceil(SHARDS).max(1),
                tokens: AtomicU64::new(1),
                clock: Arc::new(clock),
                hasher: RandomState::new(),
            }),
        }
    }

    /// Records held now (expired ones included until they are swept).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &str) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        let i = (self.inner.hasher.hash_one(key) as usize) % SHARDS;
        self.inner.shards[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn begin_now(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        let now = self.inner.clock.now_nanos();
        let mut map = self.shard(key);
        if let Some(e) = map.get(key) {
            if e.expires_at > now {
                match &e.state {
                    State::Completed {
                        fingerprint: fp,
                        record,
                        ..
                    } => {
                        return Ok(if fp == fingerprint {
                            Begin::Completed(record.to_vec())
                        } else {
                            Begin::Mismatch
                        });
                    }
                    State::InProgress {
                        fingerprint: fp,
                        lease_until,
                        ..
                    } if *lease_until > now => {
                        return Ok(if fp == fingerprint {
                            Begin::InProgress {
                                retry_after: Duration::from_nanos(lease_until - now),
                            }
                        } else {
                            Begin::Mismatch
                        });
                    }
                    State::InProgress { .. } | State::Released { .. } => {}
                }
            }
        } else if map.len() >= self.inner.shard_cap {
            map.retain(|_, e| e.expires_at > now);
            if map.len() >= self.inner.shard_cap {
                return Err(StoreError::unavailable(
                    "idempotency memory store is full of unexpired records",
                ));
            }
        }
        let token = self.inner.tokens.fetch_add(1, Ordering::Relaxed);
        let lease = duration_to_nanos(lease);
        map.insert(
            key.to_owned(),
            Entry {
                state: State::InProgress {
                    token,
                    fingerprint: *fingerprint,
                    lease_until: now.saturating_add(lease),
                },
                expires_at: now
                    .saturating_add(lease)
                    .saturating_add(duration_to_nanos(COMPLETION_GRACE)),
            },
        );
        Ok(Begin::Claimed(Token(token)))
    }

    pub(crate) fn extend_now(&self, key: &str, token: Token, lease: Duration) -> Finish {
        let now = self.inner.clock.now_nanos();
        let mut map = self.shard(key);
        match map.get_mut(key) {
            Some(Entry {
                state:
                    State::InProgress {
                        token: t,
                        lease_until,
                        ..
                    },
                expires_at,
            }) if *t == token.0 && *expires_at > now => {
                let lease = duration_to_nanos(lease);
                *lease_until = now.saturating_add(lease);
                *expires_at = now
                    .saturating_add(lease)
                    .saturating_add(duration_to_nanos(COMPLETION_GRACE));
                Finish::Done
            }
            _ => Finish::Fenced,
        }
    }

    pub(crate) fn finish_now(
        &self,
        key: &str,
        token: Token,
        outcome: Option<(&[u8], Duration)>,
    ) -> Finish {
        let now = self.inner.clock.now_nanos();
        let mut map = self.shard(key);
        let repeated = match map.get(key) {
            Some(Entry {
                state: State::Completed { token: t, .. },
                expires_at,
            }) => outcome.is_some() && *t == token.0 && *expires_at > now,
            Some(Entry {
                state: State::Released { token: t },
                expires_at,
            }) => outcome.is_none() && *t == token.0 && *expires_at > now,
            _ => false,
        };
        if repeated {
            return Finish::Done;
        }
        let held = matches!(
            map.get(key),
            Some(Entry { state: State::InProgress { token: t, .. }, expires_at })
                if *t == token.0 && *expires_at > now
        );
        if !held {
            return Finish::Fenced;
        }
        let e = map.get_mut(key).expect("checked above");
        let State::InProgress { fingerprint, .. } = e.state else {
            unreachable!("checked above")
        };
        match outcome {
            None => {
                e.state = State::Released { token: token.0 };
                e.expires_at = now.saturating_add(duration_to_nanos(COMPLETION_GRACE));
            }
            Some((record, retention)) => {
                e.state = State::Completed {
                    token: token.0,
                    fingerprint,
                    record: record.into(),
                };
                e.expires_at = now.saturating_add(duration_to_nanos(retention));
            }
        }
        Finish::Done
    }
}

impl Store for MemoryStore {
    fn begin(
        &self,
        key: &str,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send {
        std::future::ready(self.begin_now(key, fingerprint, lease))
    }

    fn complete(
        &self,
        key: &str,
        token: Token,
        record: &[u8],
        retention: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        std::future::ready(Ok(self.finish_now(key, token, Some((record, retention)))))
    }

    fn abort(
        &self,
        key: &str,
        token: Token,
        how: Abort<'_>,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        let outcome = match how {
            Abort::Release => None,
            Abort::Record { record, retention } => Some((record, retention)),
        };
        std::future::ready(Ok(self.finish_now(key, token, outcome)))
    }

    fn extend(
        &self,
        key: &str,
        token: Token,
        lease: Duration,
    ) -> impl Future<Output = Result<Finish, StoreError>> + Send {
        std::future::ready(Ok(self.extend_now(key, token, lease)))
    }
}
