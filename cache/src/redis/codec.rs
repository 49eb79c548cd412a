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
/// codec of your own picks an [`ID`](Codec::ID) of 128 or more.
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

/// Seals `value` with its expiries (Unix ms) and its cache tags (name, version). A tagged
/// value's tag byte is the codec's with [`TAGGED`] set, and its payload starts with the tags:
/// a count byte, then per tag a big-endian `u16` length, the name, a big-endian `u64`
/// version. Untagged values are written as before tags existed.
pub(crate) fn seal<V: Serialize, C: Codec>(
    codec: &C,
    value: &Option<V>,
    tags: &[(&str, u64)],
    soft_at: u64,
    hard_at: u64,
) -> Result<Vec<u8>, StoreError> {
    let encoded = codec.encode(value).map_err(StoreError::Codec)?;
    let mut header = [0u8; 24];
    header[..8].copy_from_slice(&unix_ms().to_be_bytes());
    header[8..16].copy_from_slice(&soft_at.to_be_bytes());
    header[16..].copy_from_slice(&hard_at.to_be_bytes());
    if tags.is_empty() {
        return Ok(ENVELOPE.seal(C::ID, &header, &encoded));
    }
    let count =
        u8::try_from(tags.len()).map_err(|_| StoreError::Codec("more than 255 tags".into()))?;
    let mut payload = vec![count];
    for (name, version) in tags {
        let len = u16::try_from(name.len())
            .map_err(|_| StoreError::Codec("a tag longer than 65,535 bytes".into()))?;
        payload.extend_from_slice(&len.to_be_bytes());
        payload.extend_from_slice(name.as_bytes());
        payload.extend_from_slice(&version.to_be_bytes());
    }
    payload.extend_from_slice(&encoded);
    Ok(ENVELOPE.seal(C::ID | TAGGED, &header, &payload))
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
    if opened.tag & !TAGGED != C::ID {
        return Err(StoreError::Codec(format!(
            "cache value written with codec {} (this cache reads {})",
            opened.tag & !TAGGED,
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
    let (soft_at, hard_at) = (at(8), at(16));
    if now >= hard_at {
        return Ok(None);
    }
    let (tags, encoded) = if opened.tag & TAGGED != 0 {
        split_tags(opened.payload)?
    } else {
        (Vec::new(), opened.payload)
    };
    let value: Option<V> = codec.decode(encoded).map_err(StoreError::Codec)?;
    Ok(Some(Found {
        value,
        tags,
        soft_left: Duration::from_millis(soft_at.saturating_sub(now)),
        hard_left: Duration::from_millis(hard_at - now),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn envelopes_round_trip_and_expire() {
        let now = unix_ms();
        let b = seal(&Json, &Some("v".to_string()), &[], now + 1_000, now + 2_000).unwrap();
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
        let bin = seal(&Binary, &Some(7u32), &[], now + 1_000, now + 2_000).unwrap();
        assert!(open::<u32, _>(&Json, &bin, now).is_err());
        assert_eq!(
            open::<u32, _>(&Binary, &bin, now).unwrap().unwrap().value,
            Some(7)
        );
    }

    #[test]
    fn tags_round_trip_and_cut_bytes_are_refused() {
        let now = unix_ms();
        let tags = [("user:42", 7u64), ("product-list", u64::MAX)];
        let b = seal(&Binary, &Some(7u32), &tags, now + 1_000, now + 2_000).unwrap();
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
