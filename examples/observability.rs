//! Observability: an axum service using a rate limiter, a tiered cache, a circuit breaker
//! with retry behind a bulkhead, and the `Idempotency-Key` layer (in memory; the limits and
//! the cache's second tier in Redis when `REDIS_URL` is set), a Prometheus exporter at
//! `/metrics` and a `tracing` span per decision. It drives itself for a few seconds, then
//! scrapes `/metrics` and prints an excerpt: `# HELP` lines, per-instance labels
//! (`cache="prices"`, `breaker="upstream"`, `idempotency="orders"`), the limiter's allowed
//! and denied counters, and latency histograms. Last, three calls go through a
//! `floodwall-reqwest` client (`HostPipeline`: retry and breaker) and their spans — one per
//! logical request, one per attempt, with OpenTelemetry's HTTP client attributes — are
//! printed as they close.
//!
//! Graph it with `dashboards/floodwall.json` (Grafana, Prometheus data source).
//!
//! ```text
//! cargo run --example observability --features http,metrics,redis,reqwest
//! ```

#[path = "observability/app.rs"]
mod app;

use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::fmt::format::FmtSpan;
    use tracing_subscriber::prelude::*;
    // INFO events; of the spans, the client's are printed as they close (the service's own
    // per-decision spans, thousands of them, are not).
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
                .with_target(false)
                .with_span_events(FmtSpan::CLOSE)
                .with_filter(
                    Targets::new()
                        .with_default(LevelFilter::INFO)
                        .with_target("observability", LevelFilter::WARN),
                ),
        )
        .init();
    let handle = app::install_recorder();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let redis = match std::env::var("REDIS_URL") {
        Ok(url) => {
            println!("limits and the cache's second tier in Redis at {url}");
            let conn = floodwall::core::redis::RedisConnection::standalone(url);
            Some(conn.connect().await?)
        }
        Err(_) => {
            println!("everything in memory (set REDIS_URL to share limits and cache in Redis)");
            None
        }
    };
    let router = app::app(handle, redis);
    let server = tokio::spawn(async move { axum::serve(listener, router).await });

    let secs = std::env::var("OBSERVABILITY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    println!("driving {base} for {secs} s with 8 clients");
    let statuses = app::drive(&base, Duration::from_secs(secs)).await;
    println!("answers by status: {statuses:?}");

    let scrape = get_text(&format!("{base}/metrics")).await?;
    let excerpt: Vec<&str> = scrape
        .lines()
        .filter(|l| {
            l.starts_with("# HELP floodwall_limiter")
                || l.starts_with("floodwall_limiter_allowed_total")
                || l.starts_with("floodwall_limiter_denied_total")
                || l.starts_with("floodwall_cache_l1_hits_total")
                || l.starts_with("floodwall_circuit_breaker_calls_total")
                || l.starts_with("floodwall_idempotency_replays_total")
                || (l.starts_with("floodwall_limiter_decision_duration_seconds_bucket")
                    && l.contains("le=\"0.0001\""))
                || l.starts_with("floodwall_limiter_decision_duration_seconds_count")
        })
        .collect();
    println!(
        "\n/metrics excerpt ({} lines in all):",
        scrape.lines().count()
    );
    for line in &excerpt {
        println!("  {line}");
    }
    for needle in [
        "# HELP floodwall_",
        "_bucket{",
        "cache=\"prices\"",
        "breaker=\"upstream\"",
        "idempotency=\"orders\"",
        "floodwall_limiter_allowed_total",
    ] {
        if !scrape.contains(needle) {
            return Err(format!("the scrape lacks {needle:?}").into());
        }
    }
    println!("\nthree calls through a floodwall-reqwest client; their spans:");
    client_calls(&base).await?;
    server.abort();
    Ok(())
}

/// Three `GET`s through `HostPipeline` (retry and breaker per host): each prints its
/// `HTTP request` span and one `HTTP attempt` span per attempt as they close.
async fn client_calls(base: &str) -> Result<(), Box<dyn std::error::Error>> {
    use floodwall::nonzero;
    use floodwall::reqwest::{HostPipeline, reqwest, reqwest_middleware};
    use floodwall::resilience::Pipeline;
    use floodwall::resilience::circuit_breaker::CircuitBreaker;
    use floodwall::resilience::retry::Retry;

    let pipelines = HostPipeline::new(nonzero!(64), |host| {
        Pipeline::builder()
            .retry(Retry::builder().max_attempts(nonzero!(3)).build())
            .circuit_breaker(
                CircuitBreaker::builder()
                    .name(format!("api:{host}"))
                    .build()
                    .expect("valid"),
            )
            .build()
    });
    let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
        .with(pipelines)
        .build();
    for sku in 0..3 {
        let resp = client
            .get(format!("{base}/price/sku-{sku}"))
            .header("x-user", "span-demo")
            .send()
            .await?;
        println!("  sku-{sku}: {}", resp.status());
    }
    Ok(())
}

/// A GET with hyper's client, its body as text.
async fn get_text(url: &str) -> Result<String, Box<dyn std::error::Error>> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let resp = client.get(url.parse()?).await?;
    let body = resp.into_body().collect().await?.to_bytes();
    Ok(String::from_utf8(body.to_vec())?)
}
