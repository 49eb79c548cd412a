//! The fleet's rule, in memory: [`MemoryFleet`] keeps each breaker's fleet record in this
//! process and decides with [`decide`]; `redis/sync.lua` decides the same way in one script.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use floodwall_core::{Clock, StoreError, SystemClock};
use futures::future::BoxFuture;

use super::store::{FleetRules, FleetStore, FleetView, MemberReport, MemberState};

/// One instance as the store keeps it.
#[derive(Debug, Clone)]
struct Member {
    state: MemberState,
    calls: u64,
    failures: u64,
    slow: u64,
    expires_ms: u64,
}

/// One fleet breaker's record.
#[derive(Debug, Default)]
pub(super) struct Record {
    /// When the fleet's open wait ends (store time, ms); 0: closed.
    until_ms: u64,
    opening: u32,
    members: HashMap<String, Member>,
    /// Probe slots: instance → when the slot is given to another.
    grants: HashMap<String, u64>,
}

/// A member counts as a witness when it is open on its own evidence, or its own window is at
/// or over a threshold.
fn witness(m: &Member, rules: &FleetRules) -> bool {
    m.state == MemberState::Open
        || (m.calls > 0
            && (m.failures as f64 * 100.0 >= rules.failure_rate_threshold * m.calls as f64
                || m.slow as f64 * 100.0 >= rules.slow_call_rate_threshold * m.calls as f64))
}

/// Stores `r` at store time `now_ms` and decides (see the [module docs](super) for the rules).
pub(super) fn decide(
    rec: &mut Record,
    now_ms: u64,
    r: &MemberReport,
    rules: &FleetRules,
) -> FleetView {
    rec.members.retain(|_, m| m.expires_ms > now_ms);
    rec.grants.retain(|_, until| *until > now_ms);
    let lease = u64::try_from(rules.lease.as_millis()).unwrap_or(u64::MAX);
    rec.members.insert(
        r.instance.clone(),
        Member {
            state: r.state,
            calls: r.calls,
            failures: r.failures,
            slow: r.slow,
            expires_ms: now_ms.saturating_add(lease),
        },
    );
    let live = rec.members.len() as u32;
    let (mut open_members, mut witnesses) = (0u32, 0u32);
    let (mut calls, mut failures, mut slow) = (0u64, 0u64, 0u64);
    for m in rec.members.values() {
        if m.state == MemberState::Open {
            open_members += 1;
        }
        if witness(m, rules) {
            witnesses += 1;
        }
        if m.state == MemberState::Closed || m.state == MemberState::ProbePassed {
            calls += m.calls;
            failures += m.failures;
            slow += m.slow;
        }
    }
    let quorum = rules.quorum.among(live);
    let mine = rec.grants.contains_key(&r.instance);
    let open_for = |rec: &mut Record| {
        rec.opening += 1;
        rec.until_ms = now_ms.saturating_add(rules.wait_millis(rec.opening)).max(1);
        rec.grants.clear();
    };
    if rec.until_ms == 0 {
        let pooled = calls > 0
            && calls >= rules.minimum_calls
            && (failures as f64 * 100.0 >= rules.failure_rate_threshold * calls as f64
                || slow as f64 * 100.0 >= rules.slow_call_rate_threshold * calls as f64);
        if open_members >= quorum || (pooled && witnesses >= quorum) {
            open_for(rec);
        }
    } else if mine && r.state == MemberState::ProbePassed {
        rec.until_ms = 0;
        rec.opening = 0;
        rec.grants.clear();
    } else if mine && r.state == MemberState::ProbeFailed {
        open_for(rec);
    } else if now_ms >= rec.until_ms
        && !mine
        && (r.state == MemberState::Open || r.state == MemberState::Held)
        && (rec.grants.len() as u32) < rules.probers
    {
        let timeout = u64::try_from(rules.probe_timeout.as_millis()).unwrap_or(u64::MAX);
        rec.grants
            .insert(r.instance.clone(), now_ms.saturating_add(timeout));
    }
    FleetView {
        open: rec.until_ms != 0,
        remaining: Duration::from_millis(rec.until_ms.saturating_sub(now_ms)),
        granted: rec.until_ms != 0 && rec.grants.contains_key(&r.instance),
        live,
        open_members,
        pooled_calls: calls,
        pooled_failures: failures,
        witnesses,
        opening: rec.opening,
        quorum,
    }
}

/// The fleet of the instances in this process: every [`FleetBreaker`](super::FleetBreaker)
/// given a clone of one `MemoryFleet` meets the others there. For tests and single-process
/// deployments; a fleet of processes meets on [`RedisFleet`](super::RedisFleet).
#[derive(Clone)]
pub struct MemoryFleet {
    records: Arc<Mutex<HashMap<String, Record>>>,
    clock: Arc<dyn Clock>,
}

impl MemoryFleet {
    /// An empty fleet on the system clock.
    pub fn new() -> MemoryFleet {
        MemoryFleet::with_clock(SystemClock::new())
    }

    /// An empty fleet on `clock` (leases and open waits run on it).
    pub fn with_clock(clock: impl Clock) -> MemoryFleet {
        MemoryFleet {
            records: Arc::default(),
            clock: Arc::new(clock),
        }
    }
}

impl Default for MemoryFleet {
    fn default() -> Self {
        MemoryFleet::new()
    }
}

impl std::fmt::Debug for MemoryFleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.records.lock().map(|r| r.len()).unwrap_or(0);
        f.debug_struct("MemoryFleet").field("breakers", &n).finish()
    }
}

impl FleetStore for MemoryFleet {
    fn sync<'a>(
        &'a self,
        name: &'a str,
        report: &'a MemberReport,
        rules: &'a FleetRules,
    ) -> BoxFuture<'a, Result<FleetView, StoreError>> {
        let now_ms = self.clock.now_nanos() / 1_000_000;
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let rec = records.entry(name.to_owned()).or_default();
        let view = decide(rec, now_ms, report, rules);
        Box::pin(std::future::ready(Ok(view)))
    }

    fn leave<'a>(
        &'a self,
        name: &'a str,
        instance: &'a str,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(rec) = records.get_mut(name) {
            rec.members.remove(instance);
            rec.grants.remove(instance);
        }
        Box::pin(std::future::ready(Ok(())))
    }
}
