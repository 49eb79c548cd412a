// An HTTP classifier given a call whose result is not an `http::Response` (a client that
// answers a body as `String`): the error names the trait it lacks and what it does take.
use floodwall_resilience::circuit_breaker::CircuitBreaker;
use floodwall_resilience::http::HttpClassifier;

async fn fetch_body() -> Result<String, std::io::Error> {
    Ok("a body, not a response".to_string())
}

async fn call(breaker: &CircuitBreaker) {
    let _ = breaker.call_classified(&HttpClassifier, fetch_body).await;
}

fn main() {
    let _ = call;
}
