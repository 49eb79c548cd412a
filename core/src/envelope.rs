//! The versioned envelope every floodwall store writes its values in.
//!
//! Layout: three magic bytes naming the store (`FWC` cache, `FWI` idempotency), one format
//! version byte, one tag byte (what the payload is, or how it is encoded — the store says),
//! a fixed-length header the store defines, then the payload:
//!
//! ```text
//! | magic (3) | version (1) | tag (1) | header (n, fixed per store) | payload … |
//! ```
//!
//! Bytes that are too short, carry another magic or another version are refused with
//! [`StoreError::Codec`] — never a panic and never a misreading — so a store treats them as
//! a miss (or an error) and a rolling deploy that changes a format never reads the old one.
//!
//! ```
//! use floodwall_core::envelope::Envelope;
//!
//! const RECORD: Envelope = Envelope::new(*b"FWX", 1, 8);
//! let bytes = RECORD.seal(2, &42u64.to_be_bytes(), b"payload");
//! let opened = RECORD.open(&bytes).unwrap();
//! assert_eq!((opened.tag, opened.payload), (2, &b"payload"[..]));
//! assert_eq!(opened.header, &42u64.to_be_bytes()[..]);
//! assert!(RECORD.open(b"FWX\x02").is_err()); // too short, and a future version
//! assert!(Envelope::new(*b"FWY", 1, 8).open(&bytes).is_err()); // another store's bytes
//! ```

use crate::error::StoreError;

/// One store's envelope format: its magic, the version it writes and reads, and the length
/// of its fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    magic: [u8; 3],
    version: u8,
    header: usize,
}

/// The parts of an opened envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The tag byte.
    pub tag: u8,
    /// The fixed-length header.
    pub header: &'a [u8],
    /// Everything after the header.
    pub payload: &'a [u8],
}

impl Envelope {
    /// Bytes before the header: magic, version, tag.
    pub const PREFIX: usize = 5;

    /// A format with `magic`, format `version` and a header of `header_len` bytes.
    pub const fn new(magic: [u8; 3], version: u8, header_len: usize) -> Self {
        Envelope {
            magic,
            version,
            header: header_len,
        }
    }

    /// The format version this envelope writes and reads.
    pub const fn version(&self) -> u8 {
        self.version
    }

    /// Seals `payload` under `tag` and `header`. A header of another length than the format's
    /// is cut or zero-padded to it.
    pub fn seal(&self, tag: u8, header: &[u8], payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::PREFIX + self.header + payload.len());
        out.extend_from_slice(&self.magic);
        out.push(self.version);
        out.push(tag);
        let n = header.len().min(self.header);
        out.extend_from_slice(&header[..n]);
        out.resize(Self::PREFIX + self.header, 0);
        out.extend_from_slice(payload);
        out
    }

    /// Opens bytes sealed in this format.
    ///
    /// Errors: [`StoreError::Codec`] naming what is wrong (too short, another store's magic,
    /// another format version).
    pub fn open<'a>(&self, bytes: &'a [u8]) -> Result<Opened<'a>, StoreError> {
        let magic = String::from_utf8_lossy(&self.magic);
        if bytes.len() < Self::PREFIX + self.header || bytes[..3] != self.magic {
            return Err(StoreError::Codec(format!(
                "not a floodwall {magic} envelope"
            )));
        }
        if bytes[3] != self.version {
            return Err(StoreError::Codec(format!(
                "{magic} envelope format version {} (this release reads {})",
                bytes[3], self.version
            )));
        }
        let body = &bytes[Self::PREFIX..];
        Ok(Opened {
            tag: bytes[4],
            header: &body[..self.header],
            payload: &body[self.header..],
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_input_panics_and_round_trips_hold() {
        let e = Envelope::new(*b"FWT", 3, 4);
        let sealed = e.seal(9, &[1, 2, 3, 4, 5], b"xy");
        assert_eq!(sealed.len(), 5 + 4 + 2);
        let o = e.open(&sealed).unwrap();
        assert_eq!(
            (o.tag, o.header, o.payload),
            (9, &[1, 2, 3, 4][..], &b"xy"[..])
        );
        for n in 0..sealed.len() {
            let _ = e.open(&sealed[..n]);
        }
        assert!(e.open(&sealed[..8]).is_err());
        assert_eq!(e.open(&sealed[..9]).unwrap().payload, b"");
    }
}
