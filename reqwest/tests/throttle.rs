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
    let throttles = HostThrottle::new(NonZeroUsize::new(16).unwrap(), {
        let clock = clock.clone();
        move |_| {
            AdaptiveThrottle::builder()
                .window(Duration::from_secs(10))
                .clock(clock.clone())
                .build()
                .unwrap()
        }
    });
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
