//! Fallback: answer from somewhere else when a call fails — a default value, a cached copy, a
//! degraded path.
//!
//! The handler receives the error and decides: return `Ok(value)` to answer with the
//! fallback, or `Err(e)` to pass the failure on (so it can fall back only on, say, an open
//! circuit or a bulkhead rejection).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use floodwall_resilience::fallback::Fallback;
//!
//! let recommendations = Fallback::new(|err: &'static str| async move {
//!     if err == "circuit open" { Ok(vec!["bestsellers"]) } else { Err(err) }
//! });
//! assert_eq!(recommendations.call(|| async { Err("circuit open") }).await, Ok(vec!["bestsellers"]));
//! assert_eq!(recommendations.call(|| async { Err("bad request") }).await, Err("bad request"));
//! assert_eq!(recommendations.call(|| async { Ok(vec!["for you"]) }).await, Ok(vec!["for you"]));
//! # }
//! ```

#[cfg(feature = "tower")]
mod future;
#[cfg(feature = "tower")]
mod layer;

use std::future::Future;

#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use future::ResponseFuture;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub use layer::{FallbackLayer, FallbackService};

/// A fallback handler: `Fn(E) -> impl Future<Output = Result<T, E2>>`.
#[derive(Debug, Clone, Copy)]
pub struct Fallback<H> {
    handler: H,
}

impl<H> Fallback<H> {
    /// A fallback running `handler` on every error.
    pub const fn new(handler: H) -> Self {
        Fallback { handler }
    }

    /// Runs `f`; on `Err(e)` answers `handler(e)` instead.
    pub async fn call<F, Fut, T, E, HFut, E2>(&self, f: F) -> Result<T, E2>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        H: Fn(E) -> HFut,
        HFut: Future<Output = Result<T, E2>>,
    {
        match f().await {
            Ok(v) => Ok(v),
            Err(e) => (self.handler)(e).await,
        }
    }
}

/// A fallback answering a fixed value on every error.
pub fn value<T: Clone, E>(
    v: T,
) -> Fallback<impl Fn(E) -> std::future::Ready<Result<T, E>> + Clone> {
    Fallback::new(move |_e: E| std::future::ready(Ok(v.clone())))
}
