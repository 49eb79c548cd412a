//! The HTTP layer: 429 with `Retry-After` and the draft's `RateLimit` fields, `503` when the
//! store fails closed, the generic layer's error, and client addresses behind proxies.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use floodwall_core::ManualClock;
use floodwall_limiter::http::{ClientIp, HttpRateLimitLayer};
use floodwall_limiter::layer::{Descriptor, Error, RateLimitLayer};
use floodwall_limiter::{Algorithm, Limit, Quota, RateLimiter, Tiers};
use http::{Request, Response, StatusCode};
use proptest::prelude::*;
use tower::{Layer, Service, ServiceExt, service_fn};

fn n(v: u32) -> NonZeroU32 {
    NonZeroU32::new(v).unwrap()
}

async fn ok(_req: Request<String>) -> Result<Response<String>, Infallible> {
    Ok(Response::new("hello".to_owned()))
}

fn request(user: &str, peer: &str) -> Request<String> {
    let mut req = Request::builder()
        .uri("/api")
        .header("x-user", user)
        .body(String::new())
        .unwrap();
    req.extensions_mut()
        .insert(peer.parse::<SocketAddr>().unwrap());
    req
}

#[tokio::test]
async fn denied_requests_get_429_with_retry_after_and_ratelimit_fields() {
    let clock = ManualClock::new();
    let tiers =
        Tiers::new("free", Quota::per_minute(n(2))).with_tier("pro", Quota::per_minute(n(4)));
    tiers.assign("pat", "pro");
    let limiter = RateLimiter::builder()
        .limit(Limit::new("user", Algorithm::FixedWindow, tiers).keyed_by("user"))
        .limit(Limit::new("ip", Algorithm::Gcra, Quota::per_minute(n(100))).keyed_by("ip"))
        .clock(clock.clone())
        .build()
        .unwrap();
    let client_ip = ClientIp::new();
    let layer =
        HttpRateLimitLayer::new(limiter, move |req: &Request<String>, d: &mut Descriptor| {
            if let Some(u) = req.headers().get("x-user").and_then(|v| v.to_str().ok()) {
                d.push("user", u);
            }
            floodwall_limiter::layer::KeyExtractor::extract(&client_ip, req, d);
        });
    let mut svc = layer.layer(service_fn(ok));

    let first = svc
        .ready()
        .await
        .unwrap()
        .call(request("fred", "198.51.100.1:1000"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.headers()["ratelimit-policy"], "\"user\";q=2;w=60");
    assert_eq!(first.headers()["ratelimit"], "\"user\";r=1;t=60");
    assert!(first.headers().get("retry-after").is_none());

    svc.ready()
        .await
        .unwrap()
        .call(request("fred", "198.51.100.1:1000"))
        .await
        .unwrap();
    clock.advance(std::time::Duration::from_millis(20_500));
    let denied = svc
        .ready()
        .await
        .unwrap()
        .call(request("fred", "198.51.100.1:1000"))
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::TOO_MANY_REQUESTS);
    // 39.5 s left in the window, rounded up.
    assert_eq!(denied.headers()["retry-after"], "40");
    assert_eq!(denied.headers()["ratelimit"], "\"user\";r=0;t=40");
    assert_eq!(denied.headers()["ratelimit-policy"], "\"user\";q=2;w=60");

    // The pro tier's policy is advertised as its own.
    let pro = svc
        .ready()
        .await
        .unwrap()
        .call(request("pat", "198.51.100.2:1000"))
        .await
        .unwrap();
    assert_eq!(pro.status(), StatusCode::OK);
    assert_eq!(pro.headers()["ratelimit-policy"], "\"user\";q=4;w=60");
}

#[tokio::test]
async fn the_generic_layer_fails_with_retry_after() {
    let limiter = RateLimiter::builder()
        .limit(Limit::new(
            "jobs",
            Algorithm::SlidingLog,
            Quota::per_second(n(1)),
        ))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut svc = RateLimitLayer::new(limiter, |_: &u32, _: &mut Descriptor| {}).layer(service_fn(
        |x: u32| async move { Ok::<_, Error<Infallible>>(x * 2) },
    ));
    assert_eq!(svc.ready().await.unwrap().call(21).await.unwrap(), 42);
    let err = svc.ready().await.unwrap().call(1).await.unwrap_err();
    assert_eq!(err.retry_after(), Some(std::time::Duration::from_secs(1)));
    match err {
        Error::RateLimited(r) => assert_eq!(r.limit.as_ref(), "jobs"),
        other => panic!("{other:?}"),
    }
}

/// The layer keeps the inner service's error type: a `tower::BoxError` service needs no
/// adapter, and the rejection comes back inside it.
#[tokio::test]
async fn the_generic_layer_keeps_the_inner_error_type() {
    let limiter = RateLimiter::builder()
        .limit(Limit::new("jobs", Algorithm::Gcra, Quota::per_second(n(1))))
        .clock(ManualClock::new())
        .build()
        .unwrap();
    let mut svc = RateLimitLayer::new(limiter, |_: &u32, _: &mut Descriptor| {}).layer(service_fn(
        |x: u32| async move { Ok::<_, tower::BoxError>(x) },
    ));
    assert_eq!(svc.ready().await.unwrap().call(7).await.unwrap(), 7);
    let err: tower::BoxError = svc.ready().await.unwrap().call(8).await.unwrap_err();
    let rejected = err
        .downcast_ref::<floodwall_limiter::layer::Rejected>()
        .expect("the rejection, inside the inner error type");
    assert_eq!(
        rejected.retry_after(),
        Some(std::time::Duration::from_secs(1))
    );
}

fn with_headers(peer: &str, headers: &[(&'static str, &str)]) -> Request<()> {
    let mut req = Request::new(());
    for (k, v) in headers {
        req.headers_mut().append(*k, v.parse().unwrap());
    }
    req.extensions_mut()
        .insert(peer.parse::<SocketAddr>().unwrap());
    req
}

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

#[test]
fn client_ip_trusts_forwarding_headers_only_from_proxies() {
    let none = ClientIp::new();
    let proxies = ClientIp::new()
        .trust_proxies(["10.0.0.0/8", "2001:db8:ffff::/48"])
        .unwrap();
    let xff = [("x-forwarded-for", "203.0.113.9, 198.51.100.4, 10.0.0.7")];

    // No trusted proxy: headers are never read.
    assert_eq!(none.ip(&with_headers("10.0.0.1:1", &xff)), ip("10.0.0.1"));
    // From a trusted proxy: skip trusted hops from the right; the first other one is the client
    // (203.0.113.9 is whatever the client claimed: not believed).
    assert_eq!(
        proxies.ip(&with_headers("10.0.0.1:1", &xff)),
        ip("198.51.100.4")
    );
    // From an untrusted peer: the peer, whatever it claims.
    assert_eq!(
        proxies.ip(&with_headers("192.0.2.1:1", &xff)),
        ip("192.0.2.1")
    );
    // Only proxies in the chain: the leftmost.
    assert_eq!(
        proxies.ip(&with_headers(
            "10.0.0.1:1",
            &[("x-forwarded-for", "10.9.9.9, 10.0.0.7")]
        )),
        ip("10.9.9.9")
    );
    // Split over several header lines, in order.
    assert_eq!(
        proxies.ip(&with_headers(
            "10.0.0.1:1",
            &[
                ("x-forwarded-for", "203.0.113.9"),
                ("x-forwarded-for", "10.0.0.8")
            ]
        )),
        ip("203.0.113.9")
    );
    // Only the header the proxies set is read: by default X-Forwarded-For, and a `Forwarded`
    // the client sent is ignored (nginx and ALB pass it through untouched).
    let fwd = [
        (
            "forwarded",
            "for=192.0.2.60;proto=http, for=\"[2001:db8:cafe::17]:4711\"",
        ),
        ("x-forwarded-for", "1.2.3.4"),
    ];
    assert_eq!(proxies.ip(&with_headers("10.0.0.1:1", &fwd)), ip("1.2.3.4"));
    // Proxies that set `Forwarded` (RFC 7239): quoted IPv6 with ports; X-Forwarded-For ignored.
    let rfc = proxies
        .clone()
        .forwarded_header(floodwall_limiter::http::ForwardedHeader::Forwarded);
    assert_eq!(
        rfc.ip(&with_headers("10.0.0.1:1", &fwd)),
        ip("2001:db8:cafe::17")
    );
    // A quoted parameter is one parameter: `by="x;for=6.6.6.6"` is no `for=`.
    assert_eq!(
        rfc.ip(&with_headers(
            "10.0.0.1:1",
            &[("forwarded", "for=198.51.100.7;by=\"x;for=6.6.6.6\"")]
        )),
        ip("198.51.100.7")
    );
    // An unreadable hop a trusted proxy reported: that proxy stands in.
    assert_eq!(
        rfc.ip(&with_headers(
            "10.0.0.1:1",
            &[("forwarded", "for=unknown, for=10.0.0.9")]
        )),
        ip("10.0.0.9")
    );
    // One non-ASCII byte in what the client sent costs that entry alone, not the header.
    let mut req = with_headers("10.0.0.1:1", &[]);
    req.headers_mut().insert(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"6.6.6.\xff6, 198.51.100.8").unwrap(),
    );
    assert_eq!(proxies.ip(&req), ip("198.51.100.8"));
    // A dual-stack listener's IPv4-mapped peer is the IPv4 address.
    assert_eq!(
        none.ip(&with_headers("[::ffff:192.0.2.1]:1", &[])),
        ip("192.0.2.1")
    );
    // No peer address at all: no key.
    assert_eq!(none.ip(&Request::new(())), None);
    // IPv6 keyed by /64.
    let by64 = ClientIp::new().ipv6_prefix(64);
    assert_eq!(
        by64.key(&with_headers("[2001:db8:1:2:aaaa::1]:1", &[]))
            .unwrap(),
        "2001:db8:1:2::/64"
    );
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_store_that_fails_closed_answers_503_within_the_bound() {
    use floodwall_core::redis::RedisConnection;
    use floodwall_core::redis::StoreOptions;
    use floodwall_limiter::FailurePolicy;
    use floodwall_testkit::{FaultProxy, RedisServer};
    use std::time::{Duration, Instant};

    let Some(server) = RedisServer::start_or_skip(
        "a_failing_store_that_fails_closed_answers_503_within_the_bound",
    ) else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await.unwrap();
    let conn = RedisConnection::standalone(proxy.redis_url())
        .connect()
        .await
        .unwrap();
    let bound = Duration::from_millis(50);
    let limiter = RateLimiter::builder()
        .limit(Limit::new("ip", Algorithm::Gcra, Quota::per_second(n(10))).keyed_by("ip"))
        .redis(StoreOptions::new(conn).call_timeout(bound))
        .failure_policy(FailurePolicy::FailClosed)
        .build()
        .unwrap();
    let mut svc = HttpRateLimitLayer::new(limiter, ClientIp::new()).layer(service_fn(ok));
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(request("u", "192.0.2.1:1"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    proxy.blackhole();
    let started = Instant::now();
    let r = svc
        .ready()
        .await
        .unwrap()
        .call(request("u", "192.0.2.1:1"))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(took <= bound + Duration::from_millis(50), "took {took:?}");
}

/// Bytes a client can put in a header value (visible ASCII, space, tab, obs-text).
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => 0x20u8..0x7f,
            1 => Just(b'\t'),
            1 => 0x80u8..=0xff,
            2 => prop::sample::select(b",;=\"[]:.for".to_vec()),
        ],
        0..48,
    )
}

/// A client address no trusted range holds.
fn client_addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        (11u8..=223, any::<[u8; 3]>()).prop_map(|(a, [b, c, d])| IpAddr::from([a, b, c, d])),
        any::<[u16; 7]>()
            .prop_map(|r| IpAddr::from([0x2a00, r[0], r[1], r[2], r[3], r[4], r[5], r[6]])),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Whatever forwarding headers a client sends, once the trusted proxy appends the real
    /// address (to the last line, or as a line of its own) that address is the key — for
    /// either header the proxies are told to set.
    #[test]
    fn no_client_header_changes_the_key_behind_a_trusted_proxy(
        xff in prop::collection::vec(header_bytes(), 0..3),
        fwd in prop::collection::vec(header_bytes(), 0..3),
        real in client_addr(),
        same_line in any::<bool>(),
        rfc in any::<bool>(),
    ) {
        let mut req = with_headers("10.0.0.1:1", &[]);
        for v in &xff {
            req.headers_mut().append("x-forwarded-for", http::HeaderValue::from_bytes(v).unwrap());
        }
        for v in &fwd {
            req.headers_mut().append("forwarded", http::HeaderValue::from_bytes(v).unwrap());
        }
        let (name, appended) = if rfc {
            let node = match real {
                IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
                IpAddr::V4(v4) => format!("for={v4}"),
            };
            ("forwarded", node)
        } else {
            ("x-forwarded-for", real.to_string())
        };
        let last: Option<Vec<u8>> = req
            .headers()
            .get_all(name)
            .iter()
            .next_back()
            .map(|v| v.as_bytes().to_vec());
        match last {
            Some(mut line) if same_line => {
                // The proxy appends to the last line it received.
                let count = req.headers().get_all(name).iter().count();
                let mut kept: Vec<http::HeaderValue> =
                    req.headers().get_all(name).iter().take(count - 1).cloned().collect();
                line.extend_from_slice(b", ");
                line.extend_from_slice(appended.as_bytes());
                kept.push(http::HeaderValue::from_bytes(&line).unwrap());
                req.headers_mut().remove(name);
                for v in kept {
                    req.headers_mut().append(name, v);
                }
            }
            _ => {
                req.headers_mut().append(name, http::HeaderValue::from_str(&appended).unwrap());
            }
        }
        let mut client_ip = ClientIp::new().trust_proxies(["10.0.0.0/8"]).unwrap();
        if rfc {
            client_ip = client_ip.forwarded_header(floodwall_limiter::http::ForwardedHeader::Forwarded);
        }
        prop_assert_eq!(client_ip.ip(&req), Some(real));
    }
}
