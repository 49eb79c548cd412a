//! A stored HTTP response: status, the allow-listed headers and the body, in an `FWI`
//! envelope of kind `Http` — or, for a body over the stored-body cap, status and headers in
//! one of kind `HttpBodyOmitted`. Bytes that do not decode are `None` — never a panic.

use bytes::Bytes;
use http::StatusCode;
use http::header::{HeaderName, HeaderValue};

use crate::record::{Kind, open, seal};

/// Encodes a response to store; `body` is `None` when it was too large to keep.
pub(super) fn encode_response(
    status: StatusCode,
    headers: &[(HeaderName, HeaderValue)],
    body: Option<&[u8]>,
) -> Vec<u8> {
    let kind = if body.is_some() {
        Kind::Http
    } else {
        Kind::HttpBodyOmitted
    };
    let body = body.unwrap_or_default();
    let mut p = Vec::with_capacity(8 + body.len());
    p.extend_from_slice(&status.as_u16().to_be_bytes());
    p.extend_from_slice(&(headers.len() as u16).to_be_bytes());
    for (name, value) in headers {
        p.extend_from_slice(&(name.as_str().len() as u16).to_be_bytes());
        p.extend_from_slice(name.as_str().as_bytes());
        p.extend_from_slice(&(value.as_bytes().len() as u32).to_be_bytes());
        p.extend_from_slice(value.as_bytes());
    }
    p.extend_from_slice(body);
    seal(kind, &p)
}

/// A decoded response: status, headers, body, and whether the body was omitted.
pub(super) type Stored = (StatusCode, Vec<(HeaderName, HeaderValue)>, Bytes, bool);

/// Decodes a stored response.
pub(super) fn decode_response(record: &[u8]) -> Option<Stored> {
    let (kind, p) = open(record).ok()?;
    let omitted = match kind {
        Kind::Http => false,
        Kind::HttpBodyOmitted => true,
        _ => return None,
    };
    let take = |p: &mut &[u8], n: usize| -> Option<Vec<u8>> {
        if p.len() < n {
            return None;
        }
        let (a, b) = p.split_at(n);
        *p = b;
        Some(a.to_vec())
    };
    let mut p = p;
    let status = u16::from_be_bytes(take(&mut p, 2)?.try_into().ok()?);
    let count = u16::from_be_bytes(take(&mut p, 2)?.try_into().ok()?);
    let mut headers = Vec::new();
    for _ in 0..count {
        let n = u16::from_be_bytes(take(&mut p, 2)?.try_into().ok()?) as usize;
        let name = HeaderName::from_bytes(&take(&mut p, n)?).ok()?;
        let n = u32::from_be_bytes(take(&mut p, 4)?.try_into().ok()?) as usize;
        let value = HeaderValue::from_bytes(&take(&mut p, n)?).ok()?;
        headers.push((name, value));
    }
    Some((
        StatusCode::from_u16(status).ok()?,
        headers,
        Bytes::copy_from_slice(p),
        omitted,
    ))
}
