//! Timeout: give up on a call after a fixed time.
//!
//! Place it **inside** a retry to bound each attempt, and **outside** to bound the whole call
//! (the overall deadline), or both:
//!
//! ```text
//! ServiceBuilder::new()
//!     .layer(TimeoutLayer::new(overall))      // deadline for the call, retries included
//!     .layer(RetryLayer::new(retry))
//!     .layer(TimeoutLayer::new(per_attempt))  // bound on each attempt
//!     .service(client)
//! ```
//!
//! The inner future is dropped (cancelled) when the time is up. The timer is armed only when
//! the call first waits, so a call that answers at once costs no timer. The calls waiting on
//! one thread of one runtime with the same bound share one timer task, armed at the earliest
//! of their deadlines (each still ends at its own), so a call that waits takes a lock and a
//! push, not a registration in Tokio's timer wheel. That timer task stays armed until the
//! deadline of the call it was last armed for, and ends then if nothing waits; under a paused
//! clock an idle runtime may advance to that deadline. Time is Tokio's, so paused tests run
//! instantly.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread", start_paused = true)] async fn main() {
//! use std::time::Duration;
//! use floodwall_resilience::Error;
//! use floodwall_resilience::timeout::Timeout;
//!
//! let t = Timeout::new(Duration::from_millis(100));
//! let slow = t.call(|| async {
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, ()>(1)
//! });
//! assert!(matches!(slow.await, Err(Error::Timeout(e)) if e.after == Duration::from_millis(100)));
//! assert_eq!(t.call(|| async { Ok::<_, ()>(2) }).await, Ok(2));
//! # }
//! ```

pub(crate) mod deadline;
#[cfg(feature = "tower")]
mod future;
mod lane;
#[cfg(feature = "tower")]
mod layer;
mod metrics;

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::metrics::TimeoutMetrics;
use crate::Error;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use future::ResponseFuture;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{TimeoutLayer, TimeoutService};

/// The call did not finish in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("call timed out after {after:?}")]
pub struct Elapsed {
    /// The bound that was exceeded.
    pub after: Duration,
}

/// A fixed time bound. Cheap to clone; clones share the name and its metrics.
///
/// Named with [`name`](Self::name), a timeout reports (feature `metrics`)
/// `floodwall_timeout_call_duration_seconds{timeout}` for calls that finished in time and
/// `floodwall_timeout_timeouts_total{timeout}` for calls it cut; an unnamed one reports
/// nothing, so an ad-hoc bound costs only its timer.
#[derive(Clone)]
pub struct Timeout {
    after: Duration,
    metrics: Option<Arc<TimeoutMetrics>>,
}

impl fmt::Debug for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("after", &self.after)
            .field("named", &self.metrics.is_some())
            .finish()
    }
}

impl Timeout {
    /// Gives up after `after`.
    pub const fn new(after: Duration) -> Self {
        Timeout {
            after,
            metrics: None,
        }
    }

    /// Names this timeout: its calls are measured under the label `timeout=name`.
    pub fn name(mut self, name: &str) -> Self {
        self.metrics = Some(Arc::new(TimeoutMetrics::new(name)));
        self
    }

    /// The bound.
    pub const fn duration(&self) -> Duration {
        self.after
    }

    /// This timeout with another bound, sharing its name and metrics (a caller's
    /// per-request bound measured under the same label).
    pub fn with_duration(&self, after: Duration) -> Timeout {
        Timeout {
            after,
            metrics: self.metrics.clone(),
        }
    }

    /// When a call starts, if this timeout is measured.
    #[inline]
    pub(crate) fn start(&self) -> Option<Instant> {
        self.metrics.as_ref().and_then(|m| m.start())
    }

    /// Records the end of a call that started at `started`: in time, or cut.
    #[inline]
    pub(crate) fn record(&self, started: Option<Instant>, in_time: bool) {
        if let Some(m) = &self.metrics {
            if in_time {
                m.finish(started);
            } else {
                m.timed_out();
            }
        }
    }

    /// Runs `f`, cancelling it after the bound (counted from its first wait).
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let started = self.start();
        match deadline::Deadline::new(f(), self.after).await {
            Ok(r) => {
                self.record(started, true);
                r.map_err(Error::Inner)
            }
            Err(_) => {
                self.record(started, false);
                tracing::debug!(after = ?self.after, "call timed out");
                Err(Error::Timeout(Elapsed { after: self.after }))
            }
        }
    }
}
