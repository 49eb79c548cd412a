//! A fleet breaker's metric handles (feature `metrics`): whether its store answers, the
//! fleet's verdict and live instances, and failed syncs. Without the feature every handle is
//! a zero-sized no-op.

#[cfg(feature = "metrics")]
mod imp {
    use metrics::{Counter, Gauge, counter, gauge};

    use crate::metrics::{Bound, bound};

    struct FleetHandles {
        connected: Gauge,
        open: Gauge,
        live: Gauge,
        sync_errors: Counter,
    }

    pub(crate) struct FleetMetrics(Bound<FleetHandles>);

    impl FleetMetrics {
        pub(crate) fn new(name: &str) -> Self {
            FleetMetrics(bound(name, |name| FleetHandles {
                connected: gauge!("floodwall_circuit_breaker_fleet_connected", "breaker" => name.to_owned()),
                open: gauge!("floodwall_circuit_breaker_fleet_open", "breaker" => name.to_owned()),
                live: gauge!("floodwall_circuit_breaker_fleet_instances", "breaker" => name.to_owned()),
                sync_errors: counter!("floodwall_circuit_breaker_fleet_sync_errors_total", "breaker" => name.to_owned()),
            }))
        }

        /// A sync answered: the fleet's verdict and live instances.
        pub(crate) fn synced(&self, open: bool, live: u32) {
            if let Some(h) = self.0.get() {
                h.connected.set(1.0);
                h.open.set(if open { 1.0 } else { 0.0 });
                h.live.set(f64::from(live));
            }
        }

        /// A sync failed: the breaker decides alone.
        pub(crate) fn unreachable(&self) {
            if let Some(h) = self.0.get() {
                h.connected.set(0.0);
                h.sync_errors.increment(1);
            }
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    pub(crate) struct FleetMetrics;
    impl FleetMetrics {
        pub(crate) fn new(_: &str) -> Self {
            FleetMetrics
        }
        pub(crate) fn synced(&self, _: bool, _: u32) {}
        pub(crate) fn unreachable(&self) {}
    }
}

pub(crate) use imp::*;
