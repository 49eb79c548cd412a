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
//! The inner future is dropped (cancelled) when the time is up. Time is Tokio's, so paused
//! tests run instantly.
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

#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;

use std::future::Future;
use std::time::Duration;

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

/// A fixed time bound. `Copy`; share it freely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    after: Duration,
}

impl Timeout {
    /// Gives up after `after`.
    pub const fn new(after: Duration) -> Self {
        Timeout { after }
    }

    /// The bound.
    pub const fn duration(&self) -> Duration {
        self.after
    }

    /// Runs `f`, cancelling it after the bound.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, Error<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        match tokio::time::timeout(self.after, f()).await {
            Ok(r) => r.map_err(Error::Inner),
            Err(_) => {
                tracing::debug!(after = ?self.after, "call timed out");
                Err(Error::Timeout(Elapsed { after: self.after }))
            }
        }
    }
}
