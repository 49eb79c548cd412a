//! `HostThrottle` against a host that turns every request away, then heals: after a few
//! requests the client stops sending (each refusal a typed `Throttled`, never retried), and
//! once the host's window has passed with it healthy, every request goes out again. The
//! throttle's window runs on a manual clock.

use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use floodwall_core::ManualClock;
use floodwall_reqwest::{ErrorExt, HostThrottle, RefusalKind, RetryMiddleware};
use floodwall_resilience::retry::{Backoff, Jitter};
use floodwall_resilience::throttle::AdaptiveThrottle;
use reqwest_middleware::ClientBuilder;

mod common;
use common::serve;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_turns_requests_away_stops_receiving_them_until_it_heals() {
    let (calls, down) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicBool::new(true)));
    let app = Router::new().route("/", {
        let (calls, down) = (calls.clone(), down.clone());
        get(move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let status = match down.load(Ordering::SeqCst) {
                true => StatusCode::SERVICE_UNAVAILABLE,
                false => StatusCode::OK,
            };
            async move { status }
        })
    });
    let base = serve(app).await;
    let clock = ManualClock::new();
    let throttles = throttles_on(&clock);
    let retry = floodwall_resilience::retry::Retry::builder()
        .max_attempts(NonZeroU32::new(3).unwrap())
        .backoff(Backoff::Constant(Duration::from_millis(1)))
        .jitter(Jitter::None)
        .build();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(retry))
        .with(throttles)
        .build();

    let (mut answered, mut throttled) = (0, 0);
    for _ in 0..200 {
        match client.get(&base).send().await {
            Ok(resp) => {
                assert_eq!(resp.status(), 503);
                answered += 1;
            }
            Err(e) => {
                let refusal = e.floodwall().expect("a floodwall refusal");
                assert_eq!(refusal.kind(), RefusalKind::Throttled);
                assert_eq!(refusal.status(), 503);
                throttled += 1;
            }
        }
    }
    let reached = calls.swap(0, Ordering::SeqCst);
    println!(
        "host down: 200 requests (3 attempts each at most): {reached} reached it, {answered} answered 503, {throttled} throttled locally"
    );
    assert!(reached <= 30, "{reached}");
    assert!(throttled >= 150, "{throttled}");

    // Healed, and the window that remembers the rejections has passed.
    down.store(false, Ordering::SeqCst);
    clock.advance(Duration::from_secs(11));
    let mut ok = 0;
    for _ in 0..50 {
        ok += u32::from(
            client
                .get(&base)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200),
        );
    }
    println!("healed: {ok} of 50 answered 200");
    assert_eq!(ok, 50);
}

/// The throttle as a `HostPipeline` stage, against a host that can take 10 requests per
/// second of the (manual) clock while it is offered 100 — it answers the rest 503: what
/// reaches it settles near `K` = 2 times what it accepts, each local rejection a `Throttled`
/// refusal after which the pipeline sends nothing more for that request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_throttles_each_attempt_to_about_k_times_what_the_host_accepts() {
    use floodwall_reqwest::HostPipeline;
    use floodwall_resilience::Pipeline;
    let (reached, accepted) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    // Requests accepted in the current second.
    let this_second = Arc::new(AtomicU32::new(0));
    let app = Router::new().route("/", {
        let (reached, accepted, this_second) =
            (reached.clone(), accepted.clone(), this_second.clone());
        get(move || {
            reached.fetch_add(1, Ordering::SeqCst);
            let status = if this_second.fetch_add(1, Ordering::SeqCst) < 10 {
                accepted.fetch_add(1, Ordering::SeqCst);
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            async move { status }
        })
    });
    let base = serve(app).await;
    let clock = ManualClock::new();
    let throttles = throttles_on(&clock);
    let pipelines = HostPipeline::new(NonZeroUsize::new(16).unwrap(), |_| {
        Pipeline::builder()
            .retry(
                floodwall_resilience::retry::Retry::builder()
                    .max_attempts(NonZeroU32::new(3).unwrap())
                    .backoff(Backoff::Constant(Duration::from_millis(1)))
                    .jitter(Jitter::None)
                    .build(),
            )
            .build()
    })
    .throttle(throttles.clone());
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines)
        .build();
    let mut throttled = 0;
    // 30 seconds of 100 requests each; the last 10 are measured.
    for second in 0..30 {
        if second == 20 {
            reached.store(0, Ordering::SeqCst);
            accepted.store(0, Ordering::SeqCst);
        }
        this_second.store(0, Ordering::SeqCst);
        for _ in 0..100 {
            let before = reached.load(Ordering::SeqCst);
            if let Err(e) = client.get(&base).send().await {
                let refusal = e.floodwall().expect("a floodwall refusal");
                assert_eq!(refusal.kind(), RefusalKind::Throttled);
                // The throttled attempt was the last, and it was not sent.
                let sent = reached.load(Ordering::SeqCst) - before;
                assert_eq!(sent + 1, refusal.attempts(), "not retried after it");
                throttled += 1;
            }
        }
        clock.advance(Duration::from_secs(1));
    }
    let (sent, ok) = (
        reached.load(Ordering::SeqCst),
        accepted.load(Ordering::SeqCst),
    );
    let ratio = f64::from(sent) / f64::from(ok.max(1));
    println!(
        "host taking 10 of 100 per second: over the last 10 s {sent} attempts reached it, {ok} \
         accepted (ratio {ratio:.2}, K = 2); {throttled} requests throttled locally in all"
    );
    assert!(ok >= 50, "the host is kept busy: {ok}");
    assert!(ratio <= 2.0 + 0.5, "{ratio}");
    let (requests, accepts) = throttles.registry().get(&base_key(&base)).counts();
    println!("the host's throttle: {requests} requests in its window, {accepts} accepted");
}

/// A throttle per host with a 10 s window on `clock`.
fn throttles_on(clock: &ManualClock) -> HostThrottle {
    let clock = clock.clone();
    HostThrottle::new(NonZeroUsize::new(16).unwrap(), move |_| {
        AdaptiveThrottle::builder()
            .window(Duration::from_secs(10))
            .clock(clock.clone())
            .build()
            .unwrap()
    })
}

/// The host key (`host:port`) of a local base URL.
fn base_key(base: &str) -> String {
    let url = reqwest::Url::parse(base).unwrap();
    format!(
        "{}:{}",
        url.host_str().unwrap(),
        url.port_or_known_default().unwrap()
    )
}
