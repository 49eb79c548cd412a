//! What HTTP caching (RFC 9111, as a *shared* cache, with RFC 5861's stale extensions) says
//! about a response: whether it may be stored, how long it is fresh, and how long it may be
//! served stale — and the stored form itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::ResponseBuilderExt;
use serde::{Deserialize, Serialize};

/// The `Cache-Control` directives (parsed by floodwall-cache, for every HTTP layer alike).
pub(crate) use floodwall_cache::http::CacheControl as Directives;

/// Headers about one connection, never stored.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Now, in milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn secs_ms(s: u64) -> u64 {
    s.saturating_mul(1000)
}

/// An HTTP date header as unix milliseconds.
fn date_ms(headers: &HeaderMap, name: HeaderName) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok().map(unix_ms)
}

/// A response as the cache keeps it (in memory and, through the `TieredCache`'s Redis tier,
/// for every instance): status, headers, body, when it was generated and its three
/// lifetimes.
///
/// **Invariant:** with `age = now − born`, the response is *fresh* while `age < fresh`,
/// may be served while revalidating in the background while `age < fresh + swr`, and may
/// stand in for a failed origin while `age < fresh + sie`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// When the origin generated it (received time minus its `Age`), unix milliseconds.
    born_ms: u64,
    fresh_ms: u64,
    swr_ms: u64,
    sie_ms: u64,
    /// The request header values it was chosen by (its `Vary`), `None` when absent.
    vary: Vec<(String, Option<Vec<u8>>)>,
}

/// What a cache owner decides for responses that say nothing.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Defaults {
    pub(crate) stale_if_error: Duration,
}

impl StoredResponse {
    /// The response's status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The response's body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Whether a response with these parts may be stored for a request: a `200` without
    /// `no-store`, `private`, `Set-Cookie` or `Vary: *`; for a request with
    /// `Authorization`, only when the response is `public`, has `s-maxage` or
    /// `must-revalidate` (RFC 9111 §3.5).
    pub(crate) fn may_store(
        status: StatusCode,
        headers: &HeaderMap,
        d: &Directives,
        authorized: bool,
    ) -> bool {
        let vary_star = headers.get_all(header::VARY).iter().any(|v| {
            v.as_bytes()
                .split(|&b| b == b',')
                .any(|n| n.trim_ascii() == b"*")
        });
        status == StatusCode::OK
            && !d.no_store
            && !d.private
            && !vary_star
            && !headers.contains_key(header::SET_COOKIE)
            && (!authorized || d.public || d.s_maxage.is_some() || d.must_revalidate)
    }

    /// The stored form of a response received at `now_ms` for a request with
    /// `request_headers`.
    pub(crate) fn new(
        status: StatusCode,
        headers: &HeaderMap,
        body: Vec<u8>,
        request_headers: &HeaderMap,
        now_ms: u64,
        defaults: Defaults,
    ) -> Self {
        let vary = headers
            .get_all(header::VARY)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|n| n.trim().to_ascii_lowercase())
            .filter(|n| !n.is_empty())
            .map(|n| {
                let value = request_headers
                    .get(n.as_str())
                    .map(|v| v.as_bytes().to_vec());
                (n, value)
            })
            .collect();
        let mut stored = StoredResponse {
            status: status.as_u16(),
            headers: Vec::new(),
            body,
            born_ms: 0,
            fresh_ms: 0,
            swr_ms: 0,
            sie_ms: 0,
            vary,
        };
        stored.take_headers(headers, false, now_ms, defaults);
        stored
    }

    /// Takes `headers` (all of a `200`'s, or those a `304` updates) and recomputes the
    /// lifetimes from the result, as received at `now_ms`.
    fn take_headers(&mut self, headers: &HeaderMap, update: bool, now_ms: u64, defaults: Defaults) {
        // Hop-by-hop headers describe one connection, not the response; a `304`'s
        // `Content-Length` is not the stored body's (RFC 9111 §3.2).
        let kept = |name: &HeaderName| {
            let stale_length = update && name == header::CONTENT_LENGTH;
            !(HOP_BY_HOP.contains(&name.as_str()) || stale_length)
        };
        for name in headers.keys().filter(|n| kept(n)) {
            self.headers
                .retain(|(n, _)| !n.eq_ignore_ascii_case(name.as_str()));
        }
        for (name, value) in headers.iter().filter(|(n, _)| kept(n)) {
            self.headers
                .push((name.as_str().to_owned(), value.as_bytes().to_vec()));
        }
        let all = self.header_map();
        let d = Directives::parse(&all);
        let age = all
            .get(header::AGE)
            .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
            .unwrap_or(0);
        self.born_ms = now_ms.saturating_sub(secs_ms(age));
        // Freshness: s-maxage, else max-age, else Expires − Date (RFC 9111 §4.2.1); no
        // heuristic freshness.
        self.fresh_ms = match d.s_maxage.or(d.max_age) {
            Some(s) => secs_ms(s),
            None => match date_ms(&all, header::EXPIRES) {
                Some(expires) => {
                    let date = date_ms(&all, header::DATE).unwrap_or(now_ms);
                    expires.saturating_sub(date)
                }
                None => 0,
            },
        };
        if d.no_cache {
            self.fresh_ms = 0;
        }
        let (swr, sie) = if d.must_revalidate {
            (0, 0)
        } else {
            let default_sie =
                u64::try_from(defaults.stale_if_error.as_millis()).unwrap_or(u64::MAX);
            (
                d.stale_while_revalidate.map_or(0, secs_ms),
                d.stale_if_error.map_or(default_sie, secs_ms),
            )
        };
        self.swr_ms = swr;
        self.sie_ms = sie;
    }

    /// This response updated by a `304 Not Modified` received at `now_ms`.
    pub(crate) fn revalidated(
        mut self,
        not_modified: &HeaderMap,
        now_ms: u64,
        defaults: Defaults,
    ) -> Self {
        self.take_headers(not_modified, true, now_ms, defaults);
        self
    }

    /// Whether keeping it can ever help: it is fresh for a while, may stand in stale, or can
    /// be revalidated.
    pub(crate) fn worth_keeping(&self) -> bool {
        self.fresh_ms > 0
            || self.swr_ms > 0
            || self.sie_ms > 0
            || self.validators().next().is_some()
    }

    fn header(&self, name: &HeaderName) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name.as_str()))
            .map(|(_, v)| v.as_slice())
    }

    /// The conditional headers that revalidate it: `If-None-Match` from its `ETag`,
    /// `If-Modified-Since` from its `Last-Modified`.
    pub(crate) fn validators(&self) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let etag = self
            .header(&header::ETAG)
            .and_then(|v| HeaderValue::from_bytes(v).ok())
            .map(|v| (header::IF_NONE_MATCH, v));
        let modified = self
            .header(&header::LAST_MODIFIED)
            .and_then(|v| HeaderValue::from_bytes(v).ok())
            .map(|v| (header::IF_MODIFIED_SINCE, v));
        etag.into_iter().chain(modified)
    }

    /// Whether it answers a request with these headers (its `Vary` headers match).
    pub(crate) fn matches(&self, request_headers: &HeaderMap) -> bool {
        self.vary.iter().all(|(name, want)| {
            let have = request_headers
                .get(name.as_str())
                .map(HeaderValue::as_bytes);
            have == want.as_deref()
        })
    }

    /// How old it is at `now_ms`.
    pub(crate) fn age_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.born_ms)
    }

    pub(crate) fn is_fresh(&self, now_ms: u64) -> bool {
        self.age_ms(now_ms) < self.fresh_ms
    }

    pub(crate) fn may_serve_while_revalidating(&self, now_ms: u64) -> bool {
        self.age_ms(now_ms) < self.fresh_ms.saturating_add(self.swr_ms)
    }

    pub(crate) fn may_serve_on_error(&self, now_ms: u64) -> bool {
        self.age_ms(now_ms) < self.fresh_ms.saturating_add(self.sie_ms)
    }

    fn header_map(&self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.headers.len());
        for (n, v) in &self.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_bytes(v),
            ) {
                map.append(n, v);
            }
        }
        map
    }

    /// The response to hand out at `now_ms` for `url`, with its `Age`; `None` when the stored
    /// status is not a valid one (bytes from Redis are not trusted).
    pub(crate) fn into_response(
        self,
        url: &reqwest::Url,
        now_ms: u64,
    ) -> Option<reqwest::Response> {
        let status = StatusCode::from_u16(self.status).ok()?;
        let mut headers = self.header_map();
        headers.insert(header::AGE, HeaderValue::from(self.age_ms(now_ms) / 1000));
        let mut builder = http::Response::builder().status(status).url(url.clone());
        if let Some(h) = builder.headers_mut() {
            *h = headers;
        }
        builder.body(self.body).ok().map(reqwest::Response::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The reference: RFC 9111/5861 lifetimes written out directly.
    #[derive(Debug, Clone, Copy)]
    struct Model {
        max_age: Option<u64>,
        s_maxage: Option<u64>,
        swr: Option<u64>,
        sie: Option<u64>,
        no_cache: bool,
        must_revalidate: bool,
        age: u64,
        default_sie: u64,
    }

    impl Model {
        fn fresh_ms(&self) -> u64 {
            match (self.no_cache, self.s_maxage.or(self.max_age)) {
                (true, _) | (false, None) => 0,
                (false, Some(s)) => s * 1000,
            }
        }
        fn stale_windows(&self) -> (u64, u64) {
            if self.must_revalidate {
                return (0, 0);
            }
            (
                self.swr.unwrap_or(0) * 1000,
                self.sie.map_or(self.default_sie * 1000, |s| s * 1000),
            )
        }
        fn header(&self) -> String {
            let mut parts = Vec::new();
            let mut push = |name: &str, v: Option<u64>| {
                if let Some(v) = v {
                    parts.push(format!("{name}={v}"));
                }
            };
            push("max-age", self.max_age);
            push("s-maxage", self.s_maxage);
            push("stale-while-revalidate", self.swr);
            push("stale-if-error", self.sie);
            if self.no_cache {
                parts.push("no-cache".into());
            }
            if self.must_revalidate {
                parts.push("must-revalidate".into());
            }
            parts.join(", ")
        }
    }

    fn model() -> impl Strategy<Value = Model> {
        let secs = || proptest::option::of(0u64..1000);
        (
            secs(),
            secs(),
            secs(),
            secs(),
            any::<bool>(),
            any::<bool>(),
            0u64..500,
            0u64..100,
        )
            .prop_map(
                |(max_age, s_maxage, swr, sie, no_cache, must_revalidate, age, default_sie)| {
                    Model {
                        max_age,
                        s_maxage,
                        swr,
                        sie,
                        no_cache,
                        must_revalidate,
                        age,
                        default_sie,
                    }
                },
            )
    }

    proptest! {
        /// Freshness and both stale windows agree with the model at any time after receipt.
        #[test]
        fn lifetimes_agree_with_the_model(m in model(), later_ms in 0u64..2_000_000) {
            let mut headers = HeaderMap::new();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_str(&m.header()).unwrap());
            headers.insert(header::AGE, HeaderValue::from(m.age));
            let received = 10_000_000;
            let defaults = Defaults { stale_if_error: Duration::from_secs(m.default_sie) };
            let r = StoredResponse::new(StatusCode::OK, &headers, vec![], &HeaderMap::new(), received, defaults);
            let now = received + later_ms;
            let age = m.age * 1000 + later_ms;
            let (swr, sie) = m.stale_windows();
            prop_assert_eq!(r.is_fresh(now), age < m.fresh_ms());
            prop_assert_eq!(r.may_serve_while_revalidating(now), age < m.fresh_ms() + swr);
            prop_assert_eq!(r.may_serve_on_error(now), age < m.fresh_ms() + sie);
        }

        /// A `304` keeps the body and takes the new lifetimes; it never takes the `304`'s
        /// `Content-Length`.
        #[test]
        fn a_304_refreshes_lifetimes_and_keeps_the_body(first in model(), second in model()) {
            let mut h1 = HeaderMap::new();
            h1.insert(header::CACHE_CONTROL, HeaderValue::from_str(&first.header()).unwrap());
            h1.insert(header::CONTENT_LENGTH, HeaderValue::from(4));
            h1.insert(header::ETAG, HeaderValue::from_static("\"a\""));
            let defaults = Defaults { stale_if_error: Duration::ZERO };
            let r = StoredResponse::new(StatusCode::OK, &h1, b"body".to_vec(), &HeaderMap::new(), 0, defaults);
            let mut h2 = HeaderMap::new();
            h2.insert(header::CACHE_CONTROL, HeaderValue::from_str(&second.header()).unwrap());
            h2.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
            let r = r.revalidated(&h2, 5_000, defaults);
            let plain = Model { age: 0, default_sie: 0, ..second };
            prop_assert_eq!(r.body(), b"body");
            prop_assert_eq!(r.header(&header::CONTENT_LENGTH), Some(&b"4"[..]));
            prop_assert_eq!(r.is_fresh(5_000), plain.fresh_ms() > 0);
            prop_assert!(r.validators().next().is_some(), "the ETag is kept");
        }
    }

    #[test]
    fn expires_minus_date_is_the_freshness_without_max_age() {
        let mut h = HeaderMap::new();
        h.insert(
            header::DATE,
            HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"),
        );
        h.insert(
            header::EXPIRES,
            HeaderValue::from_static("Wed, 21 Oct 2026 07:29:40 GMT"),
        );
        let d = Defaults {
            stale_if_error: Duration::ZERO,
        };
        let r = StoredResponse::new(StatusCode::OK, &h, vec![], &HeaderMap::new(), 0, d);
        assert!(r.is_fresh(99_999));
        assert!(!r.is_fresh(100_000));
    }

    #[test]
    fn what_may_not_be_stored() {
        let d = |cc: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_str(cc).unwrap());
            (Directives::parse(&h), h)
        };
        let (ok, h) = d("max-age=60");
        assert!(StoredResponse::may_store(StatusCode::OK, &h, &ok, false));
        assert!(!StoredResponse::may_store(
            StatusCode::CREATED,
            &h,
            &ok,
            false
        ));
        assert!(
            !StoredResponse::may_store(StatusCode::OK, &h, &ok, true),
            "authorized"
        );
        let (public, h) = d("public, max-age=60");
        assert!(StoredResponse::may_store(StatusCode::OK, &h, &public, true));
        for cc in [
            "no-store",
            "private",
            "private=\"x-user\", max-age=60",
            "NO-STORE",
        ] {
            let (d, h) = d(cc);
            assert!(
                !StoredResponse::may_store(StatusCode::OK, &h, &d, false),
                "{cc}"
            );
        }
        let (ok, mut h) = d("max-age=60");
        h.insert(header::VARY, HeaderValue::from_static("accept, *"));
        assert!(
            !StoredResponse::may_store(StatusCode::OK, &h, &ok, false),
            "Vary: *"
        );
    }
}
