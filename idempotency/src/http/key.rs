//! Reading the `Idempotency-Key` field: one field, an sf-string or a bare value of visible
//! ASCII, at most the configured length.

use bytes::Bytes;
use http::header::HeaderValue;
use http::{Response, StatusCode};

use super::{Config, IDEMPOTENCY_KEY, problem};

/// The request's `Idempotency-Key`: `Ok(None)` when absent and not required, `Err` with the
/// 400 answer when required and absent, or malformed.
pub(super) fn read_key<B: From<Bytes>>(
    headers: &http::HeaderMap,
    config: &Config,
) -> Result<Option<String>, Response<B>> {
    let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
    let first = values.next();
    if values.next().is_some() {
        // Two keys: which one the client meant is unknowable, so neither is used.
        return Err(problem(
            StatusCode::BAD_REQUEST,
            "key-malformed",
            "Idempotency-Key is malformed",
            "The request carries more than one Idempotency-Key field.",
        ));
    }
    match first {
        None if config.require_key => Err(problem(
            StatusCode::BAD_REQUEST,
            "key-missing",
            "Idempotency-Key is missing",
            "This operation is idempotent and requires an Idempotency-Key header.",
        )),
        None => Ok(None),
        Some(v) => parse_key(v, config.max_key_len).map(Some).ok_or_else(|| {
            problem(
                StatusCode::BAD_REQUEST,
                "key-malformed",
                "Idempotency-Key is malformed",
                &format!(
                    "The key must be 1 to {} visible ASCII characters.",
                    config.max_key_len
                ),
            )
        }),
    }
}

/// The key from the header: a structured-field string or a bare value, 1..=max visible
/// ASCII characters.
pub(super) fn parse_key(value: &HeaderValue, max: usize) -> Option<String> {
    let s = value.to_str().ok()?.trim();
    let s = match s.strip_prefix('"') {
        Some(rest) => rest.strip_suffix('"')?,
        // A bare value is accepted for compatibility, but not one that structured fields
        // read as a list (`a,b`) or as parameters (`a;b`).
        None if s.contains([',', ';']) => return None,
        None => s,
    };
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\');
    ok.then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated() {
        let v = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            parse_key(&v("\"8e03978e\""), 255).as_deref(),
            Some("8e03978e")
        );
        assert_eq!(parse_key(&v("abc-123"), 255).as_deref(), Some("abc-123"));
        assert_eq!(parse_key(&v("\"\""), 255), None);
        assert_eq!(parse_key(&v("a b"), 255), None);
        assert_eq!(parse_key(&v("\"open"), 255), None);
        assert_eq!(parse_key(&v(&"k".repeat(256)), 255), None);
    }
}
