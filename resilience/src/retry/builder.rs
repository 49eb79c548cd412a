//! [`RetryBuilder`]: a [`Retry`]'s settings, with resilience4j's defaults.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use super::{
    Backoff, DEFAULT_NAME, Hook, Jitter, Plan, RandomSource, Retry, RetryBudget, RetryEvent,
    Schedule, Shared,
};

/// Builds a [`Retry`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct RetryBuilder {
    name: Arc<str>,
    max_attempts: u32,
    max_elapsed: Option<Duration>,
    schedule: Schedule,
    budget: Option<RetryBudget>,
    seed: Option<u64>,
    random: Option<Box<RandomSource>>,
    on_retry: Option<Hook>,
}

impl Default for RetryBuilder {
    fn default() -> Self {
        RetryBuilder {
            name: Arc::from(DEFAULT_NAME),
            max_attempts: 3,
            max_elapsed: None,
            schedule: Schedule {
                backoff: Backoff::Exponential {
                    initial: Duration::from_millis(500),
                    multiplier: 2.0,
                },
                jitter: Jitter::Full,
                cap: Duration::from_secs(30),
            },
            budget: None,
            seed: None,
            random: None,
            on_retry: None,
        }
    }
}

impl RetryBuilder {
    /// A name for traces. Default: `"default"`.
    pub fn name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Attempts in all, the first call included. Default: 3 (resilience4j's).
    pub fn max_attempts(mut self, n: NonZeroU32) -> Self {
        self.max_attempts = n.get();
        self
    }

    /// No retry starts later than this after the first call. Default: none.
    pub fn max_elapsed(mut self, d: Option<Duration>) -> Self {
        self.max_elapsed = d;
        self
    }

    /// The growth law. Default: exponential from 500 ms (resilience4j's wait) doubling.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.schedule.backoff = backoff;
        self
    }

    /// The jitter. Default: [`Jitter::Full`].
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.schedule.jitter = jitter;
        self
    }

    /// Cap on each delay, after jitter. Default: 30 s.
    pub fn max_delay(mut self, cap: Duration) -> Self {
        self.schedule.cap = cap;
        self
    }

    /// A budget shared with other calls (and other `Retry`s). Default: none.
    pub fn budget(mut self, budget: RetryBudget) -> Self {
        self.budget = Some(budget);
        self
    }

    /// Seeds the jitter's random generator, for reproducible delays. Default: seeded from the
    /// thread's entropy source.
    pub fn rng_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Replaces the jitter's random source with `random`, which returns numbers uniform on
    /// `[0, 1)` (Polly's `Randomizer`; a test can pin it to a constant). Overrides
    /// [`rng_seed`](Self::rng_seed).
    pub fn random_source(mut self, random: impl FnMut() -> f64 + Send + 'static) -> Self {
        self.random = Some(Box::new(random));
        self
    }

    /// Called before each retry, with the failed attempt's number and the delay.
    pub fn on_retry(mut self, hook: impl Fn(&RetryEvent) + Send + Sync + 'static) -> Self {
        self.on_retry = Some(Arc::new(hook));
        self
    }

    /// Builds the policy.
    pub fn build(self) -> Retry {
        let random = match (self.random, self.seed) {
            (Some(random), _) => Some(random),
            (None, Some(seed)) => {
                let mut rng = SmallRng::seed_from_u64(seed);
                Some(Box::new(move || rng.random::<f64>()) as Box<RandomSource>)
            }
            (None, None) => None,
        };
        let plan = Plan::new(self.max_attempts, self.max_elapsed, self.schedule);
        let unshared = &*self.name == DEFAULT_NAME
            && self.budget.is_none()
            && random.is_none()
            && self.on_retry.is_none();
        let shared = (!unshared).then(|| {
            Arc::new(Shared {
                metrics: super::metrics::RetryMetrics::new(&self.name),
                name: self.name,
                budget: self.budget,
                random: random.map(Mutex::new),
                on_retry: self.on_retry,
            })
        });
        Retry { plan, shared }
    }
}

impl fmt::Debug for RetryBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBuilder")
            .field("name", &self.name)
            .field("max_attempts", &self.max_attempts)
            .field("schedule", &self.schedule)
            .finish_non_exhaustive()
    }
}
