//! Metrics (feature `metrics`), all counters, labelled with the instance's name
//! (`idempotency="<name>"`: an [`Idempotency`](crate::Idempotency)'s, or a
//! [`Deduplicator`](crate::Deduplicator)'s):
//!
//! - `floodwall_idempotency_executions_total`: operations run (claims won);
//! - `floodwall_idempotency_replays_total`: results replayed;
//! - `floodwall_idempotency_conflicts_total`: duplicates answered "in progress";
//! - `floodwall_idempotency_mismatches_total`: keys reused with another payload;
//! - `floodwall_idempotency_duplicates_total`: queue messages skipped as already processed;
//! - `floodwall_idempotency_unrecorded_total`: operations that ran but whose result could
//!   not be stored (a retry may run them again);
//! - `floodwall_idempotency_unreleased_total`: claims that could not be released (their key
//!   answers "in progress" until the lease ends).
//!
//! And the histogram `floodwall_idempotency_store_call_duration_seconds{idempotency, op}`:
//! each store call (`op`: `begin`, `complete`, `abort`, `extend`), retries counted apart.
//!
//! Each counter exists from the instance's construction (at zero) when a recorder is
//! installed by then; counting allocates nothing.

use std::sync::atomic::{AtomicU64, Ordering};

/// A unique default name: `<prefix>-<n>`.
pub(crate) fn default_name(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(feature = "metrics")]
const NAMES: [&str; 7] = [
    "floodwall_idempotency_executions_total",
    "floodwall_idempotency_replays_total",
    "floodwall_idempotency_conflicts_total",
    "floodwall_idempotency_mismatches_total",
    "floodwall_idempotency_duplicates_total",
    "floodwall_idempotency_unrecorded_total",
    "floodwall_idempotency_unreleased_total",
];

#[cfg(feature = "metrics")]
static METADATA: metrics::Metadata<'static> =
    metrics::Metadata::new(module_path!(), metrics::Level::INFO, Some(module_path!()));

/// A store call, as the `op` label of the store-call histogram.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Op {
    Begin = 0,
    Complete = 1,
    Abort = 2,
    Extend = 3,
}

/// An instance's counters: each metric's key with the instance's label, built once.
#[derive(Debug)]
pub(crate) struct Counters {
    /// Set once the series were registered with the recorder.
    #[cfg(feature = "metrics")]
    registered: std::sync::OnceLock<()>,
    #[cfg(feature = "metrics")]
    keys: Vec<metrics::Key>,
    /// `floodwall_idempotency_store_call_duration_seconds`, by [`Op`].
    #[cfg(feature = "metrics")]
    timings: Vec<metrics::Key>,
}

macro_rules! counter_fn {
    ($f:ident, $index:literal) => {
        #[inline]
        pub(crate) fn $f(&self) {
            #[cfg(feature = "metrics")]
            {
                let key = &self.keys[$index];
                metrics::with_recorder(|r| r.register_counter(key, &METADATA).increment(1));
            }
        }
    };
}

impl Counters {
    /// Registers every counter with the installed recorder, at zero (once; later calls do
    /// nothing), so the series exist before anything is counted.
    pub(crate) fn register(&self) {
        #[cfg(feature = "metrics")]
        self.registered.get_or_init(|| {
            metrics::with_recorder(|r| {
                for k in &self.keys {
                    r.register_counter(k, &METADATA).increment(0);
                }
            });
        });
    }

    /// The counters of the instance named `name`, not yet registered.
    pub(crate) fn named(name: &str) -> Counters {
        #[cfg(feature = "metrics")]
        {
            crate::describe_metrics();
            let keys: Vec<metrics::Key> = NAMES
                .iter()
                .map(|n| {
                    let label = metrics::Label::new("idempotency", name.to_owned());
                    metrics::Key::from_parts(*n, vec![label])
                })
                .collect();
            let timings = ["begin", "complete", "abort", "extend"]
                .iter()
                .map(|op| {
                    let labels = vec![
                        metrics::Label::new("idempotency", name.to_owned()),
                        metrics::Label::from_static_parts("op", op),
                    ];
                    metrics::Key::from_parts(
                        "floodwall_idempotency_store_call_duration_seconds",
                        labels,
                    )
                })
                .collect();
            Counters {
                registered: std::sync::OnceLock::new(),
                keys,
                timings,
            }
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = name;
            Counters {}
        }
    }

    /// Runs the store call `call`, recording how long it took as `op`.
    pub(crate) async fn timed<T>(&self, op: Op, call: impl std::future::Future<Output = T>) -> T {
        #[cfg(feature = "metrics")]
        {
            let started =
                floodwall_core::metrics::recorder_installed().then(std::time::Instant::now);
            let out = call.await;
            if let Some(t) = started {
                let key = &self.timings[op as usize];
                let secs = t.elapsed().as_secs_f64();
                metrics::with_recorder(|r| r.register_histogram(key, &METADATA).record(secs));
            }
            out
        }
        #[cfg(not(feature = "metrics"))]
        {
            let _ = op;
            call.await
        }
    }

    counter_fn!(executed, 0);
    counter_fn!(replayed, 1);
    counter_fn!(conflict, 2);
    counter_fn!(mismatch, 3);
    counter_fn!(duplicate, 4);
    counter_fn!(unrecorded, 5);
    counter_fn!(unreleased, 6);
}
