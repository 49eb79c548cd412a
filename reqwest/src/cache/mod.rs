//! [`HttpCache`]: a response cache for `GET`s, kept in a floodwall
//! [`TieredCache`] — in process, or shared by every instance through its Redis tier.
//!
//! Only HTTP lives here: which requests pass by, the request and response mapping, the
//! validators of a revalidation, `Vary`. What may be stored and for how long is
//! floodwall-cache's RFC 9111 policy ([`floodwall_cache::http`]); when an entry is served,
//! coalesced, refreshed in the background or stands in for a failure is the
//! [`TieredCache`]'s revalidating load ([`TieredCache::get_or_revalidate`]).

mod policy;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use floodwall_cache::http::may_store;
use floodwall_cache::{Refresh, Revalidated, Revalidation, Served, TieredCache};
use http::header::{self, HeaderMap};
use http::{Extensions, Method, StatusCode};
use reqwest::{Request, Response, Url};
use reqwest_middleware::{ClientWithMiddleware, Middleware, Next};

pub use policy::StoredResponse;
use policy::{Directives, unix_ms};

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
///
/// Each rule but the HTTP ones is the [`TieredCache`]'s: the response is stored with the
/// lifetimes its headers state, and [`TieredCache::get_or_revalidate`] serves, coalesces,
/// refreshes and stands in — so the cache's own [`stats`](TieredCache::stats) count this
/// middleware's hits, loads and `304`s (`revalidated`) too.
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
    default_stale_if_error: Duration,
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

impl HttpCache {
    /// Caches responses in `cache`. Build it with a long `ttl` (how long a response is kept
    /// at all) and, to share responses between instances, its Redis tier.
    pub fn new(cache: TieredCache<String, StoredResponse>) -> Self {
        HttpCache {
            shared: Arc::new(Shared {
                cache,
                refresh: None,
                max_body: 1 << 20,
                default_stale_if_error: Duration::ZERO,
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
                default_stale_if_error: s.default_stale_if_error,
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
        self.configure(|s| s.default_stale_if_error = window)
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

/// What one request to the origin came to, for its caller: the response (or error) and
/// what to count once the cache has settled it.
struct Fetch {
    answer: reqwest_middleware::Result<Response>,
    counted: Option<fn(&Counters) -> &AtomicU64>,
    /// The request's URL, when the origin failed (a stored response may answer for it).
    url: Option<Url>,
}

impl Fetch {
    fn plain(answer: reqwest_middleware::Result<Response>) -> Self {
        Fetch {
            answer,
            counted: None,
            url: None,
        }
    }

    fn failed(answer: reqwest_middleware::Result<Response>, url: Url) -> Self {
        Fetch {
            answer,
            counted: None,
            url: Some(url),
        }
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
        let shared = &self.shared;
        let want = Revalidation {
            force: asked.no_cache || asked.max_age == Some(0),
            in_background: shared.refresh.is_some(),
        };
        let key = req.url().as_str().to_owned();
        // The request, lent to `accept` (its `Vary` headers) until the loader takes it: a
        // hit copies none of it. Never contended: this call's own closures use it, in turn.
        let slot = Mutex::new(Some(req));
        let taken = || slot.lock().unwrap_or_else(PoisonError::into_inner).take();
        let served = shared
            .cache
            .get_or_revalidate(
                key,
                |e: &StoredResponse| {
                    let held = slot.lock().unwrap_or_else(PoisonError::into_inner);
                    held.as_ref().is_some_and(|r| e.answers(r.headers()))
                },
                want,
                |stored| async {
                    match taken() {
                        Some(req) => {
                            fetch(shared, stored, req, |req| next.run(req, extensions)).await
                        }
                        None => Revalidated::Passed(Fetch::plain(Err(unbuildable()))),
                    }
                },
            )
            .await;
        let now = unix_ms(SystemTime::now());
        let stats = &shared.stats;
        let (stored, failed) = match served {
            Served::Loaded(fetch) => {
                if let Some(counter) = fetch.counted {
                    bump(counter(stats));
                }
                return fetch.answer;
            }
            Served::StaleIfError(e, fetch) => {
                bump(&stats.stale_if_error);
                (e, Some(fetch))
            }
            Served::Fresh(e) => {
                bump(&stats.hits);
                (e, None)
            }
            Served::Coalesced(e) => {
                bump(&stats.hits);
                bump(&stats.coalesced);
                (e, None)
            }
            Served::StaleWhileRevalidate(e, refresh) => {
                bump(&stats.stale_while_revalidate);
                let held = slot.lock().unwrap_or_else(PoisonError::into_inner);
                if let (Some(refresh), Some(req)) = (refresh, held.as_ref()) {
                    spawn_refresh(shared, refresh, req);
                }
                (e, None)
            }
        };
        // The URL to answer for: the failed load's, else the request's (not loaded).
        let req = taken();
        let url = match (&failed, &req) {
            (Some(fetch), _) => fetch.url.as_ref(),
            (None, Some(req)) => Some(req.url()),
            (None, None) => None,
        };
        url.and_then(|url| stored.into_response(url, now))
            .ok_or_else(unbuildable)
    }
}

/// Runs `refresh` (a stale response's one background refresh) of `req` through the
/// middleware's refresh client.
fn spawn_refresh(shared: &Arc<Shared>, refresh: Refresh<String, StoredResponse>, req: &Request) {
    let Some(client) = shared.refresh.clone() else {
        return;
    };
    let mut copy = Request::new(Method::GET, req.url().clone());
    *copy.headers_mut() = req.headers().clone();
    let shared = shared.clone();
    tokio::spawn(async move {
        let served = refresh
            .run(|stored| fetch(&shared, stored, copy, |req| client.execute(req)))
            .await;
        if let Served::Loaded(Fetch {
            counted: Some(counter),
            ..
        }) = served
        {
            bump(counter(&shared.stats));
        }
    });
}

fn unbuildable() -> reqwest_middleware::Error {
    reqwest_middleware::Error::middleware(std::io::Error::other("a response could not be rebuilt"))
}

/// Sends `req` with `send` — conditional when `stored` has validators — and says what the
/// cache should do with the answer: a `304` keeps `stored` with new lifetimes, a `5xx` or a
/// failure is a failed load, a storable response is stored.
async fn fetch<F, Fut>(
    shared: &Shared,
    stored: Option<StoredResponse>,
    mut req: Request,
    send: F,
) -> Revalidated<StoredResponse, Fetch>
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
    let sie = shared.default_stale_if_error;
    let resp = match result {
        Ok(resp) if resp.status().is_server_error() => {
            return Revalidated::Failed(Fetch::failed(Ok(resp), url));
        }
        Err(e) => return Revalidated::Failed(Fetch::failed(Err(e), url)),
        Ok(resp) => resp,
    };
    if resp.status() == StatusCode::NOT_MODIFIED
        && let Some(e) = stored
    {
        let e = e.revalidated(resp.headers(), now);
        let answer = e.clone().into_response(&url, now).ok_or_else(unbuildable);
        let life = e.lifetimes(now, sie);
        let fetch = Fetch {
            answer,
            counted: Some(|c| &c.revalidated),
            url: None,
        };
        return Revalidated::Unchanged(e, life, fetch);
    }
    store(shared, resp, &request_headers, &url, now).await
}

/// Stores `resp` if HTTP allows and it fits; answers it either way.
async fn store(
    shared: &Shared,
    resp: Response,
    request_headers: &HeaderMap,
    url: &Url,
    now: u64,
) -> Revalidated<StoredResponse, Fetch> {
    let authorized = request_headers.contains_key(header::AUTHORIZATION);
    let too_big = resp
        .content_length()
        .is_some_and(|n| n > shared.max_body as u64);
    if too_big || !may_store(resp.status().as_u16(), resp.headers(), authorized) {
        return Revalidated::Passed(Fetch::plain(Ok(resp)));
    }
    let (status, headers) = (resp.status(), resp.headers().clone());
    let body = match resp.bytes().await {
        Ok(body) => body.to_vec(),
        Err(e) => return Revalidated::Passed(Fetch::plain(Err(e.into()))),
    };
    let fits = body.len() <= shared.max_body;
    let stored = StoredResponse::new(status, &headers, body, request_headers, now);
    // One copy to answer with, the other stored.
    let answer = stored
        .clone()
        .into_response(url, now)
        .ok_or_else(unbuildable);
    let sie = shared.default_stale_if_error;
    if fits && stored.worth_keeping(now, sie) {
        let life = stored.lifetimes(now, sie);
        let fetch = Fetch {
            answer,
            counted: Some(|c| &c.stored),
            url: None,
        };
        return Revalidated::Stored(stored, life, fetch);
    }
    Revalidated::Passed(Fetch::plain(answer))
}
