//! The `Idempotency-Key` layer over PostgreSQL's transactional path
//! (`IdempotencyLayer::in_transaction`), on servers these tests start: the handler's writes
//! commit with its stored response or not at all, it answers as the Redis-backed layer does,
//! concurrent duplicates over four instances write one business row, and a claim lost before
//! the commit rolls the handler's writes back.

mod pg;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use floodwall_core::Keyspace;
use floodwall_core::redis::{RedisConnection, StoreOptions};
use floodwall_idempotency::Idempotency;
use floodwall_idempotency::http::{IdempotencyLayer, RequestTransaction};
use floodwall_idempotency::postgres::PostgresStore;
use floodwall_idempotency::redis::RedisStore;
use floodwall_testkit::{PostgresServer, RedisServer};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use pg::{charges_of, charges_table};
use tokio::sync::Notify;
use tower::util::BoxCloneService;
use tower::{Layer, Service, ServiceExt, service_fn};

type Svc = BoxCloneService<Request<Full<Bytes>>, Response<Full<Bytes>>, Infallible>;

/// An instance with the business table.
async fn instance(server: &PostgresServer, connections: u32) -> PostgresStore {
    let store = pg::instance(server, connections).await;
    charges_table(store.pool()).await;
    store
}

/// What the handlers share: how often they ran, the gate a `wait` body waits on, and the
/// last transaction handle they saw.
#[derive(Clone, Default)]
struct Handler {
    runs: Arc<AtomicU32>,
    gate: Arc<Notify>,
    last_tx: Arc<Mutex<Option<RequestTransaction>>>,
}

impl Handler {
    /// Inserts a charge row for the request's key in the request's transaction (when there
    /// is one), then answers by its body: `fail` → 500, `wait` → waits on the gate, else 201
    /// `charge #n`.
    fn service(&self) -> Svc {
        let this = self.clone();
        BoxCloneService::new(service_fn(move |req: Request<Full<Bytes>>| {
            let this = this.clone();
            async move {
                let key = req.headers()["idempotency-key"]
                    .to_str()
                    .unwrap()
                    .to_owned();
                let tx = req.extensions().get::<RequestTransaction>().cloned();
                let body = req.into_body().collect().await.unwrap().to_bytes();
                let n = this.runs.fetch_add(1, Ordering::SeqCst) + 1;
                if let Some(tx) = tx {
                    let mut conn = tx.lock().await.expect("the handler's transaction");
                    sqlx::query("INSERT INTO charges (order_key) VALUES ($1)")
                        .bind(key.trim_matches('"'))
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                    drop(conn);
                    *this.last_tx.lock().unwrap() = Some(tx);
                }
                if &body[..] == b"wait" {
                    this.gate.notified().await;
                }
                let status = if &body[..] == b"fail" {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::CREATED
                };
                let mut r = Response::new(Full::new(Bytes::from(format!("charge #{n}"))));
                *r.status_mut() = status;
                Ok::<_, Infallible>(r)
            }
        }))
    }
}

fn post(key: Option<&str>, body: &'static [u8]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(Method::POST).uri("/charges");
    if let Some(key) = key {
        b = b.header("idempotency-key", key);
    }
    b.body(Full::new(Bytes::from_static(body))).unwrap()
}

/// One answer, as compared between the two layers.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    status: u16,
    replayed: bool,
    retry_after: Option<String>,
    body: String,
}

async fn send(svc: Svc, req: Request<Full<Bytes>>) -> Answer {
    let r = svc.oneshot(req).await.unwrap();
    let (p, b) = r.into_parts();
    Answer {
        status: p.status.as_u16(),
        replayed: p.headers.contains_key("idempotent-replayed"),
        retry_after: p
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: String::from_utf8(b.collect().await.unwrap().to_bytes().to_vec()).unwrap(),
    }
}

/// Every situation of the layer's answer table that a client can bring about, in order.
async fn script(svc: Svc, handler: &Handler) -> Vec<Answer> {
    let mut answers = vec![
        send(svc.clone(), post(Some("\"a\""), b"one")).await,
        send(svc.clone(), post(Some("\"a\""), b"one")).await,
        send(svc.clone(), post(Some("\"a\""), b"two")).await,
        send(svc.clone(), post(None, b"one")).await,
        send(svc.clone(), post(Some("\"\""), b"one")).await,
        send(svc.clone(), post(Some("\"big\""), &[b'x'; 100])).await,
        send(svc.clone(), post(Some("\"f\""), b"fail")).await,
        send(svc.clone(), post(Some("\"f\""), b"fail")).await,
    ];
    // A duplicate of a request still running.
    let before = handler.runs.load(Ordering::SeqCst);
    let first = tokio::spawn({
        let svc = svc.clone();
        async move { send(svc.clone(), post(Some("\"w\""), b"wait")).await }
    });
    while handler.runs.load(Ordering::SeqCst) == before {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    answers.push(send(svc.clone(), post(Some("\"w\""), b"wait")).await);
    handler.gate.notify_one();
    answers.push(first.await.unwrap());
    answers.push(send(svc.clone(), post(Some("\"w\""), b"wait")).await);
    answers
}

fn layer_settings<S, M>(layer: IdempotencyLayer<S, M>) -> IdempotencyLayer<S, M> {
    layer.require_key(true).max_request_body(64)
}

/// The same requests through the Redis-backed layer and the transactional PostgreSQL layer
/// get the same answers (status, replay mark, `Retry-After`, body); on PostgreSQL the
/// handler's rows stand exactly for the stored responses: one for `a`, none for `f` (its two
/// 500s rolled back), one for `w`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transactional_layer_answers_as_the_redis_layer_does() {
    let Some(pg) =
        PostgresServer::start_or_skip("the_transactional_layer_answers_as_the_redis_layer_does")
    else {
        return;
    };
    let Some(redis) =
        RedisServer::start_or_skip("the_transactional_layer_answers_as_the_redis_layer_does")
    else {
        return;
    };
    let conn = RedisConnection::standalone(redis.url())
        .connect()
        .await
        .unwrap();
    let redis_store = RedisStore::new(
        StoreOptions::new(conn)
            .keyspace(Keyspace::new("tx-parity", 1).unwrap())
            .call_timeout(Duration::from_secs(5)),
    );
    let on_redis = Handler::default();
    let layer = layer_settings(IdempotencyLayer::new(Idempotency::new(redis_store), |_| {
        Some("user-1".into())
    }));
    let redis_answers = script(
        BoxCloneService::new(layer.layer(on_redis.service())),
        &on_redis,
    )
    .await;

    let store = instance(&pg, 8).await;
    let on_pg = Handler::default();
    let layer = layer_settings(
        IdempotencyLayer::new(Idempotency::new(store.clone()), |_| Some("user-1".into()))
            .in_transaction(),
    );
    let pg_answers = script(BoxCloneService::new(layer.layer(on_pg.service())), &on_pg).await;

    for (r, p) in redis_answers.iter().zip(&pg_answers) {
        println!("redis {} / postgres {}: {:?}", r.status, p.status, p.body);
    }
    assert_eq!(redis_answers, pg_answers);
    let statuses: Vec<u16> = pg_answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        [201, 201, 422, 400, 400, 413, 500, 500, 409, 201, 201]
    );
    assert!(pg_answers[1].replayed && pg_answers[10].replayed);
    assert!(
        pg_answers[8].retry_after.is_some(),
        "the 409 says when to retry"
    );
    assert_eq!(
        on_pg.runs.load(Ordering::SeqCst),
        on_redis.runs.load(Ordering::SeqCst)
    );
    let rows = [
        charges_of(store.pool(), "a").await,
        charges_of(store.pool(), "f").await,
        charges_of(store.pool(), "w").await,
    ];
    println!(
        "postgres: {} handler runs; business rows a/f/w = {rows:?}",
        on_pg.runs.load(Ordering::SeqCst)
    );
    assert_eq!(rows, [1, 0, 1]);
    // Once the handler has answered, its handle no longer reaches the transaction.
    let last = on_pg.last_tx.lock().unwrap().clone().unwrap();
    assert!(last.lock().await.is_none());
}

/// 400 concurrent identical POSTs over 4 instances (own pools), transactional: one handler
/// run, one business row, every answer its response (fresh or replayed) or a 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_duplicates_in_transactions_write_one_row() {
    let Some(pg) =
        PostgresServer::start_or_skip("concurrent_duplicates_in_transactions_write_one_row")
    else {
        return;
    };
    let handler = Handler::default();
    let mut instances = Vec::new();
    let mut pool = None;
    for _ in 0..4 {
        let store = instance(&pg, 8).await;
        pool.get_or_insert_with(|| store.pool().clone());
        let layer = IdempotencyLayer::new(Idempotency::new(store), |_| Some("user-1".into()))
            .in_transaction();
        instances.push(BoxCloneService::new(layer.layer(handler.service())));
    }
    let tasks: Vec<_> = (0..400)
        .map(|i| {
            let svc: Svc = instances[i % 4].clone();
            tokio::spawn(async move { send(svc.clone(), post(Some("\"order-9\""), b"one")).await })
        })
        .collect();
    let (mut fresh, mut replayed, mut conflicts) = (0, 0, 0);
    for t in tasks {
        let a = t.await.unwrap();
        match a.status {
            201 if a.replayed => replayed += 1,
            201 => fresh += 1,
            409 => conflicts += 1,
            other => panic!("unexpected {other}: {a:?}"),
        }
        if a.status == 201 {
            assert_eq!(a.body, "charge #1");
        }
    }
    let rows = charges_of(pool.as_ref().unwrap(), "order-9").await;
    println!(
        "postgres, in transaction: 400 requests on 4 instances -> {} run(s), {rows} row(s); \
         {fresh} fresh, {replayed} replayed, {conflicts} x 409",
        handler.runs.load(Ordering::SeqCst)
    );
    assert_eq!((handler.runs.load(Ordering::SeqCst), rows), (1, 1));
    assert_eq!((fresh, fresh + replayed + conflicts), (1, 400));
}

/// Another request takes the key while the handler runs (here: the claim's token is moved
/// on, as when the lease ran out and a retry claimed it): the completion is refused inside
/// the transaction, the handler's row rolls back, and the client gets 503 with
/// `Retry-After: 1`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_lost_before_the_commit_rolls_the_handlers_writes_back() {
    let Some(pg) = PostgresServer::start_or_skip(
        "a_claim_lost_before_the_commit_rolls_the_handlers_writes_back",
    ) else {
        return;
    };
    let store = instance(&pg, 8).await;
    let table = store.table().to_owned();
    let pool = store.pool().clone();
    let handler = Handler::default();
    let inner = handler.service();
    let takeover = service_fn(move |req: Request<Full<Bytes>>| {
        let (pool, table, mut inner) = (pool.clone(), table.clone(), inner.clone());
        async move {
            let answer = inner.call(req).await;
            // Outside the request's transaction: another holder's claim.
            let moved = sqlx::query(&format!("UPDATE {table} SET token = token + 1000"))
                .execute(&pool)
                .await
                .unwrap();
            assert_eq!(moved.rows_affected(), 1);
            answer
        }
    });
    let layer = IdempotencyLayer::new(Idempotency::new(store.clone()), |_| Some("u".into()))
        .in_transaction();
    let svc: Svc = BoxCloneService::new(layer.layer(takeover));
    let a = send(svc.clone(), post(Some("\"lost\""), b"one")).await;
    let rows = charges_of(store.pool(), "lost").await;
    println!(
        "claim lost before the commit: {} {:?}; {rows} business row(s)",
        a.status, a.retry_after
    );
    assert_eq!((a.status, a.retry_after.as_deref()), (503, Some("1")));
    assert!(a.body.contains("not-committed"), "{}", a.body);
    assert_eq!(rows, 0);
}
