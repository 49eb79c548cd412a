//! RFC 9457 problem details, the body every floodwall HTTP layer refuses with: a limiter's
//! `429`, a load shedder's `503`, the idempotency layer's `409`/`422`, a client refusal
//! proxied to a server's own caller.
//!
//! ```
//! use floodwall_core::problem;
//!
//! let body = problem::body("shed", "Service overloaded", 503, "retry \"later\"", ",\"priority\":\"default\"");
//! assert_eq!(
//!     body,
//!     r#"{"type":"urn:floodwall:shed","title":"Service overloaded","status":503,"detail":"retry \"later\"","priority":"default"}"#
//! );
//! ```

/// The media type of a problem details body.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// A problem details body whose `type` is `urn:floodwall:<kind>`; `extra` is appended as it
/// is — `,"name":value` members, already JSON (empty for none).
pub fn body(kind: &str, title: &str, status: u16, detail: &str, extra: &str) -> String {
    format!(
        "{{\"type\":\"urn:floodwall:{kind}\",\"title\":{},\"status\":{status},\"detail\":{}{extra}}}",
        json_string(title),
        json_string(detail),
    )
}

/// `s` as a JSON string literal: quoted, with `"`, `\` and control characters escaped.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_string_is_a_json_string() {
        for s in [
            "",
            "plain",
            "quote \" back \\ slash",
            "tab\tnew\nline\u{1}",
            "ünïcødé ✓",
        ] {
            let lit = json_string(s);
            let back: String = serde_json_like_parse(&lit);
            assert_eq!(back, s, "{lit}");
        }
    }

    /// Undoes `json_string` (the escapes it writes).
    fn serde_json_like_parse(lit: &str) -> String {
        let inner = &lit[1..lit.len() - 1];
        let mut out = String::new();
        let mut chars = inner.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next().unwrap() {
                'u' => {
                    let hex: String = chars.by_ref().take(4).collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                }
                other => out.push(other),
            }
        }
        out
    }
}
