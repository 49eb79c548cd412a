//! [`HttpCache`]: a response cache for `GET`s, kept in a floodwall
//! [`TieredCache`] — in process, or shared by every instance through its Redis tier.

mod policy;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use floodwall_cache::TieredCache;
use http::header::{self, HeaderMap};
use http::{Extensions, Method, StatusCode};
use reqwest::{Request, Response, Url};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};
use tokio::sync::watch;

pub use policy::StoredResponse;
use policy::{Defaults, Directives, unix_ms};

/// The request headers that make a request conditional or partial: such a request is the
/// caller's own business and passes the cache by.
const BYPASS: [header::HeaderName; 6] = [
    header::RANGE,
    header::IF_NONE_MATCH,
    header::IF_MODIFIED_SINCE,
    header::IF_MATCH,
    header::IF_UNMODIFIED_SINCE,
    header::IF_RANGE,
];

/// Caches `GET` responses as HTTP says (RFC 9111 as a shared cache, RFC 5861), in a
/// [`TieredCache`] keyed by URL — so with the cache's Redis tier every instance of a service
/// shares one copy (`reqwest/tests/cache.rs::two_client_instances_share_an_entry_through_redis`).
///
/// - **Stored:** `200` responses without `no-store`, `private`, `Set-Cookie` or `Vary: *`
///   (with `Authorization` on the request, only `public`, `s-maxage` or `must-revalidate`
///   ones), up to [`max_body`](Self::max_body) bytes, that are fresh for a while, may be served
///   stale, or carry a validator. `Vary`ing request headers are kept with the response; a
///   request that differs in them is a miss.
/// - **Fresh** for `s-maxage`, else `max-age`, else `Expires − Date`, minus the response's
///   `Age`; `no-cache` makes it zero. No heuristic freshness. A fresh hit is served without
///   a request.
/// - **Stale-while-revalidate:** inside `stale-while-revalidate`, the stale response is
///   served at once and refreshed in the background — with the client given to
///   [`refresh_with`](Self::refresh_with); without one it is revalidated in line.
/// - **Revalidation:** a stale response with an `ETag` or `Last-Modified` is asked for with
///   `If-None-Match` / `If-Modified-Since`; a `304` refreshes the stored one (counted in
///   [`HttpCacheStats::revalidated`]).
/// - **Stale-if-error:** when the origin answers `5xx` or fails, a response inside its
///   `stale-if-error` (or [`stale_if_error`](Self::stale_if_error)'s default) is served in its
///   place. `must-revalidate` forbids both stale windows.
/// - **Coalescing:** concurrent misses of one URL in a process send one request; the others
///   wait for it and take its stored response.
/// - **Passed by:** other methods, and requests with `Cache-Control: no-store`, `Range` or
///   their own conditional headers. `Cache-Control: no-cache` or `max-age=0` on a request
///   skips fresh hits (it revalidates).
///
/// Ages are measured on the wall clock of the instance reading (so shared entries assume
/// instances' clocks agree to a second or so). The [`TieredCache`]'s `ttl` bounds how long a
/// response is kept at all — for revalidation and stale-if-error too — so set it to the
/// longest you want a response kept (say, a day), not to a freshness.
///
/// ```no_run
/// use std::time::Duration;
/// use floodwall_cache::TieredCache;
/// use floodwall_reqwest::{HttpCache, StoredResponse};
///
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let responses: TieredCache<String, StoredResponse> = TieredCache::builder()
///     .name("http")
///     .max_capacity(10_000)
///     .ttl(Duration::from_secs(86_400))
///     .build();
/// let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
///     .with(HttpCache::new(responses).stale_if_error(Duration::from_secs(300)))
///     .build();
/// let prices = client.get("http://127.0.0.1:8080/prices").send().await?;
/// # let _ = prices; Ok(()) }
/// ```
#[derive(Clone)]
pub struct HttpCache {
    shared: Arc<Shared>,
}

struct Shared {
    cache: TieredCache<String, StoredResponse>,
    refresh: Option<ClientWithMiddleware>,
    max_body: usize,
    defaults: Defaults,
    /// The URL whose request is in flight, and the channel its waiters watch (closed when
    /// it ends).
    flights: Mutex<HashMap<String, watch::Receiver<()>>>,
    /// URLs being refreshed in the background.
    refreshing: Mutex<HashSet<String>>,
    stats: Counters,
}

impl std::fmt::Debug for HttpCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpCache")
            .field("cache", &self.shared.cache)
            .field("max_body", &self.shared.max_body)
            .field("refresh_in_background", &self.shared.refresh.is_some())
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    coalesced: AtomicU64,
    stale_while_revalidate: AtomicU64,
    revalidated: AtomicU64,
    stale_if_error: AtomicU64,
    fetched: AtomicU64,
    stored: AtomicU64,
}

/// What an [`HttpCache`] has done since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct HttpCacheStats {
    /// Fresh responses served without a request.
    pub hits: u64,
    /// Of those, served to a request that waited for another one's fetch of the same URL.
    pub coalesced: u64,
    /// Stale responses served while a background refresh ran.
    pub stale_while_revalidate: u64,
    /// `304 Not Modified` answers that refreshed a stored response.
    pub revalidated: u64,
    /// Stale responses served because the origin failed.
    pub stale_if_error: u64,
    /// Requests sent to the origin (revalidations included).
    pub fetched: u64,
    /// Responses stored (or refreshed by a full response).
    pub stored: u64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl HttpCache {
    /// Caches responses in `cache`. Build it with a long `ttl` (how long a response is kept
    /// at all) and, to share responses between instances, its Redis tier.
    pub fn new(cache: TieredCache<String, StoredResponse>) -> Self {
        HttpCache {
            shared: Arc::new(Shared {
                cache,
                refresh: None,
                max_body: 1 << 20,
                defaults: Defaults {
                    stale_if_error: Duration::ZERO,
                },
                flights: Mutex::new(HashMap::new()),
                refreshing: Mutex::new(HashSet::new()),
                stats: Counters::default(),
            }),
        }
    }

    /// Applies `f` to this middleware's settings. A clone being configured becomes a
    /// middleware of its own (same cache, fresh counters), so its clones keep theirs.
    fn configure(mut self, f: impl FnOnce(&mut Shared)) -> Self {
        if Arc::get_mut(&mut self.shared).is_none() {
            let s = &self.shared;
            self.shared = Arc::new(Shared {
                cache: s.cache.clone(),
                refresh: s.refresh.clone(),
                max_body: s.max_body,
                defaults: s.defaults,
                flights: Mutex::new(HashMap::new()),
                refreshing: Mutex::new(HashSet::new()),
                stats: Counters::default(),
            });
        }
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            f(shared);
        }
        self
    }

    /// Refreshes stale responses inside their `stale-while-revalidate` window in the
    /// background, through `client` (give it your retry and breaker, not this cache); the
    /// request that found the stale response is answered at once.
    pub fn refresh_with(self, client: ClientWithMiddleware) -> Self {
        self.configure(|s| s.refresh = Some(client))
    }

    /// The largest body stored (default 1 MiB). A larger response is passed on, unstored
    /// (one announced larger by `Content-Length` is not even buffered).
    pub fn max_body(self, bytes: usize) -> Self {
        self.configure(|s| s.max_body = bytes)
    }

    /// How long past its freshness a response may stand in for a failing origin when it
    /// does not say (`stale-if-error`); default none. `must-revalidate` still forbids it.
    pub fn stale_if_error(self, window: Duration) -> Self {
        self.configure(|s| s.defaults.stale_if_error = window)
    }

    /// Counters since this middleware was built.
    pub fn stats(&self) -> HttpCacheStats {
        let c = &self.shared.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        HttpCacheStats {
            hits: get(&c.hits),
            coalesced: get(&c.coalesced),
            stale_while_revalidate: get(&c.stale_while_revalidate),
            revalidated: get(&c.revalidated),
            stale_if_error: get(&c.stale_if_error),
            fetched: get(&c.fetched),
            stored: get(&c.stored),
        }
    }
}

/// Whether the cache leaves `req` alone.
fn passes_by(req: &Request, d: &Directives) -> bool {
    req.method() != Method::GET
        || d.no_store
        || BYPASS.iter().any(|h| req.headers().contains_key(h))
}

/// One request per URL at a time: the first caller leads; later ones wait for its end.
enum Flight {
    Lead(FlightGuard),
    Follow(watch::Receiver<()>),
}

/// Ends a flight when dropped (done, failed or cancelled): its waiters wake.
struct FlightGuard {
    shared: Arc<Shared>,
    key: String,
    _done: watch::Sender<()>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        lock(&self.shared.flights).remove(&self.key);
    }
}

impl Shared {
    fn flight(self: &Arc<Self>, key: &str) -> Flight {
        let mut flights = lock(&self.flights);
        if let Some(rx) = flights.get(key) {
            return Flight::Follow(rx.clone());
        }
        let (tx, rx) = watch::channel(());
        flights.insert(key.to_owned(), rx);
        Flight::Lead(FlightGuard {
            shared: self.clone(),
            key: key.to_owned(),
            _done: tx,
        })
    }

    /// The stored response for `key` that answers a request with `headers`.
    async fn lookup(&self, key: &String, headers: &HeaderMap) -> Option<StoredResponse> {
        self.cache.get(key).await.filter(|e| e.matches(headers))
    }
}

#[async_trait::async_trait]
impl Middleware for HttpCache {
    async fn handle(
        &self,
        req: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let asked = Directives::parse(req.headers());
        if passes_by(&req, &asked) {
            return next.run(req, extensions).await;
        }
        let revalidate = asked.no_cache || asked.max_age == Some(0);
        let shared = &self.shared;
        let key = req.url().as_str().to_owned();
        let mut waited = false;
        let guard = loop {
            let mut stored = shared.lookup(&key, req.headers()).await;
            let now = unix_ms(SystemTime::now());
            if !revalidate
                && stored.as_ref().is_some_and(|e| e.is_fresh(now))
                && let Some(resp) = stored.take().and_then(|e| e.into_response(req.url(), now))
            {
                bump(&shared.stats.hits);
                if waited {
                    bump(&shared.stats.coalesced);
                }
                return Ok(resp);
            }
            if shared.refresh.is_some()
                && let Some(e) =
                    stored.take_if(|e| !revalidate && e.may_serve_while_revalidating(now))
            {
                // One copy for the background refresh; the caller gets the stored one.
                let refresh = e.clone();
                if let Some(resp) = e.into_response(req.url(), now) {
                    bump(&shared.stats.stale_while_revalidate);
                    spawn_refresh(shared, key, &req, refresh);
                    return Ok(resp);
                }
            }
            match shared.flight(&key) {
                Flight::Follow(mut done) if !waited => {
                    // Wakes when the leader's request ends, however it ends.
                    let _ = done.changed().await;
                    waited = true;
                }
                Flight::Follow(_) => break None,
                Flight::Lead(guard) => break Some((guard, stored)),
            }
        };
        let (guard, stored) = match guard {
            Some((g, stored)) => (Some(g), stored),
            None => (None, shared.lookup(&key, req.headers()).await),
        };
        let answer = fetch(shared, key, stored, req, |req| next.run(req, extensions)).await;
        drop(guard);
        answer
    }
}

/// Starts one background refresh of `key` (none if one is running).
fn spawn_refresh(shared: &Arc<Shared>, key: String, req: &Request, stored: StoredResponse) {
    let Some(client) = shared.refresh.clone() else {
        return;
    };
    let Some(copy) = req.try_clone() else { return };
    if !lock(&shared.refreshing).insert(key.clone()) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        let done = key.clone();
        let _ = fetch(&shared, key, Some(stored), copy, |req| client.execute(req)).await;
        lock(&shared.refreshing).remove(&done);
    });
}

/// Sends `req` with `send` — conditional when `stored` has validators — and settles the
/// answer: a `304` refreshes `stored`, a `5xx` or a failure falls back to it inside its
/// `stale-if-error`, a storable response is stored.
async fn fetch<F, Fut>(
    shared: &Arc<Shared>,
    key: String,
    stored: Option<StoredResponse>,
    mut req: Request,
    send: F,
) -> reqwest_middleware::Result<Response>
where
    F: FnOnce(Request) -> Fut,
    Fut: std::future::Future<Output = reqwest_middleware::Result<Response>>,
{
    let url: Url = req.url().clone();
    let request_headers = req.headers().clone();
    if let Some(e) = &stored {
        for (name, value) in e.validators() {
            req.headers_mut().insert(name, value);
        }
    }
    bump(&shared.stats.fetched);
    let result = send(req).await;
    let now = unix_ms(SystemTime::now());
    let resp = match result {
        Ok(resp) if resp.status().is_server_error() => {
            return Ok(stale_on_error(shared, stored, &url, now).unwrap_or(resp));
        }
        Err(e) => return stale_on_error(shared, stored, &url, now).ok_or(e),
        Ok(resp) => resp,
    };
    if resp.status() == StatusCode::NOT_MODIFIED
        && let Some(e) = stored
    {
        let e = e.revalidated(resp.headers(), now, shared.defaults);
        // One copy to answer with, the other stored.
        if let Some(answer) = e.clone().into_response(&url, now) {
            shared.cache.set(key, e).await;
            // Counted once stored, so whoever reads the count finds the entry.
            bump(&shared.stats.revalidated);
            return Ok(answer);
        }
    }
    store(shared, key, resp, &request_headers, &url, now).await
}

/// `stored` in place of a failed origin, when its `stale-if-error` window allows.
fn stale_on_error(
    shared: &Shared,
    stored: Option<StoredResponse>,
    url: &Url,
    now: u64,
) -> Option<Response> {
    let resp = stored
        .filter(|e| e.may_serve_on_error(now))?
        .into_response(url, now)?;
    bump(&shared.stats.stale_if_error);
    Some(resp)
}

/// Stores `resp` if HTTP allows and it fits; answers it either way.
async fn store(
    shared: &Shared,
    key: String,
    resp: Response,
    request_headers: &HeaderMap,
    url: &Url,
    now: u64,
) -> reqwest_middleware::Result<Response> {
    let said = Directives::parse(resp.headers());
    let authorized = request_headers.contains_key(header::AUTHORIZATION);
    let too_big = resp
        .content_length()
        .is_some_and(|n| n > shared.max_body as u64);
    if too_big || !StoredResponse::may_store(resp.status(), resp.headers(), &said, authorized) {
        return Ok(resp);
    }
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = resp.bytes().await?.to_vec();
    let fits = body.len() <= shared.max_body;
    let stored = StoredResponse::new(
        status,
        &headers,
        body,
        request_headers,
        now,
        shared.defaults,
    );
    // One copy to answer with, the other stored.
    let answer = stored.clone().into_response(url, now);
    if fits && stored.worth_keeping() {
        shared.cache.set(key, stored).await;
        bump(&shared.stats.stored);
    }
    answer.ok_or_else(|| {
        reqwest_middleware::Error::middleware(std::io::Error::other(
            "a response could not be rebuilt",
        ))
    })
}
