//! Observability: an axum service using a rate limiter, a tiered cache, a circuit breaker
//! with retry behind a bulkhead, and the `Idempotency-Key` layer (in memory; the limits and
//! the cache's second tier in Redis when `REDIS_URL` is set), a Prometheus exporter at
//! `/metrics` and a `tracing` span per decision. It drives itself for a few seconds, then
//! scrapes `/metrics` and prints an excerpt: `# HELP` lines, per-instance labels
//! (`cache="prices"`, `breaker="upstream"`, `idempotency="orders"`), the limiter's allowed
//! and denied counters, and latency histograms.
//!
//! Graph it with `dashboards/floodwall.json` (Grafana, Prometheus data source).
//!
//! ```text
//! cargo run --example observability --features http,metrics,redis
//! ```

#[path = "observability/app.rs"]
mod app;

use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
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
    server.abort();
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
