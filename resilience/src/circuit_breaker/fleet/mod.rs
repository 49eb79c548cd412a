//! Fleet breaker: the instances of a service share what their breakers for one dependency
//! know, so the fleet opens on a quorum's evidence, a new instance starts from the fleet's
//! state, and half-open probing is done by a few instances for all.
//!
//! Every call is decided by the instance's own [`CircuitBreaker`], exactly as without a
//! fleet: the call path never waits on the store. A background task syncs: it reports the
//! breaker's state and window counts and applies the fleet's answer, every
//! [`sync_interval`](FleetBreakerBuilder::sync_interval), and at once (at most every
//! [`publish_gap`](FleetBreakerBuilder::publish_gap)) after a failure or a state change. The
//! store ([`RedisFleet`] with the `redis` feature, or [`MemoryFleet`] in one process) decides
//! each report in one atomic step on its own clock; on Redis a report costs O(1) whatever the
//! fleet's size (running sums, summed afresh every 128th report).
//!
//! # Rules
//!
//! With `live` = instances whose lease runs (a report renews it; it ends
//! [`lease`](FleetBreakerBuilder::lease) after the last) and the quorum
//! `q = max(2, min(live, Count(n) | ceil(share × live)))` ([`Quorum::among`]):
//!
//! - **Open.** A closed fleet opens when `q` live instances are open on their own evidence,
//!   or when the pooled window of the closed instances (`Σ calls ≥ minimum_calls` and
//!   `100 × Σ failures ≥ threshold × Σ calls`, or the same for slow calls) crosses a
//!   threshold **and** `q` instances are witnesses (open, or their own window at or over a
//!   threshold). The fleet's wait is the breaker's open wait for the fleet's `k`-th
//!   consecutive opening.
//! - **Held.** While the fleet is open, every instance is held open (its own open wait set to
//!   the fleet's remaining wait plus a hold of three sync intervals, renewed each sync); a held
//!   instance never counts toward the quorum, so a fleet opening does not keep itself alive.
//! - **Probes.** Once the fleet's wait is over, the first
//!   [`probers`](FleetBreakerBuilder::probers) instances to sync get a probe slot and
//!   half-open; the others stay held. Passed probes close the fleet (every held instance closes
//!   at its next sync); failed probes open it again with the next wait. A slot not reported
//!   within [`probe_timeout`](FleetBreakerBuilder::probe_timeout) goes to another instance.
//!   So an open period sends at most `probers × permitted_calls_in_half_open` probes.
//! - **Seeding.** [`join`](FleetBreakerBuilder::join) syncs once before it returns: a new
//!   instance of an open fleet starts held open, before its first call.
//! - **Store gone.** A sync that fails (bounded by the store's call timeout and the lease)
//!   leaves the breaker alone: a held instance's hold runs out within three sync intervals and
//!   it goes on as a plain local breaker; `floodwall_circuit_breaker_fleet_connected` reads 0.
//!   The next sync that is answered joins the fleet again.
//!
//! # Invariants
//!
//! - One instance open on its own evidence — a local fault, its own network — never opens
//!   another below the quorum: it is one open member and one witness.
//! - The fleet's state changes only inside the store's atomic step, on the store's clock.
//! - A healthy call costs what a plain breaker's does: the breaker is the same, and only a
//!   failure or a transition touches the fleet — it sets a flag and, if none was pending,
//!   wakes the sync task (a Tokio `Notify`), so a burst of failures wakes it once per sync.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use std::num::NonZeroU32;
//! use floodwall_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow, State};
//! use floodwall_resilience::circuit_breaker::fleet::{FleetBreaker, MemoryFleet, Quorum};
//!
//! let fleet = MemoryFleet::new(); // RedisFleet::new(options) across processes
//! let mut instances = Vec::new();
//! for _ in 0..3 {
//!     let breaker = CircuitBreaker::builder()
//!         .name("payments")
//!         .sliding_window(SlidingWindow::Count(NonZeroU32::new(10).unwrap()))
//!         .minimum_calls(10)
//!         .build()
//!         .unwrap();
//!     let member = FleetBreaker::builder(breaker, fleet.clone())
//!         .quorum(Quorum::Count(2))
//!         .join()
//!         .await
//!         .unwrap();
//!     instances.push(member);
//! }
//! // Two instances see a failing dependency: five failures each, ten pooled.
//! for member in &instances[..2] {
//!     for _ in 0..5 {
//!         member.breaker().try_acquire().unwrap().failure();
//!     }
//!     member.sync_now().await.unwrap();
//! }
//! // The third learns it at its next sync, without a call of its own.
//! let view = instances[2].sync_now().await.unwrap();
//! assert!(view.open);
//! assert_eq!(instances[2].breaker().state(), State::Open);
//! # }
//! ```

mod member;
mod metrics;
#[cfg(feature = "redis")]
mod redis;
mod rule;
mod store;

use std::sync::Arc;
use std::time::Duration;

use floodwall_core::StoreError;

use super::{CircuitBreaker, ConfigError, OpenWait};

use member::Core;

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use redis::RedisFleet;
pub use rule::MemoryFleet;
pub use store::{FleetRules, FleetStore, FleetView, MemberReport, MemberState, Quorum};

/// An instance's breaker in a fleet. Cheap to clone; the fleet's sync task stops when the last
/// clone is dropped (the instance then leaves the fleet, or its lease ends).
///
/// Decide calls with [`breaker`](FleetBreaker::breaker) (or hand a clone of it to a layer or
/// a pipeline): it is a plain [`CircuitBreaker`] that the fleet opens, holds and closes.
#[derive(Clone)]
pub struct FleetBreaker {
    core: Arc<Core>,
}

impl FleetBreaker {
    /// A fleet member for `breaker` meeting the others on `store`, under the breaker's
    /// [name](CircuitBreaker::name).
    pub fn builder(breaker: CircuitBreaker, store: impl FleetStore) -> FleetBreakerBuilder {
        FleetBreakerBuilder {
            breaker,
            store: Arc::new(store),
            instance: None,
            quorum: Quorum::Count(3),
            sync_interval: Duration::from_secs(1),
            publish_gap: Duration::from_millis(5),
            lease: None,
            probers: 1,
            probe_timeout: None,
            minimum_calls: None,
        }
    }

    /// The breaker every call goes through.
    pub fn breaker(&self) -> &CircuitBreaker {
        &self.core.breaker
    }

    /// This instance's id in the fleet.
    pub fn instance(&self) -> &str {
        &self.core.instance
    }

    /// The fleet's last answer, if any sync was answered.
    pub fn view(&self) -> Option<FleetView> {
        self.core.view()
    }

    /// Whether the last sync was answered (`false`: deciding alone).
    pub fn connected(&self) -> bool {
        self.core.connected()
    }

    /// Syncs now — reports, and applies the fleet's answer — instead of waiting for the task.
    pub async fn sync_now(&self) -> Result<FleetView, StoreError> {
        self.core.sync_once().await
    }

    /// The rules this instance reports under.
    pub fn rules(&self) -> &FleetRules {
        &self.core.rules
    }
}

impl std::fmt::Debug for FleetBreaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBreaker")
            .field("breaker", &self.core.breaker)
            .field("instance", &self.core.instance)
            .field("connected", &self.connected())
            .finish()
    }
}

/// Builds a [`FleetBreaker`]; [`join`](FleetBreakerBuilder::join) validates, syncs once and
/// starts the sync task.
#[must_use = "a builder does nothing until `join` is awaited"]
pub struct FleetBreakerBuilder {
    breaker: CircuitBreaker,
    store: Arc<dyn FleetStore>,
    instance: Option<String>,
    quorum: Quorum,
    sync_interval: Duration,
    publish_gap: Duration,
    lease: Option<Duration>,
    probers: u32,
    probe_timeout: Option<Duration>,
    minimum_calls: Option<u64>,
}

impl FleetBreakerBuilder {
    /// This instance's id, unique in the fleet (at most 128 bytes of `[A-Za-z0-9_.:-]`).
    /// Default: random per process and breaker.
    pub fn instance(mut self, id: impl Into<String>) -> Self {
        self.instance = Some(id.into());
        self
    }

    /// How many instances must agree before the fleet opens. Default: `Quorum::Count(3)`.
    pub fn quorum(mut self, quorum: Quorum) -> Self {
        self.quorum = quorum;
        self
    }

    /// How often an instance syncs with nothing new to report (its heartbeat). Default 1 s.
    pub fn sync_interval(mut self, every: Duration) -> Self {
        self.sync_interval = every;
        self
    }

    /// The least time between two syncs, so a burst of failures sends a few reports, not one
    /// per failure. Default 5 ms.
    pub fn publish_gap(mut self, gap: Duration) -> Self {
        self.publish_gap = gap;
        self
    }

    /// How long a report keeps its instance live: a dead instance stops counting within it.
    /// Default: three sync intervals. At least one sync interval.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Instances granted a probe slot per open period. Default 1.
    pub fn probers(mut self, n: u32) -> Self {
        self.probers = n;
        self
    }

    /// How long a probe slot may go unreported before another instance gets it. Default:
    /// three leases.
    pub fn probe_timeout(mut self, timeout: Duration) -> Self {
        self.probe_timeout = Some(timeout);
        self
    }

    /// Calls the pooled window needs before the fleet judges its rates. Default: the
    /// breaker's `minimum_calls`.
    pub fn minimum_calls(mut self, n: u64) -> Self {
        self.minimum_calls = Some(n);
        self
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, reason| Err(ConfigError { field, reason });
        if let Some(id) = &self.instance
            && (id.is_empty()
                || id.len() > 128
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b)))
        {
            return bad("instance", "must be 1 to 128 bytes of [A-Za-z0-9_.:-]");
        }
        match self.quorum {
            Quorum::Count(n) if n < 2 => return bad("quorum", "a count must be at least 2"),
            Quorum::Share(s) if !(s > 0.0 && s <= 1.0) => {
                return bad("quorum", "a share must be in (0, 1]");
            }
            _ => {}
        }
        if self.sync_interval.is_zero() {
            return bad("sync_interval", "must be positive");
        }
        if self.lease.is_some_and(|l| l < self.sync_interval) {
            return bad("lease", "must be at least one sync interval");
        }
        if self.probers == 0 {
            return bad("probers", "must be at least 1");
        }
        if self.probe_timeout.is_some_and(|t| t.is_zero()) {
            return bad("probe_timeout", "must be positive");
        }
        if self.breaker.inner.cfg.break_duration.is_some() {
            return bad(
                "breaker",
                "a break_duration function cannot be shared with the fleet; use open_wait",
            );
        }
        Ok(())
    }

    /// Validates, syncs once (so a new instance of an open fleet starts open, before its
    /// first call) and starts the sync task. A first sync that fails is not an error: the
    /// breaker starts alone and joins at the next answered sync.
    ///
    /// Errors: a setting out of range, or a breaker already in a fleet, naming the field.
    pub async fn join(self) -> Result<FleetBreaker, ConfigError> {
        self.validate()?;
        let cfg = &self.breaker.inner.cfg;
        let lease = self.lease.unwrap_or(self.sync_interval * 3);
        let (wait_initial, wait_multiplier, wait_max) = match cfg.open_wait {
            OpenWait::Fixed(d) => (d, 1.0, d),
            OpenWait::Backoff {
                initial,
                multiplier,
                max,
            } => (initial, multiplier, max),
        };
        let rules = FleetRules {
            lease,
            quorum: self.quorum,
            minimum_calls: self.minimum_calls.unwrap_or(cfg.minimum_calls),
            failure_rate_threshold: cfg.failure_rate_threshold,
            slow_call_rate_threshold: cfg.slow_call_rate_threshold,
            wait_initial,
            wait_multiplier,
            wait_max,
            probers: self.probers,
            probe_timeout: self.probe_timeout.unwrap_or(lease * 3),
        };
        let instance = self.instance.unwrap_or_else(member::random_id);
        let core = Core::new(
            self.breaker,
            self.store,
            instance,
            rules,
            self.sync_interval,
        )
        .ok_or(ConfigError {
            field: "breaker",
            reason: "this breaker is already a member of a fleet",
        })?;
        let _ = core.sync_once().await;
        core.start(self.publish_gap);
        Ok(FleetBreaker { core })
    }
}

impl std::fmt::Debug for FleetBreakerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetBreakerBuilder")
            .field("breaker", &self.breaker)
            .field("quorum", &self.quorum)
            .field("sync_interval", &self.sync_interval)
            .finish_non_exhaustive()
    }
}
