//! `HostPipeline` against local axum servers these tests start: it retries as `Retry` does
//! (a `503` retried, a `POST` only with an `Idempotency-Key`), and a dead host's breaker
//! opens and sheds that host's requests while another host answers.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use floodwall_reqwest::{ErrorExt, FloodwallError, HostPipeline, RefusalKind};
use floodwall_resilience::Pipeline;
use floodwall_resilience::bulkhead::Bulkhead;
use floodwall_resilience::circuit_breaker::{CircuitBreaker, SlidingWindow};
use floodwall_resilience::retry::{Backoff, Retry};
use reqwest_middleware::ClientBuilder;

mod common;
use common::{dead_host, live_host, serve};

/// Retry (3 attempts), a breaker judging the last `window` calls, a bulkhead of 8 and an
/// attempt timeout, per host.
fn pipelines(window: u32) -> HostPipeline {
    HostPipeline::new(NonZeroUsize::new(1024).unwrap(), move |host| {
        Pipeline::builder()
            .retry(
                Retry::builder()
                    .max_attempts(NonZeroU32::new(3).unwrap())
                    .backoff(Backoff::Constant(Duration::from_millis(1)))
                    .build(),
            )
            .circuit_breaker(
                CircuitBreaker::builder()
                    .name(format!("api:{host}"))
                    .sliding_window(SlidingWindow::Count(NonZeroU32::new(window).unwrap()))
                    .minimum_calls(window)
                    .build()
                    .unwrap(),
            )
            .bulkhead(
                Bulkhead::builder()
                    .max_concurrent(NonZeroUsize::new(8).unwrap())
                    .build(),
            )
            .attempt_timeout(Duration::from_secs(5))
            .build()
    })
}

/// Answers `503` (with `Retry-After: 0`) to every other request, `200` to the rest; counts.
fn every_other(calls: Arc<AtomicU32>) -> Router {
    let handler = move || {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n.is_multiple_of(2) {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    [("retry-after", "0")],
                    "busy",
                )
            } else {
                (StatusCode::OK, [("retry-after", "0")], "ok")
            }
        }
    };
    Router::new().route("/", get(handler.clone()).post(handler))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_pipeline_retries_idempotent_and_keyed_requests_only() {
    let calls = Arc::new(AtomicU32::new(0));
    let base = serve(every_other(calls.clone())).await;
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines(100))
        .build();
    let mut seen = Vec::new();
    let resp = client.get(&base).send().await.unwrap();
    seen.push((
        "GET",
        resp.status().as_u16(),
        calls.swap(0, Ordering::SeqCst),
    ));
    let resp = client.post(&base).body("{}").send().await.unwrap();
    seen.push((
        "POST",
        resp.status().as_u16(),
        calls.swap(0, Ordering::SeqCst),
    ));
    let resp = client
        .post(&base)
        .header("idempotency-key", "\"k1\"")
        .body("{}")
        .send()
        .await
        .unwrap();
    seen.push((
        "POST keyed",
        resp.status().as_u16(),
        calls.swap(0, Ordering::SeqCst),
    ));
    println!("(request, status, origin calls): {seen:?}");
    assert_eq!(
        seen,
        [("GET", 200, 2), ("POST", 503, 1), ("POST keyed", 200, 2)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_hosts_pipeline_sheds_it_while_another_host_answers() {
    let dead_calls = Arc::new(AtomicU32::new(0));
    let dead = serve(dead_host(dead_calls.clone())).await;
    let live = serve(live_host()).await;
    let pipelines = pipelines(4);
    let registry = pipelines.registry().clone();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines)
        .build();

    let mut shed = 0;
    for _ in 0..5 {
        match client.get(&dead).send().await {
            Err(e) if e.floodwall().map(FloodwallError::kind) == Some(RefusalKind::CircuitOpen) => {
                shed += 1
            }
            other => assert_eq!(other.unwrap().status(), 503),
        }
    }
    let reached = dead_calls.load(Ordering::SeqCst);
    let live_status = client.get(&live).send().await.unwrap().status();
    println!(
        "dead host: {reached} requests reached it, {shed} of 5 calls shed; live host answered {live_status}; {} pipelines",
        registry.len()
    );
    assert_eq!(reached, 4, "the breaker opened after its 4-call window");
    assert!(shed >= 3, "once open, the dead host's calls are shed");
    assert_eq!(live_status, 200);
    assert_eq!(registry.len(), 2, "one pipeline per host");
}

/// Sends `GET url` through `client`: whether it was shed by an open breaker.
async fn shed(client: &reqwest_middleware::ClientWithMiddleware, url: &str) -> bool {
    match client.get(url).send().await {
        Err(e) => e.floodwall().map(FloodwallError::kind) == Some(RefusalKind::CircuitOpen),
        other => {
            assert_eq!(other.unwrap().status(), 503);
            false
        }
    }
}

/// The per-thread cache of the last host's pipeline (one thread here, so every request
/// after the first would be served from it) never outlives the registry's entry: a removed
/// host, an evicted host and another `HostPipeline` for the same host each get their own,
/// fresh pipeline — seen as a closed breaker that lets the request reach the host again.
#[tokio::test(flavor = "current_thread")]
async fn the_last_hosts_pipeline_is_never_served_after_its_entry_is_gone() {
    let calls = Arc::new(AtomicU32::new(0));
    let dead = serve(dead_host(calls.clone())).await;
    let other = serve(live_host()).await;
    let reached = || calls.swap(0, Ordering::SeqCst);
    let one_host = HostPipeline::new(NonZeroUsize::new(1).unwrap(), |host| {
        pipelines(4).get(host).pipeline().clone()
    });
    let (a, b) = (pipelines(4), one_host);
    let (reg_a, reg_b) = (a.registry().clone(), b.registry().clone());
    let client_a = ClientBuilder::new(reqwest::Client::new()).with(a).build();
    let client_b = ClientBuilder::new(reqwest::Client::new()).with(b).build();
    let key = floodwall_reqwest::host_key(&client_a.get(&dead).build().unwrap());

    // Open `a`'s breaker for the dead host: its 4-call window fills (the first request's 3
    // attempts and one more), then calls are shed without reaching it.
    let mut opened = 0;
    for _ in 0..6 {
        opened += usize::from(shed(&client_a, &dead).await);
    }
    assert_eq!((reached(), opened), (4, 5));
    // Another `HostPipeline` on this thread has its own pipeline for the host.
    assert!(!shed(&client_b, &dead).await, "b's breaker is its own");
    assert!(reached() > 0);
    // Removed from `a`'s registry: the next request gets a fresh pipeline.
    assert!(
        shed(&client_a, &dead).await,
        "still open before the removal"
    );
    assert_eq!(reached(), 0);
    assert!(reg_a.remove(&key));
    assert!(
        !shed(&client_a, &dead).await,
        "a fresh pipeline after the removal"
    );
    assert!(reached() > 0);
    // Evicted from `b`'s one-host registry by another host: fresh again afterwards.
    for _ in 0..6 {
        shed(&client_b, &dead).await;
    }
    reached();
    assert!(shed(&client_b, &dead).await, "b's breaker is open now");
    assert_eq!(reached(), 0);
    assert_eq!(client_b.get(&other).send().await.unwrap().status(), 200);
    assert_eq!(reg_b.keys().len(), 1, "the other host evicted the dead one");
    assert!(
        !shed(&client_b, &dead).await,
        "a fresh pipeline after the eviction"
    );
    assert!(reached() > 0);
    println!(
        "a: {} pipelines, b: {} (the one-host registry), after removal and eviction",
        reg_a.len(),
        reg_b.len()
    );
}

/// Measures the future `HostPipeline::handle` boxes for one request, then runs it.
struct MeasureFuture(HostPipeline, Arc<std::sync::atomic::AtomicUsize>);

#[async_trait::async_trait]
impl reqwest_middleware::Middleware for MeasureFuture {
    async fn handle(
        &self,
        req: reqwest::Request,
        extensions: &mut http::Extensions,
        next: reqwest_middleware::Next<'_>,
    ) -> reqwest_middleware::Result<reqwest::Response> {
        let fut = self.0.handle(req, extensions, next);
        self.1.store(std::mem::size_of_val(&*fut), Ordering::SeqCst);
        fut.await
    }
}

/// A request through `HostPipeline` boxes one state machine — the attempts loop with every
/// stage inline — and it stays under a kilobyte (it was 2,376 bytes when each stage was an
/// `async fn` of its own; a boxed future over about a kilobyte also costs the allocator more).
#[tokio::test(flavor = "current_thread")]
async fn a_requests_boxed_future_stays_under_a_kilobyte() {
    let live = serve(live_host()).await;
    let size = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(MeasureFuture(pipelines(4), size.clone()))
        .build();
    assert_eq!(client.get(&live).send().await.unwrap().status(), 200);
    let bytes = size.load(Ordering::SeqCst);
    println!("HostPipeline boxes a future of {bytes} bytes per request");
    assert!(bytes > 0 && bytes <= 1024, "{bytes} bytes");
}

/// A thread with its own runtime that sends the `GET`s it is told to, through `client`, and
/// answers when done — so a test can order requests across threads, each with its own
/// per-thread host cache.
fn client_thread(
    client: reqwest_middleware::ClientWithMiddleware,
) -> std::sync::mpsc::SyncSender<(String, u32, std::sync::mpsc::SyncSender<()>)> {
    let (tx, rx) =
        std::sync::mpsc::sync_channel::<(String, u32, std::sync::mpsc::SyncSender<()>)>(0);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        for (url, times, done) in rx {
            rt.block_on(async {
                for _ in 0..times {
                    assert_eq!(client.get(&url).send().await.unwrap().status(), 200);
                }
            });
            done.send(()).unwrap();
        }
    });
    tx
}

/// A host one thread keeps busy is served from that thread's cache, yet stays recent in the
/// registry: the cache looks it up again every 64 requests. In a two-host registry, a host
/// used once by another thread after the busy host's first request is the one a third host
/// evicts — as an exact LRU would choose — not the busy host.
#[test]
fn a_busy_host_stays_recent_in_the_registry() {
    let servers = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (busy, once, third) = servers.block_on(async {
        (
            serve(live_host()).await,
            serve(live_host()).await,
            serve(live_host()).await,
        )
    });
    let pipelines = HostPipeline::new(NonZeroUsize::new(2).unwrap(), |_| {
        Pipeline::builder().build()
    });
    let registry = pipelines.registry().clone();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines)
        .build();
    let (one, two) = (client_thread(client.clone()), client_thread(client));
    let run = |thread: &std::sync::mpsc::SyncSender<_>, url: &str, times: u32| {
        let (done, wait) = std::sync::mpsc::sync_channel(0);
        thread.send((url.to_owned(), times, done)).unwrap();
        wait.recv().unwrap();
    };
    let key = |url: &str| url.trim_start_matches("http://").to_owned();
    run(&one, &busy, 1); // the busy host, from the registry
    run(&two, &once, 1); // another host, once, from another thread
    run(&one, &busy, 100); // the busy host, from thread one's cache
    run(&two, &third, 1); // a third host: the registry evicts its least recently used
    let mut held = registry.keys();
    held.sort();
    println!(
        "held after the third host: {held:?} (busy {}, once {})",
        key(&busy),
        key(&once)
    );
    assert!(held.contains(&key(&busy)), "the busy host was kept");
    assert!(
        !held.contains(&key(&once)),
        "the host used once was evicted"
    );
}

/// A host that accepts connections and never answers (a blackholed upstream): each attempt
/// is cut by the attempt timeout and retried, and the overall timeout — now the bound of the
/// one state machine `HostPipeline` boxes — ends the call at its bound, reported as
/// `TimedOut`. Paused clock: the bounds are exact.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_silent_host_is_cut_per_attempt_and_overall() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let accepted = Arc::new(AtomicU32::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            held.push(socket); // read nothing, answer nothing
        }
    });
    let pipelines = HostPipeline::new(NonZeroUsize::new(8).unwrap(), |_| {
        Pipeline::builder()
            .timeout(Duration::from_millis(500))
            .retry(
                Retry::builder()
                    .max_attempts(NonZeroU32::new(10).unwrap())
                    .backoff(Backoff::Constant(Duration::from_millis(10)))
                    .build(),
            )
            .attempt_timeout(Duration::from_millis(200))
            .build()
    });
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines)
        .build();
    let start = tokio::time::Instant::now();
    let err = client.get(&url).send().await.unwrap_err();
    let took = start.elapsed();
    let timed_out = err.floodwall().and_then(FloodwallError::timed_out_after);
    println!(
        "silent host: {err} after {took:?}; {} connections accepted",
        accepted.load(Ordering::SeqCst)
    );
    assert_eq!(timed_out, Some(Duration::from_millis(500)), "{err}");
    assert_eq!(took, Duration::from_millis(500));
    // Attempts at 0, 210 and 420 ms, each on a fresh connection: the first two cut at
    // 200 ms, the third by the overall bound.
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

/// A host's stages are there to look at: `peek` finds none before the host's first request
/// (and makes none), then the host's breaker, its state after the host failed, and the
/// bulkhead; `get` makes a host's stages ahead of its first request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_pipeline_exposes_a_hosts_stages_and_peeks_without_creating() {
    let calls = Arc::new(AtomicU32::new(0));
    let dead = serve(dead_host(calls.clone())).await;
    let host = dead.trim_start_matches("http://").to_owned();
    let pipelines = pipelines(4);
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines.clone())
        .build();
    assert!(pipelines.peek(&host).is_none());
    assert_eq!(pipelines.registry().len(), 0, "a peek makes nothing");
    for _ in 0..2 {
        let _ = client.get(&dead).send().await;
    }
    let stages = pipelines.peek(&host).expect("made by the first request");
    let breaker = stages.circuit_breaker().expect("a breaker stage");
    let bulkhead = stages.bulkhead().expect("a bulkhead stage");
    println!(
        "{}: breaker `{}` {}, bulkhead {} of {} in flight, attempt timeout {:?}",
        stages.host(),
        breaker.name(),
        breaker.state(),
        bulkhead.in_flight(),
        bulkhead.max_concurrent(),
        stages.attempt_timeout()
    );
    assert_eq!(stages.host(), host);
    assert_eq!(breaker.name(), format!("api:{host}"));
    assert_eq!(
        breaker.state(),
        floodwall_resilience::circuit_breaker::State::Open
    );
    assert_eq!(bulkhead.in_flight(), 0);
    assert_eq!(stages.attempt_timeout(), Some(Duration::from_secs(5)));
    assert!(pipelines.peek("elsewhere:443").is_none());
    let ahead = pipelines.get("elsewhere:443");
    assert_eq!(ahead.host(), "elsewhere:443");
    assert_eq!(pipelines.registry().len(), 2);
}
