//! The store path every Redis-backed store takes: its call bound, per-node health and error
//! mapping, against servers these tests start themselves (secret hygiene: `credentials.rs`).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use floodwall_core::StoreError;
use floodwall_core::health::{Health, HealthGate, NodeBreaker, Refused, Ticket};
use floodwall_core::key::Keyspace;
use floodwall_core::redis::{RedisConnection, Script, StoreOptions};
use floodwall_testkit::{FaultProxy, RedisServer};

static INCR: Script = Script::new("return redis.call('INCR', KEYS[1])");

fn keyspace() -> Keyspace {
    Keyspace::new("pathtest", 1).unwrap()
}

/// A store takes the connection's own call bound; `StoreOptions::call_timeout` overrides it
/// for that store alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_uses_the_connections_call_timeout_unless_it_overrides_it() {
    let Some(server) = RedisServer::start_or_skip(
        "a_store_uses_the_connections_call_timeout_unless_it_overrides_it",
    ) else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let conn = RedisConnection::standalone(proxy.redis_url())
        .call_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let inherited = StoreOptions::new(conn.clone()).open(keyspace());
    let overridden = StoreOptions::new(conn.clone())
        .call_timeout(Duration::from_millis(40))
        .open(keyspace());
    assert_eq!(inherited.call_timeout(), Duration::from_millis(300));
    assert_eq!(overridden.call_timeout(), Duration::from_millis(40));
    assert_eq!(
        conn.call_timeout(),
        Duration::from_millis(300),
        "the connection is untouched"
    );
    // `Duration::MAX` is unbounded: no timer, no overflow, the call answers.
    let unbounded = StoreOptions::new(conn.clone())
        .call_timeout(Duration::MAX)
        .open(keyspace());
    let unbounded_key = keyspace().key("unbounded").build();
    let n: i64 = unbounded
        .invoke(INCR.call().key(&unbounded_key))
        .await
        .unwrap();
    assert_eq!(n, 1);

    proxy.blackhole();
    let key = keyspace().key("k").build();
    for (path, want) in [(&inherited, 300), (&overridden, 40)] {
        let started = Instant::now();
        let err = path.invoke::<i64>(INCR.call().key(&key)).await.unwrap_err();
        let took = started.elapsed();
        println!("blackholed call with a {want} ms bound answered after {took:?}: {err}");
        assert!(
            matches!(err, StoreError::Timeout { after } if after == Duration::from_millis(want)),
            "{err:?}"
        );
        assert!(took >= Duration::from_millis(want) && took < Duration::from_millis(want + 150));
    }
}

/// Records every report, to see what the store path says about a node.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Health>>);

impl HealthGate for Recorder {
    fn try_pass(&self) -> Result<Ticket, Refused> {
        Ok(Ticket::default())
    }
    fn report(&self, _: Ticket, health: Health) {
        self.0.lock().unwrap().push(health);
    }
}

/// A key of the wrong type is that caller's error and proves the node alive; a blackholed
/// node is unhealthy, its gate opens, and calls then fail fast without waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_errors_are_healthy_and_node_failures_open_the_nodes_gate() {
    let Some(server) =
        RedisServer::start_or_skip("key_errors_are_healthy_and_node_failures_open_the_nodes_gate")
    else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let conn = RedisConnection::standalone(proxy.redis_url())
        .call_timeout(Duration::from_millis(50))
        .connect()
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let r = recorder.clone();
    let recorded = StoreOptions::new(conn.clone())
        .health_gate(move |_: &str| r.clone() as Arc<dyn HealthGate>)
        .open(keyspace());
    let bad = keyspace().key("bad").build();
    server
        .command(&["LPUSH", bad.as_str(), "not-a-counter"])
        .unwrap();
    let err = recorded
        .invoke::<i64>(INCR.call().key(&bad))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Script(_)), "{err:?}");
    let good = keyspace().key("good").build();
    assert_eq!(
        recorded
            .invoke::<i64>(INCR.call().key(&good))
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        *recorder.0.lock().unwrap(),
        vec![Health::Healthy, Health::Healthy]
    );

    let gated = StoreOptions::new(conn)
        .health_gate(|_: &str| -> Arc<dyn HealthGate> {
            Arc::new(NodeBreaker::builder().failures(3).build().unwrap())
        })
        .open(keyspace());
    proxy.blackhole();
    for _ in 0..3 {
        let e = gated
            .invoke::<i64>(INCR.call().key(&good))
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Timeout { .. }), "{e:?}");
    }
    let started = Instant::now();
    let e = gated
        .invoke::<i64>(INCR.call().key(&good))
        .await
        .unwrap_err();
    let took = started.elapsed();
    println!("with the node's gate open a call failed after {took:?}: {e}");
    assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
    assert!(took < Duration::from_millis(5), "{took:?}");
}

/// A call bounded by a deadline before its own timeout ends at the deadline. The node's gate
/// hears of the timeout when the node had at least half the call's own bound to answer (a
/// caller's shorter bound never hides a failing node), and not when the caller's deadline was
/// all but spent elsewhere — a decision that waited in a batch, a give-back after another
/// node timed out: ten such calls on a blackholed node leave a 3-failure gate closed, where
/// three of them opened it before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_cut_short_by_its_deadline_is_reported_only_if_the_node_had_half_its_bound() {
    let Some(server) = RedisServer::start_or_skip(
        "a_call_cut_short_by_its_deadline_is_reported_only_if_the_node_had_half_its_bound",
    ) else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let conn = RedisConnection::standalone(proxy.redis_url())
        .call_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let r = recorder.clone();
    let path = StoreOptions::new(conn.clone())
        .health_gate(move |_: &str| r.clone() as Arc<dyn HealthGate>)
        .open(keyspace());
    let key = keyspace().key("until").build();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let n: i64 = path
        .invoke_until(INCR.call().key(&key), deadline)
        .await
        .unwrap();
    assert_eq!(n, 1, "a far deadline leaves the call its own bound");

    proxy.blackhole();
    for (deadline_ms, want) in [(200, Health::Unhealthy), (40, Health::Neutral)] {
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(deadline_ms);
        let err = path
            .invoke_until::<i64>(INCR.call().key(&key), deadline)
            .await
            .unwrap_err();
        let took = started.elapsed();
        let heard = *recorder.0.lock().unwrap().last().unwrap();
        println!(
            "blackholed call with a {deadline_ms} ms deadline (300 ms bound) answered after \
             {took:?}; the gate heard {heard:?}"
        );
        assert!(matches!(err, StoreError::Timeout { .. }), "{err:?}");
        assert!(took >= Duration::from_millis(deadline_ms), "{took:?}");
        assert_eq!(heard, want);
    }

    let gated = StoreOptions::new(conn)
        .health_gate(|_: &str| -> Arc<dyn HealthGate> {
            Arc::new(NodeBreaker::builder().failures(3).build().unwrap())
        })
        .open(keyspace());
    for _ in 0..10 {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(10);
        let e = gated
            .invoke_until::<i64>(INCR.call().key(&key), deadline)
            .await
            .unwrap_err();
        assert!(matches!(e, StoreError::Timeout { .. }), "{e:?}");
    }
    for _ in 0..3 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let e = gated
            .invoke_until::<i64>(INCR.call().key(&key), deadline)
            .await
            .unwrap_err();
        assert!(
            matches!(e, StoreError::Timeout { .. }),
            "ten cut-short calls left the gate closed: {e:?}"
        );
    }
    let e = gated
        .invoke::<i64>(INCR.call().key(&key))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Unavailable { .. }),
        "three full-bound timeouts open it: {e:?}"
    );
}

/// A server out of memory (`maxmemory` reached, `noeviction`): writes answer `OOM`, which is
/// the caller's `Unavailable` but says nothing of the node's liveness (neutral), so the
/// node's gate stays closed and reads keep being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_is_unavailable_and_neutral_to_the_nodes_health() {
    let Some(server) =
        RedisServer::start_or_skip("oom_is_unavailable_and_neutral_to_the_nodes_health")
    else {
        return;
    };
    let conn = RedisConnection::standalone(server.url())
        .connect()
        .await
        .unwrap();
    let recorder = Arc::new(Recorder::default());
    let r = recorder.clone();
    let path = StoreOptions::new(conn)
        .health_gate(move |_: &str| r.clone() as Arc<dyn HealthGate>)
        .open(keyspace());
    let key = keyspace().key("oom").build();
    server.command(&["SET", key.as_str(), "1"]).unwrap();
    server
        .command(&["CONFIG", "SET", "maxmemory-policy", "noeviction"])
        .unwrap();
    server
        .command(&["CONFIG", "SET", "maxmemory", "1"])
        .unwrap();
    let mut errors = Vec::new();
    for _ in 0..10 {
        errors.push(path.invoke::<i64>(INCR.call().key(&key)).await.unwrap_err());
    }
    let read: Option<String> = path
        .query(::redis::cmd("GET").arg(key.as_str()))
        .await
        .unwrap();
    println!(
        "out of memory: {} (x10); a read still answered {read:?}",
        errors[0]
    );
    for e in &errors {
        assert!(matches!(e, StoreError::Unavailable { .. }), "{e:?}");
        assert!(e.to_string().contains("OOM"), "{e}");
    }
    assert_eq!(read.as_deref(), Some("1"));
    let seen = recorder.0.lock().unwrap().clone();
    assert_eq!(&seen[..10], &[Health::Neutral; 10]);
    assert_eq!(seen[10], Health::Healthy);
}
