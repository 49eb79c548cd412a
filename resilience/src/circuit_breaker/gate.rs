//! A breaker as a store node's health gate.

use super::{CircuitBreaker, Outcome, RawPermit};

/// A breaker gates a store node: a store path asks it before each call to the node and
/// reports what the call said about the node's health
/// ([`Health::Unhealthy`](floodwall_core::health::Health::Unhealthy) is a failure,
/// `Healthy` a success, `Neutral` ignored).
///
/// ```
/// use std::sync::Arc;
/// use floodwall_core::health::{GateFactory, HealthGate};
/// use floodwall_resilience::circuit_breaker::CircuitBreaker;
///
/// // One breaker per Redis node, named after it (the name is the metrics label).
/// let gates = |node: &str| -> Arc<dyn HealthGate> {
///     Arc::new(CircuitBreaker::builder().name(format!("redis-{node}")).build().unwrap())
/// };
/// let _ = gates.gate("10.0.0.1:6379");
/// ```
impl floodwall_core::health::HealthGate for CircuitBreaker {
    fn try_pass(&self) -> Result<floodwall_core::health::Ticket, floodwall_core::health::Refused> {
        match self.acquire_raw() {
            Ok(raw) => Ok(floodwall_core::health::Ticket {
                generation: raw.generation,
                started: raw.started,
                probe: raw.probe,
            }),
            Err(r) => Err(floodwall_core::health::Refused {
                retry_after: r.retry_after,
            }),
        }
    }

    fn report(
        &self,
        ticket: floodwall_core::health::Ticket,
        health: floodwall_core::health::Health,
    ) {
        use floodwall_core::health::Health;
        let raw = RawPermit {
            generation: ticket.generation,
            started: ticket.started,
            probe: ticket.probe,
            timer: None,
        };
        let outcome = match health {
            Health::Healthy => Outcome::Success,
            Health::Unhealthy => Outcome::Failure,
            Health::Neutral => Outcome::Ignored,
        };
        self.record_raw(raw, outcome);
    }
}
