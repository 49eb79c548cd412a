//! The PostgreSQL store on servers these tests start (`PostgresServer`): agreement with the
//! reference model, one execution for 1000 concurrent identical requests across 4 instances
//! (separate pools) through the HTTP layer, transactional atomicity when the operation fails
//! or its task is aborted, fencing of a crashed holder, and a database crash-restart during
//! a run of duplicates.

mod model;
mod pg;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use floodwall_idempotency::http::IdempotencyLayer;
use floodwall_idempotency::{
    Begin, Fingerprint, Finish, Idempotency, OnConflict, Outcome, RunError, Store,
};
use floodwall_testkit::PostgresServer;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use model::agrees_with_the_model;
use pg::{charges_of, charges_table, instance};
use tower::{Layer, Service, ServiceExt, service_fn};

/// Random interleavings of begin / complete / release / record against the model, on
/// PostgreSQL (leases and retentions of 10 minutes: the database's clock cannot be moved by
/// the test, so expiry is covered by the crash test below and the memory store's model test).
#[test]
fn postgres_store_agrees_with_the_model() {
    let Some(server) = PostgresServer::start_or_skip("postgres_store_agrees_with_the_model") else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = rt.block_on(instance(&server, 4));
    agrees_with_the_model(&rt, &store, 96);
}

/// A `POST /charges` with `Idempotency-Key: "order-1"`.
fn charge_request() -> Request<Full<Bytes>> {
    Request::builder()
        .method(Method::POST)
        .uri("/charges")
        .header("idempotency-key", "\"order-1\"")
        .body(Full::new(Bytes::from_static(b"{\"amount\":42}")))
        .unwrap()
}

/// 1000 concurrent identical POSTs over 4 instances, each with its own pool, through the
/// unchanged HTTP layer: one execution; every answer is its response (fresh or replayed) or a
/// 409; 20 retries afterwards are replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_on_four_instances_run_once() {
    let Some(server) =
        PostgresServer::start_or_skip("concurrent_duplicates_on_four_instances_run_once")
    else {
        return;
    };
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
                Ok::<_, std::convert::Infallible>(r)
            }
        });
        let idem = Idempotency::new(instance(&server, 8).await);
        instances.push(IdempotencyLayer::new(idem, |_| Some("user-1".into())).layer(handler));
    }
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let mut svc = instances[i % 4].clone();
        tasks.push(tokio::spawn(async move {
            let r = svc.ready().await.unwrap().call(charge_request()).await;
            let (p, b) = r.unwrap().into_parts();
            let body = b.collect().await.unwrap().to_bytes();
            (
                p.status,
                p.headers.contains_key("idempotent-replayed"),
                body,
            )
        }));
    }
    let (mut fresh, mut replayed, mut conflicts) = (0, 0, 0);
    for t in tasks {
        let (status, was_replayed, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED if was_replayed => replayed += 1,
            StatusCode::CREATED => fresh += 1,
            StatusCode::CONFLICT => conflicts += 1,
            other => panic!("unexpected {other}: {body:?}"),
        }
        if status == StatusCode::CREATED {
            assert_eq!(&body[..], b"charge #1");
        }
    }
    println!(
        "postgres: 1000 requests on 4 instances (4 pools) -> {} execution(s); {fresh} fresh, \
         {replayed} replayed, {conflicts} x 409",
        runs.load(Ordering::SeqCst)
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!((fresh, fresh + replayed + conflicts), (1, 1000));
    for i in 0..20 {
        let mut svc = instances[i % 4].clone();
        let r = svc.ready().await.unwrap().call(charge_request()).await;
        let r = r.unwrap();
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(r.headers()["idempotent-replayed"], "true");
        assert_eq!(
            &r.into_body().collect().await.unwrap().to_bytes()[..],
            b"charge #1"
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1, "20 retries replayed");
    println!("postgres: 20 retries afterwards -> 20 replays, still 1 execution");
}

/// An operation that inserts the business row and then fails, and one whose task is aborted
/// between the insert and the commit: neither leaves a row, and the key can be claimed (at
/// once: the failed run released it; the aborted run's claim is released as its future is
/// dropped). The retry inserts exactly one row and stores its result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_or_aborted_run_leaves_no_business_row_and_a_claimable_key() {
    let Some(server) = PostgresServer::start_or_skip(
        "a_failed_or_aborted_run_leaves_no_business_row_and_a_claimable_key",
    ) else {
        return;
    };
    let store = instance(&server, 8).await;
    charges_table(store.pool()).await;
    let idem = Idempotency::new(store.clone());
    let fp = Fingerprint::of(b"amount=42");

    let failed = idem
        .run_in_transaction("order-fail", &fp, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO charges (order_key) VALUES ('order-fail')")
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| e.to_string())?;
                Err::<String, _>("the card was declined".to_string())
            })
        })
        .await;
    assert!(matches!(failed, Err(RunError::Operation(_))), "{failed:?}");
    assert_eq!(charges_of(store.pool(), "order-fail").await, 0);

    let inserted = Arc::new(tokio::sync::Notify::new());
    let idem2 = idem.clone();
    let signal = inserted.clone();
    let task = tokio::spawn(async move {
        idem2
            .run_in_transaction("order-abort", &fp, move |tx| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO charges (order_key) VALUES ('order-abort')")
                        .execute(&mut *tx)
                        .await
                        .map_err(|e| e.to_string())?;
                    signal.notify_one();
                    std::future::pending::<()>().await;
                    Ok::<_, String>("never".to_string())
                })
            })
            .await
    });
    inserted.notified().await;
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());

    for key in ["order-fail", "order-abort"] {
        // The aborted run's release is spawned as its future drops: wait for it, bounded.
        let started = Instant::now();
        let begin = loop {
            let b = store.begin(key, &fp, Duration::from_secs(5)).await.unwrap();
            if matches!(b, Begin::Claimed(_)) || started.elapsed() > Duration::from_secs(3) {
                break b;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let Begin::Claimed(token) = begin else {
            panic!("{key}: not claimable: {begin:?}");
        };
        println!(
            "{key}: 0 business rows, claimable after {:?}",
            started.elapsed()
        );
        assert_eq!(charges_of(store.pool(), key).await, 0);
        assert_eq!(
            store
                .abort(key, token, floodwall_idempotency::Abort::Release)
                .await
                .unwrap(),
            Finish::Done
        );
        let retried = idem
            .run_in_transaction(key, &fp, |tx| {
                let key = key.to_string();
                Box::pin(async move {
                    sqlx::query("INSERT INTO charges (order_key) VALUES ($1)")
                        .bind(&key)
                        .execute(&mut *tx)
                        .await?;
                    Ok::<_, sqlx::Error>(format!("charged {key}"))
                })
            })
            .await
            .unwrap();
        assert_eq!(retried, Outcome::Fresh(format!("charged {key}")));
        assert_eq!(
            charges_of(store.pool(), key).await,
            1,
            "{key}: the retry's one row"
        );
        let again = idem
            .run_in_transaction(key, &fp, |_tx| {
                Box::pin(async { Ok::<_, sqlx::Error>("ran twice".to_string()) })
            })
            .await
            .unwrap();
        assert_eq!(again, Outcome::Replayed(format!("charged {key}")));
        assert_eq!(charges_of(store.pool(), key).await, 1);
        println!("{key}: the retry inserted 1 row; a second retry replayed it");
    }
}

/// A holder whose lease ran out (it crashed, or stalled without renewing) is fenced: the key
/// is claimed by a retry that commits its row and result; the old holder's late completion in
/// its own transaction is refused, its business row rolls back, and the stored result stays
/// the retry's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_holder_is_fenced_and_its_late_completion_rolls_back() {
    let Some(server) = PostgresServer::start_or_skip(
        "a_crashed_holder_is_fenced_and_its_late_completion_rolls_back",
    ) else {
        return;
    };
    let store = instance(&server, 8).await;
    charges_table(store.pool()).await;
    let fp = Fingerprint::of(b"amount=7");
    let Begin::Claimed(stale) = store
        .begin("order-9", &fp, Duration::from_millis(300))
        .await
        .unwrap()
    else {
        panic!("the first claim")
    };
    // The holder stalls past its lease: a retry meanwhile claims the key.
    let started = Instant::now();
    let idem = Idempotency::builder(store.clone())
        .on_conflict(OnConflict::Wait(Duration::from_secs(5)))
        .build()
        .unwrap();
    let retry = idem
        .run_in_transaction("order-9", &fp, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO charges (order_key) VALUES ('order-9')")
                    .execute(&mut *tx)
                    .await?;
                Ok::<_, sqlx::Error>("retry's charge".to_string())
            })
        })
        .await
        .unwrap();
    println!(
        "the retry claimed the key {:?} after the stale claim (lease 300 ms)",
        started.elapsed()
    );
    assert_eq!(retry, Outcome::Fresh("retry's charge".to_string()));

    // The stale holder wakes up and commits its work with its completion: refused.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO charges (order_key) VALUES ('order-9')")
        .execute(&mut *tx)
        .await
        .unwrap();
    let late = store
        .complete_in(&mut tx, "order-9", stale, b"stale", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(late, Finish::Fenced);
    tx.rollback().await.unwrap();
    assert_eq!(
        store
            .complete("order-9", stale, b"stale", Duration::from_secs(60))
            .await
            .unwrap(),
        Finish::Fenced
    );
    assert_eq!(charges_of(store.pool(), "order-9").await, 1);
    let replay = idem
        .run_in_transaction("order-9", &fp, |_tx| {
            Box::pin(async { Ok::<_, sqlx::Error>("third".to_string()) })
        })
        .await
        .unwrap();
    assert_eq!(replay, Outcome::Replayed("retry's charge".to_string()));
    println!(
        "stale holder: completion Fenced, its row rolled back; 1 row, the retry's result stands"
    );
}

/// `pg_ctl restart -m immediate` while 4 instances run duplicates of 40 keys (8 callers per
/// key): no key's business row is committed twice, and every store call answers within its
/// bound during the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_restart_during_duplicates_runs_nothing_twice() {
    let Some(mut server) =
        PostgresServer::start_or_skip("a_database_restart_during_duplicates_runs_nothing_twice")
    else {
        return;
    };
    let bound = Duration::from_millis(500);
    let mut instances = Vec::new();
    for _ in 0..4 {
        let store = instance(&server, 6).await.with_call_timeout(bound).unwrap();
        instances.push(Idempotency::new(store));
    }
    charges_table(instances[0].store().pool()).await;
    let slowest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let executions = Arc::new(AtomicU32::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut tasks = Vec::new();
    for caller in 0..32usize {
        let idem = instances[caller % 4].clone();
        let (slowest, executions) = (slowest.clone(), executions.clone());
        tasks.push(tokio::spawn(async move {
            let mut answers = HashMap::<String, u32>::new();
            let mut round = 0;
            while tokio::time::Instant::now() < deadline {
                let key = format!("k{}-{}", round, caller % 5);
                round += 1;
                let fp = Fingerprint::of(key.as_bytes());
                let started = Instant::now();
                // A store call, timed: it answers (anything) within the bound.
                let _probe = idem
                    .store()
                    .begin("probe", &fp, Duration::from_millis(1))
                    .await;
                let took = started.elapsed();
                {
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                }
                let executions = executions.clone();
                let row = key.clone();
                let r = idem
                    .run_in_transaction(&key, &fp, move |tx| {
                        let key = row;
                        Box::pin(async move {
                            executions.fetch_add(1, Ordering::SeqCst);
                            sqlx::query("INSERT INTO charges (order_key) VALUES ($1)")
                                .bind(&key)
                                .execute(&mut *tx)
                                .await?;
                            Ok::<_, sqlx::Error>(key)
                        })
                    })
                    .await;
                let answer = match r {
                    Ok(Outcome::Fresh(_)) => "fresh",
                    Ok(Outcome::Replayed(_)) => "replayed",
                    Ok(Outcome::Unrecorded(_)) => "unrecorded",
                    Err(RunError::InProgress { .. }) => "409",
                    Err(RunError::Store(_)) => "store unavailable",
                    Err(_) => "other error",
                };
                *answers.entry(answer.to_string()).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            answers
        }));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restarted = Instant::now();
    server.restart_immediate().unwrap();
    println!("pg_ctl restart -m immediate took {:?}", restarted.elapsed());
    let mut total = HashMap::<String, u32>::new();
    for t in tasks {
        for (k, v) in t.await.unwrap() {
            *total.entry(k).or_default() += v;
        }
    }
    let pool = instances[0].store().pool();
    let twice: Vec<(String, i64)> = sqlx::query_as(
        "SELECT order_key, count(*) FROM charges GROUP BY order_key HAVING count(*) > 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM charges")
        .fetch_one(pool)
        .await
        .unwrap();
    let slowest = *slowest.lock().unwrap();
    println!(
        "restart under duplicates: answers {total:?}; {} operation runs, {rows} committed rows, \
         {} keys committed twice; slowest store call {slowest:?} (bound {bound:?})",
        executions.load(Ordering::SeqCst),
        twice.len()
    );
    assert!(twice.is_empty(), "{twice:?}");
    assert!(rows > 0);
    assert!(slowest <= bound + Duration::from_millis(200), "{slowest:?}");
    assert!(
        total.contains_key("fresh") && total.contains_key("replayed"),
        "{total:?}"
    );
}

/// The `Deduplicator` works on the store unchanged (200 concurrent deliveries of one message
/// over 4 instances: processed once); keys of any length are stored (a 10 KB key as its
/// SHA-256, distinct from another); the sweeper deletes expired rows in bounded batches and
/// leaves live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deduplicator_long_keys_and_the_sweeper_work_on_postgres() {
    let Some(server) = PostgresServer::start_or_skip(
        "the_deduplicator_long_keys_and_the_sweeper_work_on_postgres",
    ) else {
        return;
    };
    let mut dedups = Vec::new();
    for _ in 0..4 {
        let store = instance(&server, 4).await;
        dedups.push(floodwall_idempotency::Deduplicator::new(
            store,
            Duration::from_secs(3600),
        ));
    }
    let processed = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..200 {
        let dedup = dedups[i % 4].clone();
        let processed = processed.clone();
        tasks.push(tokio::spawn(async move {
            dedup
                .process("msg-1", || async move {
                    processed.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    Ok::<_, String>(())
                })
                .await
                .is_ok()
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "200 deliveries of one message over 4 instances -> processed {} time(s)",
        processed.load(Ordering::SeqCst)
    );
    assert_eq!(processed.load(Ordering::SeqCst), 1);

    let store = instance(&server, 4).await;
    let fp = Fingerprint::of(b"x");
    let (long_a, long_b) = ("a".repeat(10_000), format!("{}b", "a".repeat(9_999)));
    for (key, record) in [(&long_a, b"A"), (&long_b, b"B")] {
        let Begin::Claimed(t) = store.begin(key, &fp, Duration::from_secs(5)).await.unwrap() else {
            panic!("a long key is claimed")
        };
        let done = store
            .complete(key, t, record, Duration::from_secs(60))
            .await;
        assert_eq!(done.unwrap(), Finish::Done);
    }
    assert_eq!(
        store
            .begin(&long_a, &fp, Duration::from_secs(5))
            .await
            .unwrap(),
        Begin::Completed(b"A".to_vec())
    );
    assert_eq!(
        store
            .begin(&long_b, &fp, Duration::from_secs(5))
            .await
            .unwrap(),
        Begin::Completed(b"B".to_vec())
    );

    for i in 0..250 {
        let key = format!("short-{i}");
        let Begin::Claimed(t) = store
            .begin(&key, &fp, Duration::from_secs(5))
            .await
            .unwrap()
        else {
            panic!("claimed")
        };
        let done = store
            .complete(&key, t, b"r", Duration::from_millis(1))
            .await;
        assert_eq!(done.unwrap(), Finish::Done);
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mut batches = Vec::new();
    loop {
        let n = store.sweep(100).await.unwrap();
        batches.push(n);
        if n < 100 {
            break;
        }
    }
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM floodwall_idempotency")
        .fetch_one(store.pool())
        .await
        .unwrap();
    println!("sweep of 250 expired rows in batches of 100: {batches:?}; {left} live rows left");
    assert_eq!(batches, vec![100, 100, 50]);
    assert_eq!(left, 3, "msg-1 and the two long keys");
}

/// A payment in phases (Stripe's atomic phases): record the order, call the payment API,
/// record its charge id. The first attempt commits both phases, then dies before finishing
/// (its error stands in for the crash); the retry sees the point reached, skips the payment
/// API, and finishes: one API call, one order row, one charge row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phased_run_resumes_from_its_last_committed_phase() {
    let Some(server) =
        PostgresServer::start_or_skip("a_phased_run_resumes_from_its_last_committed_phase")
    else {
        return;
    };
    let store = instance(&server, 4).await;
    charges_table(store.pool()).await;
    let idem = Idempotency::new(store.clone());
    let fp = Fingerprint::of(b"order-5");
    let api_calls = Arc::new(AtomicU32::new(0));
    let attempt = |crash: bool| {
        let api_calls = api_calls.clone();
        move |mut phases: floodwall_idempotency::postgres::Phases| async move {
            let seen = phases.reached().map(str::to_owned);
            if phases.reached().is_none() {
                phases
                    .commit("order_created", |tx| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO charges (order_key) VALUES ('order-5')")
                                .execute(&mut *tx)
                                .await
                        })
                    })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if phases.reached() == Some("order_created") {
                // The outside call, then its answer recorded in the next phase.
                let charge = format!("ch_{}", api_calls.fetch_add(1, Ordering::SeqCst) + 1);
                phases
                    .commit("charged", |tx| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO charges (order_key) VALUES ($1)")
                                .bind(charge)
                                .execute(&mut *tx)
                                .await
                        })
                    })
                    .await
                    .map_err(|e| e.to_string())?;
            }
            if crash {
                return Err(format!("crashed after {:?}", phases.reached()));
            }
            Ok::<_, String>(format!("resumed from {seen:?}"))
        }
    };
    let first = idem.run_phased("order-5", &fp, attempt(true)).await;
    println!("first attempt: {first:?}");
    assert!(matches!(first, Err(RunError::Operation(_))));
    let retry = idem
        .run_phased("order-5", &fp, attempt(false))
        .await
        .unwrap();
    println!("retry: {retry:?}");
    assert_eq!(
        retry,
        Outcome::Fresh("resumed from Some(\"charged\")".to_string())
    );
    let again = idem
        .run_phased("order-5", &fp, attempt(false))
        .await
        .unwrap();
    assert!(again.is_replayed());
    assert_eq!(
        api_calls.load(Ordering::SeqCst),
        1,
        "the payment API was called once"
    );
    assert_eq!(charges_of(store.pool(), "order-5").await, 1);
    assert_eq!(charges_of(store.pool(), "ch_1").await, 1);
    println!("payment API calls: 1; order rows: 1; charge rows: 1");
}

/// What the table costs: 100,000 completed keys (24-byte keys, 64-byte records) claimed and
/// completed through the store's own functions; the table with its indexes is measured with
/// `pg_total_relation_size` and printed per million keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_table_grows_by_a_measured_size_per_million_keys() {
    let Some(server) =
        PostgresServer::start_or_skip("the_table_grows_by_a_measured_size_per_million_keys")
    else {
        return;
    };
    let store = instance(&server, 2).await;
    let n = 100_000i64;
    sqlx::raw_sql(&format!(
        "WITH claims AS (SELECT k, (SELECT o_num FROM floodwall_idempotency_begin(k, \
         sha256(k), 5000000, 60000000)) AS tok \
         FROM (SELECT convert_to(lpad(g::text, 24, 'k'), 'UTF8') AS k \
         FROM generate_series(1, {n}) g) keys) \
         SELECT count(floodwall_idempotency_complete(k, tok, \
         convert_to(repeat('r', 64), 'UTF8'), 86400000000)) FROM claims"
    ))
    .execute(store.pool())
    .await
    .unwrap();
    sqlx::raw_sql("VACUUM ANALYZE floodwall_idempotency")
        .execute(store.pool())
        .await
        .unwrap();
    let (rows, total, table): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM floodwall_idempotency WHERE state = 'c'), \
         pg_total_relation_size('floodwall_idempotency'), \
         pg_relation_size('floodwall_idempotency')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(rows, n);
    let per_key = total as f64 / n as f64;
    println!(
        "{n} completed keys: table {:.1} MB, with indexes {:.1} MB -> {per_key:.0} bytes per key, \
         {:.0} MB per million keys (24-byte keys, 64-byte records)",
        table as f64 / 1e6,
        total as f64 / 1e6,
        per_key
    );
    // Compacted: what the live rows alone take (the rest was old row versions).
    sqlx::raw_sql("VACUUM FULL floodwall_idempotency")
        .execute(store.pool())
        .await
        .unwrap();
    let compact: i64 = sqlx::query_scalar("SELECT pg_total_relation_size('floodwall_idempotency')")
        .fetch_one(store.pool())
        .await
        .unwrap();
    println!(
        "after VACUUM FULL: {:.1} MB -> {:.0} bytes per key (live rows and indexes only)",
        compact as f64 / 1e6,
        compact as f64 / n as f64
    );
    assert!(compact <= total);
    assert!(per_key > 88.0, "at least the key and the record: {per_key}");
    assert!(per_key < 1000.0, "{per_key}");
}
