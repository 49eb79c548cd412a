//! How the crate's primitives bind their metric handles: floodwall-core's
//! [`Bound`](floodwall_core::metrics::Bound), registering this crate's descriptions. Each
//! primitive's handles live in its own folder (`circuit_breaker/metrics.rs`, ...).

#[cfg(feature = "metrics")]
pub(crate) use floodwall_core::metrics::{Bound, Timed};

/// Handles for the primitive `name`, made by `make`, described by this crate.
#[cfg(feature = "metrics")]
pub(crate) fn bound<H>(name: &str, make: fn(&str) -> H) -> Bound<H> {
    Bound::new(name, make, crate::describe_metrics)
}
