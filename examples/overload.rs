//! An overload you can watch: a service with a fixed capacity, driven at three times it, with
//! and without floodwall's load shedder in front.
//!
//! The service is an axum app whose handler holds one of 8 "database connections" for 4 ms:
//! 2,000 requests per second at most. A load generator (its own runtime and thread, open
//! loop: requests leave on schedule whether or not earlier ones were answered) sends 6,000 per
//! second for a few seconds — 20 % `critical`, 40 % `default`, 40 % `sheddable`, in the
//! `x-priority` header — and gives each request 1 s. It prints, per class, the share answered
//! `200` and the p50 / p99 latency of those, first with the bare service, then behind an
//! `HttpShedLayer` whose shedder watches the service's own latency (target 6 ms) and caps
//! what is in flight at 16, a quarter of it kept for critical requests. The unloaded p99 is
//! measured first.
//!
//! ```text
//! cargo run --release --example overload --features http
//! ```
//!
//! Without floodwall the queue in front of the connections grows by 4,000 requests a second
//! and every class times out alike; with it, sheddable and then default requests are answered
//! `503` at once, and critical requests keep close to their unloaded latency.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use floodwall::resilience::shed::{HttpShedLayer, LoadShedder, Priority};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

/// Connections the service holds, and how long each request holds one.
const CONNECTIONS: usize = 8;
const WORK: Duration = Duration::from_millis(4);
/// Requests per second the service can answer.
const CAPACITY: f64 = CONNECTIONS as f64 / 0.004;
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
const LOADED_FOR: Duration = Duration::from_secs(4);
/// The first second of each loaded run is left out of the figures (the shedder's level is
/// still climbing).
const WARM_UP: Duration = Duration::from_secs(1);

fn app(db: Arc<Semaphore>) -> Router {
    Router::new().route(
        "/work",
        get(move || {
            let db = db.clone();
            async move {
                let _conn = db.acquire().await.expect("open");
                tokio::time::sleep(WORK).await;
                "done"
            }
        }),
    )
}

/// Serves the router `make` builds on a runtime of its own (2 workers, where the shedder
/// samples); returns its address.
fn serve(make: impl FnOnce() -> Router + Send + 'static) -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("server runtime");
        rt.block_on(async move {
            let router = make();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr")).expect("send");
            axum::serve(listener, router).await.expect("serve");
        });
    });
    rx.recv().expect("address")
}

/// The service behind a load shedder: its own latency against a 6 ms target, at most 16 in
/// flight, 4 of them kept for critical requests.
fn shedding(db: Arc<Semaphore>) -> Router {
    let shedder = LoadShedder::builder()
        .name("overload-example")
        .latency_target(Duration::from_millis(6))
        .capacity(16)
        .reserved_for_critical(0.25)
        .sample_every(Duration::from_millis(50))
        .steps(0.1, 0.05, 0.95)
        .build()
        .expect("valid settings");
    app(db).layer(HttpShedLayer::new(shedder))
}

/// One answered request: its class, whether it got a `200`, and how long it took.
type Answer = (Priority, bool, Duration);

fn class_of(i: u64) -> Priority {
    match i % 5 {
        0 => Priority::Critical,
        1 | 2 => Priority::Default,
        _ => Priority::Sheddable,
    }
}

/// Sends `rate` requests per second to `addr` for `run`, on a runtime of its own; returns the
/// answers of the requests sent after `skip`.
fn drive(addr: SocketAddr, rate: f64, run: Duration, skip: Duration) -> Vec<Answer> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    rt.block_on(async move {
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1024)
            .build_http();
        let url: http::Uri = format!("http://{addr}/work").parse().expect("uri");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let start = Instant::now();
        let mut sent = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        while start.elapsed() < run {
            tick.tick().await;
            let due = (start.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                let priority = class_of(sent);
                let counted = start.elapsed() >= skip;
                let req = http::Request::get(url.clone())
                    .header("x-priority", priority.as_str())
                    .body(Empty::new())
                    .expect("request");
                let (client, tx) = (client.clone(), tx.clone());
                tokio::spawn(async move {
                    let asked = Instant::now();
                    let answer = tokio::time::timeout(CLIENT_TIMEOUT, async {
                        let r = client.request(req).await.ok()?;
                        let ok = r.status().is_success();
                        r.into_body().collect().await.ok()?;
                        Some(ok)
                    })
                    .await;
                    let ok = matches!(answer, Ok(Some(true)));
                    if counted {
                        let _ = tx.send((priority, ok, asked.elapsed()));
                    }
                });
                sent += 1;
            }
        }
        drop(tx);
        let mut answers = Vec::new();
        while let Some(a) = rx.recv().await {
            answers.push(a);
        }
        answers
    })
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// Per class: (share answered 200, p50 and p99 of those, p99 of the refused).
fn summary(answers: &[Answer]) -> HashMap<Priority, (f64, Duration, Duration, Duration)> {
    let mut out = HashMap::new();
    for class in [Priority::Critical, Priority::Default, Priority::Sheddable] {
        let mine: Vec<_> = answers.iter().filter(|a| a.0 == class).collect();
        let mut ok: Vec<Duration> = mine.iter().filter(|a| a.1).map(|a| a.2).collect();
        let mut refused: Vec<Duration> = mine.iter().filter(|a| !a.1).map(|a| a.2).collect();
        ok.sort();
        refused.sort();
        let share = ok.len() as f64 / mine.len().max(1) as f64;
        out.insert(
            class,
            (
                share,
                percentile(&ok, 0.5),
                percentile(&ok, 0.99),
                percentile(&refused, 0.99),
            ),
        );
    }
    out
}

fn main() {
    let bare = serve(|| app(Arc::new(Semaphore::new(CONNECTIONS))));
    // Unloaded: a tenth of the capacity.
    let unloaded = drive(
        bare,
        CAPACITY / 10.0,
        Duration::from_secs(2),
        Duration::ZERO,
    );
    let mut lat: Vec<Duration> = unloaded.iter().filter(|a| a.1).map(|a| a.2).collect();
    lat.sort();
    let unloaded_p99 = percentile(&lat, 0.99);
    println!(
        "capacity {CAPACITY:.0} requests/s; unloaded ({} requests at {:.0}/s): p50 {:.1} ms, p99 {:.1} ms",
        lat.len(),
        CAPACITY / 10.0,
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        unloaded_p99.as_secs_f64() * 1e3
    );

    let rate = 3.0 * CAPACITY;
    let without = summary(&drive(bare, rate, LOADED_FOR, WARM_UP));
    let guarded = serve(|| shedding(Arc::new(Semaphore::new(CONNECTIONS))));
    let with = summary(&drive(guarded, rate, LOADED_FOR, WARM_UP));

    println!("\nat {rate:.0} requests/s (3x capacity), after the first second:\n");
    println!(
        "| class | without: 200s | p50 | p99 | with floodwall: 200s | p50 | p99 | p99 of the 503s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1e3);
    for class in [Priority::Critical, Priority::Default, Priority::Sheddable] {
        let (a, a50, a99, _) = without[&class];
        let (b, b50, b99, b_refused) = with[&class];
        println!(
            "| {class} | {:.1} % | {} | {} | {:.1} % | {} | {} | {} |",
            a * 100.0,
            ms(a50),
            ms(a99),
            b * 100.0,
            ms(b50),
            ms(b99),
            ms(b_refused)
        );
    }
    let (critical, _, c99, _) = with[&Priority::Critical];
    let (_, _, _, shed99) = with[&Priority::Sheddable];
    println!(
        "\ncritical with floodwall: {:.1} % answered, p99 {:.1}x the unloaded p99; sheddable refused with a p99 of {}",
        critical * 100.0,
        c99.as_secs_f64() / unloaded_p99.as_secs_f64().max(1e-9),
        ms(shed99)
    );
}
