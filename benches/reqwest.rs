//! A `GET` through reqwest-middleware: floodwall's stack beside reqwest-retry, same run.
//!
//! Six clients send the same `GET`:
//! - `bare`: a `ClientWithMiddleware` with no middleware (the baseline);
//! - `reqwest-retry`: reqwest-retry's `RetryTransientMiddleware` (exponential backoff, 2
//!   retries) alone;
//! - `floodwall-retry`: floodwall's `Retry` middleware alone (3 attempts, exponential
//!   backoff) — like for like with reqwest-retry;
//! - `floodwall-pipeline`: floodwall's `HostPipeline` — per host, a `Pipeline` with retry (3
//!   attempts, exponential backoff), a circuit breaker, a bulkhead (32) and an attempt
//!   timeout (2 s) — one middleware;
//! - `floodwall-stack`: the same four stages as four middlewares: `Retry`, `HostBreaker`,
//!   `HostBulkhead`, `Timeout`;
//! - `floodwall-pipeline-untimed`: `floodwall-pipeline` without its attempt timeout — what
//!   the timeout's timer costs once a request waits.
//!
//! Two scenarios:
//! - `reqwest/local_get`: to an axum server on loopback (on its own runtime thread);
//! - `reqwest/stack_only`: a last middleware answers `200` itself, so only the middleware's
//!   own cost is measured — the added cost per request, without the network's noise.
//!
//! Then a table from short rounds, the clients in a fresh random order each round: each
//! client's median time per request, and the cost it adds over `bare` — the median over
//! rounds of its difference with `bare` in the same round, so a machine that drifts affects
//! both sides of each difference alike. On a loopback `GET` (50–100 µs) the round-to-round noise
//! is about a microsecond, larger than any middleware's cost; `stack_only` resolves them.

use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::reqwest::{HostBreaker, HostBulkhead, HostPipeline, Retry, Timeout};
use floodwall::resilience::Pipeline;
use floodwall::resilience::bulkhead::Bulkhead;
use floodwall::resilience::circuit_breaker::CircuitBreaker;
use floodwall::resilience::retry::Backoff;
use http::Extensions;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};

/// Answers every request `200` with an empty body, sending nothing.
struct Canned;

#[async_trait::async_trait]
impl Middleware for Canned {
    async fn handle(
        &self,
        _req: reqwest::Request,
        _extensions: &mut Extensions,
        _next: Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        Ok(reqwest::Response::from(http::Response::new(
            Vec::<u8>::new(),
        )))
    }
}

/// The six clients, each ending in `Canned` when `canned`.
fn clients(canned: bool) -> Vec<(&'static str, ClientWithMiddleware)> {
    let plain = reqwest::Client::new();
    let end = |b: ClientBuilder| {
        if canned {
            b.with(Canned).build()
        } else {
            b.build()
        }
    };
    let bare = end(ClientBuilder::new(plain.clone()));
    let policy = reqwest_retry::policies::ExponentialBackoff::builder().build_with_max_retries(2);
    let peer = end(ClientBuilder::new(plain.clone()).with(
        reqwest_retry::RetryTransientMiddleware::new_with_policy(policy),
    ));
    let retry = || {
        floodwall::resilience::retry::Retry::builder()
            .max_attempts(NonZeroU32::new(3).unwrap())
            .backoff(Backoff::Exponential {
                initial: Duration::from_millis(50),
                multiplier: 2.0,
            })
            .build()
    };
    let breaker = |host: &str| {
        CircuitBreaker::builder()
            .name(format!("api:{host}"))
            .build()
            .expect("a valid breaker")
    };
    let hosts = NonZeroUsize::new(1000).unwrap();
    let per_host = NonZeroUsize::new(32).unwrap();
    let pipeline = |timed: bool| {
        end(
            ClientBuilder::new(plain.clone()).with(HostPipeline::new(hosts, move |host| {
                let stages = Pipeline::builder()
                    .retry(retry())
                    .circuit_breaker(breaker(host))
                    .bulkhead(
                        Bulkhead::builder()
                            .name(format!("host:{host}"))
                            .max_concurrent(per_host)
                            .build(),
                    );
                match timed {
                    true => stages.attempt_timeout(Duration::from_secs(2)).build(),
                    false => stages.build(),
                }
            })),
        )
    };
    let retry_only = end(ClientBuilder::new(plain.clone()).with(Retry::new(retry())));
    let stack = end(ClientBuilder::new(plain.clone())
        .with(Retry::new(retry()))
        .with(HostBreaker::new(hosts, breaker))
        .with(HostBulkhead::per_host(hosts, per_host))
        .with(Timeout::new(Duration::from_secs(2))));
    vec![
        ("bare", bare),
        ("reqwest-retry", peer),
        ("floodwall-retry", retry_only),
        ("floodwall-pipeline", pipeline(true)),
        ("floodwall-stack", stack),
        ("floodwall-pipeline-untimed", pipeline(false)),
    ]
}

/// Starts the origin on its own runtime thread; returns its URL and the runtime.
fn origin() -> (String, tokio::runtime::Runtime) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let url = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/item", listener.local_addr().unwrap());
        let app = axum::Router::new().route("/item", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    });
    (url, rt)
}

async fn send(client: &ClientWithMiddleware, url: &str) {
    let resp = client.get(url).send().await.expect("the GET succeeds");
    assert!(resp.status().is_success());
    black_box(resp.bytes().await.expect("a body"));
}

/// Each client's time per request in each of `rounds` rounds of `per_round` requests, the
/// clients in a fresh random order each round (so none always follows another):
/// `times[round][client]`.
fn alternate(
    rt: &tokio::runtime::Runtime,
    clients: &[(&'static str, ClientWithMiddleware)],
    url: &str,
    per_round: u32,
    rounds: usize,
) -> Vec<Vec<Duration>> {
    let n = clients.len();
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let mut order: Vec<usize> = (0..n).collect();
    (0..rounds)
        .map(|_| {
            // Fisher–Yates with xorshift64.
            for k in (1..n).rev() {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                order.swap(k, (seed % (k as u64 + 1)) as usize);
            }
            let mut times = vec![Duration::ZERO; n];
            for &i in &order {
                let client = &clients[i].1;
                times[i] = rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..per_round {
                        send(client, url).await;
                    }
                    start.elapsed() / per_round
                });
            }
            times
        })
        .collect()
}

/// The median of `v`.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn reqwest_stacks(c: &mut Criterion) {
    let full = std::env::args().any(|a| a == "--bench");
    let (url, _origin) = origin();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let scenarios = [("local_get", clients(false)), ("stack_only", clients(true))];
    for (scenario, clients) in &scenarios {
        let mut g = c.benchmark_group(format!("reqwest/{scenario}"));
        for (name, client) in clients {
            g.bench_function(*name, |b| b.to_async(&rt).iter(|| send(client, &url)));
        }
        g.finish();
    }

    eprintln!(
        "\n| scenario | client | per request (median) | added over bare (median of paired rounds) |"
    );
    eprintln!("|---|---|---|---|");
    for (scenario, clients) in &scenarios {
        let (per_round, rounds) = match (full, *scenario) {
            (false, _) => (50, 1),
            (true, "local_get") => (20, 4_000),
            (true, _) => (2_000, 400),
        };
        let times = alternate(&rt, clients, &url, per_round, rounds);
        let ns = |d: Duration| d.as_nanos() as f64;
        // Each round's client against the bare client of the same round, so a machine that
        // drifts affects both sides of every difference alike.
        let added: Vec<f64> = (0..clients.len())
            .map(|i| median(times.iter().map(|t| ns(t[i]) - ns(t[0])).collect()))
            .collect();
        for (i, (name, _)) in clients.iter().enumerate() {
            let per = median(times.iter().map(|t| ns(t[i])).collect());
            eprintln!(
                "| {scenario} | {name} | {:.0} ns | {:.0} ns |",
                per, added[i]
            );
        }
        let vs = |i: usize| added[i] / added[1];
        eprintln!(
            "{scenario}: added per request: reqwest-retry {:.0} ns; floodwall-retry {:.0} ns \
             ({:.2}x reqwest-retry's), floodwall-pipeline {:.0} ns ({:.2}x), floodwall-stack \
             {:.0} ns ({:.2}x), floodwall-pipeline-untimed {:.0} ns ({:.2}x)",
            added[1],
            added[2],
            vs(2),
            added[3],
            vs(3),
            added[4],
            vs(4),
            added[5],
            vs(5)
        );
    }
}

criterion_group!(benches, reqwest_stacks);
criterion_main!(benches);
