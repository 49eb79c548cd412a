// `IdempotentRequests` given requests that are not HTTP requests (a bare body): the error
// names the trait it lacks and what it does take.
use floodwall_resilience::http::IdempotentRequests;
use floodwall_resilience::retry::RetryRequest;

fn copies<R, C: RetryRequest<R>>(cloner: &C, req: &R) -> Option<R> {
    cloner.clone_request(req)
}

fn main() {
    let _ = copies(&IdempotentRequests::new(), &"POST /charges".to_string());
}
