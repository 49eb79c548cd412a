//! # floodwall-resilience
//!
//! Keeps a call standing when what it calls misbehaves. Each primitive is a cheap-to-clone
//! handle with a plain async API and (feature `tower`) a `tower::Layer` sharing its state;
//! every one reads time through an injected [`Clock`], so tests drive it with a
//! [`ManualClock`].
//!
//! This release has the [`circuit_breaker`]; retry with budgets, timeouts, bulkheads,
//! fallback, hedging, adaptive concurrency and fault injection follow.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use floodwall_resilience::circuit_breaker::{CircuitBreaker, Error};
//!
//! let breaker = CircuitBreaker::builder().name("payments").build().unwrap();
//! let charged: Result<u32, Error<&str>> = breaker.call(|| async { Ok(42) }).await;
//! assert_eq!(charged, Ok(42));
//! # }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod bulkhead;
pub mod circuit_breaker;
pub mod fallback;
pub mod retry;
pub mod timeout;

pub use floodwall_core::{Clock, ManualClock, SystemClock};
