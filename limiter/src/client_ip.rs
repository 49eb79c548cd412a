//! The client's address behind proxies (feature `http`): [`ClientIp`] believes `Forwarded` /
//! `X-Forwarded-For` only when the connection comes from a configured proxy range.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;

use http::{Extensions, HeaderMap, Request};

use crate::layer::{Descriptor, KeyExtractor};

/// An address range in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

/// A string that is not an address range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an IP address range: {0:?}")]
pub struct InvalidRange(pub String);

impl FromStr for IpRange {
    type Err = InvalidRange;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || InvalidRange(s.to_owned());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.trim().parse::<u8>().map_err(|_| bad())?,
            None => max,
        };
        if prefix > max {
            return Err(bad());
        }
        Ok(IpRange { addr, prefix })
    }
}

impl IpRange {
    /// Whether `ip` is in the range (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

type PeerFn = Arc<dyn Fn(&Extensions) -> Option<IpAddr> + Send + Sync>;

/// Finds a request's client address, for per-IP limits.
///
/// The peer address of the connection comes from the request's extensions: a
/// [`SocketAddr`] or [`IpAddr`] by default (set one in your accept loop), or whatever
/// [`peer_address`](Self::peer_address) reads (axum: its `ConnectInfo<SocketAddr>`).
///
/// If the peer is one of the trusted proxies, the forwarding chain is read — `Forwarded`'s
/// `for=` values if the header is present, else `X-Forwarded-For` — from the right: trusted
/// proxies are skipped and the first other address is the client. A peer that is not a
/// trusted proxy is the client, whatever headers it sends, so a client cannot pick its own
/// key. With no trusted proxy configured, headers are never read.
///
/// IPv6 clients can be keyed by their prefix ([`ipv6_prefix`](Self::ipv6_prefix), e.g. 64),
/// since one host often holds a whole /64.
///
/// ```
/// use std::net::{IpAddr, SocketAddr};
/// use floodwall_limiter::http::ClientIp;
///
/// let client_ip = ClientIp::new().trust_proxies(["10.0.0.0/8"]).unwrap();
/// let mut req = http::Request::new(());
/// req.headers_mut().insert("x-forwarded-for", "198.51.100.7, 10.1.1.1".parse().unwrap());
/// req.extensions_mut().insert("10.0.0.2:51000".parse::<SocketAddr>().unwrap());
/// assert_eq!(client_ip.ip(&req), Some("198.51.100.7".parse::<IpAddr>().unwrap()));
///
/// // The same headers from a peer that is not a trusted proxy are ignored.
/// req.extensions_mut().insert("203.0.113.5:40000".parse::<SocketAddr>().unwrap());
/// assert_eq!(client_ip.ip(&req), Some("203.0.113.5".parse::<IpAddr>().unwrap()));
/// ```
#[derive(Clone)]
pub struct ClientIp {
    trusted: Arc<[IpRange]>,
    peer: PeerFn,
    v6_prefix: u8,
    entry: &'static str,
    header: ForwardedHeader,
}

/// Which header the trusted proxies write the client's address into. Only that header is
/// read: the other one is whatever the client sent, and never believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For` (nginx's `$proxy_add_x_forwarded_for`, AWS ALB, most CDNs): the
    /// default.
    #[default]
    XForwardedFor,
    /// `Forwarded` (RFC 7239), its `for=` parameters.
    Forwarded,
}

impl Default for ClientIp {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientIp {
    /// Trusts no proxy: the client is the connection's peer. Adds the entry `"ip"`.
    pub fn new() -> Self {
        ClientIp {
            trusted: Arc::from([]),
            peer: Arc::new(|ext: &Extensions| {
                ext.get::<SocketAddr>()
                    .map(SocketAddr::ip)
                    .or_else(|| ext.get::<IpAddr>().copied())
            }),
            v6_prefix: 128,
            entry: "ip",
            header: ForwardedHeader::XForwardedFor,
        }
    }

    /// The header the trusted proxies set (default `X-Forwarded-For`). Only it is read.
    pub fn forwarded_header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// Trusts these proxy address ranges (CIDR strings).
    pub fn trust_proxies<I, S>(mut self, ranges: I) -> Result<Self, InvalidRange>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut all: Vec<IpRange> = self.trusted.to_vec();
        for r in ranges {
            all.push(r.as_ref().parse()?);
        }
        self.trusted = all.into();
        Ok(self)
    }

    /// Reads the connection's peer address with `f` instead of looking for a `SocketAddr` /
    /// `IpAddr` extension.
    pub fn peer_address(
        mut self,
        f: impl Fn(&Extensions) -> Option<IpAddr> + Send + Sync + 'static,
    ) -> Self {
        self.peer = Arc::new(f);
        self
    }

    /// Keys IPv6 clients by their first `bits` bits (e.g. 64).
    pub fn ipv6_prefix(mut self, bits: u8) -> Self {
        self.v6_prefix = bits.min(128);
        self
    }

    /// The descriptor entry name (default `"ip"`).
    pub fn entry(mut self, name: &'static str) -> Self {
        self.entry = name;
        self
    }

    fn trusted(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|r| r.contains(ip))
    }

    /// The client's address, or `None` when the request carries no peer address.
    pub fn ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = (self.peer)(req.extensions())?.to_canonical();
        if self.trusted.is_empty() || !self.trusted(peer) {
            return Some(peer);
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => x_forwarded_for(req.headers()),
            ForwardedHeader::Forwarded => forwarded(req.headers()),
        };
        let mut last_trusted = peer;
        for hop in hops.iter().rev() {
            match hop {
                Some(ip) if self.trusted(*ip) => last_trusted = *ip,
                Some(ip) => return Some(*ip),
                // A hop a trusted proxy reported but we cannot read ("unknown", an obfuscated
                // name): that proxy stands in for the client. (What a client sends stands to
                // the left of what the trusted proxies appended, and is never reached.)
                None => return Some(last_trusted),
            }
        }
        Some(last_trusted)
    }

    /// The key for the client: its address, IPv6 cut to the configured prefix.
    pub fn key<B>(&self, req: &Request<B>) -> Option<String> {
        let ip = self.ip(req)?;
        Some(match ip {
            IpAddr::V6(v6) if self.v6_prefix < 128 => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.v6_prefix))
                    .unwrap_or(0);
                format!(
                    "{}/{}",
                    Ipv6Addr::from(u128::from(v6) & mask),
                    self.v6_prefix
                )
            }
            ip => ip.to_string(),
        })
    }
}

impl<B> KeyExtractor<Request<B>> for ClientIp {
    fn extract(&self, req: &Request<B>, out: &mut Descriptor) {
        if let Some(key) = self.key(req) {
            out.push(self.entry, key);
        }
    }
}

impl fmt::Debug for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIp")
            .field("trusted", &self.trusted)
            .field("v6_prefix", &self.v6_prefix)
            .field("entry", &self.entry)
            .finish_non_exhaustive()
    }
}

/// `X-Forwarded-For`'s hops, leftmost (client side) first, every header line in order. Each
/// comma-separated entry is read on its own, from raw bytes: one unreadable entry (a stray
/// non-ASCII byte) is one unreadable hop, not a lost header.
fn x_forwarded_for(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        for entry in value.as_bytes().split(|&b| b == b',') {
            hops.push(std::str::from_utf8(entry).ok().and_then(parse_node));
        }
    }
    hops
}

/// `Forwarded`'s `for=` hops (RFC 7239), leftmost first. Elements are split on commas and
/// pairs on semicolons outside quoted strings, so `by="x;for=6.6.6.6"` is a `by` parameter;
/// a line whose quotes do not balance is split on every comma (a client's unterminated quote
/// cannot swallow what a proxy appended after it). An element without a readable `for=` is
/// one unreadable hop.
fn forwarded(headers: &HeaderMap) -> Vec<Option<IpAddr>> {
    let mut hops = Vec::new();
    for value in headers.get_all(http::header::FORWARDED) {
        let line = String::from_utf8_lossy(value.as_bytes());
        let balanced = !ends_quoted(&line);
        let elements = if balanced {
            split_outside_quotes(&line, ',')
        } else {
            line.split(',').collect()
        };
        for element in elements {
            let pairs = if balanced {
                split_outside_quotes(element, ';')
            } else {
                element.split(';').collect()
            };
            let for_value = pairs.into_iter().find_map(|pair| {
                let (k, v) = pair.split_once('=')?;
                k.trim().eq_ignore_ascii_case("for").then(|| v.trim())
            });
            hops.push(for_value.and_then(parse_node));
        }
    }
    hops
}

/// Whether a quoted string is still open at the end of `s` (backslash escapes honoured).
fn ends_quoted(s: &str) -> bool {
    let (mut quoted, mut escaped) = (false, false);
    for c in s.chars() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            _ => {}
        }
    }
    quoted
}

/// Splits on `sep` where it is not inside a quoted string (backslash escapes honoured).
fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

/// `203.0.113.5`, `"[2001:db8::1]:4711"`, `198.51.100.1:80`, `2001:db8::1` → the address.
fn parse_node(v: &str) -> Option<IpAddr> {
    let v = v.trim();
    let v = v
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(v);
    if let Some(rest) = v.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(ip);
    }
    v.parse::<SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forwarding_nodes() {
        assert_eq!(parse_node("203.0.113.5"), "203.0.113.5".parse().ok());
        assert_eq!(
            parse_node("\"[2001:db8::1]:4711\""),
            "2001:db8::1".parse().ok()
        );
        assert_eq!(parse_node("198.51.100.1:80"), "198.51.100.1".parse().ok());
        assert_eq!(parse_node("unknown"), None);
        assert_eq!(parse_node("_hidden"), None);
    }

    #[test]
    fn ranges_contain_what_they_should() {
        let r: IpRange = "10.0.0.0/8".parse().unwrap();
        assert!(r.contains("10.255.1.2".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!r.contains("11.0.0.1".parse().unwrap()));
        let all: IpRange = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        let v6: IpRange = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains("2001:db8:1::5".parse().unwrap()));
        assert!(!v6.contains("2001:db9::5".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("nonsense".parse::<IpRange>().is_err());
    }
}
