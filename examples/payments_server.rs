//! A payments-style `POST /payments` behind the `Idempotency-Key` layer.
//!
//! The server keeps idempotency records in memory, or in Redis when `REDIS_URL` is set (run
//! with `--features http,redis` then), or — when `DATABASE_URL` is set (`--features
//! http,postgres`) — in PostgreSQL, where the layer runs the handler in a transaction
//! (`IdempotencyLayer::in_transaction`): each charge row and its stored response commit
//! together. It drives itself with a client:
//!
//! 1. the client sends a payment and gives up after 100 ms (the response is "dropped"),
//!    while the server takes 300 ms to charge the card and still finishes;
//! 2. an impatient retry while the first is still running gets `409` with `Retry-After`;
//! 3. the retry after it finished gets the stored response, `Idempotent-Replayed: true` —
//!    not a second charge;
//! 4. the same key with another amount gets `422`; a request without a key gets `400`;
//!    another user with the same key gets a charge of its own.
//!
//! It prints every answer and the number of cards charged, and ends on its own. When the
//! idempotency store is unavailable, a step answered `503` ("retry later with the same key")
//! is reported as degraded, not as a failure: the example shows graceful degradation.
//!
//! With `FLOODWALL_SOAK_SECS=N` it then keeps 16 clients paying (new keys, and retries of
//! earlier ones) for N seconds and prints what they were answered — the way to watch it ride
//! through a Redis outage (`kill -9` and restart Redis meanwhile; `.ci/run` does).
//!
//! ```text
//! cargo run --example payments_server --features http
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use bytes::Bytes;
use floodwall::idempotency::http::IdempotencyLayer;
use floodwall::idempotency::{Idempotency, MemoryStore, Store};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

async fn charge(State(charges): State<Arc<AtomicU32>>, body: Bytes) -> (StatusCode, String) {
    // Talking to the card network takes a while.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = charges.fetch_add(1, Ordering::SeqCst) + 1;
    let amount = String::from_utf8_lossy(&body).into_owned();
    (
        StatusCode::CREATED,
        format!("{{\"charge\":\"ch_{n}\",\"request\":{amount}}}"),
    )
}

/// Keys are scoped by the caller (an auth layer would set this header).
fn payer(parts: &axum::http::request::Parts) -> Option<String> {
    parts
        .headers
        .get("x-user")?
        .to_str()
        .ok()
        .map(str::to_owned)
}

fn app<S: Store + Clone>(store: S, charges: Arc<AtomicU32>) -> Router {
    let layer = IdempotencyLayer::new(Idempotency::new(store), payer).require_key(true);
    Router::new()
        .route("/payments", post(charge))
        .with_state(charges)
        .layer(layer)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let charges = Arc::new(AtomicU32::new(0));
    let router = match (std::env::var("DATABASE_URL"), std::env::var("REDIS_URL")) {
        #[cfg(feature = "postgres")]
        (Ok(url), _) => {
            println!("charges and idempotency records in PostgreSQL at {url}, committed together");
            pg::app(&url, charges.clone()).await?
        }
        (_, redis_url) => redis_or_memory(redis_url, charges.clone()).await?,
    };
    drive(router, charges).await
}

/// The router keeping records in Redis when `REDIS_URL` is set, else in memory.
async fn redis_or_memory(
    redis_url: Result<String, std::env::VarError>,
    charges: Arc<AtomicU32>,
) -> Result<Router, Box<dyn std::error::Error>> {
    Ok(match redis_url {
        #[cfg(feature = "redis")]
        Ok(url) => {
            use floodwall::core::Keyspace;
            use floodwall::core::redis::{RedisConnection, StoreOptions};
            use floodwall::idempotency::redis::RedisStore;
            println!("idempotency records in Redis at {url}");
            let conn = RedisConnection::standalone(url).connect().await?;
            // A fresh key version per run, so a second run starts clean.
            let store = RedisStore::new(
                StoreOptions::new(conn)
                    .keyspace(Keyspace::new("fw-idem-example", std::process::id())?),
            );
            app(store, charges)
        }
        #[cfg(not(feature = "redis"))]
        Ok(_) => {
            println!("REDIS_URL is set, but this build has no `redis` feature: in memory");
            app(MemoryStore::new(), charges)
        }
        Err(_) => {
            println!("idempotency records in memory (set REDIS_URL to keep them in Redis)");
            app(MemoryStore::new(), charges)
        }
    })
}

/// Serves `router` and drives it through the scenario (and the soak, when asked).
async fn drive(router: Router, charges: Arc<AtomicU32>) -> Result<(), Box<dyn std::error::Error>> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr: SocketAddr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let pay = |user: &'static str, key: Option<&'static str>, body: &'static str| {
        let client = client.clone();
        async move {
            let mut req =
                http::Request::post(format!("http://{addr}/payments")).header("x-user", user);
            if let Some(key) = key {
                req = req.header("idempotency-key", format!("\"{key}\""));
            }
            let resp = client
                .request(req.body(Full::new(Bytes::from_static(body.as_bytes())))?)
                .await?;
            let status = resp.status();
            let replayed = resp.headers().get("idempotent-replayed").is_some();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(|v| format!(", Retry-After: {v}"))
                .unwrap_or_default();
            let body = resp.into_body().collect().await?.to_bytes();
            println!(
                "  {user} key={:<8} -> {}{}{retry_after} {}",
                key.unwrap_or("(none)"),
                status.as_u16(),
                if replayed {
                    " [Idempotent-Replayed]"
                } else {
                    ""
                },
                String::from_utf8_lossy(&body)
            );
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(status.as_u16())
        }
    };

    let mut degraded = false;
    // A step's answer: the expected one, or 503 while the store is unavailable (degraded,
    // reported); anything else is an error.
    let mut expect = |step: &str, got: u16, want: u16| -> Result<(), String> {
        match got {
            g if g == want => Ok(()),
            503 => {
                println!("  ({step}: 503, the idempotency store is unavailable — degraded)");
                degraded = true;
                Ok(())
            }
            g => Err(format!("{step}: answered {g}, expected {want}")),
        }
    };

    println!("\n1. pay 42, but the client gives up after 100 ms:");
    match tokio::time::timeout(
        Duration::from_millis(100),
        pay("ann", Some("pay-001"), "{\"amount\":42}"),
    )
    .await
    {
        Err(_) => println!("  ann key=pay-001  -> (no response: the client timed out)"),
        Ok(r) => println!(
            "  unexpectedly answered: {:?}",
            r.map_err(|e| e.to_string())
        ),
    }
    println!("\n2. an impatient retry while the charge is still running:");
    let conflict = pay("ann", Some("pay-001"), "{\"amount\":42}")
        .await
        .map_err(|e| e.to_string())?;
    expect("impatient retry", conflict, 409)?;
    tokio::time::sleep(Duration::from_millis(400)).await;
    println!("\n3. the retry after it finished:");
    let replay = pay("ann", Some("pay-001"), "{\"amount\":42}")
        .await
        .map_err(|e| e.to_string())?;
    expect("retry after it finished", replay, 201)?;
    println!("\n4. misuse, and another user:");
    let other_amount = pay("ann", Some("pay-001"), "{\"amount\":99}")
        .await
        .map_err(|e| e.to_string())?;
    expect("same key, another amount", other_amount, 422)?;
    let no_key = pay("ann", None, "{\"amount\":42}")
        .await
        .map_err(|e| e.to_string())?;
    expect("no key", no_key, 400)?;
    let bob = pay("bob", Some("pay-001"), "{\"amount\":42}")
        .await
        .map_err(|e| e.to_string())?;
    expect("another user", bob, 201)?;

    let charged = charges.load(Ordering::SeqCst);
    println!("\ncards charged: {charged} (ann once despite three tries, bob once)");
    if !degraded && charged != 2 {
        return Err(format!("{charged} cards charged, expected 2").into());
    }
    if let Some(secs) = std::env::var("FLOODWALL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        soak(addr, charges.clone(), Duration::from_secs(secs)).await;
    }
    let _ = stop.send(());
    server.await??;
    Ok(())
}

/// 16 clients paying for `length`: each sends a new key, or (one time in four) retries one
/// of its earlier keys; every answer is tallied by status. Transport errors are counted too
/// — nothing here panics or gives up.
async fn soak(addr: SocketAddr, charges: Arc<AtomicU32>, length: Duration) {
    println!("\nsoak: 16 clients for {length:?}");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let before = charges.load(Ordering::SeqCst);
    let deadline = tokio::time::Instant::now() + length;
    let mut clients = Vec::new();
    for c in 0..16u32 {
        let client = client.clone();
        clients.push(tokio::spawn(async move {
            let mut tally = std::collections::BTreeMap::<String, u32>::new();
            let mut keys = std::collections::HashSet::new();
            let mut sent = 0u32;
            while tokio::time::Instant::now() < deadline {
                let n = if sent > 0 && sent.is_multiple_of(4) {
                    sent / 2
                } else {
                    sent
                };
                sent += 1;
                keys.insert(n);
                let req = http::Request::post(format!("http://{addr}/payments"))
                    .header("x-user", format!("soak-{c}"))
                    .header("idempotency-key", format!("k-{n}"))
                    .body(Full::new(Bytes::from(format!("{{\"amount\":{n}}}"))))
                    .expect("a valid request");
                let answer =
                    match tokio::time::timeout(Duration::from_secs(5), client.request(req)).await {
                        Ok(Ok(resp)) if resp.headers().contains_key("idempotent-replayed") => {
                            format!("{} replayed", resp.status().as_u16())
                        }
                        Ok(Ok(resp)) => resp.status().as_u16().to_string(),
                        Ok(Err(_)) => "transport error".to_string(),
                        Err(_) => "no answer in 5 s".to_string(),
                    };
                *tally.entry(answer).or_default() += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            (tally, keys.len() as u32)
        }));
    }
    let mut total = std::collections::BTreeMap::<String, u32>::new();
    let mut unique = 0;
    for c in clients {
        if let Ok((tally, keys)) = c.await {
            unique += keys;
            for (k, v) in tally {
                *total.entry(k).or_default() += v;
            }
        }
    }
    // Without persistence, a Redis restart forgets every record: a retry of a key paid
    // before it runs again (see the Redis store's docs on what Redis can lose).
    println!(
        "soak: answers {total:?}; {unique} distinct keys, cards charged during the soak: {}",
        charges.load(Ordering::SeqCst) - before
    );
}

/// The PostgreSQL mode: the same layer, `in_transaction()`: the handler writes the charge row
/// in the request's transaction, and the layer stores the response in it before committing —
/// the charge and its idempotency record commit together, or neither does.
#[cfg(feature = "postgres")]
mod pg {
    use super::*;
    use axum::Extension;
    use floodwall::idempotency::http::RequestTransaction;
    use floodwall::idempotency::postgres::PostgresStore;

    pub(super) async fn app(
        url: &str,
        charges: Arc<AtomicU32>,
    ) -> Result<Router, Box<dyn std::error::Error>> {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(url)
            .await?;
        // A table per run, so a second run starts clean.
        let run = std::process::id();
        let store =
            PostgresStore::new(pool.clone()).with_table(&format!("fw_idem_example_{run}"))?;
        store.migrate().await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS example_charges \
             (id bigserial PRIMARY KEY, payer text NOT NULL, amount text NOT NULL)",
        )
        .execute(&pool)
        .await?;
        let layer = IdempotencyLayer::new(Idempotency::new(store), payer)
            .require_key(true)
            .in_transaction();
        Ok(Router::new()
            .route("/payments", post(charge))
            .with_state(charges)
            .layer(layer))
    }

    async fn charge(
        State(charges): State<Arc<AtomicU32>>,
        Extension(tx): Extension<RequestTransaction>,
        headers: axum::http::HeaderMap,
        body: Bytes,
    ) -> (StatusCode, String) {
        tokio::time::sleep(Duration::from_millis(300)).await; // the card network
        let payer = headers
            .get("x-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let amount = String::from_utf8_lossy(&body).into_owned();
        let Some(mut conn) = tx.lock().await else {
            return (StatusCode::INTERNAL_SERVER_ERROR, "no transaction".into());
        };
        let inserted: Result<i64, _> = sqlx::query_scalar(
            "INSERT INTO example_charges (payer, amount) VALUES ($1, $2) RETURNING id",
        )
        .bind(payer)
        .bind(&amount)
        .fetch_one(&mut *conn)
        .await;
        match inserted {
            Ok(id) => {
                charges.fetch_add(1, Ordering::SeqCst);
                (
                    StatusCode::CREATED,
                    format!("{{\"charge\":\"ch_{id}\",\"request\":{amount}}}"),
                )
            }
            // A 5xx is not stored: the transaction rolls back and a retry charges afresh.
            Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
}
