//! The Redis store on servers these tests start: one execution for 1000 concurrent identical
//! requests across 4 instances (standalone and a 3-master Cluster), fencing after a crashed
//! holder's lease, agreement with the reference model, and 503 within the bound when Redis
//! is blackholed.

mod model;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use floodwall_core::Keyspace;
use floodwall_core::redis::{RedisConnection, StoreOptions};
use floodwall_idempotency::http::IdempotencyLayer;
use floodwall_idempotency::redis::RedisStore;
use floodwall_idempotency::{Abort, Begin, Fingerprint, Finish, Idempotency, Store};
use floodwall_testkit::{FaultProxy, RedisServer, on_each_topology};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use model::agrees_with_the_model;
use tower::{Layer, Service, ServiceExt, service_fn};

async fn connect(urls: &[String], cluster: bool) -> RedisConnection {
    if cluster {
        RedisConnection::cluster(urls.iter().cloned())
            .connect()
            .await
            .unwrap()
    } else {
        RedisConnection::standalone(urls[0].clone())
            .connect()
            .await
            .unwrap()
    }
}

fn store(conn: RedisConnection, ns: &str) -> RedisStore {
    RedisStore::new(
        StoreOptions::new(conn)
            .keyspace(Keyspace::new(ns, 1).unwrap())
            .call_timeout(Duration::from_secs(5)),
    )
}

/// 1000 concurrent identical POSTs spread over 4 instances: one execution; every answer is
/// that execution's response (fresh or replayed) or a 409.
async fn one_execution(urls: Vec<String>, cluster: bool) {
    let runs = Arc::new(AtomicU32::new(0));
    let mut instances = Vec::new();
    for _ in 0..4 {
        let runs = runs.clone();
        let handler = service_fn(move |_req: Request<Full<Bytes>>| {
            let runs = runs.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                let mut r = Response::new(Full::new(Bytes::from(format!("charge #{n}"))));
                *r.status_mut() = StatusCode::CREATED;
                Ok::<_, Infallible>(r)
            }
        });
        let idem = Idempotency::new(store(connect(&urls, cluster).await, "idem-exact"));
        instances.push(IdempotencyLayer::new(idem, |_| Some("user-1".into())).layer(handler));
    }
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut svc = instances[i % 4].clone();
        tasks.push(tokio::spawn(async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri("/charges")
                .header("idempotency-key", "\"order-1\"")
                .body(Full::new(Bytes::from_static(b"{\"amount\":42}")))
                .unwrap();
            let r = svc.ready().await.unwrap().call(req).await.unwrap();
            let (p, b) = r.into_parts();
            (
                p.status,
                p.headers.contains_key("idempotent-replayed"),
                b.collect().await.unwrap().to_bytes(),
            )
        }));
    }
    let (mut fresh, mut replayed, mut conflicts) = (0, 0, 0);
    for t in tasks {
        let (status, was_replayed, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => {
                assert_eq!(&body[..], b"charge #1");
                if was_replayed {
                    replayed += 1
                } else {
                    fresh += 1
                }
            }
            StatusCode::CONFLICT => conflicts += 1,
            other => panic!("unexpected {other}"),
        }
    }
    println!(
        "{}: 1000 requests on 4 instances -> {} execution(s); {fresh} fresh, {replayed} replayed, {conflicts} x 409",
        if cluster { "cluster" } else { "standalone" },
        runs.load(Ordering::SeqCst)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(fresh, 1);
    assert_eq!(fresh + replayed + conflicts, 1000);
    // Retries after it finished: every instance replays the one execution.
    for i in 0..20 {
        let mut svc = instances[i % 4].clone();
        let req = Request::builder()
            .method(Method::POST)
            .uri("/charges")
            .header("idempotency-key", "\"order-1\"")
            .body(Full::new(Bytes::from_static(b"{\"amount\":42}")))
            .unwrap();
        let r = svc.ready().await.unwrap().call(req).await.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(
            &r.into_body().collect().await.unwrap().to_bytes()[..],
            b"charge #1"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// On a standalone server and on a 3-master Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_run_once() {
    on_each_topology("concurrent_duplicates_run_once", |t| {
        one_execution(t.urls, t.cluster)
    })
    .await;
}

async fn crash_and_fence(urls: Vec<String>, cluster: bool) {
    let store = store(connect(&urls, cluster).await, "idem-crash");
    let fp = Fingerprint::of(b"charge 42");
    let lease = Duration::from_millis(300);
    let Begin::Claimed(crashed) = store.begin("pay-1", &fp, lease).await.unwrap() else {
        panic!("first claim")
    };
    let started = Instant::now();
    assert!(matches!(
        store.begin("pay-1", &fp, lease).await.unwrap(),
        Begin::InProgress { .. }
    ));
    // The holder never completes. Retries are refused until its lease (Redis time) ends.
    let retry = loop {
        match store.begin("pay-1", &fp, lease).await.unwrap() {
            Begin::Claimed(t) => break t,
            Begin::InProgress { retry_after } => {
                tokio::time::sleep(retry_after.min(Duration::from_millis(50))).await
            }
            other => panic!("{other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(5));
    };
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(retry > crashed);
    // The old holder wakes up while the retry runs: its result is refused...
    assert_eq!(
        store
            .complete("pay-1", crashed, b"receipt-1", Duration::from_secs(60))
            .await
            .unwrap(),
        Finish::Fenced
    );
    assert_eq!(
        store
            .complete("pay-1", retry, b"receipt-2", Duration::from_secs(60))
            .await
            .unwrap(),
        Finish::Done
    );
    assert_eq!(
        store
            .complete("pay-1", crashed, b"receipt-1", Duration::from_secs(60))
            .await
            .unwrap(),
        Finish::Fenced
    );
    assert_eq!(
        store.abort("pay-1", crashed, Abort::Release).await.unwrap(),
        Finish::Fenced
    );
    assert_eq!(
        store.begin("pay-1", &fp, lease).await.unwrap(),
        Begin::Completed(b"receipt-2".to_vec())
    );
}

/// On a standalone server and on a 3-master Cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holders_late_complete_is_fenced() {
    on_each_topology("a_crashed_holders_late_complete_is_fenced", |t| {
        crash_and_fence(t.urls, t.cluster)
    })
    .await;
}

/// Random interleavings of begin / complete / release / record against the model, on Redis
/// (leases and retentions of 10 minutes: Redis time cannot be moved by the test, so expiry is
/// covered by the crash tests above and by the memory store's model test).
#[test]
fn redis_store_agrees_with_the_model() {
    let Some(server) = RedisServer::start_or_skip("redis_store_agrees_with_the_model") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(async { store(connect(&[server.url()], false).await, "idem-model") });
    agrees_with_the_model(&rt, &store, 96);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blackholed_redis_answers_503_within_the_bound_and_never_runs_the_handler() {
    let Some(server) = RedisServer::start_or_skip(
        "blackholed_redis_answers_503_within_the_bound_and_never_runs_the_handler",
    ) else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let conn = RedisConnection::standalone(proxy.redis_url())
        .connect()
        .await
        .unwrap();
    let bound = Duration::from_millis(100);
    let store = RedisStore::new(StoreOptions::new(conn).call_timeout(bound));
    let runs = Arc::new(AtomicU32::new(0));
    let handler = counting_handler(runs.clone());
    let mut svc =
        IdempotencyLayer::new(Idempotency::new(store), |_| Some("u".into())).layer(handler);
    let req = pay;
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(req("warm"))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);

    proxy.blackhole();
    for i in 0..5 {
        // Beside the request, a plain timer of the same bound on the same runtime: what the
        // scheduler adds to any wait (on a busy machine, tens of ms) shows in both, so the
        // request is held to the bound plus the library's own work, not to the wall clock.
        let started = Instant::now();
        let reference = async {
            tokio::time::sleep(bound).await;
            started.elapsed()
        };
        let request = async {
            let r = svc
                .ready()
                .await
                .unwrap()
                .call(req(&format!("k{i}")))
                .await
                .unwrap();
            (r, started.elapsed())
        };
        let ((r, took), timer) = tokio::join!(request, reference);
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        println!(
            "blackholed: 503 after {took:?} (bound {bound:?}; a {bound:?} timer beside it: {timer:?})"
        );
        assert!(took >= bound, "answered before the bound: {took:?}");
        assert!(
            took <= timer + Duration::from_millis(50),
            "took {took:?}, timer {timer:?}"
        );
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the handler never ran while Redis was gone"
    );
}

/// One key holding the wrong type (`WRONGTYPE`) fails that key's claims alone: 30 other keys,
/// claimed concurrently with it, are all claimed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_type_key_refuses_no_other_key() {
    let Some(server) = RedisServer::start_or_skip("a_wrong_type_key_refuses_no_other_key") else {
        return;
    };
    let store = store(connect(&[server.url()], false).await, "idem-wrongtype");
    let bad = Keyspace::new("idem-wrongtype", 1)
        .unwrap()
        .key("bad")
        .build();
    server.command(&["SET", bad.as_str(), "a string"]).unwrap();
    let fp = Fingerprint::of(b"payload");
    let mut tasks = Vec::new();
    for i in 0..30 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let bad = store.begin("bad", &fp, Duration::from_secs(30)).await;
            let good = store
                .begin(&format!("good-{i}"), &fp, Duration::from_secs(30))
                .await;
            (bad.is_err(), matches!(good, Ok(Begin::Claimed(_))))
        }));
    }
    let (mut bad_refused, mut good_claimed) = (0, 0);
    for t in tasks {
        let (b, g) = t.await.unwrap();
        bad_refused += u32::from(b);
        good_claimed += u32::from(g);
    }
    println!(
        "WRONGTYPE key: {bad_refused} of its 30 claims failed; other keys: {} of 30 refused",
        30 - good_claimed
    );
    assert_eq!(bad_refused, 30);
    assert_eq!(good_claimed, 30, "no other key is refused");
}

/// A `Duration::MAX` lease on Redis is capped to what Redis expiries hold: no panic, no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbounded_lease_on_redis_does_not_panic() {
    let Some(server) = RedisServer::start_or_skip("an_unbounded_lease_on_redis_does_not_panic")
    else {
        return;
    };
    let store = store(connect(&[server.url()], false).await, "idem-max");
    let fp = Fingerprint::of(b"x");
    let Ok(Begin::Claimed(token)) = store.begin("k", &fp, Duration::MAX).await else {
        panic!("claimed");
    };
    assert_eq!(
        store
            .complete("k", token, b"r", Duration::MAX)
            .await
            .unwrap(),
        Finish::Done
    );
    let ttl: i64 = server
        .command(&["PTTL", "idem-max:v1:{k}"])
        .unwrap()
        .parse()
        .unwrap();
    println!("a Duration::MAX retention is kept for {ttl} ms in Redis");
    assert!(ttl > 0);
}

/// A gate that other keys' failures have forced open.
/// The node's gate opens (other keys' failures) while an operation runs: its completion is
/// still stored — finishing what the caller holds bypasses the gate — so the retries that
/// follow replay it and the operation runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_opened_mid_operation_never_loses_the_completion() {
    let Some(server) =
        RedisServer::start_or_skip("a_gate_opened_mid_operation_never_loses_the_completion")
    else {
        return;
    };
    let gate = Arc::new(floodwall_core::health::ManualGate::default());
    let g = gate.clone();
    let store = RedisStore::new(
        StoreOptions::new(connect(&[server.url()], false).await)
            .keyspace(Keyspace::new("idem-gate", 1).unwrap())
            .health_gate(move |_: &str| g.clone() as Arc<dyn floodwall_core::health::HealthGate>),
    );
    let idem = Idempotency::new(store);
    let fp = Fingerprint::of(b"charge 42");
    let runs = Arc::new(AtomicU32::new(0));
    let (r, opener) = (runs.clone(), gate.clone());
    let first = idem
        .run("charge", &fp, || async move {
            r.fetch_add(1, Ordering::SeqCst);
            // Mid-operation, the node's gate opens.
            opener.set_open(true);
            Ok::<_, String>("ch_1".to_string())
        })
        .await
        .unwrap();
    assert!(matches!(first, floodwall_idempotency::Outcome::Fresh(ref v) if v == "ch_1"));
    // While the gate is open, new claims fail fast; the completion was stored regardless.
    let refused = idem
        .run("charge", &fp, || async {
            Ok::<_, String>("ch_2".to_string())
        })
        .await;
    assert!(
        refused.is_err(),
        "claims are refused while the gate is open"
    );
    gate.set_open(false);
    for _ in 0..5 {
        let r = runs.clone();
        let again = idem
            .run("charge", &fp, || async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>("ch_2".to_string())
            })
            .await
            .unwrap();
        assert!(matches!(again, floodwall_idempotency::Outcome::Replayed(ref v) if v == "ch_1"));
    }
    println!(
        "gate forced open mid-operation: {} execution(s) over 1 run and 5 retries",
        runs.load(Ordering::SeqCst)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// `CLIENT PAUSE 2000 ALL` while a request's `begin` is on its way: the client gets 503 with
/// `Retry-After` = the lease, the claim lands when the pause ends and nobody renews it, so the
/// key is claimable again one lease later — retries in between get 409 with `Retry-After` no
/// longer than the lease left — and the handler runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_reply_was_lost_frees_the_key_within_one_lease() {
    let Some(server) =
        RedisServer::start_or_skip("a_claim_whose_reply_was_lost_frees_the_key_within_one_lease")
    else {
        return;
    };
    let lease = Duration::from_secs(1);
    let pause = Duration::from_secs(2);
    let conn = RedisConnection::standalone(server.url())
        .call_timeout(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let idem = Idempotency::builder(RedisStore::new(StoreOptions::new(conn)))
        .lease(lease)
        .build()
        .unwrap();
    let runs = Arc::new(AtomicU32::new(0));
    let handler = counting_handler(runs.clone());
    let mut svc = IdempotencyLayer::new(idem, |_| Some("u".into())).layer(handler);
    let req_for = pay;
    let req = || req_for("paused");
    // A warm store (its scripts loaded on the server), as in production.
    let warm = svc
        .ready()
        .await
        .unwrap()
        .call(req_for("warm"))
        .await
        .unwrap();
    assert_eq!(warm.status(), StatusCode::OK);
    runs.store(0, Ordering::SeqCst);
    server
        .command(&["CLIENT", "PAUSE", &pause.as_millis().to_string(), "ALL"])
        .unwrap();
    let paused = Instant::now();
    let first = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(first.headers()["retry-after"], "1", "503 names the lease");
    let (mut conflicts, mut unavailable) = (0, 0);
    let free_after = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let r = svc.ready().await.unwrap().call(req()).await.unwrap();
        match r.status() {
            StatusCode::OK => break paused.elapsed(),
            StatusCode::CONFLICT => {
                let secs: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(secs <= 1, "409 Retry-After {secs} s is within the lease");
                conflicts += 1;
            }
            StatusCode::SERVICE_UNAVAILABLE => unavailable += 1,
            other => panic!("unexpected {other}"),
        }
        assert!(
            paused.elapsed() < pause + lease * 3,
            "the key stayed locked"
        );
    };
    println!(
        "CLIENT PAUSE {pause:?} during begin: 503, then {unavailable} more 503 while paused and {conflicts} x 409; \
         claimable again {free_after:?} after the pause began (pause + lease = {:?}); {} execution(s)",
        pause + lease,
        runs.load(Ordering::SeqCst)
    );
    assert!(free_after <= pause + lease + Duration::from_millis(500));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// 3 masters + 3 replicas: the master owning a key is killed (`kill -9`) while the key's
/// operation runs. The holder's heartbeat and completion reach the promoted replica, retries
/// from 3 other instances get errors or "in progress" meanwhile and the stored result after,
/// and the operation's executions are counted. Replication is asynchronous: a claim the old
/// master acknowledged but had not yet sent to its replica is lost with it, and a retry after
/// the failover would then run the operation a second time — the window is the replication
/// lag (sub-millisecond on this loopback Cluster), which this test gives 300 ms to close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_mid_operation_runs_it_once() {
    let Some(mut cluster) = floodwall_testkit::RedisCluster::start_with_replicas_or_skip(
        "a_killed_master_mid_operation_runs_it_once",
        3,
        false,
    ) else {
        return;
    };
    let urls = cluster.urls();
    let instance = |conn: RedisConnection| {
        Idempotency::new(RedisStore::new(
            StoreOptions::new(conn)
                .keyspace(Keyspace::new("idem-failover", 1).unwrap())
                .call_timeout(Duration::from_millis(200)),
        ))
    };
    let holder = instance(connect(&urls, true).await);
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(instance(connect(&urls, true).await));
    }
    let key = "charge-7";
    let fp = Fingerprint::of(b"amount=42");
    let runs = Arc::new(AtomicU32::new(0));
    let run = {
        let runs = runs.clone();
        move || {
            let runs = runs.clone();
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok::<_, String>(format!("ch_{n}"))
            }
        }
    };
    let first = tokio::spawn({
        let (holder, run) = (holder.clone(), run.clone());
        async move { holder.run(key, &fp, run).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The master that owns the key's slot (the store's key is `idem-failover:v1:{charge-7}`).
    let victim = cluster
        .node_for_key("idem-failover:v1:{charge-7}")
        .unwrap()
        .port();
    cluster.kill(victim);
    let killed = Instant::now();
    let (mut errors, mut in_progress, mut replayed) = (0, 0, 0);
    let mut answers = Vec::new();
    while !first.is_finished() || replayed < 3 {
        for idem in &others {
            match idem.run(key, &fp, run.clone()).await {
                Ok(floodwall_idempotency::Outcome::Replayed(v)) => {
                    replayed += 1;
                    answers.push(v);
                }
                Ok(other) => answers.push(format!("ran again: {other:?}")),
                Err(floodwall_idempotency::RunError::InProgress { .. }) => in_progress += 1,
                Err(_) => errors += 1,
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(killed.elapsed() < Duration::from_secs(30), "never settled");
    }
    let first = first.await.unwrap();
    let executions = runs.load(Ordering::SeqCst);
    println!(
        "master :{victim} killed mid-operation: holder got {first:?}; retries: {errors} errors, \
         {in_progress} in progress, {replayed} replays ({:?}); {executions} execution(s)",
        answers.last()
    );
    assert_eq!(executions, 1, "{answers:?}");
    assert!(matches!(first, Ok(floodwall_idempotency::Outcome::Fresh(ref v)) if v == "ch_1"));
    assert!(answers.iter().all(|a| a == "ch_1"), "{answers:?}");
}

/// A handler answering 200 "ok" that counts its runs in `runs`.
fn counting_handler(
    runs: Arc<AtomicU32>,
) -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    service_fn(move |_req: Request<Full<Bytes>>| {
        runs.fetch_add(1, Ordering::SeqCst);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    })
}

/// A `POST /pay` with `Idempotency-Key: key`.
fn pay(key: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri("/pay")
        .header("idempotency-key", key)
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap()
}
