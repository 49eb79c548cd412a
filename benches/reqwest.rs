//! A `GET` through reqwest-middleware: floodwall's stack beside reqwest-retry, same run.
//!
//! Seven clients send the same `GET`:
//! - `bare`: a `ClientWithMiddleware` with no middleware (the baseline);
//! - `reqwest-retry`: reqwest-retry's `RetryTransientMiddleware` (exponential backoff, 2
//!   retries) alone;
//! - `reqwest-retry+timeout`: the same, on a reqwest client with its own 2 s timeout per
//!   request — what a reqwest user writes for retry plus an attempt bound, beside
//!   `floodwall-pipeline`;
//! - `floodwall-retry`: floodwall's `RetryMiddleware` middleware alone (3 attempts, exponential
//!   backoff) — like for like with reqwest-retry;
//! - `floodwall-pipeline`: floodwall's `HostPipeline` — per host, a `Pipeline` with retry (3
//!   attempts, exponential backoff), a circuit breaker, a bulkhead (32) and an attempt
//!   timeout (2 s) — one middleware;
//! - `floodwall-stack`: the same four stages as four middlewares: `RetryMiddleware`, `HostBreaker`,
//!   `HostBulkhead`, `TimeoutMiddleware`;
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
//!
//! `REQWEST_BENCH_NO_TABLE=1` skips the tables (criterion's figures only);
//! `REQWEST_BENCH_TABLE=stack_only` prints that table only.
//!
//! A last table, `local_get_stages`, builds `HostPipeline` up one stage at a time on loopback —
//! retry only, then with the bulkhead, the breaker, both, and the attempt timeout — in a run of
//! its own, so what each stage adds is measured, and so is how a client's figure moves with
//! the clients that share its run.

use std::hint::black_box;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use floodwall::reqwest::{
    HostBreaker, HostBulkhead, HostPipeline, RetryMiddleware, TimeoutMiddleware,
};
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

/// floodwall's retry in every floodwall client: 3 attempts, exponential backoff.
fn retry() -> floodwall::resilience::retry::Retry {
    floodwall::resilience::retry::Retry::builder()
        .max_attempts(NonZeroU32::new(3).unwrap())
        .backoff(Backoff::Exponential {
            initial: Duration::from_millis(50),
            multiplier: 2.0,
        })
        .build()
}

/// A host's breaker, with the defaults.
fn breaker(host: &str) -> CircuitBreaker {
    CircuitBreaker::builder()
        .name(format!("api:{host}"))
        .build()
        .expect("a valid breaker")
}

const HOSTS: NonZeroUsize = NonZeroUsize::new(1000).unwrap();
const PER_HOST: NonZeroUsize = NonZeroUsize::new(32).unwrap();

/// Which of its stages a `HostPipeline` has besides its retry.
#[derive(Clone, Copy)]
struct Stages {
    breaker: bool,
    bulkhead: bool,
    /// The attempt timeout (2 s).
    timed: bool,
}

impl Stages {
    const ALL: Stages = Stages {
        breaker: true,
        bulkhead: true,
        timed: true,
    };
}

/// A `HostPipeline` of floodwall's retry and `stages`.
fn host_pipeline(stages: Stages) -> HostPipeline {
    HostPipeline::new(HOSTS, move |host| {
        let mut pipeline = Pipeline::builder().retry(retry());
        if stages.breaker {
            pipeline = pipeline.circuit_breaker(breaker(host));
        }
        if stages.bulkhead {
            let bulkhead = Bulkhead::builder()
                .name(format!("host:{host}"))
                .max_concurrent(PER_HOST)
                .build();
            pipeline = pipeline.bulkhead(bulkhead);
        }
        if stages.timed {
            pipeline = pipeline.attempt_timeout(Duration::from_secs(2));
        }
        pipeline.build()
    })
}

/// A bare client and one with reqwest-retry's `RetryTransientMiddleware` (2 retries), each
/// finished by `end`: every table's first two clients.
fn baseline(
    plain: &reqwest::Client,
    end: impl Fn(ClientBuilder) -> ClientWithMiddleware,
) -> Vec<(&'static str, ClientWithMiddleware)> {
    let policy = reqwest_retry::policies::ExponentialBackoff::builder().build_with_max_retries(2);
    let peer = ClientBuilder::new(plain.clone()).with(
        reqwest_retry::RetryTransientMiddleware::new_with_policy(policy),
    );
    vec![
        ("bare", end(ClientBuilder::new(plain.clone()))),
        ("reqwest-retry", end(peer)),
    ]
}

/// The seven clients, each ending in `Canned` when `canned`.
fn clients(canned: bool) -> Vec<(&'static str, ClientWithMiddleware)> {
    let plain = reqwest::Client::new();
    let end = |b: ClientBuilder| {
        if canned {
            b.with(Canned).build()
        } else {
            b.build()
        }
    };
    let with = |m: HostPipeline| end(ClientBuilder::new(plain.clone()).with(m));
    let stack = end(ClientBuilder::new(plain.clone())
        .with(RetryMiddleware::new(retry()))
        .with(HostBreaker::new(HOSTS, breaker))
        .with(HostBulkhead::per_host(HOSTS, PER_HOST))
        .with(TimeoutMiddleware::new(Duration::from_secs(2))));
    let untimed = Stages {
        timed: false,
        ..Stages::ALL
    };
    let mut all = baseline(&plain, end);
    let timed = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("a client");
    let policy = reqwest_retry::policies::ExponentialBackoff::builder().build_with_max_retries(2);
    all.extend([
        (
            "reqwest-retry+timeout",
            end(ClientBuilder::new(timed).with(
                reqwest_retry::RetryTransientMiddleware::new_with_policy(policy),
            )),
        ),
        (
            "floodwall-retry",
            end(ClientBuilder::new(plain.clone()).with(RetryMiddleware::new(retry()))),
        ),
        ("floodwall-pipeline", with(host_pipeline(Stages::ALL))),
        ("floodwall-stack", stack),
        ("floodwall-pipeline-untimed", with(host_pipeline(untimed))),
    ]);
    all
}

/// The loopback clients of the stage-by-stage table: `HostPipeline` built up one stage at a
/// time beside floodwall's `RetryMiddleware` and the two baseline clients.
fn stage_clients() -> Vec<(&'static str, ClientWithMiddleware)> {
    let plain = reqwest::Client::new();
    let end = |b: ClientBuilder| b.build();
    let with = |stages: Stages| end(ClientBuilder::new(plain.clone()).with(host_pipeline(stages)));
    let none = Stages {
        breaker: false,
        bulkhead: false,
        timed: false,
    };
    let mut all = baseline(&plain, end);
    all.extend([
        (
            "floodwall-retry",
            end(ClientBuilder::new(plain.clone()).with(RetryMiddleware::new(retry()))),
        ),
        ("pipeline: retry", with(none)),
        (
            "pipeline: retry, bulkhead",
            with(Stages {
                bulkhead: true,
                ..none
            }),
        ),
        (
            "pipeline: retry, breaker",
            with(Stages {
                breaker: true,
                ..none
            }),
        ),
        (
            "pipeline: retry, breaker, bulkhead",
            with(Stages {
                timed: false,
                ..Stages::ALL
            }),
        ),
        ("pipeline: all four", with(Stages::ALL)),
    ]);
    all
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

    if std::env::var_os("REQWEST_BENCH_NO_TABLE").is_some() {
        return; // criterion's figures only (e.g. to profile one client)
    }
    let only = std::env::var("REQWEST_BENCH_TABLE").ok();
    eprintln!(
        "\n| scenario | client | per request (median) | added over bare (median of paired rounds) |"
    );
    eprintln!("|---|---|---|---|");
    let stages = ("local_get_stages", stage_clients());
    for (scenario, clients) in scenarios.iter().chain([&stages]) {
        if only.as_deref().is_some_and(|o| o != *scenario) {
            continue;
        }
        let (per_round, rounds) = match (full, *scenario) {
            (false, _) => (50, 1),
            (true, "stack_only") => (2_000, 400),
            (true, _) => (20, 4_000),
        };
        table(&rt, scenario, clients, &url, per_round, rounds);
    }
}

/// Prints `clients`' rows of the table from `rounds` rounds of `per_round` requests, then a
/// line of what each adds per request beside reqwest-retry (the second client).
fn table(
    rt: &tokio::runtime::Runtime,
    scenario: &str,
    clients: &[(&'static str, ClientWithMiddleware)],
    url: &str,
    per_round: u32,
    rounds: usize,
) {
    let times = alternate(rt, clients, url, per_round, rounds);
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
    let others: Vec<String> = (2..clients.len())
        .map(|i| {
            let ratio = added[i] / added[1];
            format!("{} {:.0} ns ({ratio:.2}x)", clients[i].0, added[i])
        })
        .collect();
    eprintln!(
        "{scenario}: added per request: reqwest-retry {:.0} ns; {}",
        added[1],
        others.join(", ")
    );
    // Like for like: floodwall's retry alone beside reqwest-retry, and the whole pipeline
    // (retry, breaker, bulkhead, attempt timeout) beside reqwest-retry with reqwest's own
    // per-request timeout.
    let at = |name: &str| clients.iter().position(|(n, _)| *n == name);
    for (ours, theirs) in [
        ("floodwall-retry", "reqwest-retry"),
        ("floodwall-pipeline", "reqwest-retry+timeout"),
    ] {
        if let (Some(o), Some(t)) = (at(ours), at(theirs)) {
            eprintln!(
                "{scenario}: {ours} {:.0} ns per request vs {theirs} {:.0} ns: {:.2}x",
                median(times.iter().map(|r| ns(r[o])).collect()),
                median(times.iter().map(|r| ns(r[t])).collect()),
                median(times.iter().map(|r| ns(r[o])).collect())
                    / median(times.iter().map(|r| ns(r[t])).collect()),
            );
        }
    }
}

criterion_group!(benches, reqwest_stacks);
criterion_main!(benches);
