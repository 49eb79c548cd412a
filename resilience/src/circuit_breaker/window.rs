//! Lock-free sliding windows of call outcomes.
//!
//! Both windows keep three counters — calls, failures, slow calls — packed into one `u64`
//! (21 bits each), so recording an outcome is one or two atomic operations and reading the
//! totals is one load per bucket.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};

const FIELD_BITS: u32 = 21;
const FIELD_MASK: u64 = (1 << FIELD_BITS) - 1;
/// Largest count a window field holds: the cap on a count window's size and on calls per
/// second in one bucket of a time window.
pub(crate) const FIELD_MAX: u64 = FIELD_MASK;
const NANOS_PER_SEC: u64 = 1_000_000_000;

/// Totals over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Totals {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

impl Totals {
    fn unpack(w: u64) -> Totals {
        Totals {
            calls: w & FIELD_MASK,
            failures: (w >> FIELD_BITS) & FIELD_MASK,
            slow: (w >> (2 * FIELD_BITS)) & FIELD_MASK,
        }
    }

    fn add(&mut self, o: Totals) {
        self.calls += o.calls;
        self.failures += o.failures;
        self.slow += o.slow;
    }
}

/// One recorded outcome, packed as a window word (calls = 1).
#[inline]
fn pack(failure: bool, slow: bool) -> u64 {
    1 | (u64::from(failure) << FIELD_BITS) | (u64::from(slow) << (2 * FIELD_BITS))
}

/// Slot encoding for the count window: 0 = empty.
#[inline]
fn slot_bits(failure: bool, slow: bool) -> u8 {
    1 | (u8::from(failure) << 1) | (u8::from(slow) << 2)
}

#[inline]
fn slot_word(bits: u8) -> u64 {
    if bits == 0 {
        0
    } else {
        pack(bits & 2 != 0, bits & 4 != 0)
    }
}

/// The last `size` recorded calls.
#[derive(Debug)]
pub(crate) struct CountWindow {
    slots: Box<[AtomicU8]>,
    /// `u64::MAX / size + 1`, for a division-free `cursor % size` (Lemire's fastmod).
    fastmod: u64,
    cursor: AtomicU32,
    totals: AtomicU64,
}

impl CountWindow {
    pub(crate) fn new(size: usize) -> Self {
        let size = size.clamp(1, FIELD_MAX as usize);
        CountWindow {
            slots: (0..size).map(|_| AtomicU8::new(0)).collect(),
            fastmod: (u64::MAX / size as u64).wrapping_add(1),
            cursor: AtomicU32::new(0),
            totals: AtomicU64::new(0),
        }
    }

    /// `c % size` without a division (exact for every `u32`).
    #[inline]
    fn slot_of(&self, c: u32) -> usize {
        let low = self.fastmod.wrapping_mul(u64::from(c));
        ((u128::from(low) * self.slots.len() as u128) >> 64) as usize
    }

    /// Records one outcome. Returns whether the totals changed (they do not when the outcome
    /// replaces an identical one in a full window, the steady state of a healthy service).
    ///
    /// A success in a full window of successes (totals `size` calls, no failure, no slow
    /// call) writes nothing, not even the cursor: every slot holds a success, so the ring
    /// reads the same whichever slot it replaces, and a later outcome still leaves the window
    /// exactly `size` calls after it came in. A healthy service's calls then only read the
    /// window, and threads sharing a breaker do not contend on its cursor.
    #[inline(always)]
    pub(crate) fn record(&self, failure: bool, slow: bool) -> bool {
        if !failure && !slow && self.totals.load(Ordering::Acquire) == self.slots.len() as u64 {
            return false;
        }
        // The cursor wraps at 2^32; when size does not divide 2^32 the ring skips ahead once
        // every 4 billion calls, replacing a few outcomes early. Totals stay exact.
        let i = self.slot_of(self.cursor.fetch_add(1, Ordering::Relaxed));
        let new = slot_bits(failure, slow);
        let slot = &self.slots[i];
        if slot.load(Ordering::Acquire) == new {
            return false;
        }
        let old = slot.swap(new, Ordering::AcqRel);
        // Packed fields add linearly modulo 2^64, so one add applies the whole difference.
        let delta = slot_word(new).wrapping_sub(slot_word(old));
        self.totals.fetch_add(delta, Ordering::AcqRel);
        true
    }

    pub(crate) fn totals(&self) -> Totals {
        Totals::unpack(self.totals.load(Ordering::Acquire))
    }

    pub(crate) fn reset(&self) {
        for s in self.slots.iter() {
            s.store(0, Ordering::Relaxed);
        }
        self.cursor.store(0, Ordering::Relaxed);
        self.totals.store(0, Ordering::Release);
    }

    /// The recorded outcomes, oldest first, as `(failure, slow)`.
    pub(crate) fn outcomes(&self) -> Vec<(bool, bool)> {
        let size = self.slots.len();
        let next = self.slot_of(self.cursor.load(Ordering::Acquire));
        (0..size)
            .map(|i| self.slots[(next + i) % size].load(Ordering::Acquire))
            .filter(|&bits| bits != 0)
            .map(|bits| (bits & 2 != 0, bits & 4 != 0))
            .collect()
    }

    /// Replaces the window's contents with `outcomes`, oldest first (the last `size` kept).
    pub(crate) fn restore(&self, outcomes: &[(bool, bool)]) {
        self.reset();
        let keep = &outcomes[outcomes.len().saturating_sub(self.slots.len())..];
        let mut totals = 0u64;
        for (i, &(failure, slow)) in keep.iter().enumerate() {
            let bits = slot_bits(failure, slow);
            self.slots[i].store(bits, Ordering::Relaxed);
            totals = totals.wrapping_add(slot_word(bits));
        }
        self.cursor.store(keep.len() as u32, Ordering::Relaxed);
        self.totals.store(totals, Ordering::Release);
    }
}

#[derive(Debug, Default)]
struct Bucket {
    /// Second index + 1 this bucket counts; 0 = never used.
    tag: AtomicU64,
    counts: AtomicU64,
}

/// Calls recorded in the last `seconds` whole clock seconds (the current one included).
///
/// Buckets are aligned to clock seconds: a call at time `t` ns counts in second
/// `t / 1_000_000_000`, and the window at time `t` covers seconds
/// `t/1e9 - seconds + 1 ..= t/1e9`. A call recorded in the instant its bucket is recycled may
/// be counted in the neighbouring second; totals are otherwise exact.
#[derive(Debug)]
pub(crate) struct TimeWindow {
    buckets: Box<[Bucket]>,
}

impl TimeWindow {
    pub(crate) fn new(seconds: usize) -> Self {
        TimeWindow {
            buckets: (0..seconds).map(|_| Bucket::default()).collect(),
        }
    }

    #[inline]
    pub(crate) fn record(&self, now_nanos: u64, failure: bool, slow: bool) {
        let sec = now_nanos / NANOS_PER_SEC;
        let b = &self.buckets[(sec % self.buckets.len() as u64) as usize];
        let tag = b.tag.load(Ordering::Acquire);
        if tag != sec + 1
            && tag < sec + 1
            && b.tag
                .compare_exchange(tag, sec + 1, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            b.counts.store(0, Ordering::Release);
        }
        if b.tag.load(Ordering::Acquire) == sec + 1 {
            b.counts.fetch_add(pack(failure, slow), Ordering::AcqRel);
        }
    }

    pub(crate) fn totals(&self, now_nanos: u64) -> Totals {
        let sec = now_nanos / NANOS_PER_SEC;
        let oldest = (sec + 1).saturating_sub(self.buckets.len() as u64 - 1);
        let mut t = Totals::default();
        for b in self.buckets.iter() {
            let tag = b.tag.load(Ordering::Acquire);
            if tag >= oldest.max(1) && tag <= sec + 1 {
                t.add(Totals::unpack(b.counts.load(Ordering::Acquire)));
            }
        }
        t
    }

    pub(crate) fn reset(&self) {
        for b in self.buckets.iter() {
            b.tag.store(0, Ordering::Relaxed);
            b.counts.store(0, Ordering::Release);
        }
    }

    /// The seconds still in the window at `now_nanos`: how many whole seconds ago each
    /// was, and its `(calls, failures, slow)`.
    pub(crate) fn seconds_at(&self, now_nanos: u64) -> Vec<(u64, [u64; 3])> {
        let sec = now_nanos / NANOS_PER_SEC;
        let oldest = (sec + 1).saturating_sub(self.buckets.len() as u64 - 1);
        let mut out: Vec<_> = self
            .buckets
            .iter()
            .filter_map(|b| {
                let tag = b.tag.load(Ordering::Acquire);
                if tag < oldest.max(1) || tag > sec + 1 {
                    return None;
                }
                let t = Totals::unpack(b.counts.load(Ordering::Acquire));
                (t.calls > 0).then_some((sec + 1 - tag, [t.calls, t.failures, t.slow]))
            })
            .collect();
        out.sort_by_key(|&(ago, _)| std::cmp::Reverse(ago));
        out
    }

    /// Replaces the window's contents with `seconds` (as [`seconds_at`](Self::seconds_at)
    /// gives them) relative to `now_nanos`; seconds no longer in the window are dropped and
    /// counts are capped at a field's largest value.
    pub(crate) fn restore(&self, now_nanos: u64, seconds: &[(u64, [u64; 3])]) {
        self.reset();
        let sec = now_nanos / NANOS_PER_SEC;
        for &(ago, [calls, failures, slow]) in seconds {
            if ago >= self.buckets.len() as u64 || ago > sec {
                continue;
            }
            let at = sec - ago;
            let b = &self.buckets[(at % self.buckets.len() as u64) as usize];
            let cap = |n: u64| n.min(FIELD_MAX);
            let word = cap(calls)
                | (cap(failures.min(calls)) << FIELD_BITS)
                | (cap(slow.min(calls)) << (2 * FIELD_BITS));
            b.tag.store(at + 1, Ordering::Relaxed);
            b.counts.store(word, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_window_keeps_the_last_n() {
        let w = CountWindow::new(3);
        w.record(true, false);
        w.record(false, true);
        assert_eq!(
            w.totals(),
            Totals {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        w.record(false, false);
        w.record(false, false); // evicts the failure
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        w.record(true, true); // evicts the slow success
        assert_eq!(
            w.totals(),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.reset();
        assert_eq!(w.totals(), Totals::default());
    }

    /// A success in a full window of successes leaves the cursor where it is, and an outcome
    /// after it still leaves the window `size` calls later.
    #[test]
    fn a_success_among_successes_writes_nothing() {
        let w = CountWindow::new(4);
        for _ in 0..4 {
            assert!(w.record(false, false));
        }
        for _ in 0..10 {
            assert!(!w.record(false, false));
        }
        let cursor = w.cursor.load(Ordering::Relaxed);
        println!("cursor after 4 + 10 successes in a window of 4: {cursor}");
        assert_eq!(cursor, 4);
        assert!(w.record(true, false));
        for _ in 0..3 {
            w.record(false, false);
            assert_eq!(w.totals().failures, 1, "the failure is among the last 4");
        }
        w.record(false, false);
        assert_eq!(w.totals().failures, 0, "the failure has left the last 4");
    }

    proptest::proptest! {
        /// The count window against a model — the last `size` outcomes — on runs of mostly
        /// successes, so the write-nothing path is taken often.
        #[test]
        fn count_window_totals_are_those_of_the_last_n(
            size in 1usize..12,
            outcomes in proptest::collection::vec((0u8..10, proptest::bool::ANY), 0..200),
        ) {
            let w = CountWindow::new(size);
            let mut last = std::collections::VecDeque::new();
            for (roll, slow) in outcomes {
                let (failure, slow) = (roll == 0, roll == 1 && slow);
                let before = w.totals();
                let changed = w.record(failure, slow);
                last.push_back((failure, slow));
                if last.len() > size {
                    last.pop_front();
                }
                let want = Totals {
                    calls: last.len() as u64,
                    failures: last.iter().filter(|o| o.0).count() as u64,
                    slow: last.iter().filter(|o| o.1).count() as u64,
                };
                proptest::prop_assert_eq!(w.totals(), want);
                proptest::prop_assert_eq!(changed, before != want);
            }
        }
    }

    #[test]
    fn fastmod_matches_modulo() {
        for size in [1usize, 2, 3, 7, 10, 100, 999, 65_537, FIELD_MAX as usize] {
            let w = CountWindow::new(size);
            for c in [
                0u32,
                1,
                2,
                5,
                99,
                100,
                101,
                65_536,
                1 << 31,
                u32::MAX - 1,
                u32::MAX,
            ] {
                assert_eq!(w.slot_of(c), c as usize % size, "{c} % {size}");
            }
        }
    }

    #[test]
    fn count_window_is_exact_under_threads() {
        let w = std::sync::Arc::new(CountWindow::new(1000));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let w = w.clone();
                std::thread::spawn(move || {
                    for i in 0..10_000 {
                        w.record((i + t) % 4 == 0, false);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let totals = w.totals();
        assert_eq!(totals.calls, 1000);
        let failures_in_slots = w
            .slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) & 2 != 0)
            .count();
        assert_eq!(totals.failures, failures_in_slots as u64);
    }

    #[test]
    fn time_window_slides_by_whole_seconds() {
        let s = NANOS_PER_SEC;
        let w = TimeWindow::new(2);
        w.record(0, true, false);
        w.record(s / 2, false, false);
        assert_eq!(w.totals(s - 1).calls, 2);
        w.record(s, false, true);
        assert_eq!(
            w.totals(s),
            Totals {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        // At second 2 the window is seconds 1..=2: second 0 has left.
        assert_eq!(
            w.totals(2 * s),
            Totals {
                calls: 1,
                failures: 0,
                slow: 1
            }
        );
        w.record(2 * s, true, false);
        assert_eq!(
            w.totals(2 * s),
            Totals {
                calls: 2,
                failures: 1,
                slow: 1
            }
        );
        // Long idle: nothing left.
        assert_eq!(w.totals(100 * s), Totals::default());
        w.record(100 * s, false, false);
        assert_eq!(w.totals(100 * s).calls, 1);
    }
}
