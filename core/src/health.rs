//! Health gates: whether a store node may be called now.
//!
//! A store path keeps one [`HealthGate`] **per node** (one standalone server, or each Redis
//! Cluster master that owns slots), so a node that stops answering fails fast for its own keys
//! while every other node keeps serving. The store path reports each call's effect on the
//! node's health as a [`Health`]: only errors that say the *node* is unwell are
//! [`Health::Unhealthy`]; an error about one key or value (a wrong type, a script's own error)
//! is proof that the node answered, and counts as [`Health::Healthy`].
//!
//! [`NodeBreaker`] is the gate used unless another is given: a small lock-free breaker that
//! opens after `failures` consecutive unhealthy calls, refuses calls for `open_for`, then lets
//! one probe through; the probe's health closes it or opens it again. Any other gate plugs in
//! through [`GateFactory`] — floodwall-resilience's `CircuitBreaker` implements
//! [`HealthGate`].
//!
//! ```
//! use std::time::Duration;
//! use floodwall_core::ManualClock;
//! use floodwall_core::health::{Health, HealthGate, NodeBreaker};
//!
//! let clock = ManualClock::new();
//! let gate = NodeBreaker::builder()
//!     .failures(2)
//!     .open_for(Duration::from_secs(1))
//!     .clock(clock.clone())
//!     .build()
//!     .unwrap();
//! for _ in 0..2 {
//!     let t = gate.try_pass().unwrap();
//!     gate.report(t, Health::Unhealthy);
//! }
//! // Open: refused without calling, and told when to come back.
//! assert_eq!(gate.try_pass().unwrap_err().retry_after, Some(Duration::from_secs(1)));
//! clock.advance(Duration::from_secs(1));
//! let probe = gate.try_pass().unwrap(); // exactly at `open_for`: one probe
//! assert!(gate.try_pass().is_err()); // only one
//! gate.report(probe, Health::Healthy);
//! assert!(gate.try_pass().is_ok()); // closed again
//! ```

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::clock::{Clock, SystemClock, duration_to_nanos};

/// What one call says about the health of the node it went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// The node answered (even if the answer was an error about the caller's key or value).
    Healthy,
    /// The node did not answer in time, refused or dropped the connection, or said it cannot
    /// serve (`LOADING`, `MASTERDOWN`, `CLUSTERDOWN`, `TRYAGAIN`, `READONLY`).
    Unhealthy,
    /// Says nothing either way (the call was not made, or the node answered an error that is
    /// about its memory, not its liveness: `OOM`).
    Neutral,
}

/// A gate opened and closed by hand, ignoring every report: a node taken out of service by
/// an operator, or a test that needs a gate open at an exact moment.
///
/// ```
/// use floodwall_core::health::{HealthGate, ManualGate};
///
/// let gate = ManualGate::default();
/// assert!(gate.try_pass().is_ok());
/// gate.set_open(true);
/// assert!(gate.try_pass().is_err());
/// ```
#[derive(Debug, Default)]
pub struct ManualGate(std::sync::atomic::AtomicBool);

impl ManualGate {
    /// Opens (`true`: every call refused) or closes the gate.
    pub fn set_open(&self, open: bool) {
        self.0.store(open, std::sync::atomic::Ordering::SeqCst);
    }
}

impl HealthGate for ManualGate {
    fn try_pass(&self) -> Result<Ticket, Refused> {
        if self.0.load(std::sync::atomic::Ordering::SeqCst) {
            Err(Refused { retry_after: None })
        } else {
            Ok(Ticket::default())
        }
    }

    fn report(&self, _: Ticket, _: Health) {}
}

/// What a gate hands out when it lets a call through, and gets back with the call's
/// [`Health`]. The fields mean what the gate that made it says; the store path hands the
/// ticket back unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ticket {
    /// The gate's state generation when the ticket was issued.
    pub generation: u64,
    /// The gate's clock reading when the ticket was issued.
    pub started: u64,
    /// Whether this call is a probe of a recovering node.
    pub probe: bool,
}

/// A gate refused a call: the node is considered down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("node refused by its health gate{}", match .retry_after { Some(d) => format!(" (retry after {d:?})"), None => String::new() })]
pub struct Refused {
    /// When the gate expects to let a call through again, if it knows.
    pub retry_after: Option<Duration>,
}

/// Decides whether a node may be called, from the health of earlier calls.
///
/// Implementations must be cheap and thread-safe: the store path asks once per call.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot gate a store node",
    label = "this type does not implement `HealthGate`",
    note = "floodwall-resilience's `CircuitBreaker` and floodwall-core's `NodeBreaker` implement it; wrap your own gate in a type that implements `try_pass` and `report`"
)]
pub trait HealthGate: Send + Sync + fmt::Debug + 'static {
    /// Asks to call the node now.
    fn try_pass(&self) -> Result<Ticket, Refused>;
    /// Reports what the call let through by `ticket` said about the node.
    fn report(&self, ticket: Ticket, health: Health);
}

impl<G: HealthGate + ?Sized> HealthGate for Arc<G> {
    fn try_pass(&self) -> Result<Ticket, Refused> {
        (**self).try_pass()
    }
    fn report(&self, ticket: Ticket, health: Health) {
        (**self).report(ticket, health)
    }
}

/// Makes the gate of each node, named by its address (`host:port`), the first time a store
/// path calls it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot make health gates",
    label = "expected a `Fn(&str) -> Arc<dyn HealthGate>`",
    note = "pass a closure such as `|node: &str| Arc::new(my_breaker_for(node)) as Arc<dyn HealthGate>`"
)]
pub trait GateFactory: Send + Sync + 'static {
    /// The gate of `node`.
    fn gate(&self, node: &str) -> Arc<dyn HealthGate>;
}

impl<F> GateFactory for F
where
    F: Fn(&str) -> Arc<dyn HealthGate> + Send + Sync + 'static,
{
    fn gate(&self, node: &str) -> Arc<dyn HealthGate> {
        self(node)
    }
}

/// The default [`GateFactory`]: a [`NodeBreaker`] with its defaults per node.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultGates;

impl GateFactory for DefaultGates {
    fn gate(&self, _node: &str) -> Arc<dyn HealthGate> {
        Arc::new(
            NodeBreaker::builder()
                .build()
                .expect("the defaults are valid"),
        )
    }
}

const CLOSED: u64 = 0;
const OPEN: u64 = 1;
const HALF_OPEN: u64 = 2;
const FAIL_BITS: u32 = 30;
const FAIL_MASK: u64 = (1 << FAIL_BITS) - 1;

/// `generation << 32 | state << 30 | consecutive failures`.
fn pack(generation: u64, state: u64, fails: u64) -> u64 {
    (generation << 32) | (state << FAIL_BITS) | fails.min(FAIL_MASK)
}

fn unpack(word: u64) -> (u64, u64, u64) {
    (word >> 32, (word >> FAIL_BITS) & 3, word & FAIL_MASK)
}

/// The default node gate: a lock-free consecutive-failure breaker.
///
/// States and invariant:
/// - **closed**: every call passes; `failures` consecutive [`Health::Unhealthy`] reports open
///   it (a [`Health::Healthy`] report resets the count, [`Health::Neutral`] leaves it);
/// - **open** until `opened_at + open_for`: calls are refused with that instant as
///   `retry_after`; at exactly `open_for` the next call is let through as the one probe;
/// - **half-open**: one probe is out; its `Healthy` closes the gate, its `Unhealthy` opens it
///   again for `open_for`, its `Neutral` (or no report for `open_for`) lets another probe go.
///
/// Reports carry the generation of the state their ticket was issued in; a report from an
/// earlier generation (a slow call that ends after the gate changed state) is ignored.
pub struct NodeBreaker {
    word: AtomicU64,
    /// Open: when it may probe. Half-open: when the probe went out.
    at: AtomicU64,
    failures: u64,
    open_for: u64,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for NodeBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (generation, state, fails) = unpack(self.word.load(Ordering::Acquire));
        f.debug_struct("NodeBreaker")
            .field(
                "state",
                &match state {
                    CLOSED => "closed",
                    OPEN => "open",
                    _ => "half-open",
                },
            )
            .field("generation", &generation)
            .field("consecutive_failures", &fails)
            .field("failures", &self.failures)
            .field("open_for", &Duration::from_nanos(self.open_for))
            .finish()
    }
}

/// Builds a [`NodeBreaker`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct NodeBreakerBuilder {
    failures: u32,
    open_for: Duration,
    clock: Arc<dyn Clock>,
}

impl fmt::Debug for NodeBreakerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeBreakerBuilder")
            .field("failures", &self.failures)
            .field("open_for", &self.open_for)
            .finish_non_exhaustive()
    }
}

/// A [`NodeBreakerBuilder`] setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid NodeBreaker `{field}`: {reason}")]
pub struct GateConfigError {
    /// The setter whose value was rejected.
    pub field: &'static str,
    /// Why.
    pub reason: &'static str,
}

impl NodeBreakerBuilder {
    /// Consecutive unhealthy calls that open the gate. Default 5; 0 is rejected by `build`.
    pub fn failures(mut self, n: u32) -> Self {
        self.failures = n;
        self
    }

    /// How long an open gate refuses calls before one probe. Default 1 s; zero is rejected by
    /// `build`; `Duration::MAX` keeps it open for good.
    pub fn open_for(mut self, d: Duration) -> Self {
        self.open_for = d;
        self
    }

    /// The clock (default [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Builds the gate, closed.
    pub fn build(self) -> Result<NodeBreaker, GateConfigError> {
        if self.failures == 0 || u64::from(self.failures) > FAIL_MASK {
            return Err(GateConfigError {
                field: "failures",
                reason: "must be between 1 and 2^30 - 1",
            });
        }
        if self.open_for.is_zero() {
            return Err(GateConfigError {
                field: "open_for",
                reason: "must be more than zero",
            });
        }
        Ok(NodeBreaker {
            word: AtomicU64::new(pack(0, CLOSED, 0)),
            at: AtomicU64::new(0),
            failures: u64::from(self.failures),
            open_for: duration_to_nanos(self.open_for),
            clock: self.clock,
        })
    }
}

impl NodeBreaker {
    /// Default consecutive unhealthy calls that open the gate.
    pub const DEFAULT_FAILURES: u32 = 5;
    /// Default time an open gate refuses calls.
    pub const DEFAULT_OPEN_FOR: Duration = Duration::from_secs(1);

    /// A builder with the defaults (5 failures, 1 s open, the system clock).
    pub fn builder() -> NodeBreakerBuilder {
        NodeBreakerBuilder {
            failures: Self::DEFAULT_FAILURES,
            open_for: Self::DEFAULT_OPEN_FOR,
            clock: Arc::new(SystemClock::new()),
        }
    }

    /// Whether calls are refused now (open, before the probe time).
    pub fn is_open(&self) -> bool {
        let (_, state, _) = unpack(self.word.load(Ordering::Acquire));
        state == OPEN && self.clock.now_nanos() < self.at.load(Ordering::Acquire)
    }

    fn open(&self, from: u64, generation: u64, now: u64) -> bool {
        let next = pack(generation.wrapping_add(1) & 0xFFFF_FFFF, OPEN, 0);
        if self
            .word
            .compare_exchange(from, next, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.at
                .store(now.saturating_add(self.open_for), Ordering::Release);
            tracing_open(self.open_for);
            true
        } else {
            false
        }
    }
}

#[inline]
fn tracing_open(_open_for: u64) {
    #[cfg(feature = "redis")]
    tracing::warn!(
        open_for = ?Duration::from_nanos(_open_for),
        "store node gate opened: calls to this node fail fast"
    );
}

impl HealthGate for NodeBreaker {
    fn try_pass(&self) -> Result<Ticket, Refused> {
        loop {
            let word = self.word.load(Ordering::Acquire);
            let (generation, state, _) = unpack(word);
            if state == CLOSED {
                return Ok(Ticket {
                    generation,
                    started: 0,
                    probe: false,
                });
            }
            let now = self.clock.now_nanos();
            let at = self.at.load(Ordering::Acquire);
            let due = match state {
                OPEN => at,
                _ => at.saturating_add(self.open_for),
            };
            if now < due {
                return Err(Refused {
                    retry_after: (state == OPEN).then(|| Duration::from_nanos(due - now)),
                });
            }
            let next_generation = generation.wrapping_add(1) & 0xFFFF_FFFF;
            let next = pack(next_generation, HALF_OPEN, 0);
            if self
                .word
                .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                self.at.store(now, Ordering::Release);
                return Ok(Ticket {
                    generation: next_generation,
                    started: now,
                    probe: true,
                });
            }
        }
    }

    fn report(&self, ticket: Ticket, health: Health) {
        loop {
            let word = self.word.load(Ordering::Acquire);
            let (generation, state, fails) = unpack(word);
            if generation != ticket.generation {
                return;
            }
            let next = match (state, health) {
                (_, Health::Neutral) if state != HALF_OPEN => return,
                (CLOSED, Health::Healthy) if fails == 0 => return,
                (CLOSED, Health::Healthy) => pack(generation, CLOSED, 0),
                (CLOSED, Health::Unhealthy) => {
                    if fails + 1 >= self.failures {
                        if self.open(word, generation, self.clock.now_nanos()) {
                            return;
                        }
                        continue;
                    }
                    pack(generation, CLOSED, fails + 1)
                }
                (HALF_OPEN, Health::Healthy) => {
                    pack(generation.wrapping_add(1) & 0xFFFF_FFFF, CLOSED, 0)
                }
                (HALF_OPEN, Health::Unhealthy) => {
                    if self.open(word, generation, self.clock.now_nanos()) {
                        return;
                    }
                    continue;
                }
                (HALF_OPEN, Health::Neutral) => {
                    // Let the next call probe at once.
                    let next = pack(generation.wrapping_add(1) & 0xFFFF_FFFF, OPEN, 0);
                    if self
                        .word
                        .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                    {
                        self.at.store(0, Ordering::Release);
                        return;
                    }
                    continue;
                }
                _ => return,
            };
            if self
                .word
                .compare_exchange(word, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManualClock;

    fn gate(clock: &ManualClock) -> NodeBreaker {
        NodeBreaker::builder()
            .failures(3)
            .open_for(Duration::from_millis(100))
            .clock(clock.clone())
            .build()
            .unwrap()
    }

    #[test]
    fn healthy_resets_and_neutral_keeps_the_count() {
        let clock = ManualClock::new();
        let g = gate(&clock);
        for h in [Health::Unhealthy, Health::Unhealthy, Health::Healthy] {
            g.report(g.try_pass().unwrap(), h);
        }
        for h in [Health::Unhealthy, Health::Neutral, Health::Unhealthy] {
            g.report(g.try_pass().unwrap(), h);
        }
        assert!(g.try_pass().is_ok(), "two unhealthy in a row, not three");
        g.report(g.try_pass().unwrap(), Health::Unhealthy);
        assert!(g.is_open());
    }

    #[test]
    fn stale_reports_are_ignored() {
        let clock = ManualClock::new();
        let g = gate(&clock);
        let slow = g.try_pass().unwrap();
        for _ in 0..3 {
            g.report(g.try_pass().unwrap(), Health::Unhealthy);
        }
        clock.advance(Duration::from_millis(100));
        let probe = g.try_pass().unwrap();
        g.report(probe, Health::Healthy);
        // A call from before the opening ends late: it does not count any more.
        g.report(slow, Health::Unhealthy);
        g.report(slow, Health::Unhealthy);
        g.report(slow, Health::Unhealthy);
        assert!(g.try_pass().is_ok());
    }

    #[test]
    fn zero_settings_are_rejected_and_max_stays_open() {
        assert_eq!(
            NodeBreaker::builder()
                .failures(0)
                .build()
                .unwrap_err()
                .field,
            "failures"
        );
        assert_eq!(
            NodeBreaker::builder()
                .open_for(Duration::ZERO)
                .build()
                .unwrap_err()
                .field,
            "open_for"
        );
        let clock = ManualClock::new();
        let g = NodeBreaker::builder()
            .failures(1)
            .open_for(Duration::MAX)
            .clock(clock.clone())
            .build()
            .unwrap();
        g.report(g.try_pass().unwrap(), Health::Unhealthy);
        clock.advance(Duration::from_secs(1_000_000_000));
        assert!(g.try_pass().is_err());
    }
}
