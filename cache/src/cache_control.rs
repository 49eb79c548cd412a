//! `Cache-Control` (RFC 9111 §5.2, with RFC 5861's stale extensions), parsed once for the
//! family: the cache's HTTP layer decides what it may store with it, and floodwall-reqwest's
//! `HttpCache` computes lifetimes with it.

use http::header::{CACHE_CONTROL, HeaderMap};

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
