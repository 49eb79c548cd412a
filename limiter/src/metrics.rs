//! Metrics (feature `metrics`); without the feature every function is an empty inline stub.
//!
//! - `floodwall_limiter_allowed_total{limit, shadow}`: requests a limit allowed;
//! - `floodwall_limiter_denied_total{limit, shadow}`: requests a limit denied (`shadow="true"`:
//!   a shadow limit that would have denied).
//! - `floodwall_limiter_store_failures_total{policy}`: decisions where the store failed and the
//!   failure policy (`fail_open`, `fail_closed`, `insurance`) decided.

use crate::Limit;

/// A limit's four decision counters' keys (allowed / denied × enforced / shadow), built once
/// with the limit.
#[cfg(feature = "metrics")]
pub(crate) struct LimitCounters([metrics::Key; 4]);

#[cfg(feature = "metrics")]
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

#[cfg(feature = "metrics")]
impl LimitCounters {
    pub(crate) fn new(limit: &str) -> Self {
        let key = |name: &'static str, shadow: &'static str| {
            metrics::Key::from_parts(
                name,
                vec![
                    metrics::Label::new("limit", limit.to_owned()),
                    metrics::Label::from_static_parts("shadow", shadow),
                ],
            )
        };
        LimitCounters([
            key("floodwall_limiter_allowed_total", "false"),
            key("floodwall_limiter_allowed_total", "true"),
            key("floodwall_limiter_denied_total", "false"),
            key("floodwall_limiter_denied_total", "true"),
        ])
    }

    fn key(&self, allowed: bool, shadow: bool) -> &metrics::Key {
        &self.0[usize::from(!allowed) * 2 + usize::from(shadow)]
    }

    /// Registers the limit's allowed and denied series with the recorder, at zero.
    pub(crate) fn register(&self, shadow: bool) {
        metrics::with_recorder(|r| {
            r.register_counter(self.key(true, shadow), &METADATA)
                .increment(0);
            r.register_counter(self.key(false, shadow), &METADATA)
                .increment(0);
        });
    }
}

#[cfg(feature = "metrics")]
pub(crate) fn decided(limit: &Limit, allowed: bool, shadow: bool) {
    let key = limit.counters.key(allowed, shadow);
    metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
}

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn decided(_limit: &Limit, _allowed: bool, _shadow: bool) {}

#[cfg(feature = "metrics")]
pub(crate) fn store_failures(policy: crate::FailurePolicy, n: u64) {
    let policy = match policy {
        crate::FailurePolicy::FailOpen => "fail_open",
        crate::FailurePolicy::FailClosed => "fail_closed",
        crate::FailurePolicy::Insurance { .. } => "insurance",
    };
    metrics::counter!("floodwall_limiter_store_failures_total", "policy" => policy).increment(n);
}

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn store_failures(_policy: crate::FailurePolicy, _n: u64) {}

/// When a decision starts, if a recorder is installed (the facade's fallback no-op recorder
/// is zero-sized).
#[cfg(feature = "metrics")]
#[inline]
pub(crate) fn start() -> Option<std::time::Instant> {
    floodwall_core::metrics::recorder_installed().then(std::time::Instant::now)
}

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn start() -> Option<std::time::Instant> {
    None
}

/// Records how long a decision that started at `started` took, by store.
#[cfg(feature = "metrics")]
pub(crate) fn decision_time(on_redis: bool, started: Option<std::time::Instant>) {
    const NAME: &str = "floodwall_limiter_decision_duration_seconds";
    static MEMORY_LABELS: [metrics::Label; 1] =
        [metrics::Label::from_static_parts("store", "memory")];
    static REDIS_LABELS: [metrics::Label; 1] =
        [metrics::Label::from_static_parts("store", "redis")];
    static MEMORY: metrics::Key = metrics::Key::from_static_parts(NAME, &MEMORY_LABELS);
    static REDIS: metrics::Key = metrics::Key::from_static_parts(NAME, &REDIS_LABELS);
    let Some(t) = started else { return };
    let key = if on_redis { &REDIS } else { &MEMORY };
    let secs = t.elapsed().as_secs_f64();
    metrics::with_recorder(|r| r.register_histogram(key, &METADATA).record(secs));
}

#[cfg(not(feature = "metrics"))]
#[inline(always)]
pub(crate) fn decision_time(_on_redis: bool, _started: Option<std::time::Instant>) {}
