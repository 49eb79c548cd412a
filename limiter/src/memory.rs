//! The memory store of a [`RateLimiter`](crate::RateLimiter)'s limits: one bounded keyed
//! table for all of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use floodwall_core::Clock;

use crate::algorithm::{Receipt, State, period_nanos};
use crate::keyed::Table;
use crate::{Algorithm, Decision, Quota};

/// Keys up to this many bytes are kept as they are (an IPv6 address, a UUID, most API keys);
/// longer ones as their SHA-256.
pub(crate) const MAX_PLAIN_KEY: usize = 46;

/// A key as a lookup sees it: its bytes when at most [`MAX_PLAIN_KEY`] long, else its
/// SHA-256 — a different variant, so the two forms never meet — so what the store holds per
/// key does not grow with keys a client chooses.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyView<'a> {
    Plain(&'a [u8]),
    Digest([u8; 32]),
}

impl KeyView<'_> {
    #[inline]
    pub(crate) fn of(key: &str) -> KeyView<'_> {
        if key.len() <= MAX_PLAIN_KEY {
            return KeyView::Plain(key.as_bytes());
        }
        Self::digest(key)
    }

    #[cold]
    fn digest(key: &str) -> KeyView<'_> {
        use sha2::Digest;
        KeyView::Digest(sha2::Sha256::digest(key.as_bytes()).into())
    }
}

const PLAIN: u8 = 0;
const DIGEST: u8 = 1;

/// The bytes, then a byte naming the form: hashed as the last part of `(limit, key)`, which
/// needs no length prefix (equality, not the hash, tells keys apart).
impl std::hash::Hash for KeyView<'_> {
    #[inline]
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        match self {
            KeyView::Plain(b) => {
                state.write(b);
                state.write_u8(PLAIN);
            }
            KeyView::Digest(d) => {
                state.write(d);
                state.write_u8(DIGEST);
            }
        }
    }
}

/// Plain keys up to this many bytes (an IPv4 address, a numeric id) sit in the entry itself.
const INLINE: usize = 22;

/// How the store keeps a key: a short one inside the entry (no allocation, and no pointer
/// to follow when a lookup compares keys), a longer one in an allocation of its own. The
/// entry stays at 64 bytes — the table's lookups are bound by memory traffic.
pub(crate) enum StoredKey {
    Inline { len: u8, bytes: [u8; INLINE] },
    Plain(Box<[u8]>),
    Digest(Box<[u8; 32]>),
}

impl StoredKey {
    fn new(view: KeyView<'_>) -> StoredKey {
        match view {
            KeyView::Plain(b) if b.len() <= INLINE => {
                let mut bytes = [0u8; INLINE];
                bytes[..b.len()].copy_from_slice(b);
                StoredKey::Inline {
                    len: b.len() as u8,
                    bytes,
                }
            }
            KeyView::Plain(b) => StoredKey::Plain(b.into()),
            KeyView::Digest(d) => StoredKey::Digest(Box::new(d)),
        }
    }

    /// Whether this is the key `view` looks for.
    #[inline]
    fn is(&self, view: &KeyView<'_>) -> bool {
        match (self, view) {
            (StoredKey::Inline { len, bytes }, KeyView::Plain(b)) => {
                &bytes[..usize::from(*len)] == *b
            }
            (StoredKey::Plain(k), KeyView::Plain(b)) => &**k == *b,
            (StoredKey::Digest(k), KeyView::Digest(d)) => **k == *d,
            _ => false,
        }
    }

    /// Heap bytes it owns.
    fn heap(&self) -> usize {
        match self {
            StoredKey::Inline { .. } => 0,
            StoredKey::Plain(k) => k.len(),
            StoredKey::Digest(_) => 32,
        }
    }
}

pub(crate) struct Memory {
    table: Table<(u32, StoredKey), (State, AtomicU64)>,
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
        params: Option<&crate::gcra::Params>,
        key: &str,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> (Decision, Receipt) {
        let key = KeyView::of(key);
        let hash = self.table.hash(&(idx, key));
        let period = period_nanos(quota);
        if !consume {
            return self
                .table
                .get(
                    hash,
                    |k| k.0 == idx && k.1.is(&key),
                    |(s, _)| s.decide(algorithm, quota, params, now, cost, false),
                )
                .unwrap_or_else(|| {
                    State::new(algorithm).decide(algorithm, quota, params, now, cost, false)
                });
        }
        self.with_entry(idx, algorithm, key, hash, period, now, |s| {
            s.decide(algorithm, quota, params, now, cost, true)
        })
    }

    /// Runs `f` on the state of (`idx`, `key`) — a stored key, hashed as `hash` — made fresh
    /// if absent, with the period it is swept by kept current.
    #[allow(clippy::too_many_arguments)]
    fn with_entry<R>(
        &self,
        idx: u32,
        algorithm: Algorithm,
        key: KeyView<'_>,
        hash: u64,
        period: u64,
        now: u64,
        f: impl FnOnce(&State) -> R,
    ) -> R {
        self.table.with(
            hash,
            |k| k.0 == idx && k.1.is(&key),
            || {
                (
                    (idx, StoredKey::new(key)),
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
        let key = KeyView::of(key);
        let hash = self.table.hash(&(idx, key));
        let period = period_nanos(quota);
        self.with_entry(idx, algorithm, key, hash, period, now, |s| {
            s.seed(quota, now, used)
        });
    }

    pub(crate) fn refund(&self, idx: u32, quota: &Quota, key: &str, receipt: Receipt) {
        let key = KeyView::of(key);
        let hash = self.table.hash(&(idx, key));
        self.table.get(
            hash,
            |k| k.0 == idx && k.1.is(&key),
            |(s, _)| s.refund(quota, receipt),
        );
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn approx_memory(&self) -> usize {
        self.table.approx_memory(|k| k.1.heap())
    }

    /// The bound for keys of at most `max_key_len` bytes: short keys sit in the entries, the
    /// others take one allocation (malloc's chunk: the bytes plus an 8-byte header, in
    /// 16-byte steps, at least 32) of at most [`MAX_PLAIN_KEY`] bytes — a longer key is kept
    /// as a 32-byte digest — so the bound stops growing at [`MAX_PLAIN_KEY`].
    pub(crate) fn memory_bound(&self, max_key_len: usize) -> usize {
        let chunk = |n: usize| (n + 8).next_multiple_of(16).max(32);
        let heap = match max_key_len {
            0..=INLINE => 0,
            n => chunk(n.min(MAX_PLAIN_KEY)),
        };
        self.table.memory_bound(heap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout the module docs and the memory bound describe: a GCRA entry is one
    /// 64-byte cache line's worth, short keys inline.
    #[test]
    fn an_entry_is_64_bytes() {
        type E = crate::keyed::Entry<(u32, StoredKey), (State, AtomicU64)>;
        assert_eq!(std::mem::size_of::<E>(), 64);
        let k = StoredKey::new(KeyView::of("203.0.113.255"));
        assert_eq!(k.heap(), 0);
        assert!(k.is(&KeyView::of("203.0.113.255")));
        assert!(!k.is(&KeyView::of("203.0.113.25")));
        let long = "x".repeat(47);
        assert!(StoredKey::new(KeyView::of(&long)).is(&KeyView::of(&long)));
    }
}
