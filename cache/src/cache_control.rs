//! HTTP caching's rules (RFC 9111 as a *shared* cache, with RFC 5861's stale extensions),
//! written once for the family: [`CacheControl`] parses the directives, [`may_store`] says
//! whether a response may be kept and [`lifetimes`] how long it is fresh and may be served
//! stale. The cache's [`HttpCacheLayer`](crate::http::HttpCacheLayer) decides what it stores
//! with them, and floodwall-reqwest's `HttpCache` stores responses with their lifetimes in a
//! [`TieredCache`](crate::TieredCache) through
//! [`get_or_revalidate`](crate::TieredCache::get_or_revalidate).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{self, CACHE_CONTROL, HeaderMap, HeaderName};

use crate::Lifetimes;

/// Whether a shared cache may store a response with `status` and `headers` to a request
/// (RFC 9111 §3, §3.5): a `200` without `no-store`, `private`, `Set-Cookie` or `Vary: *`;
/// for a request with `Authorization` (`authorized`), only one marked `public`, with
/// `s-maxage` or with `must-revalidate`.
///
/// ```
/// use floodwall_cache::http::may_store;
/// use http::header::{CACHE_CONTROL, HeaderMap, HeaderValue};
///
/// let mut h = HeaderMap::new();
/// h.insert(CACHE_CONTROL, HeaderValue::from_static("max-age=60"));
/// assert!(may_store(200, &h, false));
/// assert!(!may_store(200, &h, true), "a response to an authorized request, not public");
/// ```
pub fn may_store(status: u16, headers: &HeaderMap, authorized: bool) -> bool {
    let d = CacheControl::parse(headers);
    let vary_star = headers.get_all(header::VARY).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|n| n.trim_ascii() == b"*")
    });
    status == 200
        && !d.no_store
        && !d.private
        && !vary_star
        && !headers.contains_key(header::SET_COOKIE)
        && (!authorized || d.public || d.s_maxage.is_some() || d.must_revalidate)
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An HTTP date header as Unix milliseconds.
fn date_ms(headers: &HeaderMap, name: HeaderName) -> Option<u64> {
    let v = headers.get(name)?.to_str().ok()?;
    httpdate::parse_http_date(v).ok().map(unix_ms)
}

/// A response's age and lifetimes as its headers state them (RFC 9111 §4.2, RFC 5861).
///
/// **Formula:** `fresh = s-maxage`, else `max-age`, else `Expires − Date` (no heuristic
/// freshness), and `0` with `no-cache`; `swr = stale-while-revalidate` and
/// `sie = stale-if-error` (else `default_stale_if_error`), both `0` with `must-revalidate`;
/// `age` is the `Age` header. **Invariant:** at age `a` the response is fresh while
/// `a < fresh`, may be served while revalidating while `a < fresh + swr`, and may stand in
/// for a failed origin while `a < fresh + sie`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stated {
    /// The `Age` it arrived with.
    pub age: Duration,
    /// Fresh for this long from its birth.
    pub fresh: Duration,
    /// `stale-while-revalidate`.
    pub stale_while_revalidate: Duration,
    /// `stale-if-error`, or the default.
    pub stale_if_error: Duration,
}

/// What `headers` state about a response received at `now_ms` (Unix ms): see [`Stated`].
pub fn stated(headers: &HeaderMap, now_ms: u64, default_stale_if_error: Duration) -> Stated {
    let d = CacheControl::parse(headers);
    let secs = Duration::from_secs;
    let age = headers
        .get(header::AGE)
        .and_then(|v| v.to_str().ok()?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let fresh = match d.s_maxage.or(d.max_age) {
        Some(s) => secs(s),
        None => match date_ms(headers, header::EXPIRES) {
            Some(expires) => {
                let date = date_ms(headers, header::DATE).unwrap_or(now_ms);
                Duration::from_millis(expires.saturating_sub(date))
            }
            None => Duration::ZERO,
        },
    };
    let (swr, sie) = if d.must_revalidate {
        (Duration::ZERO, Duration::ZERO)
    } else {
        (
            d.stale_while_revalidate.map_or(Duration::ZERO, secs),
            d.stale_if_error.map_or(default_stale_if_error, secs),
        )
    };
    Stated {
        age: secs(age),
        fresh: if d.no_cache { Duration::ZERO } else { fresh },
        stale_while_revalidate: swr,
        stale_if_error: sie,
    }
}

impl Stated {
    /// Whether keeping the response can ever help without a validator: it is fresh for a
    /// while or may stand in stale.
    pub fn any(&self) -> bool {
        !(self.fresh.is_zero()
            && self.stale_while_revalidate.is_zero()
            && self.stale_if_error.is_zero())
    }

    /// The [`Lifetimes`] left at age `age` (how long from now it is fresh, then may be
    /// served while revalidating, or stand in for a failed origin), as a
    /// [`TieredCache`](crate::TieredCache) stores them.
    pub fn left_at(&self, age: Duration) -> Lifetimes {
        let fresh_end = self.fresh;
        let stale_from = age.max(fresh_end);
        Lifetimes {
            fresh: fresh_end.saturating_sub(age),
            stale_while_revalidate: fresh_end
                .saturating_add(self.stale_while_revalidate)
                .saturating_sub(stale_from),
            stale_if_error: fresh_end
                .saturating_add(self.stale_if_error)
                .saturating_sub(stale_from),
        }
    }
}

/// The `Cache-Control` directives a cache acts on (request or response). Directive names are
/// matched whole and without regard to case; unknown directives and bad numbers are ignored;
/// `private="…"` and `no-cache="…"` count as the bare directive (the stricter reading).
///
/// ```
/// use floodwall_cache::http::CacheControl;
///
/// let cc = CacheControl::parse_values([b"public, max-age=60, x-private-note".as_slice()]);
/// assert!(!cc.private, "a directive is matched whole, not as a substring");
/// assert_eq!(cc.max_age, Some(60));
/// ```
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheControl {
    /// `no-store`.
    pub no_store: bool,
    /// `no-cache`.
    pub no_cache: bool,
    /// `private`.
    pub private: bool,
    /// `public`.
    pub public: bool,
    /// `must-revalidate` or `proxy-revalidate`.
    pub must_revalidate: bool,
    /// `max-age`, in seconds.
    pub max_age: Option<u64>,
    /// `s-maxage`, in seconds.
    pub s_maxage: Option<u64>,
    /// `stale-while-revalidate`, in seconds.
    pub stale_while_revalidate: Option<u64>,
    /// `stale-if-error`, in seconds.
    pub stale_if_error: Option<u64>,
}

impl CacheControl {
    /// Every `Cache-Control` field of `headers`.
    pub fn parse(headers: &HeaderMap) -> CacheControl {
        CacheControl::parse_values(headers.get_all(CACHE_CONTROL).iter().map(|v| v.as_bytes()))
    }

    /// The directives of `Cache-Control` field values (one per field line).
    pub fn parse_values<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> CacheControl {
        let mut d = CacheControl::default();
        for value in values {
            let Ok(value) = std::str::from_utf8(value) else {
                continue;
            };
            for part in value.split(',') {
                d.apply(part);
            }
        }
        d
    }

    fn apply(&mut self, part: &str) {
        let (name, arg) = match part.split_once('=') {
            Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
            None => (part.trim(), None),
        };
        let secs = arg.and_then(|a| a.parse::<u64>().ok());
        let is = |s: &str| name.eq_ignore_ascii_case(s);
        if is("no-store") {
            self.no_store = true;
        } else if is("no-cache") {
            self.no_cache = true;
        } else if is("private") {
            self.private = true;
        } else if is("public") {
            self.public = true;
        } else if is("must-revalidate") || is("proxy-revalidate") {
            self.must_revalidate = true;
        } else if is("max-age") {
            self.max_age = secs.or(self.max_age);
        } else if is("s-maxage") {
            self.s_maxage = secs.or(self.s_maxage);
        } else if is("stale-while-revalidate") {
            self.stale_while_revalidate = secs.or(self.stale_while_revalidate);
        } else if is("stale-if-error") {
            self.stale_if_error = secs.or(self.stale_if_error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
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
        /// The lifetimes a cache stores at receipt make it fresh, servable while
        /// revalidating and a stand-in on error exactly when the model says, at any time
        /// after receipt.
        #[test]
        fn lifetimes_agree_with_the_model(m in model(), later_ms in 0u64..2_000_000) {
            let mut headers = HeaderMap::new();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_str(&m.header()).unwrap());
            headers.insert(header::AGE, HeaderValue::from(m.age));
            let s = stated(&headers, 10_000_000, Duration::from_secs(m.default_sie));
            prop_assert_eq!(s.age, Duration::from_secs(m.age));
            let life = s.left_at(s.age);
            let ms = |d: Duration| d.as_millis() as u64;
            let fresh = ms(life.fresh);
            let age = m.age * 1000 + later_ms;
            let (swr, sie) = m.stale_windows();
            prop_assert_eq!(later_ms < fresh, age < m.fresh_ms());
            prop_assert_eq!(later_ms < fresh + ms(life.stale_while_revalidate), age < m.fresh_ms() + swr);
            prop_assert_eq!(later_ms < fresh + ms(life.stale_if_error), age < m.fresh_ms() + sie);
        }
    }

    #[test]
    fn an_unbounded_default_stale_if_error_saturates() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("max-age=60"),
        );
        let s = stated(&h, 0, Duration::MAX);
        let life = s.left_at(Duration::from_secs(10));
        assert_eq!(life.fresh, Duration::from_secs(50));
        // Counted from the end of freshness (60 s), where it saturated.
        assert_eq!(life.stale_if_error, Duration::MAX - Duration::from_secs(60));
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
        assert_eq!(
            stated(&h, 0, Duration::ZERO).fresh,
            Duration::from_secs(100)
        );
    }
}
