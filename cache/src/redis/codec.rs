//! Values in Redis: the codecs and floodwall-core's shared envelope around them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use floodwall_core::StoreError;
use floodwall_core::envelope::Envelope;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::store::Found;

/// The envelope format this release writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// floodwall-core's shared envelope: `FWC`, the format version, the codec id as the tag, a
/// 24-byte header (written-at, soft and hard expiry), the codec's bytes.
const ENVELOPE: Envelope = Envelope::new(*b"FWC", FORMAT_VERSION, 24);
/// How values become bytes in Redis. [`Binary`] (the default) and [`Json`] are built in; a
/// codec of your own picks an [`ID`](Codec::ID) from 16 to 63 (the tag byte's two high bits
/// are the entry's flags; a codec with a larger ID cannot write).
pub trait Codec: Send + Sync + 'static {
    /// The byte naming this codec in the envelope: a value written with another codec is a
    /// miss, never misread.
    const ID: u8;
    /// Encodes a value.
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, String>;
    /// Decodes a value.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String>;
}

/// Compact binary (postcard): the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct Binary;

impl Codec for Binary {
    const ID: u8 = 2;
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, String> {
        postcard::to_allocvec(value).map_err(|e| e.to_string())
    }
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String> {
        postcard::from_bytes(bytes).map_err(|e| e.to_string())
    }
}

/// JSON (serde_json): readable with `redis-cli`, larger and slower.
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Codec for Json {
    const ID: u8 = 1;
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, String> {
        serde_json::to_vec(value).map_err(|e| e.to_string())
    }
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String> {
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The tag byte's bit saying the payload starts with the entry's cache tags.
const TAGGED: u8 = 0x80;
/// The tag byte's bit saying the payload starts with the entry's own lifetimes (16 bytes:
/// the end of its stale window and of its fail-safe window, Unix ms, big-endian); the
/// header's hard expiry is then when the entry leaves (it is kept for revalidation).
const TIMED: u8 = 0x40;

/// When a sealed entry stops being fresh, stops being served stale and leaves the tier, in
/// Unix ms; `fail_safe_until` only for an entry with its own lifetimes (see
/// [`TieredCache::get_or_revalidate`](crate::TieredCache::get_or_revalidate)).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamps {
    pub(crate) soft_at: u64,
    pub(crate) hard_at: u64,
    pub(crate) kept_until: u64,
    pub(crate) fail_safe_until: Option<u64>,
}

/// Seals `value` with its expiries and its cache tags (name, version). A tagged value's tag
/// byte is the codec's with [`TAGGED`] set, and its payload carries the tags: a count byte,
/// then per tag a big-endian `u16` length, the name, a big-endian `u64` version. An entry
/// with its own lifetimes has [`TIMED`] set and starts its payload with them. Plain values
/// are written as before either existed.
pub(crate) fn seal<V: Serialize, C: Codec>(
    codec: &C,
    value: &Option<V>,
    tags: &[(&str, u64)],
    at: Stamps,
) -> Result<Vec<u8>, StoreError> {
    if C::ID & (TAGGED | TIMED) != 0 {
        return Err(StoreError::Codec(format!(
            "codec id {} is above 63 (the tag byte's high bits are the entry's flags)",
            C::ID
        )));
    }
    let encoded = codec.encode(value).map_err(StoreError::Codec)?;
    let mut header = [0u8; 24];
    header[..8].copy_from_slice(&unix_ms().to_be_bytes());
    header[8..16].copy_from_slice(&at.soft_at.to_be_bytes());
    let mut tag = C::ID;
    let mut payload = Vec::new();
    match at.fail_safe_until {
        Some(fail_safe_until) => {
            header[16..].copy_from_slice(&at.kept_until.to_be_bytes());
            tag |= TIMED;
            payload.extend_from_slice(&at.hard_at.to_be_bytes());
            payload.extend_from_slice(&fail_safe_until.to_be_bytes());
        }
        None => header[16..].copy_from_slice(&at.hard_at.to_be_bytes()),
    }
    if tags.is_empty() && payload.is_empty() {
        return Ok(ENVELOPE.seal(tag, &header, &encoded));
    }
    if !tags.is_empty() {
        tag |= TAGGED;
        let count =
            u8::try_from(tags.len()).map_err(|_| StoreError::Codec("more than 255 tags".into()))?;
        payload.push(count);
        for (name, version) in tags {
            let len = u16::try_from(name.len())
                .map_err(|_| StoreError::Codec("a tag longer than 65,535 bytes".into()))?;
            payload.extend_from_slice(&len.to_be_bytes());
            payload.extend_from_slice(name.as_bytes());
            payload.extend_from_slice(&version.to_be_bytes());
        }
    }
    payload.extend_from_slice(&encoded);
    Ok(ENVELOPE.seal(tag, &header, &payload))
}

/// An entry's tags as stored: name and version.
type StoredTags = Vec<(String, u64)>;

/// Splits a tagged payload into its tags and the codec's bytes.
fn split_tags(payload: &[u8]) -> Result<(StoredTags, &[u8]), StoreError> {
    let bad = || StoreError::Codec("a cache value's tags are cut short or not UTF-8".into());
    let (&count, mut rest) = payload.split_first().ok_or_else(bad)?;
    let mut tags = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let (len, after) = rest.split_at_checked(2).ok_or_else(bad)?;
        let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
        let (name, after) = after.split_at_checked(len).ok_or_else(bad)?;
        let (version, after) = after.split_at_checked(8).ok_or_else(bad)?;
        let name = std::str::from_utf8(name).map_err(|_| bad())?;
        let version = u64::from_be_bytes(version.try_into().map_err(|_| bad())?);
        tags.push((name.to_owned(), version));
        rest = after;
    }
    Ok((tags, rest))
}

/// Opens an envelope at wall-clock `now` (Unix ms): `Ok(None)` when it has expired.
pub(crate) fn open<V: DeserializeOwned, C: Codec>(
    codec: &C,
    bytes: &[u8],
    now: u64,
) -> Result<Option<Found<V>>, StoreError> {
    let opened = ENVELOPE.open(bytes)?;
    if opened.tag & !(TAGGED | TIMED) != C::ID {
        return Err(StoreError::Codec(format!(
            "cache value written with codec {} (this cache reads {})",
            opened.tag & !(TAGGED | TIMED),
            C::ID
        )));
    }
    let at = |i: usize| {
        u64::from_be_bytes(
            opened.header[i..i + 8]
                .try_into()
                .expect("a 24-byte header"),
        )
    };
    let (soft_at, mut hard_at) = (at(8), at(16));
    if now >= hard_at {
        return Ok(None);
    }
    let mut rest = opened.payload;
    let mut fail_safe_until = None;
    if opened.tag & TIMED != 0 {
        let bad = || StoreError::Codec("a cache value's lifetimes are cut short".into());
        let (stamps, after) = rest.split_at_checked(16).ok_or_else(bad)?;
        let word = |i: usize| u64::from_be_bytes(stamps[i..i + 8].try_into().expect("8 bytes"));
        hard_at = word(0);
        fail_safe_until = Some(word(8));
        rest = after;
    }
    let (tags, encoded) = if opened.tag & TAGGED != 0 {
        split_tags(rest)?
    } else {
        (Vec::new(), rest)
    };
    let value: Option<V> = codec.decode(encoded).map_err(StoreError::Codec)?;
    Ok(Some(Found {
        value,
        tags,
        soft_left: Duration::from_millis(soft_at.saturating_sub(now)),
        hard_left: Duration::from_millis(hard_at.saturating_sub(now)),
        keep_left: fail_safe_until.map(|t| Duration::from_millis(t.saturating_sub(now))),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn plain(soft_at: u64, hard_at: u64) -> Stamps {
        Stamps {
            soft_at,
            hard_at,
            kept_until: hard_at,
            fail_safe_until: None,
        }
    }

    #[test]
    fn an_entry_with_its_own_lifetimes_is_kept_past_its_stale_window() {
        let now = unix_ms();
        let at = Stamps {
            soft_at: now + 1_000,
            hard_at: now + 2_000,
            kept_until: now + 10_000,
            fail_safe_until: Some(now + 5_000),
        };
        let tags = [("user:42", 3u64)];
        let b = seal(&Binary, &Some(7u32), &tags, at).unwrap();
        let f: Found<u32> = open(&Binary, &b, now + 3_000).unwrap().unwrap();
        assert_eq!(f.value, Some(7));
        assert_eq!(f.tags, vec![("user:42".to_string(), 3)]);
        assert_eq!(f.soft_left, Duration::ZERO);
        assert_eq!(f.hard_left, Duration::ZERO, "past its stale window");
        assert_eq!(f.keep_left, Some(Duration::from_millis(2_000)));
        assert!(open::<u32, _>(&Binary, &b, now + 10_000).unwrap().is_none());
        for n in 0..b.len() {
            let _ = open::<u32, _>(&Binary, &b[..n], now);
        }
        assert!(open::<u32, _>(&Json, &b, now).is_err(), "another codec");
    }

    #[test]
    fn envelopes_round_trip_and_expire() {
        let now = unix_ms();
        let b = seal(
            &Json,
            &Some("v".to_string()),
            &[],
            plain(now + 1_000, now + 2_000),
        )
        .unwrap();
        let f: Found<String> = open(&Json, &b, now).unwrap().unwrap();
        assert_eq!(f.value.as_deref(), Some("v"));
        assert!(f.soft_left <= Duration::from_millis(1_000));
        assert!(open::<String, _>(&Json, &b, now + 2_000).unwrap().is_none());
        let mut other = b.clone();
        other[3] = 2;
        assert!(open::<String, _>(&Json, &other, now).is_err());
        assert!(open::<String, _>(&Json, b"FWC", now).is_err());
        for n in 0..b.len() {
            let _ = open::<String, _>(&Json, &b[..n], now);
        }
        // Written with one codec, read with another: a miss, not a misreading.
        let bin = seal(&Binary, &Some(7u32), &[], plain(now + 1_000, now + 2_000)).unwrap();
        assert!(open::<u32, _>(&Json, &bin, now).is_err());
        assert_eq!(
            open::<u32, _>(&Binary, &bin, now).unwrap().unwrap().value,
            Some(7)
        );
    }

    /// A codec whose id overlaps the tag byte's flags cannot write: its values could not be
    /// told from another codec's.
    #[test]
    fn a_codec_id_above_63_is_refused_when_writing() {
        struct Wide;
        impl Codec for Wide {
            const ID: u8 = 200;
            fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, String> {
                Json.encode(value)
            }
            fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, String> {
                Json.decode(bytes)
            }
        }
        let now = unix_ms();
        let err = seal(&Wide, &Some(1u32), &[], plain(now + 1, now + 2)).unwrap_err();
        assert!(err.to_string().contains("above 63"), "{err}");
        assert!(seal(&Json, &Some(1u32), &[], plain(now + 1, now + 2)).is_ok());
    }

    #[test]
    fn tags_round_trip_and_cut_bytes_are_refused() {
        let now = unix_ms();
        let tags = [("user:42", 7u64), ("product-list", u64::MAX)];
        let b = seal(&Binary, &Some(7u32), &tags, plain(now + 1_000, now + 2_000)).unwrap();
        let f: Found<u32> = open(&Binary, &b, now).unwrap().unwrap();
        assert_eq!(f.value, Some(7));
        assert_eq!(
            f.tags,
            vec![
                ("user:42".to_string(), 7),
                ("product-list".to_string(), u64::MAX)
            ]
        );
        for n in 0..b.len() {
            let _ = open::<u32, _>(&Binary, &b[..n], now);
        }
        // Tagged bytes read with another codec: a miss, not a misreading.
        assert!(open::<u32, _>(&Json, &b, now).is_err());
    }
}
