//! What the store keeps: fingerprints, fencing tokens, the answers of `begin`, and the
//! versioned envelope stored results travel in.

use floodwall_core::envelope::Envelope;
use std::fmt;
use std::time::Duration;

use floodwall_core::StoreError;
use sha2::{Digest, Sha256};

/// A request's fingerprint: SHA-256 over what makes two requests "the same" (for HTTP:
/// method, path and body). A key reused with a different fingerprint is a client error.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of callers that do not check payloads: every request matches it.
    pub const NONE: Fingerprint = Fingerprint([0; 32]);

    /// SHA-256 of `bytes`.
    pub fn of(bytes: impl AsRef<[u8]>) -> Fingerprint {
        Fingerprint(Sha256::digest(bytes.as_ref()).into())
    }

    /// SHA-256 over several parts, each length-prefixed so that `("ab", "c")` and
    /// `("a", "bc")` differ.
    pub fn of_parts<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Fingerprint {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_be_bytes());
            h.update(p);
        }
        Fingerprint(h.finalize().into())
    }

    /// The 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex, as stored on Redis.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({}…)", &self.to_hex()[..12])
    }
}

/// A fencing token: proof of holding a key's claim. Each claim of a key gets a larger token
/// than every earlier claim of it, so a holder whose lease expired and was taken over cannot
/// store its late result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Token(pub u64);

/// The answer to [`Store::begin`](crate::Store::begin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The caller now holds the key until its lease ends: run, then `complete` or `abort`.
    Claimed(Token),
    /// The key was completed: its stored record.
    Completed(Vec<u8>),
    /// Another caller holds the key; its lease ends in `retry_after` at the latest.
    InProgress {
        /// Time left on the holder's lease.
        retry_after: Duration,
    },
    /// The key was used with a different fingerprint.
    Mismatch,
}

/// What `complete` or `abort` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Done.
    Done,
    /// The token is no longer the key's claim (its lease expired and another caller took the
    /// key, or the claim was released): nothing was changed.
    Fenced,
}

/// How [`Store::abort`](crate::Store::abort) ends a claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abort<'a> {
    /// Release the claim: the next `begin` claims the key again (a retry can run).
    Release,
    /// Record this (failure) record as the key's outcome, replayed like a completed one.
    Record {
        /// The record.
        record: &'a [u8],
        /// How long to keep it.
        retention: Duration,
    },
}

/// The envelope format version written by this release.
pub const FORMAT_VERSION: u8 = 1;

/// Records are floodwall-core's shared envelope: `FWI`, the format version, the kind as the
/// tag, no header, then the payload.
const ENVELOPE: Envelope = Envelope::new(*b"FWI", FORMAT_VERSION, 0);

/// What an envelope holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A successful result (JSON).
    Ok = 1,
    /// A recorded failure (JSON).
    Err = 2,
    /// A stored HTTP response.
    Http = 3,
    /// A processed message (no payload).
    Done = 4,
    /// A stored HTTP response whose body was over the stored-body cap: status and headers.
    HttpBodyOmitted = 5,
}

/// `FWI` + version + kind + payload.
pub(crate) fn seal(kind: Kind, payload: &[u8]) -> Vec<u8> {
    ENVELOPE.seal(kind as u8, &[], payload)
}

/// Checks the envelope and returns its kind and payload; anything else is a codec error.
pub(crate) fn open(bytes: &[u8]) -> Result<(Kind, &[u8]), StoreError> {
    let opened = ENVELOPE.open(bytes)?;
    let kind = match opened.tag {
        1 => Kind::Ok,
        2 => Kind::Err,
        3 => Kind::Http,
        4 => Kind::Done,
        5 => Kind::HttpBodyOmitted,
        k => {
            return Err(StoreError::Codec(format!(
                "unknown idempotency record kind {k}"
            )));
        }
    };
    Ok((kind, opened.payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_and_reject_garbage() {
        let sealed = seal(Kind::Ok, b"{\"a\":1}");
        assert_eq!(open(&sealed).unwrap(), (Kind::Ok, &b"{\"a\":1}"[..]));
        assert!(open(b"").is_err());
        assert!(open(b"FWI").is_err());
        assert!(
            open(b"FWI\x02\x01{}").is_err(),
            "a future version is refused"
        );
        assert!(open(b"FWI\x01\x09{}").is_err());
        assert!(open(b"xyz\x01\x01{}").is_err());
    }

    #[test]
    fn fingerprints_separate_parts() {
        assert_ne!(
            Fingerprint::of_parts([&b"ab"[..], b"c"]),
            Fingerprint::of_parts([&b"a"[..], b"bc"])
        );
        assert_eq!(Fingerprint::of(b"x").to_hex().len(), 64);
    }
}
