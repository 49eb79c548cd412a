//! Scrapes the observability example's service (`examples/observability/app.rs`, with its
//! limiter and cache on a Redis this test starts) through its Prometheus exporter: `# HELP`
//! for every metric, latency histograms, per-instance labels, the limiter's allowed counter,
//! and every metric the Grafana dashboard queries.

#[path = "../examples/observability/app.rs"]
mod app;

use std::collections::BTreeSet;
use std::time::Duration;

use floodwall::core::redis::RedisConnection;
use floodwall_testkit::RedisServer;

/// Metric names in a PromQL expression or a sample line, histogram suffixes folded.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("floodwall_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = &tail[..end];
        let name = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        names.insert(name.to_owned());
        rest = &tail[end..];
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_scrape_has_help_histograms_labels_and_every_dashboard_metric() {
    let Some(server) = RedisServer::start_or_skip(
        "the_example_scrape_has_help_histograms_labels_and_every_dashboard_metric",
    ) else {
        return;
    };
    let handle = app::install_recorder();
    let conn = RedisConnection::standalone(server.url())
        .connect()
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let router = app::app(handle.clone(), Some(conn));
    let serving = tokio::spawn(async move { axum::serve(listener, router).await });
    let statuses = app::drive(&base, Duration::from_millis(1500)).await;
    println!("answers by status: {statuses:?}");
    assert!(statuses.get(&200).copied().unwrap_or(0) > 0, "{statuses:?}");
    assert!(
        statuses.get(&429).copied().unwrap_or(0) > 0,
        "some users went over: {statuses:?}"
    );

    let scrape = handle.render();
    serving.abort();
    let samples: BTreeSet<String> = scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(metric_names)
        .collect();
    let helped: BTreeSet<String> = scrape
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let unhelped: Vec<&String> = samples.iter().filter(|n| !helped.contains(*n)).collect();
    println!(
        "scrape: {} lines, {} floodwall metrics, {} with # HELP",
        scrape.lines().count(),
        samples.len(),
        helped.len()
    );
    assert!(unhelped.is_empty(), "no # HELP for {unhelped:?}");

    for histogram in [
        "floodwall_limiter_decision_duration_seconds_bucket{",
        "floodwall_cache_load_duration_seconds_bucket{",
        "floodwall_circuit_breaker_call_duration_seconds_bucket{",
        "floodwall_retry_call_duration_seconds_bucket{",
        "floodwall_timeout_call_duration_seconds_bucket{",
        "floodwall_idempotency_store_call_duration_seconds_bucket{",
    ] {
        assert!(scrape.contains(histogram), "no {histogram}");
    }
    for label in [
        "cache=\"prices\"",
        "breaker=\"upstream\"",
        "retry=\"upstream\"",
        "timeout=\"upstream\"",
        "bulkhead=\"upstream\"",
        "idempotency=\"orders\"",
        "limit=\"per-user\"",
        "store=\"redis\"",
    ] {
        assert!(scrape.contains(label), "no series labelled {label}");
    }
    let allowed: f64 = scrape
        .lines()
        .filter(|l| l.starts_with("floodwall_limiter_allowed_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("limiter allowed: {allowed}");
    assert!(allowed > 0.0);

    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dashboards/floodwall.json"
    ))
    .unwrap();
    let wanted = metric_names(&dashboard);
    let missing: Vec<&String> = wanted.iter().filter(|n| !samples.contains(*n)).collect();
    println!(
        "dashboard queries {} metrics; missing from the scrape: {missing:?}",
        wanted.len()
    );
    assert!(missing.is_empty(), "{missing:?}");
}
