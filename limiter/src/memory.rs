//! The memory store of a [`RateLimiter`](crate::RateLimiter)'s limits: one bounded keyed
//! table for all of them.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use floodwall_core::Clock;

use crate::algorithm::{Receipt, State, period_nanos};
use crate::keyed::Table;
use crate::{Algorithm, Decision, Quota};

/// Keys up to this many bytes are kept as they are; longer ones as [`stored_key`]'s digest.
pub(crate) const MAX_PLAIN_KEY: usize = 64;

/// The form a key is kept in: itself when at most [`MAX_PLAIN_KEY`] bytes, else `#` and the
/// hex SHA-256 of the key — 65 bytes, a length no plain key has, so the two never collide —
/// so what a store holds per key does not grow with keys a client chooses.
pub(crate) fn stored_key(key: &str) -> Cow<'_, str> {
    if key.len() <= MAX_PLAIN_KEY {
        return Cow::Borrowed(key);
    }
    use sha2::Digest;
    use std::fmt::Write;
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut out = String::with_capacity(MAX_PLAIN_KEY + 1);
    out.push('#');
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    Cow::Owned(out)
}

/// A memory store for a set of limits: one bounded keyed table for all of them.
pub(crate) struct Memory {
    table: Table<(u32, Box<str>), (State, AtomicU64)>,
    clock: Arc<dyn Clock>,
}

impl Memory {
    pub(crate) fn new(max_keys: usize, clock: Arc<dyn Clock>) -> Memory {
        Memory {
            table: Table::new(max_keys, Default::default()),
            clock,
        }
    }

    pub(crate) fn now(&self) -> u64 {
        self.clock.now_nanos()
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn decide(
        &self,
        idx: u32,
        algorithm: Algorithm,
        quota: &Quota,
        key: &str,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> (Decision, Receipt) {
        let key = &*stored_key(key);
        let hash = self.table.hash(&(idx, key));
        let period = period_nanos(quota);
        if !consume {
            return self
                .table
                .get(
                    hash,
                    |k| k.0 == idx && &*k.1 == key,
                    |(s, _)| s.decide(algorithm, quota, now, cost, false),
                )
                .unwrap_or_else(|| {
                    State::new(algorithm).decide(algorithm, quota, now, cost, false)
                });
        }
        self.with_entry(idx, algorithm, key, hash, period, now, |s| {
            s.decide(algorithm, quota, now, cost, true)
        })
    }

    /// Runs `f` on the state of (`idx`, `key`) — a stored key, hashed as `hash` — made fresh
    /// if absent, with the period it is swept by kept current.
    #[allow(clippy::too_many_arguments)]
    fn with_entry<R>(
        &self,
        idx: u32,
        algorithm: Algorithm,
        key: &str,
        hash: u64,
        period: u64,
        now: u64,
        f: impl FnOnce(&State) -> R,
    ) -> R {
        self.table.with(
            hash,
            |k| k.0 == idx && &*k.1 == key,
            || {
                (
                    (idx, key.into()),
                    (State::new(algorithm), AtomicU64::new(period)),
                )
            },
            |(s, p)| s.idle_at(p.load(Ordering::Relaxed)),
            now,
            |(s, p)| {
                if p.load(Ordering::Relaxed) != period {
                    p.store(period, Ordering::Relaxed);
                }
                f(s)
            },
        )
    }

    /// Makes `key`'s state for limit `idx` count at least `used` of `quota` (see
    /// [`State::seed`]).
    pub(crate) fn seed(
        &self,
        idx: u32,
        algorithm: Algorithm,
        quota: &Quota,
        key: &str,
        now: u64,
        used: u32,
    ) {
        if used == 0 {
            // Nothing to carry over: a fresh state says as much, without an entry.
            return;
        }
        let key = &*stored_key(key);
        let hash = self.table.hash(&(idx, key));
        let period = period_nanos(quota);
        self.with_entry(idx, algorithm, key, hash, period, now, |s| {
            s.seed(quota, now, used)
        });
    }

    pub(crate) fn refund(&self, idx: u32, quota: &Quota, key: &str, receipt: Receipt) {
        let key = &*stored_key(key);
        let hash = self.table.hash(&(idx, key));
        self.table.get(
            hash,
            |k| k.0 == idx && &*k.1 == key,
            |(s, _)| s.refund(quota, receipt),
        );
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn approx_memory(&self) -> usize {
        self.table.approx_memory(|k| k.1.len())
    }

    pub(crate) fn memory_bound(&self, max_key_len: usize) -> usize {
        // A boxed key's allocation, rounded up the way malloc does (16-byte classes plus its
        // header); a long key is kept as its 65-byte digest.
        let kept = max_key_len.min(MAX_PLAIN_KEY + 1);
        self.table.memory_bound(kept.next_multiple_of(16) + 16)
    }
}
