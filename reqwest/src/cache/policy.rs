//! A response as the cache keeps it: its parts, when it was born, the request headers it was
//! chosen by (`Vary`), its validators, and the merge of a `304`'s headers. What HTTP says
//! about storing and lifetimes is floodwall-cache's ([`floodwall_cache::http::may_store`],
//! [`floodwall_cache::http::stated`]); when to serve it is the `TieredCache`'s.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floodwall_cache::Lifetimes;
use floodwall_cache::http::{Stated, stated};
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

/// A response as the cache keeps it (in memory and, through the `TieredCache`'s Redis tier,
/// for every instance): status, headers, body, when it was generated, and the request
/// header values its `Vary` chose it by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Vec<u8>,
    /// When the origin generated it (received time minus its `Age`), Unix milliseconds.
    born_ms: u64,
    /// The request header values it was chosen by (its `Vary`), `None` when absent.
    vary: Vec<(String, Option<Vec<u8>>)>,
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

    /// The stored form of a response received at `now_ms` for a request with
    /// `request_headers`.
    pub(crate) fn new(
        status: StatusCode,
        headers: &HeaderMap,
        body: Vec<u8>,
        request_headers: &HeaderMap,
        now_ms: u64,
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
            vary,
        };
        stored.take_headers(headers, false, now_ms);
        stored
    }

    /// Takes `headers` (all of a `200`'s, or those a `304` updates) as received at `now_ms`.
    fn take_headers(&mut self, headers: &HeaderMap, update: bool, now_ms: u64) {
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
        let age = self.stated(now_ms, Duration::ZERO).age;
        self.born_ms = now_ms.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
    }

    /// This response updated by a `304 Not Modified` received at `now_ms`.
    pub(crate) fn revalidated(mut self, not_modified: &HeaderMap, now_ms: u64) -> Self {
        self.take_headers(not_modified, true, now_ms);
        self
    }

    /// What its headers state (with `default_stale_if_error` where they say nothing).
    pub(crate) fn stated(&self, now_ms: u64, default_stale_if_error: Duration) -> Stated {
        stated(&self.header_map(), now_ms, default_stale_if_error)
    }

    /// Its lifetimes left at `now_ms`, as the cache stores them.
    pub(crate) fn lifetimes(&self, now_ms: u64, default_stale_if_error: Duration) -> Lifetimes {
        let age = Duration::from_millis(self.age_ms(now_ms));
        self.stated(now_ms, default_stale_if_error).left_at(age)
    }

    /// Whether keeping it can ever help: it is fresh for a while, may stand in stale, or can
    /// be revalidated.
    pub(crate) fn worth_keeping(&self, now_ms: u64, default_stale_if_error: Duration) -> bool {
        self.stated(now_ms, default_stale_if_error).any() || self.validators().next().is_some()
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

    /// Whether it answers a request with these headers: its `Vary` headers match, and its
    /// status is a valid one (bytes from Redis are not trusted).
    pub(crate) fn answers(&self, request_headers: &HeaderMap) -> bool {
        StatusCode::from_u16(self.status).is_ok()
            && self.vary.iter().all(|(name, want)| {
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
    use floodwall_cache::http::may_store;

    /// A `304` keeps the body and the stored `Content-Length`, takes the new lifetimes and
    /// keeps the validator.
    #[test]
    fn a_304_refreshes_lifetimes_and_keeps_the_body() {
        let mut h1 = HeaderMap::new();
        h1.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        h1.insert(header::CONTENT_LENGTH, HeaderValue::from(4));
        h1.insert(header::ETAG, HeaderValue::from_static("\"a\""));
        let r = StoredResponse::new(StatusCode::OK, &h1, b"body".to_vec(), &HeaderMap::new(), 0);
        assert_eq!(r.lifetimes(0, Duration::ZERO).fresh, Duration::ZERO);
        let mut h2 = HeaderMap::new();
        h2.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        h2.insert(header::CONTENT_LENGTH, HeaderValue::from(0));
        let r = r.revalidated(&h2, 5_000);
        assert_eq!(r.body(), b"body");
        assert_eq!(r.header(&header::CONTENT_LENGTH), Some(&b"4"[..]));
        assert_eq!(
            r.lifetimes(5_000, Duration::ZERO).fresh,
            Duration::from_secs(60)
        );
        assert_eq!(
            r.lifetimes(15_000, Duration::ZERO).fresh,
            Duration::from_secs(50)
        );
        assert!(r.validators().next().is_some(), "the ETag is kept");
    }

    #[test]
    fn vary_chooses_the_requests_a_response_answers() {
        let mut h = HeaderMap::new();
        h.insert(header::VARY, HeaderValue::from_static("Accept-Language"));
        let mut asked = HeaderMap::new();
        asked.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("fr"));
        let r = StoredResponse::new(StatusCode::OK, &h, vec![], &asked, 0);
        assert!(r.answers(&asked));
        assert!(!r.answers(&HeaderMap::new()));
        asked.insert(header::ACCEPT_LANGUAGE, HeaderValue::from_static("de"));
        assert!(!r.answers(&asked));
    }

    #[test]
    fn what_may_not_be_stored() {
        let h = |cc: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_str(cc).unwrap());
            h
        };
        assert!(may_store(200, &h("max-age=60"), false));
        assert!(!may_store(201, &h("max-age=60"), false));
        assert!(!may_store(200, &h("max-age=60"), true), "authorized");
        assert!(may_store(200, &h("public, max-age=60"), true));
        for cc in [
            "no-store",
            "private",
            "private=\"x-user\", max-age=60",
            "NO-STORE",
        ] {
            assert!(!may_store(200, &h(cc), false), "{cc}");
        }
        let mut vary = h("max-age=60");
        vary.insert(header::VARY, HeaderValue::from_static("accept, *"));
        assert!(!may_store(200, &vary, false), "Vary: *");
    }
}
