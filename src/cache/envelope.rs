//! The byte format stored under a value key in Redis: a fixed 24-byte header
//! followed by the codec's bytes.
//!
//! ```text
//! offset  size  field
//!      0     1  magic 0xC4 (tells our values from anything else under the key)
//!      1     1  format version (1)
//!      2     2  flags (reserved, 0)
//!      4     4  compute time of the value in ms (u32, saturating)
//!      8     8  fresh-until, unix ms
//!     16     8  stale-until, unix ms (>= fresh-until)
//!     24     …  codec payload
//! ```
//! All integers little-endian. Freshness is read from the header rather than
//! from Redis' TTL so that every process agrees on it from one GET, and so a
//! value can outlive its freshness (the stale window) without a second key.

use serde::de::DeserializeOwned;

use crate::codec::{Codec, CodecError};

pub(crate) const HEADER_LEN: usize = 24;
const MAGIC: u8 = 0xC4;
const VERSION: u8 = 1;

/// The metadata carried in front of every stored value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) flags: u16,
    pub(crate) compute_ms: u32,
    pub(crate) fresh_until_ms: u64,
    pub(crate) stale_until_ms: u64,
}

/// Why stored bytes were not accepted as an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum EnvelopeError {
    #[error("{0} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    #[error("bad magic byte {0:#04x}")]
    BadMagic(u8),
    #[error("unknown format version {0}")]
    UnknownVersion(u8),
    #[error("stale-until before fresh-until")]
    Inconsistent,
}

impl Header {
    /// Starts an envelope: the header bytes, ready for the codec to append to.
    pub(crate) fn start_buffer(&self, payload_hint: usize) -> Vec<u8> {
        let mut buf = Vec::with_capacity(HEADER_LEN + payload_hint);
        buf.push(MAGIC);
        buf.push(VERSION);
        buf.extend_from_slice(&self.flags.to_le_bytes());
        buf.extend_from_slice(&self.compute_ms.to_le_bytes());
        buf.extend_from_slice(&self.fresh_until_ms.to_le_bytes());
        buf.extend_from_slice(&self.stale_until_ms.to_le_bytes());
        buf
    }

    /// Splits stored bytes into header and payload, checking the header.
    pub(crate) fn parse(bytes: &[u8]) -> Result<(Header, &[u8]), EnvelopeError> {
        if bytes.len() < HEADER_LEN {
            return Err(EnvelopeError::TooShort(bytes.len()));
        }
        if bytes[0] != MAGIC {
            return Err(EnvelopeError::BadMagic(bytes[0]));
        }
        if bytes[1] != VERSION {
            return Err(EnvelopeError::UnknownVersion(bytes[1]));
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let header = Header {
            flags: u16::from_le_bytes([bytes[2], bytes[3]]),
            compute_ms: u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")),
            fresh_until_ms: u64_at(8),
            stale_until_ms: u64_at(16),
        };
        if header.stale_until_ms < header.fresh_until_ms {
            return Err(EnvelopeError::Inconsistent);
        }
        Ok((header, &bytes[HEADER_LEN..]))
    }
}

pub(crate) use crate::shared::now_ms;

/// A value read from Redis: fresh, or past fresh-until but inside the stale
/// window.
pub(crate) enum Decoded<V> {
    Fresh(Header, V),
    /// Past fresh-until but inside the stale window.
    Stale(Header, V),
}

/// Why stored bytes were not a usable value: every one is a counted miss
/// (`Stats::decode_errors`).
#[derive(Debug)]
pub(crate) enum Unusable {
    /// Longer than the header plus `max_value_size`: refused before any
    /// decoding (nothing is allocated for it).
    TooLarge(usize),
    /// Not a herdcache envelope (too short, another magic byte or version,
    /// an inconsistent header).
    Envelope(EnvelopeError),
    /// The payload does not decode as the cache's type with its codec.
    Codec(CodecError),
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::TooLarge(len) => write!(f, "{len} bytes, over max_value_size"),
            Unusable::Envelope(e) => write!(f, "not an envelope: {e}"),
            Unusable::Codec(e) => write!(f, "does not decode: {e}"),
        }
    }
}

/// The decoder: the path from bytes found in Redis to a value, as a pure
/// function of the bytes, the codec, `max_value_size` and the wall clock
/// (`now_ms`). `Ok(None)`: a well-formed value past its stale-until (a
/// plain miss: its payload is not decoded). It never panics, and it
/// allocates no more than the codec's own limit allows
/// ([`BINCODE_DECODE_LIMIT`](crate::BINCODE_DECODE_LIMIT) for bincode;
/// postcard and JSON only allocate as their input proves), on any input:
/// `tests/fuzz_decoder.rs` checks both.
pub(crate) fn read_value<V: DeserializeOwned, C: Codec>(
    codec: &C,
    bytes: &[u8],
    max_value_size: usize,
    now_ms: u64,
) -> Result<Option<Decoded<V>>, Unusable> {
    if bytes.len() > HEADER_LEN.saturating_add(max_value_size) {
        return Err(Unusable::TooLarge(bytes.len()));
    }
    let (header, payload) = Header::parse(bytes).map_err(Unusable::Envelope)?;
    if header.stale_until_ms <= now_ms {
        return Ok(None);
    }
    let value = codec.decode(payload).map_err(Unusable::Codec)?;
    Ok(Some(if now_ms < header.fresh_until_ms {
        Decoded::Fresh(header, value)
    } else {
        Decoded::Stale(header, value)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            flags: 0,
            compute_ms: 50,
            fresh_until_ms: 1_700_000_000_000,
            stale_until_ms: 1_700_000_060_000,
        }
    }

    #[test]
    fn round_trip_keeps_header_and_payload() {
        let mut buf = header().start_buffer(3);
        assert_eq!(buf.len(), HEADER_LEN);
        buf.extend_from_slice(b"abc");
        let (h, payload) = Header::parse(&buf).unwrap();
        assert_eq!(h, header());
        assert_eq!(payload, b"abc");
    }

    #[test]
    fn rejects_short_foreign_and_future_bytes() {
        assert_eq!(Header::parse(b"hello"), Err(EnvelopeError::TooShort(5)));
        let mut buf = header().start_buffer(0);
        buf[0] = b'{';
        assert_eq!(Header::parse(&buf), Err(EnvelopeError::BadMagic(b'{')));
        let mut buf = header().start_buffer(0);
        buf[1] = 2;
        assert_eq!(Header::parse(&buf), Err(EnvelopeError::UnknownVersion(2)));
        let mut h = header();
        h.stale_until_ms = h.fresh_until_ms - 1;
        assert_eq!(
            Header::parse(&h.start_buffer(0)),
            Err(EnvelopeError::Inconsistent)
        );
    }

    #[test]
    fn layout_is_little_endian_at_documented_offsets() {
        let buf = header().start_buffer(0);
        assert_eq!(buf[0], 0xC4);
        assert_eq!(buf[1], 1);
        assert_eq!(&buf[4..8], &50u32.to_le_bytes());
        assert_eq!(&buf[8..16], &1_700_000_000_000u64.to_le_bytes());
    }
}
