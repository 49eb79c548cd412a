//! A [`Retry`](super::Retry)'s limits and schedule as plain words.

use std::time::Duration;

use super::{Backoff, Jitter, Schedule};

/// What each call copies: the limits and the schedule, packed into plain words (no
/// reference count, and small enough that a call's future moves without a `memcpy`).
/// Durations are whole nanoseconds, saturating at `u64::MAX` (584 years).
#[derive(Clone, Copy)]
pub(super) struct Plan {
    /// `Constant`: `[d, 0]`; `Linear`: `[initial, step]`; `Exponential`: `[initial,
    /// multiplier's bits]`.
    backoff: [u64; 2],
    /// `Jitter::Randomized`'s factor.
    factor: f64,
    cap: u64,
    /// `u64::MAX`: none.
    pub(super) max_elapsed: u64,
    pub(super) max_attempts: u32,
    backoff_kind: u8,
    jitter_kind: u8,
}

impl Plan {
    pub(super) fn new(
        max_attempts: u32,
        max_elapsed: Option<Duration>,
        schedule: Schedule,
    ) -> Self {
        let nanos = floodwall_core::clock::duration_to_nanos;
        let (backoff_kind, backoff) = match schedule.backoff {
            Backoff::Constant(d) => (0, [nanos(d), 0]),
            Backoff::Linear { initial, step } => (1, [nanos(initial), nanos(step)]),
            Backoff::Exponential {
                initial,
                multiplier,
            } => (2, [nanos(initial), multiplier.to_bits()]),
        };
        let (jitter_kind, factor) = match schedule.jitter {
            Jitter::None => (0, 0.0),
            Jitter::Full => (1, 0.0),
            Jitter::Equal => (2, 0.0),
            Jitter::Decorrelated => (3, 0.0),
            Jitter::Randomized { factor } => (4, factor),
            Jitter::DecorrelatedV2 => (5, 0.0),
        };
        Plan {
            backoff,
            factor,
            cap: nanos(schedule.cap),
            max_elapsed: max_elapsed.map_or(u64::MAX, nanos),
            max_attempts,
            backoff_kind,
            jitter_kind,
        }
    }

    /// The schedule this plan was packed from.
    pub(super) fn schedule(&self) -> Schedule {
        let [a, b] = self.backoff;
        let backoff = match self.backoff_kind {
            0 => Backoff::Constant(Duration::from_nanos(a)),
            1 => Backoff::Linear {
                initial: Duration::from_nanos(a),
                step: Duration::from_nanos(b),
            },
            _ => Backoff::Exponential {
                initial: Duration::from_nanos(a),
                multiplier: f64::from_bits(b),
            },
        };
        let jitter = match self.jitter_kind {
            0 => Jitter::None,
            1 => Jitter::Full,
            2 => Jitter::Equal,
            3 => Jitter::Decorrelated,
            4 => Jitter::Randomized {
                factor: self.factor,
            },
            _ => Jitter::DecorrelatedV2,
        };
        Schedule {
            backoff,
            jitter,
            cap: Duration::from_nanos(self.cap),
        }
    }

    pub(super) fn max_elapsed(&self) -> Option<Duration> {
        (self.max_elapsed != u64::MAX).then(|| Duration::from_nanos(self.max_elapsed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn duration() -> impl Strategy<Value = Duration> {
        (0u64..u64::MAX).prop_map(Duration::from_nanos)
    }

    fn backoff() -> impl Strategy<Value = Backoff> {
        prop_oneof![
            duration().prop_map(Backoff::Constant),
            (duration(), duration()).prop_map(|(initial, step)| Backoff::Linear { initial, step }),
            (duration(), any::<f64>()).prop_map(|(initial, multiplier)| Backoff::Exponential {
                initial,
                multiplier
            }),
        ]
    }

    fn jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![
            Just(Jitter::None),
            Just(Jitter::Full),
            Just(Jitter::Equal),
            Just(Jitter::Decorrelated),
            (0.0f64..=1.0).prop_map(|factor| Jitter::Randomized { factor }),
            Just(Jitter::DecorrelatedV2),
        ]
    }

    proptest! {
        /// Packing loses nothing below 584 years: the schedule and the limits come back equal.
        #[test]
        fn a_packed_plan_gives_back_its_schedule_and_limits(
            backoff in backoff(),
            jitter in jitter(),
            cap in duration(),
            max_attempts in 1u32..,
            max_elapsed in proptest::option::of(0u64..u64::MAX).prop_map(|d| d.map(Duration::from_nanos)),
        ) {
            let schedule = Schedule { backoff, jitter, cap };
            let plan = Plan::new(max_attempts, max_elapsed, schedule);
            let back = plan.schedule();
            // NaN multipliers compare unequal; compare their bits.
            match (back.backoff, schedule.backoff) {
                (
                    Backoff::Exponential { initial: a, multiplier: m },
                    Backoff::Exponential { initial: b, multiplier: n },
                ) => {
                    prop_assert_eq!(a, b);
                    prop_assert_eq!(m.to_bits(), n.to_bits());
                }
                (a, b) => prop_assert_eq!(a, b),
            }
            prop_assert_eq!(back.jitter, schedule.jitter);
            prop_assert_eq!(back.cap, schedule.cap);
            prop_assert_eq!(plan.max_attempts, max_attempts);
            prop_assert_eq!(plan.max_elapsed(), max_elapsed);
        }
    }
}
