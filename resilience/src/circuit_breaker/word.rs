//! The breaker's packed state word and its outcome window.

use super::State;
use super::window::{CountWindow, TimeWindow, Totals};

// State word: kind (3 bits) | generation (29 bits) << 3 | half-open permits issued (32 bits) << 32.
pub(super) const KIND_MASK: u64 = 0b111;
pub(super) const GEN_SHIFT: u32 = 3;
pub(super) const GEN_MASK: u64 = (1 << 29) - 1;
pub(super) const ISSUED_SHIFT: u32 = 32;

#[inline(always)]
pub(super) fn kind_of(w: u64) -> State {
    State::from_code(w & KIND_MASK)
}
#[inline(always)]
pub(super) fn gen_of(w: u64) -> u64 {
    (w >> GEN_SHIFT) & GEN_MASK
}
#[inline]
pub(super) fn issued_of(w: u64) -> u32 {
    (w >> ISSUED_SHIFT) as u32
}
#[inline]
pub(super) fn word(kind: State, generation: u64, issued: u32) -> u64 {
    kind.code() | ((generation & GEN_MASK) << GEN_SHIFT) | (u64::from(issued) << ISSUED_SHIFT)
}

pub(super) enum Window {
    Count(CountWindow),
    Time(TimeWindow),
}

impl Window {
    pub(super) fn is_timed(&self) -> bool {
        matches!(self, Window::Time(_))
    }

    /// Records an outcome; returns whether the totals may have changed.
    #[inline]
    pub(super) fn record(&self, now: u64, failure: bool, slow: bool) -> bool {
        match self {
            Window::Count(w) => w.record(failure, slow),
            Window::Time(w) => {
                w.record(now, failure, slow);
                true
            }
        }
    }

    pub(super) fn totals(&self, now: u64) -> Totals {
        match self {
            Window::Count(w) => w.totals(),
            Window::Time(w) => w.totals(now),
        }
    }

    pub(super) fn reset(&self) {
        match self {
            Window::Count(w) => w.reset(),
            Window::Time(w) => w.reset(),
        }
    }
}
