//! Spans: one per logical request and one per attempt, through `RetryMiddleware` and through
//! `HostPipeline`, carrying OpenTelemetry's HTTP client attribute names — captured here by a
//! subscriber that keeps every span's fields.

use std::collections::BTreeMap;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use floodwall_reqwest::{HostPipeline, RetryMiddleware};
use floodwall_resilience::Pipeline;
use floodwall_resilience::retry::Backoff;
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Metadata, Subscriber};

mod common;
use common::serve;

/// A span's name and fields.
type Captured = (&'static str, BTreeMap<String, String>);

/// Every span's name and fields, by id.
#[derive(Default, Clone)]
struct Capture {
    spans: Arc<Mutex<BTreeMap<u64, Captured>>>,
    next: Arc<AtomicU64>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.to_string());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl Subscriber for Capture {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        let name = span.metadata().name();
        self.spans.lock().unwrap().insert(id, (name, fields));
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, _: &Event<'_>) {}
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

impl Capture {
    /// The fields of every span named `name`, in creation order.
    fn named(&self, name: &str) -> Vec<BTreeMap<String, String>> {
        let spans = self.spans.lock().unwrap();
        spans
            .values()
            .filter(|(n, _)| *n == name)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

fn retry() -> floodwall_resilience::retry::Retry {
    floodwall_resilience::retry::Retry::builder()
        .max_attempts(NonZeroU32::new(3).unwrap())
        .backoff(Backoff::Constant(Duration::from_millis(1)))
        .build()
}

/// Answers `503` to the first request, `200` after.
fn flaky() -> Router {
    let calls = Arc::new(AtomicU64::new(0));
    Router::new().route(
        "/orders",
        get(move || {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match n {
                    0 => StatusCode::SERVICE_UNAVAILABLE,
                    _ => StatusCode::OK,
                }
            }
        }),
    )
}

async fn check(shape: &str, client: ClientWithMiddleware, base: &str, capture: &Capture) {
    // User info (reqwest moves it into an `Authorization` header) and a signature in the
    // URL: neither reaches `url.full`.
    let url = format!(
        "{}/orders?id=7&sig=s3cr3t",
        base.replace("http://", "http://alice:pw@")
    );
    let resp = client.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let requests = capture.named("HTTP request");
    let attempts = capture.named("HTTP attempt");
    println!("{shape}: request span {:?}", requests.last().unwrap());
    for a in &attempts {
        println!("{shape}:   attempt span {a:?}");
    }
    let request = requests.last().unwrap();
    let port = base.rsplit(':').next().unwrap();
    for (key, value) in [
        ("http.request.method", "GET"),
        ("otel.kind", "client"),
        ("server.address", "127.0.0.1"),
        ("server.port", port),
        ("http.response.status_code", "200"),
        ("floodwall.attempts", "2"),
    ] {
        assert_eq!(request.get(key).map(String::as_str), Some(value), "{key}");
    }
    let full = &request["url.full"];
    assert!(
        full.contains("sig=REDACTED") && full.contains("id=7"),
        "{full}"
    );
    assert!(
        !full.contains("s3cr3t") && !full.contains("pw") && !full.contains("alice"),
        "{full}"
    );
    let tail = &attempts[attempts.len() - 2..];
    assert_eq!(tail[0].get("http.response.status_code").unwrap(), "503");
    assert_eq!(tail[0].get("error.type").unwrap(), "503");
    assert!(!tail[0].contains_key("http.request.resend_count"));
    assert_eq!(tail[1].get("http.response.status_code").unwrap(), "200");
    assert_eq!(tail[1].get("http.request.resend_count").unwrap(), "1");
    assert!(!tail[1].contains_key("error.type"));
}

#[tokio::test]
async fn a_request_and_each_attempt_get_a_span_with_opentelemetry_http_client_attributes() {
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let stack = ClientBuilder::new(reqwest::Client::new())
        .with(RetryMiddleware::new(retry()))
        .build();
    check("RetryMiddleware", stack, &serve(flaky()).await, &capture).await;
    let pipeline = ClientBuilder::new(reqwest::Client::new())
        .with(HostPipeline::new(NonZeroUsize::new(16).unwrap(), |_| {
            Pipeline::builder().retry(retry()).build()
        }))
        .build();
    check("HostPipeline", pipeline, &serve(flaky()).await, &capture).await;
}

/// A refused request's span says what refused it.
#[tokio::test]
async fn a_refused_requests_span_names_what_refused_it() {
    use floodwall_resilience::circuit_breaker::CircuitBreaker;
    let capture = Capture::default();
    let _guard = tracing::subscriber::set_default(capture.clone());
    let base = serve(flaky()).await;
    let pipelines = HostPipeline::new(NonZeroUsize::new(16).unwrap(), |_| {
        Pipeline::builder()
            .circuit_breaker(CircuitBreaker::builder().build().unwrap())
            .build()
    });
    let host = base.trim_start_matches("http://").to_owned();
    pipelines.get(&host).circuit_breaker().unwrap().force_open();
    let client = ClientBuilder::new(reqwest::Client::new())
        .with(pipelines)
        .build();
    assert!(client.get(format!("{base}/orders")).send().await.is_err());
    let request = capture.named("HTTP request").pop().unwrap();
    println!("refused: {request:?}");
    assert_eq!(request["error.type"], "circuit-open");
    assert_eq!(request["floodwall.refused_by"], "circuit-open");
    assert_eq!(request["floodwall.attempts"], "1");
    assert!(!request.contains_key("http.response.status_code"));
}
