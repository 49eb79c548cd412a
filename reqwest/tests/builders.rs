//! Builder traps closed: a per-host factory that can fail is tried when the middleware is
//! built (a bad configuration is a build error), and a host whose factory fails later is
//! refused with a readable error instead of a panic at its first request; a host's bulkhead
//! can let requests wait for a slot.

use std::num::NonZeroUsize;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use floodwall_reqwest::{ErrorExt, HostBreaker, HostBulkhead, HostPipeline, RefusalKind};
use floodwall_resilience::Pipeline;
use floodwall_resilience::circuit_breaker::{CircuitBreaker, ConfigError};
use reqwest_middleware::ClientBuilder;

mod common;
use common::{live_host, serve};

/// A breaker for every host but loopback ones, which have no configuration.
fn configured(host: &str) -> Result<CircuitBreaker, String> {
    match host.starts_with("127.") {
        true => Err(format!("no breaker configured for {host}")),
        false => CircuitBreaker::builder()
            .name(format!("api:{host}"))
            .build()
            .map_err(|e| e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_factory_that_fails_is_a_build_error_and_a_later_failure_refuses_without_a_panic() {
    // Invalid for every host: refused when built.
    let invalid = |_: &str| -> Result<CircuitBreaker, ConfigError> {
        CircuitBreaker::builder()
            .failure_rate_threshold(150.0)
            .build()
    };
    let err = HostBreaker::try_new(NonZeroUsize::new(16).unwrap(), invalid).unwrap_err();
    println!("built with an invalid breaker: {err}");
    let err = HostPipeline::try_new(NonZeroUsize::new(16).unwrap(), move |host| {
        invalid(host).map(|b| Pipeline::builder().circuit_breaker(b).build())
    })
    .unwrap_err();
    println!("a pipeline built with an invalid breaker: {err}");

    // Valid for the probe host, not for loopback: the request is refused, naming it.
    let base = serve(live_host()).await;
    let host = base.trim_start_matches("http://").to_owned();
    let stack = ClientBuilder::new(reqwest::Client::new())
        .with(HostBreaker::try_new(NonZeroUsize::new(16).unwrap(), configured).unwrap())
        .build();
    let pipeline = ClientBuilder::new(reqwest::Client::new())
        .with(
            HostPipeline::try_new(NonZeroUsize::new(16).unwrap(), |host| {
                configured(host).map(|b| Pipeline::builder().circuit_breaker(b).build())
            })
            .unwrap(),
        )
        .build();
    for (shape, client) in [("stack", stack), ("HostPipeline", pipeline)] {
        let e = client.get(&base).send().await.unwrap_err();
        let refusal = e.floodwall().expect("refused by floodwall");
        println!("{shape}: {refusal}");
        assert_eq!(refusal.kind(), RefusalKind::CircuitOpen);
        assert_eq!(
            refusal.instance_name(),
            Some(format!("invalid:{host}").as_str())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_bulkhead_can_let_requests_wait_for_a_slot() {
    let app = Router::new().route(
        "/",
        get(|| async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            "ok"
        }),
    );
    let base = serve(app).await;
    let one = NonZeroUsize::new(1).unwrap();
    let hosts = NonZeroUsize::new(16).unwrap();
    let mut seen = Vec::new();
    for (shape, bulkhead) in [
        ("refusing", HostBulkhead::per_host(hosts, one)),
        (
            "waiting",
            HostBulkhead::per_host_waiting(hosts, one, 4, Duration::from_secs(5)),
        ),
    ] {
        let client = ClientBuilder::new(reqwest::Client::new())
            .with(bulkhead)
            .build();
        let (a, b) = tokio::join!(client.get(&base).send(), client.get(&base).send());
        let ok = [a, b]
            .iter()
            .filter(|r| r.as_ref().is_ok_and(|r| r.status().is_success()))
            .count();
        seen.push((shape, ok));
    }
    println!("two requests at once, one slot per host (bulkhead, served): {seen:?}");
    assert_eq!(seen, [("refusing", 1), ("waiting", 2)]);
}
