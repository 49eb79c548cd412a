//! Backoff schedules and jitter.

use std::time::Duration;

use rand::RngExt;
use rand::rngs::SmallRng;

use floodwall_core::clock::duration_to_nanos;

/// How the un-jittered delay grows with the retry number `n` (0 for the first retry).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Backoff {
    /// `delay(n) = d`.
    Constant(Duration),
    /// `delay(n) = initial + n * step`.
    Linear {
        /// Delay before the first retry.
        initial: Duration,
        /// Added per further retry.
        step: Duration,
    },
    /// `delay(n) = initial * multiplier^n`.
    Exponential {
        /// Delay before the first retry.
        initial: Duration,
        /// Growth per retry (at least 1.0).
        multiplier: f64,
    },
}

impl Backoff {
    /// The un-jittered delay before retry `n` (0-based), capped at `cap`.
    pub fn base_delay(&self, n: u32, cap: Duration) -> Duration {
        let d = match *self {
            Backoff::Constant(d) => d,
            Backoff::Linear { initial, step } => initial.saturating_add(step.saturating_mul(n)),
            Backoff::Exponential {
                initial,
                multiplier,
            } => {
                let secs = initial.as_secs_f64() * multiplier.powi(n.min(4096) as i32);
                if !secs.is_finite() || secs >= cap.as_secs_f64() {
                    cap
                } else {
                    Duration::from_secs_f64(secs)
                }
            }
        };
        d.min(cap)
    }

    /// The first delay (`delay(0)`), the floor of decorrelated jitter.
    pub fn initial(&self) -> Duration {
        match *self {
            Backoff::Constant(d) => d,
            Backoff::Linear { initial, .. } | Backoff::Exponential { initial, .. } => initial,
        }
    }
}

/// Randomisation of the delay, after AWS's "Exponential Backoff and Jitter".
///
/// With `b = min(cap, backoff.base_delay(n))` and `rand(lo, hi)` uniform on `[lo, hi]`:
///
/// | kind | delay before retry `n` | bounds |
/// |---|---|---|
/// | `None` | `b` | `= b` |
/// | `Full` | `rand(0, b)` | `[0, b]` |
/// | `Equal` | `b/2 + rand(0, b/2)` | `[b/2, b]` |
/// | `Decorrelated` | `min(cap, rand(initial, 3 * prev))`, `prev` = the previous delay, `initial` at first | `[min(initial, cap), cap]` |
/// | `Randomized { factor: f }` | `min(cap, rand(b·(1−f), b·(1+f)))` (near the cap, every draw above it is the cap) | `[b·(1−f), min(cap, b·(1+f))]` |
/// | `DecorrelatedV2` | `min(cap, (f(t_n) − f(t_{n−1})) / 1.4 · initial)`, `t_n = n + rand(0, 1)`, `f(t) = 2^t·tanh(√(4t))`, `f(t_{−1}) = 0` | `[0, cap]`; the uncapped delays up to `n` sum to `f(t_n) / 1.4 · initial` |
///
/// The cap bounds the final delay in every kind. `Randomized` is resilience4j's
/// `randomizedWaitFactor` (its default `f = 0.5`) and Polly's `UseJitter` on constant and
/// linear backoff (±25 %: `f = 0.25`); `f` is clamped to `[0, 1]`. `DecorrelatedV2` is
/// Polly's exponential backoff with jitter. Every kind draws from one random source, uniform
/// on `[0, 1)`, which a [`RetryBuilder::random_source`](super::RetryBuilder::random_source)
/// replaces.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Jitter {
    /// No randomisation.
    None,
    /// Uniform between zero and the backoff delay (AWS "full jitter"; the default).
    #[default]
    Full,
    /// Half the backoff delay plus uniform up to the other half (AWS "equal jitter").
    Equal,
    /// Uniform between the initial delay and three times the previous delay (AWS
    /// "decorrelated jitter"); ignores the backoff's growth law.
    Decorrelated,
    /// Uniform within `±factor` of the backoff delay (resilience4j's `randomizedWaitFactor`,
    /// Polly's ±25 % `UseJitter`).
    Randomized {
        /// The spread, a fraction of the delay in `[0, 1]` (resilience4j's default: 0.5).
        factor: f64,
    },
    /// Polly's `DecorrelatedJitterBackoffV2`: exponential growth with decorrelated jitter
    /// and no clustering; the backoff's `initial` is the median first delay.
    DecorrelatedV2,
}

/// What one delay leaves for the next: the previous delay (decorrelated jitter) and the
/// previous formula value (decorrelated jitter V2). Start each call with the default.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct JitterState {
    /// The previous delay in nanoseconds; `NO_PREV` before the first.
    prev: u64,
    formula: f64,
}

const NO_PREV: u64 = u64::MAX;

impl Default for JitterState {
    fn default() -> Self {
        JitterState {
            prev: NO_PREV,
            formula: 0.0,
        }
    }
}

/// A random source: each call returns a number uniform on `[0, 1)` (Polly's `Randomizer`).
/// Values outside it (or NaN) are clamped into it.
pub type RandomSource = dyn FnMut() -> f64 + Send;

/// A backoff, a jitter and a cap: the delays of successive retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The growth law.
    pub backoff: Backoff,
    /// The randomisation.
    pub jitter: Jitter,
    /// The largest delay ever returned.
    pub cap: Duration,
}

/// A draw from `random`, clamped into `[0, 1)`.
fn unit(random: &mut (impl FnMut() -> f64 + ?Sized)) -> f64 {
    let r = random();
    if r.is_nan() {
        0.0
    } else {
        r.clamp(0.0, 1.0 - f64::EPSILON)
    }
}

/// Uniform on `[lo, hi]` from one draw.
fn uniform(random: &mut (impl FnMut() -> f64 + ?Sized), lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        return lo;
    }
    let span = (hi - lo) as f64;
    lo.saturating_add((span * unit(random)).round() as u64)
        .min(hi)
}

impl Schedule {
    /// The delay before retry `n` (0-based). `state` carries what the previous delay leaves
    /// (start with `JitterState::default()`); `random` is the random source.
    pub fn delay(
        &self,
        n: u32,
        state: &mut JitterState,
        random: &mut (impl FnMut() -> f64 + ?Sized),
    ) -> Duration {
        let b = self.backoff.base_delay(n, self.cap);
        let d = match self.jitter {
            Jitter::None => b,
            Jitter::Full => Duration::from_nanos(uniform(random, 0, duration_to_nanos(b))),
            Jitter::Equal => {
                let half = duration_to_nanos(b) / 2;
                let rest = duration_to_nanos(b) - half;
                Duration::from_nanos(half + uniform(random, 0, rest))
            }
            Jitter::Randomized { factor } => {
                let f = if factor.is_nan() {
                    0.0
                } else {
                    factor.clamp(0.0, 1.0)
                };
                // The draw spans the whole ±f band and the cap applies after it, as the
                // formula says: near the cap, the draws above it all become the cap.
                let base = duration_to_nanos(b) as f64;
                let lo = (base * (1.0 - f)) as u64;
                let hi = (base * (1.0 + f)).min(u64::MAX as f64) as u64;
                Duration::from_nanos(uniform(random, lo, hi).min(duration_to_nanos(self.cap)))
            }
            Jitter::Decorrelated => {
                let cap = duration_to_nanos(self.cap);
                let base = duration_to_nanos(self.backoff.initial()).min(cap);
                let prev = if state.prev == NO_PREV {
                    base
                } else {
                    state.prev
                };
                let hi = prev.saturating_mul(3).min(cap).max(base);
                Duration::from_nanos(uniform(random, base, hi))
            }
            Jitter::DecorrelatedV2 => self.decorrelated_v2(n, state, random),
        };
        state.prev = duration_to_nanos(d).min(NO_PREV - 1);
        d
    }

    /// Polly's `DecorrelatedJitterBackoffV2` (after George Polevoy): `t = n + rand(0, 1)`,
    /// `f(t) = 2^t * tanh(sqrt(4t))`, delay `= (f(t) - f_prev) / 1.4 * initial`, capped.
    fn decorrelated_v2(
        &self,
        n: u32,
        state: &mut JitterState,
        random: &mut (impl FnMut() -> f64 + ?Sized),
    ) -> Duration {
        let t = f64::from(n) + unit(random);
        let next = 2f64.powf(t) * (4.0 * t).sqrt().tanh();
        let prev = std::mem::replace(&mut state.formula, next);
        if !next.is_finite() {
            return self.cap;
        }
        let nanos = (next - prev) / 1.4 * duration_to_nanos(self.backoff.initial()) as f64;
        if nanos >= duration_to_nanos(self.cap) as f64 {
            self.cap
        } else {
            Duration::from_nanos(nanos.max(0.0) as u64)
        }
    }

    /// The first `count` delays from a generator seeded with `seed`; the same seed gives the
    /// same sequence.
    pub fn delays(&self, seed: u64, count: u32) -> Vec<Duration> {
        use rand::SeedableRng;
        let mut rng = SmallRng::seed_from_u64(seed);
        self.delays_with(move || rng.random::<f64>(), count)
    }

    /// The first `count` delays drawing from `random` (uniform on `[0, 1)`).
    pub fn delays_with(&self, mut random: impl FnMut() -> f64, count: u32) -> Vec<Duration> {
        let mut state = JitterState::default();
        (0..count)
            .map(|n| self.delay(n, &mut state, &mut random))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn growth_laws() {
        let cap = Duration::from_secs(10);
        let ms = Duration::from_millis;
        assert_eq!(Backoff::Constant(ms(5)).base_delay(9, cap), ms(5));
        let lin = Backoff::Linear {
            initial: ms(100),
            step: ms(50),
        };
        assert_eq!(lin.base_delay(0, cap), ms(100));
        assert_eq!(lin.base_delay(3, cap), ms(250));
        let exp = Backoff::Exponential {
            initial: ms(100),
            multiplier: 2.0,
        };
        assert_eq!(exp.base_delay(0, cap), ms(100));
        assert_eq!(exp.base_delay(3, cap), ms(800));
        assert_eq!(exp.base_delay(10, cap), cap);
        assert_eq!(exp.base_delay(u32::MAX, cap), cap);
    }
}
