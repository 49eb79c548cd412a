// An HTTP retry policy given attempts whose result is not an `http::Response`: the error
// names the trait it lacks and what it does take.
use floodwall_resilience::http::HttpRetryPolicy;
use floodwall_resilience::retry::Retry;

async fn fetch_body() -> Result<String, floodwall_resilience::Error<std::io::Error>> {
    Ok("a body, not a response".to_string())
}

async fn call(retry: &Retry) {
    let _ = retry.call_with(&HttpRetryPolicy, fetch_body).await;
}

fn main() {
    let _ = call;
}
