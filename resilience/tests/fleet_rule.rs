//! The fleet's rule in memory, on a manual clock: leases end exactly, a minority never opens
//! the fleet (property), an open period grants at most `probers` probe slots (property), the
//! whole open → held → probe → close cycle through three members, and settings that are
//! refused naming their field.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use floodwall_core::ManualClock;
use floodwall_resilience::circuit_breaker::fleet::{
    FleetBreaker, FleetRules, FleetStore, MemberReport, MemberState, MemoryFleet, Quorum,
};
use floodwall_resilience::circuit_breaker::{
    CircuitBreaker, ConfigError, OpenWait, SlidingWindow, State,
};
use proptest::prelude::*;

fn rules(probers: u32) -> FleetRules {
    FleetRules {
        lease: Duration::from_secs(3),
        quorum: Quorum::Count(3),
        minimum_calls: 10,
        failure_rate_threshold: 50.0,
        slow_call_rate_threshold: 100.0,
        wait_initial: Duration::from_secs(10),
        wait_multiplier: 2.0,
        wait_max: Duration::from_secs(60),
        probers,
        probe_timeout: Duration::from_secs(3600),
    }
}

fn report(instance: &str, state: MemberState, calls: u64, failures: u64) -> MemberReport {
    MemberReport {
        instance: instance.to_owned(),
        state,
        calls,
        failures,
        slow: 0,
    }
}

fn sync(
    fleet: &MemoryFleet,
    r: &MemberReport,
    rules: &FleetRules,
) -> floodwall_resilience::circuit_breaker::fleet::FleetView {
    use futures::FutureExt;
    // The memory store answers at once.
    fleet.sync("dep", r, rules).now_or_never().unwrap().unwrap()
}

#[test]
fn a_member_counts_until_its_lease_ends_and_not_after() {
    let clock = ManualClock::new();
    let fleet = MemoryFleet::with_clock(clock.clone());
    let rules = rules(1);
    sync(&fleet, &report("a", MemberState::Closed, 0, 0), &rules);
    clock.advance(rules.lease - Duration::from_millis(1));
    assert_eq!(
        sync(&fleet, &report("b", MemberState::Closed, 0, 0), &rules).live,
        2
    );
    clock.advance(Duration::from_millis(1));
    let live = sync(&fleet, &report("b", MemberState::Closed, 0, 0), &rules).live;
    println!(
        "a member's lease of {:?}: counted 1 ms before it ended, {live} live at its end",
        rules.lease
    );
    assert_eq!(live, 1);
}

#[test]
fn the_quorum_is_never_below_two_nor_above_the_live_members() {
    assert_eq!(Quorum::Count(3).among(8), 3);
    assert_eq!(Quorum::Count(3).among(2), 2);
    assert_eq!(Quorum::Count(3).among(1), 2);
    assert_eq!(Quorum::Share(0.3).among(10), 3);
    assert_eq!(Quorum::Share(0.3).among(11), 4);
    assert_eq!(Quorum::Share(0.01).among(10), 2);
    assert_eq!(Quorum::Share(1.0).among(5), 5);
}

fn any_state() -> impl Strategy<Value = MemberState> {
    prop_oneof![
        Just(MemberState::Closed),
        Just(MemberState::Open),
        Just(MemberState::Held),
        Just(MemberState::Probing),
        Just(MemberState::ProbePassed),
        Just(MemberState::ProbeFailed),
        Just(MemberState::Manual),
    ]
}

/// `(instance, state, calls, failures, ms to advance first)`.
fn steps() -> impl Strategy<Value = Vec<(u8, MemberState, u64, u64, u64)>> {
    prop::collection::vec(
        (0u8..8, any_state(), 0u64..30, 0u64..30, 0u64..4_000),
        1..120,
    )
}

proptest! {
    /// Two instances (below the quorum of 3 among eight live) open on their own evidence or
    /// failing all their calls, six healthy or idle, reports in any order: the fleet never
    /// opens, though the pooled failure rate often crosses the threshold.
    #[test]
    fn fewer_witnesses_than_the_quorum_never_open_the_fleet(steps in steps()) {
        let clock = ManualClock::new();
        let fleet = MemoryFleet::with_clock(clock.clone());
        let rules = FleetRules { lease: Duration::from_secs(86_400), ..rules(1) };
        for i in 0..8 {
            sync(&fleet, &report(&format!("i{i}"), MemberState::Closed, 0, 0), &rules);
        }
        for (i, state, calls, failures, _) in steps {
            let r = if i < 2 {
                // The sick two: open, or closed with failures.
                let state = if state == MemberState::Open { state } else { MemberState::Closed };
                report(&format!("i{i}"), state, calls.max(failures).max(1), failures.max(1))
            } else {
                // The healthy six: any state but open, no failures.
                let state = if state == MemberState::Open { MemberState::Closed } else { state };
                report(&format!("i{i}"), state, calls, 0)
            };
            let view = sync(&fleet, &r, &rules);
            prop_assert!(!view.open, "{r:?} -> {view:?}");
            prop_assert!(view.witnesses <= 2);
        }
    }

    /// One instance alone, failing or open, with any others whose leases come and go: it
    /// never opens the fleet (the quorum is never below 2).
    #[test]
    fn one_instance_never_opens_the_fleet(steps in steps()) {
        let clock = ManualClock::new();
        let fleet = MemoryFleet::with_clock(clock.clone());
        let rules = rules(1);
        for (i, state, calls, failures, advance) in steps {
            clock.advance(Duration::from_millis(advance));
            let r = if i == 0 {
                let state = if state == MemberState::Open { state } else { MemberState::Closed };
                report("sick", state, calls.max(failures).max(1), failures.max(1))
            } else {
                let state = if state == MemberState::Open { MemberState::Closed } else { state };
                report(&format!("well-{i}"), state, calls, 0)
            };
            let view = sync(&fleet, &r, &rules);
            prop_assert!(!view.open, "{r:?} -> {view:?}");
        }
    }

    /// However reports arrive, an open period gives its probe slots to at most `probers`
    /// instances.
    #[test]
    fn an_open_period_grants_at_most_probers_slots(steps in steps(), probers in 1u32..3) {
        let clock = ManualClock::new();
        let fleet = MemoryFleet::with_clock(clock.clone());
        let rules = rules(probers);
        let (mut period, mut granted) = (None, HashSet::new());
        for (i, state, calls, failures, advance) in steps {
            clock.advance(Duration::from_millis(advance * 3));
            let r = report(&format!("i{i}"), state, calls.max(failures), failures);
            let view = sync(&fleet, &r, &rules);
            let now = view.open.then_some(view.opening);
            if now != period {
                period = now;
                granted.clear();
            }
            if view.granted {
                granted.insert(r.instance.clone());
            }
            prop_assert!(granted.len() <= probers as usize, "{granted:?} in one period");
        }
    }
}

#[test]
fn probes_close_the_fleet_when_they_pass_and_open_it_longer_when_they_fail() {
    let clock = ManualClock::new();
    let fleet = MemoryFleet::with_clock(clock.clone());
    let rules = rules(1);
    for i in ["a", "b", "c"] {
        sync(&fleet, &report(i, MemberState::Open, 0, 0), &rules);
    }
    let v = sync(&fleet, &report("d", MemberState::Closed, 0, 0), &rules);
    assert!(v.open && !v.granted);
    assert_eq!((v.opening, v.remaining), (1, Duration::from_secs(10)));
    clock.advance(Duration::from_secs(10));
    let a = sync(&fleet, &report("a", MemberState::Held, 0, 0), &rules);
    let b = sync(&fleet, &report("b", MemberState::Held, 0, 0), &rules);
    assert!(a.granted && !b.granted, "one prober");
    let a = sync(&fleet, &report("a", MemberState::ProbeFailed, 0, 0), &rules);
    assert!(a.open && !a.granted);
    assert_eq!(
        (a.opening, a.remaining),
        (2, Duration::from_secs(20)),
        "the next backoff wait"
    );
    clock.advance(Duration::from_secs(20));
    let b = sync(&fleet, &report("b", MemberState::Held, 0, 0), &rules);
    assert!(b.granted);
    let b = sync(&fleet, &report("b", MemberState::ProbePassed, 0, 0), &rules);
    assert!(!b.open);
    assert_eq!(b.opening, 0);
}

fn breaker(clock: &ManualClock) -> CircuitBreaker {
    CircuitBreaker::builder()
        .name("dep")
        .sliding_window(SlidingWindow::Count(NonZeroU32::new(4).unwrap()))
        .minimum_calls(4)
        .slow_call_duration(None)
        .open_wait(OpenWait::Fixed(Duration::from_secs(10)))
        .permitted_calls_in_half_open(NonZeroU32::new(1).unwrap())
        .clock(clock.clone())
        .build()
        .unwrap()
}

/// Three members, quorum 2: two trip on their own, the fleet opens and holds the third; when
/// the wait is over one member probes, its passing probe closes the fleet and the others.
#[tokio::test(flavor = "current_thread")]
async fn the_fleet_opens_holds_probes_once_and_closes_its_members() {
    let clock = ManualClock::new();
    let fleet = MemoryFleet::with_clock(clock.clone());
    let mut members = Vec::new();
    for id in ["a", "b", "c"] {
        let m = FleetBreaker::builder(breaker(&clock), fleet.clone())
            .instance(id)
            .quorum(Quorum::Count(2))
            .sync_interval(Duration::from_secs(3600))
            .join()
            .await
            .unwrap();
        members.push(m);
    }
    let [a, b, c] = &members[..] else {
        unreachable!()
    };
    for m in [a, b] {
        for _ in 0..4 {
            m.breaker().try_acquire().unwrap().failure();
        }
        assert_eq!(m.breaker().state(), State::Open);
        m.sync_now().await.unwrap();
    }
    let v = c.sync_now().await.unwrap();
    assert!(v.open);
    assert_eq!(v.open_members, 2);
    assert_eq!(
        c.breaker().state(),
        State::Open,
        "held by the fleet, without a call"
    );
    clock.advance(Duration::from_secs(10));
    // The first to sync after the wait probes; the others stay held past their own wait.
    assert!(c.sync_now().await.unwrap().granted);
    assert_eq!(c.breaker().state(), State::HalfOpen);
    for m in [a, b] {
        assert!(!m.sync_now().await.unwrap().granted);
        assert_eq!(m.breaker().state(), State::Open);
    }
    c.breaker().try_acquire().unwrap().success();
    assert_eq!(c.breaker().state(), State::Closed);
    assert!(
        !c.sync_now().await.unwrap().open,
        "the probe passed: the fleet closed"
    );
    for m in [a, b] {
        assert!(!m.sync_now().await.unwrap().open);
        assert_eq!(m.breaker().state(), State::Closed);
    }
}

#[tokio::test(flavor = "current_thread")]
async fn settings_out_of_range_are_refused_naming_the_field() {
    let clock = ManualClock::new();
    let fleet = MemoryFleet::with_clock(clock.clone());
    let field = |r: Result<FleetBreaker, ConfigError>| r.map(|_| ()).unwrap_err().field;
    let b = || FleetBreaker::builder(breaker(&clock), fleet.clone());
    assert_eq!(field(b().quorum(Quorum::Count(1)).join().await), "quorum");
    assert_eq!(field(b().quorum(Quorum::Share(0.0)).join().await), "quorum");
    assert_eq!(
        field(b().quorum(Quorum::Share(f64::NAN)).join().await),
        "quorum"
    );
    assert_eq!(
        field(b().sync_interval(Duration::ZERO).join().await),
        "sync_interval"
    );
    assert_eq!(
        field(
            b().sync_interval(Duration::from_secs(2))
                .lease(Duration::from_secs(1))
                .join()
                .await
        ),
        "lease"
    );
    assert_eq!(field(b().probers(0).join().await), "probers");
    assert_eq!(field(b().instance("a b").join().await), "instance");
    assert_eq!(field(b().instance("").join().await), "instance");
    // One breaker, one fleet member at a time; a dropped member frees it.
    let shared = breaker(&clock);
    let first = FleetBreaker::builder(shared.clone(), fleet.clone())
        .join()
        .await
        .unwrap();
    let again = FleetBreaker::builder(shared.clone(), fleet.clone())
        .join()
        .await;
    assert_eq!(field(again), "breaker");
    drop(first);
    assert!(
        FleetBreaker::builder(shared, fleet.clone())
            .join()
            .await
            .is_ok()
    );
}

/// A store that counts the syncs it answers.
struct Counting(MemoryFleet, Arc<std::sync::atomic::AtomicU32>);

impl FleetStore for Counting {
    fn sync<'a>(
        &'a self,
        name: &'a str,
        report: &'a MemberReport,
        rules: &'a FleetRules,
    ) -> futures::future::BoxFuture<
        'a,
        Result<floodwall_resilience::circuit_breaker::fleet::FleetView, floodwall_core::StoreError>,
    > {
        self.1.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.sync(name, report, rules)
    }

    fn leave<'a>(
        &'a self,
        name: &'a str,
        instance: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), floodwall_core::StoreError>> {
        self.0.leave(name, instance)
    }
}

/// A burst of failures wakes the sync task once: 100 failures in a row make one sync (besides
/// the one `join` makes), not a hundred; a failure after that sync makes one more.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_burst_of_failures_makes_one_sync() {
    let clock = ManualClock::new();
    let syncs = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let store = Counting(MemoryFleet::with_clock(clock.clone()), syncs.clone());
    let b = CircuitBreaker::builder()
        .name("dep")
        .sliding_window(SlidingWindow::Count(NonZeroU32::new(1000).unwrap()))
        .minimum_calls(1000)
        .slow_call_duration(None)
        .clock(clock.clone())
        .build()
        .unwrap();
    let member = FleetBreaker::builder(b, store)
        .sync_interval(Duration::from_secs(3600))
        .join()
        .await
        .unwrap();
    let count = || syncs.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(count(), 1, "join syncs once");
    for _ in 0..100 {
        member.breaker().try_acquire().unwrap().failure();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let after_burst = count();
    member.breaker().try_acquire().unwrap().failure();
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!(
        "syncs: 1 at join, {after_burst} after 100 failures, {} after one more",
        count()
    );
    assert_eq!(after_burst, 2);
    assert_eq!(count(), 3);
}
