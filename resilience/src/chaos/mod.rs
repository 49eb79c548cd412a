//! Fault injection: add latency and errors at a rate, to test how a stack behaves when its
//! downstream misbehaves (chaos testing of your own services).
//!
//! Each call draws from a seeded generator, so a test with a fixed seed sees the same faults
//! on every run. The generator is SplitMix64 over an atomic counter: lock-free, and the k-th
//! call of a seed always gets the k-th draw.
//!
//! For each call: with probability `latency_rate` it is delayed by `latency`; then, with
//! probability `error_rate`, it fails with [`Injected`] without reaching the downstream.
//! [`Chaos::set_enabled`] switches injection off and on at run time.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use floodwall_resilience::Error;
//! use floodwall_resilience::chaos::Chaos;
//!
//! let chaos = Chaos::builder().error_rate(1.0).seed(7).build().unwrap();
//! let r = chaos.call(|| async { Ok::<_, ()>("real answer") }).await;
//! assert!(matches!(r, Err(Error::Injected(_))));
//! chaos.set_enabled(false);
//! assert_eq!(chaos.call(|| async { Ok::<_, ()>("real answer") }).await, Ok("real answer"));
//! # }
//! ```

#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::Error;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use future::ResponseFuture;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{ChaosLayer, ChaosService};

/// A fault injected in place of the downstream's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("fault injected (call #{call})")]
pub struct Injected {
    /// The 0-based number of the call, in draw order.
    pub call: u64,
}

/// What to do to one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Faults {
    /// Delay the call by this much.
    pub latency: Option<Duration>,
    /// Fail it instead of calling the downstream.
    pub error: Option<Injected>,
}

/// A rate was outside `0.0..=1.0`; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid chaos setting `{field}`: must be a probability in [0, 1]")]
pub struct ConfigError {
    /// The builder method whose value is wrong.
    pub field: &'static str,
}

struct Inner {
    error_rate: f64,
    latency_rate: f64,
    latency: Duration,
    enabled: AtomicBool,
    draws: AtomicU64,
}

/// A cheap-to-clone fault injector. See the [module docs](self).
#[derive(Clone)]
pub struct Chaos {
    inner: Arc<Inner>,
}

/// Builds a [`Chaos`].
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `build` is called"]
pub struct ChaosBuilder {
    error_rate: f64,
    latency_rate: f64,
    latency: Duration,
    seed: u64,
}

impl ChaosBuilder {
    /// Probability that a call fails with [`Injected`]. Default: 0.
    pub fn error_rate(mut self, p: f64) -> Self {
        self.error_rate = p;
        self
    }

    /// Delay `latency` added to a share `p` of calls. Default: none.
    pub fn latency(mut self, latency: Duration, p: f64) -> Self {
        self.latency = latency;
        self.latency_rate = p;
        self
    }

    /// The seed of the draws. Default: 0.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates and builds.
    pub fn build(self) -> Result<Chaos, ConfigError> {
        let ok = |p: f64| (0.0..=1.0).contains(&p);
        if !ok(self.error_rate) {
            return Err(ConfigError {
                field: "error_rate",
            });
        }
        if !ok(self.latency_rate) {
            return Err(ConfigError { field: "latency" });
        }
        Ok(Chaos {
            inner: Arc::new(Inner {
                error_rate: self.error_rate,
                latency_rate: self.latency_rate,
                latency: self.latency,
                enabled: AtomicBool::new(true),
                draws: AtomicU64::new(self.seed.wrapping_mul(2)),
            }),
        })
    }
}

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// SplitMix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform draw in `[0, 1)` from 53 random bits.
fn unit(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

impl Chaos {
    /// A builder; defaults inject nothing.
    pub fn builder() -> ChaosBuilder {
        ChaosBuilder {
            error_rate: 0.0,
            latency_rate: 0.0,
            latency: Duration::ZERO,
            seed: 0,
        }
    }

    /// Turns injection on or off.
    pub fn set_enabled(&self, on: bool) {
        self.inner.enabled.store(on, Ordering::Relaxed);
    }

    /// Draws the faults for one call.
    pub fn draw(&self) -> Faults {
        let inner = &*self.inner;
        if !inner.enabled.load(Ordering::Relaxed) {
            return Faults {
                latency: None,
                error: None,
            };
        }
        // Two draws per call, from consecutive SplitMix64 states.
        let state = inner.draws.fetch_add(2, Ordering::Relaxed);
        let call = state / 2;
        let a = unit(mix(state.wrapping_mul(GAMMA)));
        let b = unit(mix(state.wrapping_add(1).wrapping_mul(GAMMA)));
        let faults = Faults {
            latency: (a < inner.latency_rate).then_some(inner.latency),
            error: (b < inner.error_rate).then_some(Injected { call }),
        };
        if faults.latency.is_some() || faults.error.is_some() {
            tracing::debug!(call, latency = ?faults.latency, error = faults.error.is_some(), "injecting faults");
        }
        faults
    }

    /// Runs `f` with the faults of one draw applied.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let faults = self.draw();
        if let Some(d) = faults.latency {
            tokio::time::sleep(d).await;
        }
        if let Some(e) = faults.error {
            return Err(Error::Injected(e));
        }
        f().await.map_err(Error::Inner)
    }
}

impl fmt::Debug for Chaos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chaos")
            .field("error_rate", &self.inner.error_rate)
            .field("latency_rate", &self.inner.latency_rate)
            .field("latency", &self.inner.latency)
            .field("enabled", &self.inner.enabled.load(Ordering::Relaxed))
            .finish()
    }
}
