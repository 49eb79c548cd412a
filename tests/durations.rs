//! Every public API of the family that takes a `Duration` (builders, setters, quotas,
//! per-call arguments), tried with zero, a millisecond, a second, a day, `u64::MAX` seconds
//! and `Duration::MAX`: each either takes the value (`Duration::MAX` meaning unbounded or
//! "never", saturating wherever it is added to a clock) or refuses it with an error naming the
//! field — and nothing panics, in the call or in any task the API spawns (a panic hook counts
//! every panic of the process). The table of what each API did is printed.
//!
//! The in-memory APIs run on Tokio's paused clock, so a wait of centuries passes at once; the
//! Redis-backed ones run on a server the test starts.

use std::future::Future;
use std::num::{NonZeroU32, NonZeroUsize};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::FutureExt;

/// What one API did with one value: taken, or refused with this error text.
type Outcome = Result<(), String>;
type Case = (
    &'static str,
    Box<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = Outcome>>>>,
);

const VALUES: [Duration; 6] = [
    Duration::ZERO,
    Duration::from_millis(1),
    Duration::from_secs(1),
    Duration::from_secs(86_400),
    Duration::from_secs(u64::MAX),
    Duration::MAX,
];

static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

macro_rules! case {
    ($name:expr, |$d:ident| $body:expr) => {
        (
            $name,
            Box::new(
                move |$d: Duration| -> Pin<Box<dyn Future<Output = Outcome>>> {
                    Box::pin(async move { $body })
                },
            ) as Box<dyn Fn(Duration) -> Pin<Box<dyn Future<Output = Outcome>>>>,
        )
    };
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap()
}

/// Runs every case with every value; returns the lines of the table and how many cells
/// panicked or failed.
async fn sweep(cases: Vec<Case>) -> (Vec<String>, usize) {
    let mut lines = Vec::new();
    let mut panics = 0;
    for (name, run) in &cases {
        let mut cells = Vec::new();
        for d in VALUES {
            let before = PANICS.load(Ordering::SeqCst);
            let result = std::panic::AssertUnwindSafe(run(d)).catch_unwind().await;
            // Tasks the API spawned get a moment to run (and to panic).
            for _ in 0..10 {
                tokio::task::yield_now().await;
            }
            let spawned = PANICS.load(Ordering::SeqCst) - before;
            let cell = match result {
                Err(_) => "PANIC".to_string(),
                Ok(_) if spawned > 0 => "PANIC (task)".to_string(),
                Ok(Ok(())) => "ok".to_string(),
                // A refusal names the field it refuses (`ttl`); any other error is a failure.
                // A bound under a second may run out on a busy machine: that is the bound
                // doing its work.
                Ok(Err(e))
                    if d < Duration::from_secs(1)
                        && (e.contains("timed out") || e.contains("no answer within")) =>
                {
                    "timed out at its bound".to_string()
                }
                Ok(Err(e)) if e.contains('`') => {
                    format!("refused: {}", e.chars().take(50).collect::<String>())
                }
                Ok(Err(e)) => format!("FAILED: {}", e.chars().take(70).collect::<String>()),
            };
            if cell.starts_with("PANIC") || cell.starts_with("FAILED") {
                panics += 1;
            }
            cells.push(cell);
        }
        lines.push(format!("{name:<66} {}", cells.join(" | ")));
    }
    (lines, panics)
}

fn memory_cases() -> Vec<Case> {
    use floodwall::cache::TieredCache;
    use floodwall::core::health::{Health, HealthGate, NodeBreaker};
    use floodwall::core::{Clock, ManualClock};
    use floodwall::idempotency::{Deduplicator, Fingerprint, Idempotency, MemoryStore, Store};
    use floodwall::limiter::leaky::LeakyQueue;
    use floodwall::limiter::{Algorithm, Limit, Quota, RateLimiter};
    use floodwall::resilience::bulkhead::Bulkhead;
    use floodwall::resilience::chaos::Chaos;
    use floodwall::resilience::circuit_breaker::{CircuitBreaker, OpenWait};
    use floodwall::resilience::hedge::{Hedge, HedgeDelay};
    use floodwall::resilience::retry::{
        Backoff, Jitter, JitterState, Retry, RetryBudget, Schedule,
    };
    use floodwall::resilience::timeout::Timeout;
    use floodwall::resilience::{Pipeline, TokioClock};

    async fn load(c: &TieredCache<String, String>, v: Option<&str>) -> Outcome {
        let v = v.map(str::to_owned);
        c.get_or_load("k".to_string(), move || async move {
            Ok::<_, std::io::Error>(v)
        })
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
    }
    /// A cache built by `build`, loaded, read, and read again after an hour and a century.
    async fn use_cache(c: TieredCache<String, String>) -> Outcome {
        load(&c, Some("v")).await?;
        c.get(&"k".to_string()).await;
        for later in [3_600, 3_153_600_000] {
            tokio::time::advance(Duration::from_secs(later)).await;
            c.get(&"k".to_string()).await;
            let _ = c
                .get_or_load("k".to_string(), || async {
                    Err::<Option<String>, _>(std::io::Error::other("source down"))
                })
                .await;
        }
        load(&c, None).await
    }
    fn limiter(quota: Quota) -> Vec<RateLimiter> {
        [
            Algorithm::Gcra,
            Algorithm::FixedWindow,
            Algorithm::SlidingCounter,
            Algorithm::SlidingLog,
        ]
        .into_iter()
        .map(|a| {
            RateLimiter::builder()
                .limit(Limit::new("l", a, quota).keyed_by("user"))
                .build()
                .unwrap()
        })
        .collect()
    }

    vec![
        case!(
            "core ManualClock::starting_at / advance / advance_to",
            |d| {
                let c = ManualClock::starting_at(d);
                c.advance(d);
                c.advance_to(d);
                let _ = (c.now(), c.now_nanos());
                Ok(())
            }
        ),
        case!("core clock::deadline_after", |d| {
            let _ = floodwall::core::clock::deadline_after(d);
            Ok(())
        }),
        case!("core NodeBreaker::builder().open_for", |d| {
            let g = NodeBreaker::builder()
                .open_for(d)
                .failures(1)
                .build()
                .map_err(|e| e.to_string())?;
            let t = g.try_pass().unwrap();
            g.report(t, Health::Unhealthy);
            let _ = g.try_pass();
            Ok(())
        }),
        case!("resilience Timeout::new", |d| {
            let _ = Timeout::new(d).call(|| async { Ok::<_, ()>(()) }).await;
            Ok(())
        }),
        case!(
            "resilience Retry max_delay / max_elapsed / Backoff::*",
            |d| {
                for backoff in [
                    Backoff::Constant(d),
                    Backoff::Linear {
                        initial: d,
                        step: d,
                    },
                    Backoff::Exponential {
                        initial: d,
                        multiplier: 2.0,
                    },
                ] {
                    let retry = Retry::builder()
                        .max_attempts(nz(3))
                        .backoff(backoff)
                        .max_delay(d)
                        .max_elapsed(Some(d))
                        .build();
                    let _ = retry.call(|| async { Err::<(), _>(()) }).await;
                }
                Ok(())
            }
        ),
        case!(
            "resilience Schedule::delay (cap) / Backoff::base_delay",
            |d| {
                for jitter in [
                    Jitter::Full,
                    Jitter::Decorrelated,
                    Jitter::Randomized { factor: 0.5 },
                ] {
                    let s = Schedule {
                        backoff: Backoff::Exponential {
                            initial: d,
                            multiplier: 3.0,
                        },
                        jitter,
                        cap: d,
                    };
                    let mut st = JitterState::default();
                    for n in [0, 5, 1000] {
                        let _ = s.delay(n, &mut st, &mut || 0.7);
                    }
                }
                Ok(())
            }
        ),
        case!("resilience RetryBudget::builder().ttl", |d| {
            RetryBudget::builder()
                .ttl(d)
                .build()
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        case!("resilience Bulkhead max_wait / set_max_wait", |d| {
            let b = Bulkhead::builder()
                .max_concurrent(NonZeroUsize::new(1).unwrap())
                .max_wait(d)
                .build();
            let held = b.try_acquire().unwrap();
            let waiting = b.acquire();
            let _ = tokio::time::timeout(Duration::from_secs(1), waiting).await;
            drop(held);
            b.set_max_wait(d);
            let _ = b.call(|| async { Ok::<_, ()>(()) }).await;
            Ok(())
        }),
        case!("resilience Chaos::builder().latency", |d| {
            let c = Chaos::builder()
                .latency(d, 1.0)
                .seed(1)
                .build()
                .map_err(|e| e.to_string())?;
            let _ =
                tokio::time::timeout(Duration::from_secs(1), c.call(|| async { Ok::<_, ()>(()) }))
                    .await;
            Ok(())
        }),
        case!(
            "resilience CircuitBreaker open_wait / slow_call_duration / max_wait_in_half_open / open_for",
            |d| {
                let b = CircuitBreaker::builder()
                    .open_wait(OpenWait::Fixed(d))
                    .slow_call_duration(Some(d))
                    .max_wait_in_half_open(Some(d))
                    .clock(TokioClock::new())
                    .build()
                    .map_err(|e| e.to_string())?;
                b.open();
                let _ = b.try_acquire();
                b.open_for(d);
                let _ = b.try_acquire();
                Ok(())
            }
        ),
        case!("resilience Hedge HedgeDelay::Fixed / observe", |d| {
            let h = Hedge::builder().delay(HedgeDelay::Fixed(d)).build();
            h.observe(d);
            let _ = h.call(|| async { Ok::<_, ()>(()) }).await;
            Ok(())
        }),
        case!("resilience Pipeline timeout / attempt_timeout", |d| {
            let p = Pipeline::builder().timeout(d).attempt_timeout(d).build();
            let _ = p.call(|| async { Ok::<_, ()>(()) }).await;
            Ok(())
        }),
        case!("limiter Quota::new period, 4 algorithms in memory", |d| {
            for l in limiter(Quota::new(nz(3), d)) {
                for _ in 0..5 {
                    l.check(&[("user", "u")]).await.map_err(|e| e.to_string())?;
                }
                tokio::time::advance(Duration::from_secs(3_600)).await;
                l.check(&[("user", "u")]).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        }),
        case!("limiter LeakyQueue::new(Quota::new) / reserve", |d| {
            let q = LeakyQueue::new(Quota::new(nz(2), d), 10);
            for _ in 0..4 {
                let _ = q.reserve(nz(1));
            }
            Ok(())
        }),
        case!("cache TieredCacheBuilder::ttl", |d| use_cache(
            TieredCache::builder().ttl(d).build()
        )
        .await),
        case!("cache TieredCacheBuilder::soft_ttl", |d| use_cache(
            TieredCache::builder().soft_ttl(d).build()
        )
        .await),
        case!(
            "cache TieredCacheBuilder::fail_safe (max_stale, throttle)",
            |d| use_cache(TieredCache::builder().fail_safe(d, d).build()).await
        ),
        case!("cache TieredCacheBuilder::negative_ttl", |d| use_cache(
            TieredCache::builder().negative_ttl(d).build()
        )
        .await),
        case!(
            "cache TieredCacheBuilder::soft_timeout / hard_timeout",
            |d| use_cache(
                TieredCache::builder()
                    .soft_timeout(d)
                    .hard_timeout(d)
                    .build()
            )
            .await
        ),
        case!("idempotency Idempotency::builder lease / retention", |d| {
            let i = Idempotency::builder(MemoryStore::new())
                .lease(d)
                .retention(d)
                .build()
                .map_err(|e| e.to_string())?;
            for _ in 0..2 {
                let _ = i
                    .run("k", &Fingerprint::of(b"x"), || async { Ok::<_, ()>(1u8) })
                    .await;
            }
            Ok(())
        }),
        case!("idempotency Deduplicator::new window / lease", |d| {
            let dd = Deduplicator::new(MemoryStore::new(), d).lease(d);
            for _ in 0..2 {
                let _ = dd.process("m", || async { Ok::<_, ()>(1u8) }).await;
            }
            Ok(())
        }),
        case!(
            "idempotency Store::begin lease / complete retention (memory)",
            |d| {
                let s = MemoryStore::new();
                if let Ok(floodwall::idempotency::Begin::Claimed(token)) =
                    s.begin("k", &Fingerprint::NONE, d).await
                {
                    let _ = s.complete("k", token, b"r", d).await;
                }
                let _ = s.begin("k", &Fingerprint::NONE, d).await;
                let _ = Clock::now_nanos(&floodwall::core::SystemClock::new());
                Ok(())
            }
        ),
    ]
}

fn redis_cases(url: String, http: std::net::SocketAddr) -> Vec<Case> {
    use floodwall::cache::TieredCache;
    use floodwall::cache::redis::RedisTier;
    use floodwall::core::Keyspace;
    use floodwall::core::redis::{RedisConnection, StoreOptions};
    use floodwall::idempotency::redis::RedisStore as IdemStore;
    use floodwall::idempotency::{Fingerprint, Idempotency, Store};
    use floodwall::limiter::Lease;
    use floodwall::limiter::{Algorithm, FailurePolicy, Limit, Quota, RateLimiter};
    use reqwest_middleware::ClientBuilder;

    static N: AtomicUsize = AtomicUsize::new(0);
    /// A keyspace of its own for each try.
    fn ks() -> Keyspace {
        Keyspace::new(&format!("dur{}", N.fetch_add(1, Ordering::Relaxed)), 1).unwrap()
    }
    async fn conn(url: &str) -> RedisConnection {
        RedisConnection::standalone(url)
            .call_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap()
    }
    /// Two instances of one cache: the first loads, the second must find it in Redis, and
    /// an invalidation from the second must reach the first's L1 through the bus.
    async fn two_instances(
        url: &str,
        tier: impl Fn(RedisTier) -> RedisTier,
        ttl: Duration,
    ) -> Outcome {
        let keyspace = ks();
        let make = |c: RedisConnection| {
            TieredCache::<String, String>::builder()
                .ttl(ttl)
                .redis(tier(RedisTier::new(
                    StoreOptions::new(c).keyspace(keyspace.clone()),
                )))
                .build()
        };
        let (a, b) = (make(conn(url).await), make(conn(url).await));
        a.get_or_load("k".to_string(), || async {
            Ok::<_, std::io::Error>(Some("v".into()))
        })
        .await
        .map_err(|e| e.to_string())?;
        let seen = b
            .get_or_load("k".to_string(), || async {
                Ok::<_, std::io::Error>(Some("loaded again".into()))
            })
            .await
            .map_err(|e| e.to_string())?;
        if ttl >= Duration::from_secs(1) && seen.as_deref() != Some("v") {
            return Err(format!(
                "the second instance did not find the value in Redis: {seen:?}"
            ));
        }
        b.invalidate(&"k".to_string()).await;
        Ok(())
    }
    async fn http_get(
        client: reqwest_middleware::ClientWithMiddleware,
        at: std::net::SocketAddr,
    ) -> Outcome {
        client
            .get(format!("http://{at}/"))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    // 'static, so each case's closure copies it.
    let u: &'static str = Box::leak(url.into_boxed_str());
    vec![
        case!("core RedisConnector::call_timeout / connect_timeout", |d| {
            let c = RedisConnection::standalone(u)
                .call_timeout(d)
                .connect_timeout(d)
                .connect()
                .await
                .map_err(|e| e.to_string())?;
            c.ping().await.map_err(|e| e.to_string())
        }),
        case!("core RedisConnection::with_call_timeout", |d| {
            conn(u)
                .await
                .with_call_timeout(d)
                .ping()
                .await
                .map_err(|e| e.to_string())
        }),
        case!("core StoreOptions::call_timeout (a cache's L2)", |d| {
            let c: TieredCache<String, String> = TieredCache::builder()
                .redis(RedisTier::new(
                    StoreOptions::new(conn(u).await)
                        .keyspace(ks())
                        .call_timeout(d),
                ))
                .build();
            c.get_or_load("k".to_string(), || async {
                Ok::<_, std::io::Error>(Some("v".into()))
            })
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
        }),
        case!("cache TieredCacheBuilder::ttl on Redis (L2 expiry)", |d| {
            two_instances(u, |t| t, d).await
        }),
        case!("cache RedisTier::lease", |d| {
            two_instances(u, move |t| t.lease(d), Duration::from_secs(60)).await
        }),
        case!("cache RedisTier::bus_heartbeat", |d| {
            two_instances(
                u,
                move |t| t.invalidation(true).bus_heartbeat(d),
                Duration::from_secs(60),
            )
            .await
        }),
        case!("cache RedisTier::generation_check", |d| {
            two_instances(u, move |t| t.generation_check(d), Duration::from_secs(60)).await
        }),
        case!("limiter Quota::new period, 4 algorithms on Redis", |d| {
            for a in [
                Algorithm::Gcra,
                Algorithm::FixedWindow,
                Algorithm::SlidingCounter,
                Algorithm::SlidingLog,
            ] {
                let l = RateLimiter::builder()
                    .limit(Limit::new("l", a, Quota::new(nz(3), d)).keyed_by("user"))
                    .redis(StoreOptions::new(conn(u).await).keyspace(ks()))
                    .failure_policy(FailurePolicy::FailClosed)
                    .build()
                    .map_err(|e| e.to_string())?;
                for _ in 0..5 {
                    l.check(&[("user", "u")])
                        .await
                        .map_err(|e| format!("{a:?}: {e}"))?;
                }
            }
            Ok(())
        }),
        case!("limiter redis::Lease::new lifetime", |d| {
            let l = RateLimiter::builder()
                .limit(
                    Limit::new("l", Algorithm::Gcra, Quota::per_second(nz(1000)))
                        .keyed_by("user")
                        .lease(Lease::new(nz(10), d)),
                )
                .redis(StoreOptions::new(conn(u).await).keyspace(ks()))
                .failure_policy(FailurePolicy::FailClosed)
                .build()
                .map_err(|e| e.to_string())?;
            for _ in 0..20 {
                l.check(&[("user", "u")]).await.map_err(|e| e.to_string())?;
            }
            Ok(())
        }),
        case!(
            "idempotency Store::begin lease / complete retention (Redis)",
            |d| {
                let s = IdemStore::new(StoreOptions::new(conn(u).await).keyspace(ks()));
                match s
                    .begin("k", &Fingerprint::NONE, d)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    floodwall::idempotency::Begin::Claimed(token) => {
                        s.complete("k", token, b"r", d)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    other => return Err(format!("no claim: {other:?}")),
                }
                s.begin("k", &Fingerprint::NONE, d)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        ),
        case!(
            "idempotency Idempotency::builder lease / retention (Redis)",
            |d| {
                let i = Idempotency::builder(IdemStore::new(
                    StoreOptions::new(conn(u).await).keyspace(ks()),
                ))
                .lease(d)
                .retention(d)
                .build()
                .map_err(|e| e.to_string())?;
                for _ in 0..2 {
                    i.run("k", &Fingerprint::of(b"x"), || async { Ok::<_, ()>(1u8) })
                        .await
                        .map_err(|e| format!("{e:?}"))?;
                }
                Ok(())
            }
        ),
        case!("reqwest TimeoutMiddleware::new", |d| {
            let c = ClientBuilder::new(reqwest::Client::new())
                .with(floodwall::reqwest::TimeoutMiddleware::new(d))
                .build();
            // Zero cuts a request at its first wait, as the resilience `Timeout` does (one
            // answered without waiting passes).
            match (http_get(c, http).await, d.is_zero()) {
                (Err(e), true) if e.contains("no answer within 0ns") => Ok(()),
                (other, _) => other,
            }
        }),
        case!("reqwest HttpCache::stale_if_error", |d| {
            let cache = floodwall::reqwest::HttpCache::new(
                TieredCache::builder().ttl(Duration::from_secs(60)).build(),
            )
            .stale_if_error(d);
            http_get(
                ClientBuilder::new(reqwest::Client::new())
                    .with(cache)
                    .build(),
                http,
            )
            .await
        }),
        case!("reqwest HostRateLimit::new max_wait", |d| {
            let l = RateLimiter::builder()
                .limit(Limit::new("l", Algorithm::Gcra, Quota::per_second(nz(1))))
                .build()
                .unwrap();
            let c = ClientBuilder::new(reqwest::Client::new())
                .with(floodwall::reqwest::HostRateLimit::new(l, d).map_err(|e| e.to_string())?)
                .build();
            http_get(c.clone(), http).await?;
            // The second waits for the limit (or is refused at once): cut at a second.
            let _ = tokio::time::timeout(Duration::from_secs(1), http_get(c, http)).await;
            Ok(())
        }),
    ]
}

/// An HTTP server on loopback that answers every request `200 ok`.
async fn http_server() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncache-control: max-age=60\r\n\r\nok";
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn print(lines: &[String]) {
    println!(
        "{:<66} {}",
        "API",
        VALUES.map(|d| format!("{d:?}")).join(" | ")
    );
    for l in lines {
        println!("{l}");
    }
}

/// Runs the cases `cases` makes on `rt`, prints the table, and fails on any panic or failure.
fn check(rt: tokio::runtime::Runtime, cases: impl Future<Output = Vec<Case>>) {
    count_panics();
    let (lines, failures) = rt.block_on(async { sweep(cases.await).await });
    print(&lines);
    assert_eq!(failures, 0, "APIs panicked or failed (see the table)");
}

fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_in_memory_duration_api_takes_zero_max_and_between() {
    let paused = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap();
    check(paused, async { memory_cases() });
}

#[test]
fn every_redis_and_http_duration_api_takes_zero_max_and_between() {
    let Some(server) = floodwall_testkit::RedisServer::start_or_skip(
        "every_redis_and_http_duration_api_takes_zero_max_and_between",
    ) else {
        return;
    };
    check(two_workers(), async {
        redis_cases(server.url(), http_server().await)
    });
}

fn postgres_cases(url: String) -> Vec<Case> {
    use floodwall::idempotency::postgres::PostgresStore;
    use floodwall::idempotency::{Begin, Fingerprint, Store};

    static N: AtomicUsize = AtomicUsize::new(0);
    let u: &'static str = Box::leak(url.into_boxed_str());
    async fn store(url: &str) -> PostgresStore {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .unwrap();
        let s = PostgresStore::new(pool);
        s.migrate().await.unwrap();
        s
    }
    fn key() -> String {
        format!("k{}", N.fetch_add(1, Ordering::Relaxed))
    }
    vec![
        case!("idempotency PostgresStore::with_call_timeout", |d| {
            let s = store(u)
                .await
                .with_call_timeout(d)
                .map_err(|e| e.to_string())?;
            s.begin(&key(), &Fingerprint::NONE, Duration::from_secs(5))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }),
        case!(
            "idempotency Store::begin lease / complete retention (PostgreSQL)",
            |d| {
                let s = store(u).await;
                let k = key();
                match s
                    .begin(&k, &Fingerprint::NONE, d)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    Begin::Claimed(token) => {
                        s.complete(&k, token, b"r", d)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    other => return Err(format!("no claim: {other:?}")),
                }
                s.begin(&k, &Fingerprint::NONE, d)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        ),
        case!("idempotency PostgresStore::complete_in retention", |d| {
            let s = store(u).await;
            let k = key();
            let Begin::Claimed(token) = s
                .begin(&k, &Fingerprint::NONE, Duration::from_secs(5))
                .await
                .map_err(|e| e.to_string())?
            else {
                return Err("no claim".into());
            };
            let pool = sqlx::PgPool::connect(u).await.map_err(|e| e.to_string())?;
            let mut tx = pool.begin().await.map_err(|e| e.to_string())?;
            s.complete_in(&mut tx, &k, token, b"r", d)
                .await
                .map_err(|e| e.to_string())?;
            tx.commit().await.map_err(|e| e.to_string())
        }),
        case!("idempotency PostgresStore::spawn_sweeper every", |d| {
            let s = store(u).await;
            let sweeper = s.spawn_sweeper(d, 10);
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(sweeper);
            Ok(())
        }),
    ]
}

#[test]
fn every_postgres_duration_api_takes_zero_max_and_between() {
    let Some(server) = floodwall_testkit::PostgresServer::start_or_skip(
        "every_postgres_duration_api_takes_zero_max_and_between",
    ) else {
        return;
    };
    check(two_workers(), async { postgres_cases(server.url()) });
}
