//! The load shedder's metric handles (feature `metrics`): its level, pressure per signal and
//! highest, requests in flight and in the critical reserve, and requests shed by priority.
//! Without the feature every handle is a zero-sized no-op.

#[cfg(feature = "metrics")]
mod imp {
    use metrics::{Counter, Gauge, counter, gauge};

    use crate::metrics::{Bound, bound};

    /// One signal's pressure gauge, bound under `shedder\u{1f}signal`.
    pub(crate) struct SignalMetrics(Bound<Gauge>);

    impl SignalMetrics {
        pub(crate) fn new(shedder: &str, signal: &str) -> Self {
            SignalMetrics(bound(&format!("{shedder}\u{1f}{signal}"), |key| {
                let (shedder, signal) = key.split_once('\u{1f}').unwrap_or((key, ""));
                gauge!("floodwall_shed_signal_pressure", "shedder" => shedder.to_owned(), "signal" => signal.to_owned())
            }))
        }

        pub(crate) fn set(&self, pressure: f64) {
            if let Some(g) = self.0.get() {
                g.set(pressure);
            }
        }
    }

    pub(crate) struct ShedMetrics(Bound<ShedHandles>);

    struct ShedHandles {
        level: Gauge,
        pressure: Gauge,
        in_flight: Gauge,
        reserved_in_use: Gauge,
        shed: [Counter; 3],
    }

    impl ShedMetrics {
        pub(crate) fn new(name: &str) -> Self {
            ShedMetrics(bound(name, |name| {
                let shed = |p: &'static str| counter!("floodwall_shed_rejected_total", "shedder" => name.to_owned(), "priority" => p);
                ShedHandles {
                    level: gauge!("floodwall_shed_level", "shedder" => name.to_owned()),
                    pressure: gauge!("floodwall_shed_pressure", "shedder" => name.to_owned()),
                    in_flight: gauge!("floodwall_shed_in_flight", "shedder" => name.to_owned()),
                    reserved_in_use: gauge!("floodwall_shed_reserved_in_use", "shedder" => name.to_owned()),
                    shed: [shed("sheddable"), shed("default"), shed("critical")],
                }
            }))
        }

        /// A sample's pressure, the level it set, the requests in flight and how many of
        /// them use the share reserved for critical requests.
        pub(crate) fn sampled(&self, pressure: f64, level: f64, in_flight: usize, reserved: usize) {
            if let Some(h) = self.0.get() {
                h.pressure.set(pressure);
                h.level.set(level);
                h.in_flight.set(in_flight as f64);
                h.reserved_in_use.set(reserved as f64);
            }
        }

        pub(crate) fn shed(&self, priority: crate::shed::Priority) {
            if let Some(h) = self.0.get() {
                h.shed[priority as usize].increment(1);
            }
        }
    }
}

#[cfg(not(feature = "metrics"))]
mod imp {
    pub(crate) struct SignalMetrics;
    impl SignalMetrics {
        pub(crate) fn new(_: &str, _: &str) -> Self {
            SignalMetrics
        }
        pub(crate) fn set(&self, _: f64) {}
    }

    pub(crate) struct ShedMetrics;
    impl ShedMetrics {
        pub(crate) fn new(_: &str) -> Self {
            ShedMetrics
        }
        pub(crate) fn sampled(&self, _: f64, _: f64, _: usize, _: usize) {}
        pub(crate) fn shed(&self, _: crate::shed::Priority) {}
    }
}

pub(crate) use imp::*;
