//! Rate limits on an axum server: per-user limits by pricing tier plus a per-IP limit.
//!
//! The server keeps its limits in memory, or in Redis when `REDIS_URL` is set (run it with
//! `--features redis,http` then, and start two copies to see them share the limits). It then
//! drives itself with a client and prints each response's status and rate-limit fields:
//!
//! - `alice` (free tier: bursts of 3, one more every 20 s) sends 5 requests: 3 × 200, 2 × 429;
//! - `bob` (pro tier: bursts of 6) sends 7: 6 × 200, 1 × 429;
//! - bob is upgraded to the enterprise tier at run time and gets through at once;
//! - ten free users behind one address (forwarded by a trusted proxy) hit the per-IP limit
//!   of 8 per minute.
//!
//! ```text
//! cargo run --example axum_server --features http
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example axum_server --features http,redis
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::routing::get;
use bytes::Bytes;
use floodwall::limiter::http::{ClientIp, HttpRateLimitLayer};
use floodwall::limiter::layer::{Descriptor, KeyExtractor};
use floodwall::limiter::{Algorithm, Limit, Quota, RateLimiter, Tiers};
use floodwall::nonzero;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[allow(unused_mut)]
async fn limiter(tiers: Tiers) -> Result<RateLimiter, Box<dyn std::error::Error>> {
    let mut builder = RateLimiter::builder()
        // Per user, by tier: GCRA, so a burst then a steady rate.
        .limit(Limit::new("user", Algorithm::Gcra, tiers).keyed_by("user"))
        // Per client address: an exact sliding log.
        .limit(
            Limit::new("ip", Algorithm::SlidingLog, Quota::per_minute(nonzero!(8))).keyed_by("ip"),
        );
    match std::env::var("REDIS_URL") {
        #[cfg(feature = "redis")]
        Ok(url) => {
            use floodwall::core::Keyspace;
            use floodwall::core::redis::{RedisConnection, StoreOptions};
            println!("limits kept in Redis at {url}");
            let conn = RedisConnection::standalone(url).connect().await?;
            // A fresh key version per run, so a second run does not inherit this one's counts.
            let version = std::process::id();
            builder = builder
                .redis(StoreOptions::new(conn).keyspace(Keyspace::new("fw-rl-example", version)?));
        }
        #[cfg(not(feature = "redis"))]
        Ok(_) => println!("REDIS_URL is set, but this build has no `redis` feature: in memory"),
        Err(_) => println!("limits kept in memory (set REDIS_URL to keep them in Redis)"),
    }
    Ok(builder.build()?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Free: bursts of 3, then 3 per minute. Pro: bursts of 6. Enterprise: unlimited.
    let tiers = Tiers::new("free", Quota::per_minute(nonzero!(3)))
        .with_tier(
            "pro",
            Quota::per_minute(nonzero!(60)).allow_burst(nonzero!(6)),
        )
        .with_tier("enterprise", None);
    tiers.assign("bob", "pro");
    let limiter = limiter(tiers.clone()).await?;

    // The client address: the connection's peer, or what a trusted proxy (here: localhost,
    // where the demo client runs) forwarded. IPv6 clients are keyed by their /64.
    let client_ip = ClientIp::new()
        .trust_proxies(["127.0.0.1/32", "::1/128"])?
        .peer_address(|ext| ext.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()))
        .ipv6_prefix(64);
    let keys = move |req: &Request, d: &mut Descriptor| {
        if let Some(user) = req.headers().get("x-user").and_then(|v| v.to_str().ok()) {
            d.push("user", user);
        }
        client_ip.extract(req, d);
    };
    let app = Router::new()
        .route("/api", get(|| async { "ok\n" }))
        .layer(HttpRateLimitLayer::new(limiter, keys));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async {
            let _ = stopped.await;
        })
        .await
    });
    println!("serving on http://{addr}/api\n");

    let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let send = |user: String, forwarded_for: String| {
        let client = client.clone();
        async move {
            let req = http::Request::get(format!("http://{addr}/api"))
                .header("x-user", &user)
                .header("x-forwarded-for", &forwarded_for)
                .body(Empty::<Bytes>::new())?;
            let resp = client.request(req).await?;
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-")
                    .to_owned()
            };
            println!(
                "{user:>6} from {forwarded_for:<13} -> {} | RateLimit: {} | RateLimit-Policy: {} | Retry-After: {}",
                resp.status().as_u16(),
                header("ratelimit"),
                header("ratelimit-policy"),
                header("retry-after"),
            );
            let status = resp.status().as_u16();
            resp.into_body().collect().await?;
            Ok::<u16, Box<dyn std::error::Error>>(status)
        }
    };

    let mut tally = std::collections::BTreeMap::<u16, u32>::new();
    println!("alice (free tier):");
    for _ in 0..5 {
        *tally
            .entry(send("alice".into(), "198.51.100.1".into()).await?)
            .or_default() += 1;
    }
    println!("\nbob (pro tier):");
    for _ in 0..7 {
        *tally
            .entry(send("bob".into(), "198.51.100.2".into()).await?)
            .or_default() += 1;
    }
    println!("\nbob upgraded to enterprise (unlimited), no restart:");
    tiers.assign("bob", "enterprise");
    for _ in 0..2 {
        *tally
            .entry(send("bob".into(), "198.51.100.2".into()).await?)
            .or_default() += 1;
    }
    println!("\nten free users behind one address (per-IP limit: 8 per minute):");
    for i in 0..10 {
        *tally
            .entry(send(format!("u{i}"), "203.0.113.7".into()).await?)
            .or_default() += 1;
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    println!("\nstatus counts: {tally:?}");

    let _ = stop.send(());
    server.await??;
    Ok(())
}
