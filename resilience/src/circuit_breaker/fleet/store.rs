//! The fleet's store: what an instance reports, the rules every instance shares, what the
//! store answers, and the [`FleetStore`] trait that [`MemoryFleet`](super::MemoryFleet) and
//! (feature `redis`) [`RedisFleet`](super::RedisFleet) implement.

use std::time::Duration;

use floodwall_core::StoreError;
use futures::future::BoxFuture;

/// Where an instance's breaker stands, as it reports it to the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum MemberState {
    /// Closed: its window's counts go into the fleet's pool.
    Closed,
    /// Open (or half-open) on its own evidence: counts toward the quorum.
    Open,
    /// Held open by the fleet: never counts toward the quorum, so a fleet opening does not
    /// keep itself alive.
    Held,
    /// Granted one of the fleet's probe slots; its probes are running.
    Probing,
    /// Its probes passed: the fleet closes.
    ProbePassed,
    /// Its probes failed: the fleet opens again, with the next backoff wait.
    ProbeFailed,
    /// In a manual state (forced open, disabled, metrics only): counted as live, nothing else.
    Manual,
}

impl MemberState {
    /// The state's code in the store (`0..=6`, in declaration order).
    pub fn code(self) -> u8 {
        match self {
            MemberState::Closed => 0,
            MemberState::Open => 1,
            MemberState::Held => 2,
            MemberState::Probing => 3,
            MemberState::ProbePassed => 4,
            MemberState::ProbeFailed => 5,
            MemberState::Manual => 6,
        }
    }

    /// The state of a code from the store; an unknown code is [`MemberState::Manual`] (it
    /// counts as live and nothing else).
    pub fn from_code(code: u64) -> MemberState {
        match code {
            0 => MemberState::Closed,
            1 => MemberState::Open,
            2 => MemberState::Held,
            3 => MemberState::Probing,
            4 => MemberState::ProbePassed,
            5 => MemberState::ProbeFailed,
            _ => MemberState::Manual,
        }
    }
}

/// One instance's report: who, its state, and its window's counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberReport {
    /// The instance's id, unique within the fleet.
    pub instance: String,
    /// Its state.
    pub state: MemberState,
    /// Calls in its window (successes and failures).
    pub calls: u64,
    /// Of which failures.
    pub failures: u64,
    /// Of which slow.
    pub slow: u64,
}

/// How many instances must agree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Quorum {
    /// This many live instances.
    Count(u32),
    /// This share (`0.0..=1.0`) of the live instances, rounded up.
    Share(f64),
}

impl Quorum {
    /// The quorum among `live` instances: the count or share asked for, at most `live`, and
    /// never below 2 — one instance alone never opens another.
    pub fn among(self, live: u32) -> u32 {
        let want = match self {
            Quorum::Count(n) => n,
            Quorum::Share(s) => (s.clamp(0.0, 1.0) * f64::from(live)).ceil() as u32,
        };
        want.min(live).max(2)
    }
}

/// The rules every instance of one fleet breaker sends with its report (the store keeps no
/// configuration of its own).
#[derive(Debug, Clone, PartialEq)]
pub struct FleetRules {
    /// A report keeps its instance live this long.
    pub lease: Duration,
    /// Instances that must agree before the fleet opens.
    pub quorum: Quorum,
    /// Calls the pooled window needs before its rates are judged.
    pub minimum_calls: u64,
    /// Failure-rate threshold, percent.
    pub failure_rate_threshold: f64,
    /// Slow-call-rate threshold, percent.
    pub slow_call_rate_threshold: f64,
    /// The fleet's open wait for its first opening.
    pub wait_initial: Duration,
    /// Growth per consecutive fleet opening (1.0: fixed).
    pub wait_multiplier: f64,
    /// Cap on the fleet's open wait.
    pub wait_max: Duration,
    /// Instances granted a probe slot per open period.
    pub probers: u32,
    /// A probe slot not reported passed or failed within this is given to another instance.
    pub probe_timeout: Duration,
}

impl FleetRules {
    /// The fleet's open wait for its `k`-th consecutive opening:
    /// `min(wait_max, wait_initial * wait_multiplier^(k-1))`, in whole milliseconds.
    pub fn wait_millis(&self, k: u32) -> u64 {
        let initial = self.wait_initial.as_millis() as f64;
        let grown = initial
            * self
                .wait_multiplier
                .max(1.0)
                .powi(k.saturating_sub(1).min(1024) as i32);
        let max = self.wait_max.as_millis() as f64;
        grown.min(max).floor() as u64
    }
}

/// What the store answered one report with: the fleet's verdict and what it was made from.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetView {
    /// The fleet is open.
    pub open: bool,
    /// How long the fleet's open wait still runs (zero once it is over: probing).
    pub remaining: Duration,
    /// This instance holds one of the fleet's probe slots.
    pub granted: bool,
    /// Instances whose lease runs.
    pub live: u32,
    /// Live instances open on their own evidence.
    pub open_members: u32,
    /// Calls in the pooled window of the closed instances.
    pub pooled_calls: u64,
    /// Of which failures.
    pub pooled_failures: u64,
    /// Instances whose own window is at or over a threshold, or open on their own.
    pub witnesses: u32,
    /// The fleet's consecutive openings (its backoff's `k`; 0 once closed by probes).
    pub opening: u32,
    /// The quorum among the live instances.
    pub quorum: u32,
}

/// A place where the instances of a fleet breaker meet. [`sync`](FleetStore::sync) stores one
/// instance's report and answers with the fleet's verdict, as one atomic step.
pub trait FleetStore: Send + Sync + 'static {
    /// Stores `report` for the breaker `name` under `rules` and answers with the fleet's view.
    fn sync<'a>(
        &'a self,
        name: &'a str,
        report: &'a MemberReport,
        rules: &'a FleetRules,
    ) -> BoxFuture<'a, Result<FleetView, StoreError>>;

    /// Removes `instance` from the fleet of `name` (an instance that shuts down). Best effort:
    /// its lease removes it anyway.
    fn leave<'a>(
        &'a self,
        name: &'a str,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}
