//! Which algorithm a limit runs, and the per-key state the keyed stores keep for it.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use floodwall_core::clock::duration_to_nanos;

use crate::window::{Counts, WindowKind};
use crate::{Decision, Quota, gcra, sliding_log, window};

/// A rate-limiting algorithm. Every store (memory, Redis, Redis Cluster) runs each of them
/// with the same formula; see each module's docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// GCRA ([`gcra`](crate::gcra)): a token bucket of `burst`, refilled at the quota's rate.
    /// The leaky bucket as a meter makes exactly the same decisions
    /// ([`leaky`](crate::leaky)).
    Gcra,
    /// Fixed windows of the quota's period ([`window`](crate::window)).
    FixedWindow,
    /// Sliding window counter ([`window`](crate::window)).
    SlidingCounter,
    /// Sliding window log ([`sliding_log`](crate::sliding_log)); exact, memory per key grows
    /// with the limit.
    SlidingLog,
}

/// What a consumed decision took, so an all-or-nothing check can give it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Receipt {
    /// Nothing was consumed.
    None,
    /// GCRA: `cost * T` was added to the TAT.
    Gcra { cost: u32 },
    /// Windows: `cost` was counted in window `window`.
    Window { window: u64, cost: u32 },
    /// Sliding log: an entry `(at, cost)` was logged.
    Log { at: u64, cost: u32 },
}

/// The state a keyed memory store keeps for one key of one limit. GCRA's state sits in the
/// entry; the others are boxed, so an entry stays small (the keyed table's lookups are
/// bound by memory traffic).
#[derive(Debug)]
pub(crate) enum State {
    Gcra(AtomicU64),
    Window(Box<Mutex<Counts>>),
    Log(Box<Mutex<VecDeque<(u64, u32)>>>),
}

impl State {
    pub(crate) fn new(algorithm: Algorithm) -> State {
        match algorithm {
            Algorithm::Gcra => State::Gcra(AtomicU64::new(0)),
            Algorithm::FixedWindow | Algorithm::SlidingCounter => {
                State::Window(Box::new(Mutex::new(Counts::default())))
            }
            Algorithm::SlidingLog => State::Log(Box::new(Mutex::new(VecDeque::new()))),
        }
    }

    /// Decides `cost` at `now` under `quota` with `algorithm`, consuming when `consume`.
    /// `params`, when given, are GCRA's constants for `quota` worked out beforehand.
    pub(crate) fn decide(
        &self,
        algorithm: Algorithm,
        quota: &Quota,
        params: Option<&gcra::Params>,
        now: u64,
        cost: u32,
        consume: bool,
    ) -> (Decision, Receipt) {
        match self {
            State::Gcra(tat) => {
                let own;
                let params = match params {
                    Some(p) => p,
                    None => {
                        own = gcra::Params::new(quota);
                        &own
                    }
                };
                let d = gcra::decide(tat, params, now, cost, consume);
                let r = if d.allowed && consume {
                    Receipt::Gcra { cost }
                } else {
                    Receipt::None
                };
                (d, r)
            }
            State::Window(counts) => {
                let kind = if algorithm == Algorithm::FixedWindow {
                    WindowKind::Fixed
                } else {
                    WindowKind::SlidingCounter
                };
                let period = period_nanos(quota);
                let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                let d = window::decide(
                    &mut c,
                    kind,
                    period,
                    quota.limit().get(),
                    now,
                    cost,
                    consume,
                );
                let r = if d.allowed && consume {
                    Receipt::Window {
                        window: c.window,
                        cost,
                    }
                } else {
                    Receipt::None
                };
                (d, r)
            }
            State::Log(log) => {
                let period = period_nanos(quota);
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                let d =
                    sliding_log::decide(&mut l, period, quota.limit().get(), now, cost, consume);
                let r = if d.allowed && consume {
                    Receipt::Log { at: now, cost }
                } else {
                    Receipt::None
                };
                (d, r)
            }
        }
    }

    /// Gives back what `receipt` consumed.
    pub(crate) fn refund(&self, quota: &Quota, receipt: Receipt) {
        match (self, receipt) {
            (State::Gcra(tat), Receipt::Gcra { cost }) => {
                let back = quota
                    .emission_interval_nanos()
                    .saturating_mul(u64::from(cost));
                let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                    Some(t.saturating_sub(back))
                });
            }
            (State::Window(counts), Receipt::Window { window, cost }) => {
                let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                if c.window == window {
                    c.current = c.current.saturating_sub(u64::from(cost));
                } else if c.window == window + 1 {
                    c.previous = c.previous.saturating_sub(u64::from(cost));
                }
            }
            (State::Log(log), Receipt::Log { at, cost }) => {
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(i) = l.iter().rposition(|&e| e == (at, cost)) {
                    l.remove(i);
                }
            }
            _ => {}
        }
    }

    /// Makes this state count at least `used` of `quota`'s capacity at `now` (never less than
    /// it counts already): the insurance limiter starting from the last verdict the shared
    /// store gave for the key. GCRA: TAT at least `now + used·T`; windows: at least `used` in
    /// the current window; the log: at least `used` logged now.
    pub(crate) fn seed(&self, quota: &Quota, now: u64, used: u32) {
        if used == 0 {
            return;
        }
        match self {
            State::Gcra(tat) => {
                let target = now.saturating_add(
                    quota
                        .emission_interval_nanos()
                        .saturating_mul(u64::from(used)),
                );
                tat.fetch_max(target, Ordering::AcqRel);
            }
            State::Window(counts) => {
                let mut c = counts.lock().unwrap_or_else(|e| e.into_inner());
                c.roll(now / period_nanos(quota));
                c.current = c.current.max(u64::from(used));
            }
            State::Log(log) => {
                let period = period_nanos(quota);
                let mut l = log.lock().unwrap_or_else(|e| e.into_inner());
                let live: u64 = l
                    .iter()
                    .filter(|&&(t, _)| t.saturating_add(period) > now)
                    .map(|&(_, c)| u64::from(c))
                    .sum();
                if let Some(missing) = u64::from(used).checked_sub(live).filter(|&m| m > 0) {
                    l.push_back((now, missing as u32));
                }
            }
        }
    }

    /// The time from which this state equals a fresh one (nothing counted): after it, the key
    /// can be forgotten without changing any decision.
    pub(crate) fn idle_at(&self, period: u64) -> u64 {
        match self {
            State::Gcra(tat) => tat.load(Ordering::Acquire),
            State::Window(counts) => {
                let c = counts.lock().unwrap_or_else(|e| e.into_inner());
                // The sliding counter still weighs the previous window; both are gone two
                // windows on.
                c.window.saturating_add(2).saturating_mul(period)
            }
            State::Log(log) => {
                let l = log.lock().unwrap_or_else(|e| e.into_inner());
                l.back().map_or(0, |&(t, _)| t.saturating_add(period))
            }
        }
    }
}

pub(crate) fn period_nanos(quota: &Quota) -> u64 {
    duration_to_nanos(quota.period()).max(1)
}
