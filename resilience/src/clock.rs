//! A [`Clock`](floodwall_core::Clock) on Tokio's time: floodwall-core's `TokioClock`,
//! re-exported here where the resilience primitives that use it live.

pub use floodwall_core::TokioClock;
