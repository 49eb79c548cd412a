//! The fleet breaker on Redis servers these tests start: eight instances (each its own
//! breaker and its own connection) against one dependency. The fleet opens on far fewer calls
//! than eight breakers learning alone; one instance's local fault opens it alone; an open
//! fleet sends a bounded number of probes per open period; a new instance starts open; a
//! blackholed or killed Redis leaves every instance deciding alone, and they rejoin; a dead
//! instance stops counting within its lease; the script decides as the in-memory rule does.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use floodwall_core::Keyspace;
use floodwall_core::redis::{RedisConnection, StoreOptions};
use floodwall_resilience::circuit_breaker::fleet::{
    FleetBreaker, FleetRules, FleetStore, MemberReport, MemberState, MemoryFleet, Quorum,
    RedisFleet,
};
use floodwall_resilience::circuit_breaker::{CircuitBreaker, OpenWait, SlidingWindow, State};
use floodwall_testkit::{FaultProxy, RedisSentinel, RedisServer, on_each_topology};

const INSTANCES: usize = 8;
/// One instance's `minimum_calls` (and count window).
const M: u32 = 20;

/// A dependency every instance calls: failing or not, and how many calls it got.
#[derive(Default)]
struct Dependency {
    failing: AtomicBool,
    calls: AtomicU64,
}

fn breaker(name: &str, wait: Duration, probes: u32) -> CircuitBreaker {
    CircuitBreaker::builder()
        .name(name)
        .sliding_window(SlidingWindow::Count(NonZeroU32::new(M).unwrap()))
        .minimum_calls(M)
        .failure_rate_threshold(50.0)
        .slow_call_duration(None)
        .open_wait(OpenWait::Fixed(wait))
        .permitted_calls_in_half_open(NonZeroU32::new(probes).unwrap())
        .build()
        .unwrap()
}

async fn connect(urls: &[String], cluster: bool, timeout: Duration) -> RedisConnection {
    let conn = if cluster {
        RedisConnection::cluster(urls.iter().cloned())
    } else {
        RedisConnection::standalone(urls[0].clone())
    };
    conn.call_timeout(timeout).connect().await.unwrap()
}

fn store(conn: RedisConnection) -> RedisFleet {
    RedisFleet::new(
        StoreOptions::new(conn)
            .keyspace(Keyspace::new("fleet-test", 1).unwrap())
            .call_timeout(Duration::from_millis(200)),
    )
}

/// Tasks calling `dep` through each breaker every `pace`, until stopped.
struct Callers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Callers {
    fn start<'a>(
        breakers: impl IntoIterator<Item = &'a CircuitBreaker>,
        dep: &Arc<Dependency>,
        pace: Duration,
    ) -> Callers {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = breakers
            .into_iter()
            .map(|b| {
                let (b, dep, stop) = (b.clone(), dep.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        if let Ok(permit) = b.try_acquire() {
                            dep.calls.fetch_add(1, Ordering::SeqCst);
                            if dep.failing.load(Ordering::SeqCst) {
                                permit.failure();
                            } else {
                                permit.success();
                            }
                        }
                        tokio::time::sleep(pace).await;
                    }
                })
            })
            .collect();
        Callers { stop, tasks }
    }

    async fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

/// Waits until every breaker is open; the calls `dep` got by then.
async fn calls_until_all_open(breakers: &[CircuitBreaker], dep: &Dependency) -> u64 {
    let start = Instant::now();
    loop {
        if breakers.iter().all(|b| b.state() == State::Open) {
            return dep.calls.load(Ordering::SeqCst);
        }
        assert!(start.elapsed() < Duration::from_secs(20), "never all open");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn join(b: CircuitBreaker, conn: RedisConnection, interval: Duration) -> FleetBreaker {
    FleetBreaker::builder(b, store(conn))
        .quorum(Quorum::Count(3))
        .sync_interval(interval)
        .join()
        .await
        .unwrap()
}

/// Eight instances against a dependency failing from the start: the calls it gets before
/// every instance is open, with the fleet and with eight breakers alone.
async fn calls_before_the_fleet_is_open(urls: Vec<String>, cluster: bool) {
    let mut counts = Vec::new();
    for with_fleet in [true, false] {
        let dep = Arc::new(Dependency::default());
        dep.failing.store(true, Ordering::SeqCst);
        let name = format!("payments-{with_fleet}");
        let mut members = Vec::new();
        let mut breakers = Vec::new();
        for _ in 0..INSTANCES {
            let b = breaker(&name, Duration::from_secs(30), 1);
            if with_fleet {
                let conn = connect(&urls, cluster, Duration::from_millis(200)).await;
                members.push(join(b.clone(), conn, Duration::from_millis(200)).await);
            }
            breakers.push(b);
        }
        let callers = Callers::start(&breakers, &dep, Duration::from_millis(20));
        let calls = calls_until_all_open(&breakers, &dep).await;
        callers.stop().await;
        counts.push(calls);
        drop(members);
    }
    println!(
        "{}: {INSTANCES} instances, minimum_calls {M}: {} calls to the failing dependency \
         before every instance was open with the fleet breaker (bound 2 x {M} = {}), {} with \
         {INSTANCES} breakers alone",
        if cluster { "cluster" } else { "standalone" },
        counts[0],
        2 * M,
        counts[1],
    );
    assert!(counts[0] <= u64::from(2 * M), "{} calls", counts[0]);
    assert_eq!(counts[1], (INSTANCES as u64) * u64::from(M));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_instances_open_within_twice_one_instances_minimum_calls() {
    on_each_topology(
        "eight_instances_open_within_twice_one_instances_minimum_calls",
        |t| calls_before_the_fleet_is_open(t.urls, t.cluster),
    )
    .await;
}

/// One instance's own calls fail (its network), the other seven's succeed: it opens alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_with_a_local_fault_opens_alone() {
    let Some(server) = RedisServer::start_or_skip("one_instance_with_a_local_fault_opens_alone")
    else {
        return;
    };
    let urls = vec![server.url()];
    let (sick, healthy) = (
        Arc::new(Dependency::default()),
        Arc::new(Dependency::default()),
    );
    sick.failing.store(true, Ordering::SeqCst);
    let mut members = Vec::new();
    for _ in 0..INSTANCES {
        let b = breaker("ledger", Duration::from_millis(300), 2);
        let conn = connect(&urls, false, Duration::from_millis(200)).await;
        members.push(join(b, conn, Duration::from_millis(100)).await);
    }
    // The sick instance calls often; the healthy ones rarely, so the pooled window is mostly
    // the sick one's failures: only the witness quorum keeps the fleet closed.
    let sick_caller = Callers::start([members[0].breaker()], &sick, Duration::from_millis(5));
    let healthy_callers = Callers::start(
        members[1..].iter().map(|m| m.breaker()),
        &healthy,
        Duration::from_millis(100),
    );
    let start = Instant::now();
    let (mut sick_opened, mut fleet_opened, mut most_pooled_rate) = (false, false, 0.0f64);
    while start.elapsed() < Duration::from_millis(1500) {
        sick_opened |= members[0].breaker().state() != State::Closed;
        for m in &members {
            if let Some(v) = m.view() {
                fleet_opened |= v.open;
                if v.pooled_calls > 0 {
                    let rate = 100.0 * v.pooled_failures as f64 / v.pooled_calls as f64;
                    most_pooled_rate = most_pooled_rate.max(rate);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    sick_caller.stop().await;
    healthy_callers.stop().await;
    let rejected: Vec<u64> = members[1..]
        .iter()
        .map(|m| m.breaker().snapshot().not_permitted)
        .collect();
    let closed = members[1..]
        .iter()
        .filter(|m| m.breaker().state() == State::Closed)
        .count();
    println!(
        "one instance with a local fault: it opened: {sick_opened}; {closed} of 7 others \
         closed, calls they rejected {rejected:?}; the fleet opened: {fleet_opened}; highest \
         pooled failure rate seen {most_pooled_rate:.0} % (quorum 3, one witness)"
    );
    assert!(sick_opened);
    assert_eq!(closed, 7);
    assert!(rejected.iter().all(|&n| n == 0), "{rejected:?}");
    assert!(!fleet_opened);
    assert!(
        most_pooled_rate >= 50.0,
        "the pooled rate alone would have opened it"
    );
}

/// Builds an open fleet of eight (the dependency failing), waits for every breaker to open.
async fn open_fleet(
    urls: &[String],
    name: &str,
    wait: Duration,
    probes: u32,
    via: Option<&FaultProxy>,
) -> (Vec<FleetBreaker>, Arc<Dependency>) {
    let dep = Arc::new(Dependency::default());
    dep.failing.store(true, Ordering::SeqCst);
    let mut members = Vec::new();
    for _ in 0..INSTANCES {
        let url = via.map_or_else(|| urls[0].clone(), |p| p.redis_url());
        let conn = connect(&[url], false, Duration::from_millis(100)).await;
        let m = FleetBreaker::builder(breaker(name, wait, probes), store(conn))
            .quorum(Quorum::Count(3))
            .sync_interval(Duration::from_millis(100))
            .join()
            .await
            .unwrap();
        members.push(m);
    }
    let breakers: Vec<_> = members.iter().map(|m| m.breaker().clone()).collect();
    let callers = Callers::start(&breakers, &dep, Duration::from_millis(10));
    calls_until_all_open(&breakers, &dep).await;
    callers.stop().await;
    (members, dep)
}

/// An open fleet whose dependency stays down sends at most `probers × permitted` probes per
/// open period (not one round per instance); once it is back, every instance closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_fleet_sends_a_bounded_number_of_probes_per_open_period() {
    let Some(server) = RedisServer::start_or_skip(
        "an_open_fleet_sends_a_bounded_number_of_probes_per_open_period",
    ) else {
        return;
    };
    const PROBES: u32 = 2;
    let wait = Duration::from_millis(400);
    let (members, dep) = open_fleet(&[server.url()], "inventory", wait, PROBES, None).await;
    let before = dep.calls.load(Ordering::SeqCst);
    let callers = Callers::start(
        members.iter().map(|m| m.breaker()),
        &dep,
        Duration::from_millis(5),
    );
    let run = Duration::from_millis(2000);
    let opening_before = members[0].view().map_or(0, |v| v.opening);
    tokio::time::sleep(run).await;
    let probes = dep.calls.load(Ordering::SeqCst) - before;
    let opening_after = members
        .iter()
        .filter_map(|m| m.view().map(|v| v.opening))
        .max()
        .unwrap_or(0);
    // Open periods that could start within the run: one per wait, and the one running.
    let periods = (run.as_millis() / wait.as_millis()) as u64 + 1;
    let bound = periods * u64::from(PROBES);
    println!(
        "open fleet, dependency down for {run:?}: {probes} probes in {} fleet openings \
         (bound {periods} periods x 1 prober x {PROBES} = {bound}; {INSTANCES} instances \
         probing alone could send {})",
        opening_after.saturating_sub(opening_before),
        periods * INSTANCES as u64 * u64::from(PROBES)
    );
    assert!(probes <= bound, "{probes} probes");
    assert!(probes >= u64::from(PROBES), "the fleet probed");
    // The dependency comes back: the next probes pass and every instance closes.
    dep.failing.store(false, Ordering::SeqCst);
    let back = Instant::now();
    loop {
        if members.iter().all(|m| m.breaker().state() == State::Closed) {
            break;
        }
        assert!(back.elapsed() < wait + Duration::from_secs(3), "not closed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!(
        "dependency back: all {INSTANCES} instances closed after {:?} (open wait {wait:?}, \
         sync interval 100ms)",
        back.elapsed()
    );
    callers.stop().await;
}

/// A new instance of an open fleet starts open, before its first call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_starts_open_from_the_fleet() {
    let Some(server) = RedisServer::start_or_skip("a_new_instance_starts_open_from_the_fleet")
    else {
        return;
    };
    let (members, dep) =
        open_fleet(&[server.url()], "search", Duration::from_secs(30), 1, None).await;
    let calls = dep.calls.load(Ordering::SeqCst);
    let conn = connect(&[server.url()], false, Duration::from_millis(200)).await;
    let fresh = join(
        breaker("search", Duration::from_secs(30), 1),
        conn,
        Duration::from_millis(100),
    )
    .await;
    let state = fresh.breaker().state();
    let rejected = fresh.breaker().try_acquire().err();
    println!(
        "a new instance of an open fleet: {state:?} right after join, its first call rejected \
         (retry after {:?}); dependency calls {calls} -> {}",
        rejected.as_ref().and_then(|r| r.retry_after),
        dep.calls.load(Ordering::SeqCst)
    );
    assert_eq!(state, State::Open);
    assert!(rejected.is_some());
    assert_eq!(dep.calls.load(Ordering::SeqCst), calls);
    drop(members);
}

/// Redis blackholed under an open fleet: every sync fails within its bound, every instance
/// decides alone (its hold runs out and it probes by itself), and all rejoin once healed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blackholed_store_leaves_every_instance_deciding_alone_and_they_rejoin() {
    let Some(server) = RedisServer::start_or_skip(
        "a_blackholed_store_leaves_every_instance_deciding_alone_and_they_rejoin",
    ) else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let (members, dep) = open_fleet(
        &[server.url()],
        "shipping",
        Duration::from_millis(600),
        1,
        Some(&proxy),
    )
    .await;
    proxy.blackhole();
    let cut = Instant::now();
    let detached = wait_all(&members, |m| !m.connected(), Duration::from_secs(3)).await;
    // Alone, each held breaker half-opens when the fleet's wait and its hold (3 sync
    // intervals) run out, and probes by itself.
    let before = dep.calls.load(Ordering::SeqCst);
    let (slowest, alone) = decide_alone(&members, &dep, Duration::from_millis(1500)).await;
    let probed = dep.calls.load(Ordering::SeqCst) - before;
    proxy.heal();
    let healed = Instant::now();
    let rejoined = wait_all(&members, |m| m.connected(), Duration::from_secs(5)).await;
    let live = members[0].sync_now().await.unwrap().live;
    println!(
        "blackholed Redis: every instance deciding alone {detached:?} after the cut (call \
         bound 100ms + 200ms store bound); slowest decision meanwhile {slowest:?} over {alone} \
         decisions; {probed} probes sent alone (each breaker its own); rejoined {rejoined:?} \
         after healing, {live} live; total {:?}",
        cut.elapsed()
    );
    let _ = healed;
    assert!(slowest < Duration::from_millis(5), "{slowest:?}");
    assert!(
        probed >= INSTANCES as u64,
        "each instance probed alone: {probed}"
    );
    assert_eq!(live, INSTANCES as u32);
}

/// Redis killed (`SIGKILL`) and restarted empty under an open fleet: the instances decide
/// alone meanwhile and rejoin the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_store_leaves_every_instance_deciding_alone_and_they_rejoin() {
    let Some(mut server) = RedisServer::start_or_skip(
        "a_killed_store_leaves_every_instance_deciding_alone_and_they_rejoin",
    ) else {
        return;
    };
    let (members, dep) = open_fleet(
        &[server.url()],
        "billing",
        Duration::from_millis(600),
        1,
        None,
    )
    .await;
    server.stop();
    let killed = Instant::now();
    let detached = wait_all(&members, |m| !m.connected(), Duration::from_secs(3)).await;
    let before = dep.calls.load(Ordering::SeqCst);
    let (slowest, alone) = decide_alone(&members, &dep, Duration::from_millis(1500)).await;
    let probed = dep.calls.load(Ordering::SeqCst) - before;
    server.restart().unwrap();
    let rejoined = wait_all(&members, |m| m.connected(), Duration::from_secs(5)).await;
    let live = members[0].sync_now().await.unwrap().live;
    println!(
        "killed Redis: every instance deciding alone {detached:?} after the kill; slowest \
         decision meanwhile {slowest:?} over {alone} decisions; {probed} probes sent alone; \
         rejoined the restarted server {rejoined:?} after it was up, {live} live; total {:?}",
        killed.elapsed()
    );
    assert!(slowest < Duration::from_millis(5), "{slowest:?}");
    assert!(
        probed >= INSTANCES as u64,
        "each instance probed alone: {probed}"
    );
    assert_eq!(live, INSTANCES as u32);
}

/// How long until `done` holds for every member.
async fn wait_all(
    members: &[FleetBreaker],
    done: impl Fn(&FleetBreaker) -> bool,
    limit: Duration,
) -> Duration {
    let start = Instant::now();
    while !members.iter().all(&done) {
        assert!(start.elapsed() < limit, "not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    start.elapsed()
}

/// Calls through every member for `run`: the slowest decision (admit or reject) and how many
/// were made.
async fn decide_alone(
    members: &[FleetBreaker],
    dep: &Dependency,
    run: Duration,
) -> (Duration, u64) {
    let start = Instant::now();
    let (mut slowest, mut n) = (Duration::ZERO, 0u64);
    while start.elapsed() < run {
        for m in members {
            let asked = Instant::now();
            let decision = m.breaker().try_acquire();
            slowest = slowest.max(asked.elapsed());
            n += 1;
            if let Ok(p) = decision {
                dep.calls.fetch_add(1, Ordering::SeqCst);
                p.failure();
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    (slowest, n)
}

/// An instance cut off from Redis (as when it dies) stops counting within its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instance_stops_counting_within_its_lease() {
    let Some(server) =
        RedisServer::start_or_skip("a_dead_instance_stops_counting_within_its_lease")
    else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let interval = Duration::from_millis(100);
    let lease = Duration::from_millis(300);
    let member = |url: String| async move {
        let conn = connect(&[url], false, Duration::from_millis(100)).await;
        FleetBreaker::builder(breaker("accounts", Duration::from_secs(5), 1), store(conn))
            .sync_interval(interval)
            .lease(lease)
            .join()
            .await
            .unwrap()
    };
    let doomed = member(proxy.redis_url()).await;
    let alive = member(server.url()).await;
    assert_eq!(alive.sync_now().await.unwrap().live, 2);
    proxy.blackhole();
    let cut = Instant::now();
    let mut last_counted = Duration::ZERO;
    let gone = loop {
        let asked = cut.elapsed();
        let live = alive.sync_now().await.unwrap().live;
        if live == 1 {
            break cut.elapsed();
        }
        last_counted = asked;
        assert!(cut.elapsed() < lease * 4, "still counted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    println!(
        "a dead instance: still counted {last_counted:?} after it was cut off, gone by \
         {gone:?} (lease {lease:?}, its last report at most one sync interval {interval:?} \
         before the cut)"
    );
    assert!(last_counted <= lease, "{last_counted:?}");
    drop(doomed);
}

/// The script decides every report as the in-memory rule does: a seeded sequence of 400
/// reports from six instances to two fleets in turn (so the script also sums afresh, every
/// 128th sync), compared view by view (the remaining
/// wait aside: the two clocks differ).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_script_decides_as_the_memory_rule() {
    let Some(server) = RedisServer::start_or_skip("the_script_decides_as_the_memory_rule") else {
        return;
    };
    let redis = store(connect(&[server.url()], false, Duration::from_millis(500)).await);
    let memory = MemoryFleet::new();
    let rules = FleetRules {
        lease: Duration::from_secs(60),
        quorum: Quorum::Share(0.5),
        minimum_calls: 10,
        failure_rate_threshold: 50.0,
        slow_call_rate_threshold: 80.0,
        wait_initial: Duration::from_secs(3600),
        wait_multiplier: 2.0,
        wait_max: Duration::from_secs(7200),
        probers: 1,
        probe_timeout: Duration::from_secs(60),
    };
    let states = [
        MemberState::Closed,
        MemberState::Open,
        MemberState::Held,
        MemberState::Probing,
        MemberState::ProbePassed,
        MemberState::ProbeFailed,
        MemberState::Manual,
    ];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let (mut opened, mut same) = (0, 0);
    for step in 0..400 {
        let calls = next(12);
        let failures = next(calls + 1);
        let report = MemberReport {
            instance: format!("i{}", next(6)),
            // Mostly closed, so the pooled rule decides often.
            state: if next(3) == 0 {
                states[next(7) as usize]
            } else {
                MemberState::Closed
            },
            calls,
            failures,
            slow: next(calls + 1),
        };
        let fleet = format!("parity-{}", step / 200);
        let a = redis.sync(&fleet, &report, &rules).await.unwrap();
        let b = memory.sync(&fleet, &report, &rules).await.unwrap();
        let strip = |mut v: floodwall_resilience::circuit_breaker::fleet::FleetView| {
            v.remaining = Duration::ZERO;
            v
        };
        assert_eq!(strip(a.clone()), strip(b), "step {step}: {report:?}");
        opened += usize::from(a.open);
        same += 1;
    }
    println!("script and memory rule: {same} of 400 views equal, {opened} of them open");
    assert!(
        opened > 0 && opened < 400,
        "both verdicts were exercised: {opened}"
    );
}

/// On a Sentinel group: three instances, two open on their own (quorum 2), the third is held;
/// the master is killed, Sentinel promotes the replica, and every instance syncs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_sentinel_opens_and_follows_a_failover() {
    let Some(mut group) =
        RedisSentinel::start_or_skip("a_fleet_on_sentinel_opens_and_follows_a_failover")
    else {
        return;
    };
    let mut members = Vec::new();
    for _ in 0..3 {
        let conn = RedisConnection::sentinel(RedisSentinel::MASTER, [group.sentinel_url()])
            .call_timeout(Duration::from_millis(200))
            .connect()
            .await
            .unwrap();
        let m = FleetBreaker::builder(breaker("tax", Duration::from_secs(30), 1), store(conn))
            .quorum(Quorum::Count(2))
            .sync_interval(Duration::from_millis(100))
            .join()
            .await
            .unwrap();
        members.push(m);
    }
    for m in &members[..2] {
        for _ in 0..M {
            m.breaker().try_acquire().unwrap().failure();
        }
        m.sync_now().await.unwrap();
    }
    let view = members[2].sync_now().await.unwrap();
    assert!(view.open, "{view:?}");
    assert_eq!(members[2].breaker().state(), State::Open);
    group.kill_master();
    let killed = Instant::now();
    let back = loop {
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "no sync after the failover"
        );
        let mut all = true;
        for m in &members {
            all &= m.sync_now().await.is_ok();
        }
        if all {
            break killed.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = members[2].view().unwrap();
    println!(
        "Sentinel: the fleet opened on two of three; after a kill -9 of the master every \
         instance synced with the promoted replica {back:?} later ({} live, fleet open: {})",
        after.live, after.open
    );
    assert_eq!(after.live, 3);
}

/// What Redis can do to the fleet's record: `FLUSHALL` (every instance joins again at its next
/// sync, all counted), running sums garbled (an unreadable sum is taken afresh at once, a
/// wrong one at the latest at the 128th sync since the last), and a key of the wrong type (each
/// sync fails: every instance decides alone; it joins again once the key is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_garbled_or_wrong_type_fleet_record_heals() {
    let Some(server) =
        RedisServer::start_or_skip("a_lost_garbled_or_wrong_type_fleet_record_heals")
    else {
        return;
    };
    let mut members = Vec::new();
    for _ in 0..3 {
        let conn = connect(&[server.url()], false, Duration::from_millis(200)).await;
        let b = breaker("refunds", Duration::from_secs(30), 1);
        // No heartbeat during the test: only the syncs below.
        members.push(join(b, conn, Duration::from_secs(3600)).await);
    }
    assert_eq!(members[2].sync_now().await.unwrap().live, 3);

    server.command(&["FLUSHALL"]).unwrap();
    let mut after_flush = Vec::new();
    for m in &members {
        after_flush.push(m.sync_now().await.unwrap().live);
    }

    let key = server
        .command(&["KEYS", "*{refunds}"])
        .unwrap()
        .trim()
        .to_string();
    assert!(key.ends_with("{refunds}"), "{key:?}");
    server.command(&["HSET", &key, "a", "not numbers"]).unwrap();
    let unreadable = members[0].sync_now().await.unwrap().live;
    // A well-formed wrong sum, 127 syncs old: read once more, then summed afresh.
    server
        .command(&["HSET", &key, "a", "9,0,0,0,0,0,127"])
        .unwrap();
    let stale = members[1].sync_now().await.unwrap().live;
    let resummed = members[2].sync_now().await.unwrap().live;

    server.command(&["DEL", &key]).unwrap();
    server.command(&["SET", &key, "a string"]).unwrap();
    let refused = members[0].sync_now().await;
    let alone = !members[0].connected();
    let still_decides = members[0].breaker().try_acquire().is_ok();
    server.command(&["DEL", &key]).unwrap();
    let back = members[0].sync_now().await.map(|v| v.live);
    println!(
        "fleet record: after FLUSHALL the syncs counted {after_flush:?} live; an unreadable \
         sum: {unreadable}; a wrong sum of 9 at its 127th sync: {stale}, the next sync \
         {resummed}; a wrong-type key: {}, deciding alone: {alone}, a call admitted: \
         {still_decides}; the key gone: {back:?}",
        refused
            .as_ref()
            .map_or_else(|e| e.to_string(), |v| format!("{v:?}"))
    );
    assert_eq!(after_flush, [1, 2, 3], "each joins again as it syncs");
    assert_eq!(unreadable, 3, "an unreadable sum is summed afresh");
    assert_eq!(
        stale, 9,
        "a well-formed sum is trusted until its 128th sync"
    );
    assert_eq!(resummed, 3, "the 128th sync sums afresh");
    assert!(refused.is_err() && alone && still_decides);
    assert_eq!(back.unwrap(), 1, "joined again, alone in a fresh record");
}
