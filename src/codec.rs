//! How values become bytes: the [`Codec`] trait, with bincode 2 as the
//! default and postcard and JSON one feature flag away.
//!
//! bincode is the default because users asked for it, but the bincode project
//! has declared itself finished (RUSTSEC-2025-0141 marks 1.x and 2.0
//! unmaintained; 3.0.0 is only a `compile_error!`). We pin 2.0.x and keep it
//! behind this trait so switching codecs is one line.
//!
//! # What a non-self-describing codec cannot take
//!
//! bincode and postcard write values only, no field names and no markers
//! for what is absent: the reader must know the exact shape from the type.
//! So some serde attributes, common on JSON response structs, produce bytes
//! that *encode* but never *decode*:
//!
//! | attribute or type | why it breaks |
//! |---|---|
//! | `#[serde(skip_serializing_if = "…")]` | the field is left out when the predicate holds, but the reader still expects it and reads the next field's bytes in its place |
//! | `#[serde(flatten)]` | serialized as a map of unknown length; read back with `deserialize_any`, which these codecs do not support |
//! | `#[serde(untagged)]`, `#[serde(tag = "…")]` (internally or adjacently tagged enums) | read back with `deserialize_any` (the variant is guessed from the data) |
//! | `serde_json::Value`, other "any"-typed fields | the same |
//!
//! The cache catches this at the first write of such a value: it decodes
//! what it just encoded, and a value that does not come back whole is an
//! [`ErrorKind::Codec`](crate::ErrorKind::Codec) error, with nothing written,
//! rather than bytes that every reader silently counts as a miss. Either
//! remove the attribute, or use a self-describing codec:
//! `.codec(herdcache::Json)` (feature `json`) takes all of them.

use serde::{Serialize, de::DeserializeOwned};

#[cfg(feature = "bincode")]
use crate::borrow_de::BorrowingSeed;

/// A boxed error from a codec.
pub type CodecError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Turns values into bytes and back. Implementations must be deterministic
/// enough that every process of the fleet decodes what any other encoded.
pub trait Codec: Send + Sync + 'static {
    /// Appends the encoding of `value` to `out` (which already holds the
    /// envelope header: append, do not clear).
    fn encode<V: Serialize>(&self, value: &V, out: &mut Vec<u8>) -> Result<(), CodecError>;

    /// Decodes a whole payload. Trailing bytes must be an error: they mean the
    /// bytes were written for another type (and the cache's check of every
    /// write relies on it: a value that decodes from a prefix of its own
    /// bytes did not survive the round trip).
    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError>;

    /// True when the encoding carries its own structure (field names,
    /// presence), as JSON does, so that serde attributes such as
    /// `skip_serializing_if` work. Only used to word errors; default false.
    fn is_self_describing(&self) -> bool {
        false
    }

    /// A name for messages. Default: the type's name.
    fn name(&self) -> &'static str {
        std::any::type_name::<Self>()
    }
}

/// The most memory bincode may claim for the owned parts of one decoded
/// value (its sequences and maps). Strings and byte buffers are read
/// borrowed (see `borrow_de.rs`), so their size is bounded by the input
/// itself. bincode 2 applies its limit only when decoding, so sizes are
/// also checked on encode, against `max_value_size`.
#[cfg(feature = "bincode")]
pub const BINCODE_DECODE_LIMIT: usize = 256 << 20;

/// bincode 2 with its standard configuration (varint integers, little
/// endian) and a decode limit of [`BINCODE_DECODE_LIMIT`] bytes.
#[cfg(feature = "bincode")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

#[cfg(feature = "bincode")]
impl Codec for Bincode {
    fn name(&self) -> &'static str {
        "bincode"
    }

    fn encode<V: Serialize>(&self, value: &V, out: &mut Vec<u8>) -> Result<(), CodecError> {
        bincode::serde::encode_into_std_write(value, out, bincode::config::standard())?;
        Ok(())
    }

    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError> {
        let config = bincode::config::standard().with_limit::<BINCODE_DECODE_LIMIT>();
        // Strings and byte buffers are read borrowed and copied by their
        // visitor: bincode's own owned path zero-fills (see `borrow_de.rs`).
        let seed = BorrowingSeed(std::marker::PhantomData);
        let (value, read) = match bincode::serde::seed_decode_from_slice(seed, bytes, config) {
            Ok(decoded) => decoded,
            // A type whose visitor takes only owned strings or buffers
            // (serde falls back from owned to borrowed, not the other way):
            // decode it bincode's own way. Only that failure is retried:
            // any other (bytes that ran out, a bad tag, bad UTF-8) would
            // fail the same way, after bincode's owned path had allocated,
            // zero-filled, whatever length the bytes claim (up to
            // `BINCODE_DECODE_LIMIT`; the decoder fuzz harness found 240
            // MiB claimed by a 40-byte value).
            Err(e) if refused_borrowed(&e) => bincode::serde::decode_from_slice(bytes, config)?,
            Err(e) => return Err(e.into()),
        };
        if read != bytes.len() {
            return Err(format!("{} trailing bytes", bytes.len() - read).into());
        }
        Ok(value)
    }
}

/// Whether bincode's error is a visitor refusing a borrowed string or byte
/// buffer (serde's `invalid_type` with `Unexpected::Str` or `Bytes`), the
/// one failure the owned path can fix (see `borrow_de.rs`).
#[cfg(feature = "bincode")]
fn refused_borrowed(e: &bincode::error::DecodeError) -> bool {
    matches!(e, bincode::error::DecodeError::OtherString(msg)
        if msg.starts_with("invalid type: string") || msg.starts_with("invalid type: byte array"))
}

/// postcard (maintained, compact, `no_std`-friendly). Enable the `postcard`
/// feature and pass `.codec(Postcard)` to the builder.
#[cfg(feature = "postcard")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl Codec for Postcard {
    fn name(&self) -> &'static str {
        "postcard"
    }

    fn encode<V: Serialize>(&self, value: &V, out: &mut Vec<u8>) -> Result<(), CodecError> {
        let encoded = postcard::to_allocvec(value)?;
        out.extend_from_slice(&encoded);
        Ok(())
    }

    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError> {
        let (value, rest) = postcard::take_from_bytes(bytes)?;
        if !rest.is_empty() {
            return Err(format!("{} trailing bytes", rest.len()).into());
        }
        Ok(value)
    }
}

/// JSON (serde_json): self-describing, so it takes every serde attribute
/// (`skip_serializing_if`, `flatten`, `untagged`, `serde_json::Value`
/// fields), at the price of larger values and slower encoding and decoding
/// than bincode or postcard. Enable the `json` feature and pass
/// `.codec(herdcache::Json)` to the builder.
///
/// JSON has no NaN or infinity: serde_json writes them as `null`, which does
/// not decode back into a float, so such a value is refused at write with
/// [`ErrorKind::Codec`](crate::ErrorKind::Codec).
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

#[cfg(feature = "json")]
impl Codec for Json {
    fn name(&self) -> &'static str {
        "json"
    }

    fn is_self_describing(&self) -> bool {
        true
    }

    fn encode<V: Serialize>(&self, value: &V, out: &mut Vec<u8>) -> Result<(), CodecError> {
        serde_json::to_writer(out, value)?;
        Ok(())
    }

    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError> {
        // `from_slice` refuses trailing characters other than whitespace.
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// The codec a [`Cache`](crate::Cache) uses unless told otherwise.
#[cfg(feature = "bincode")]
pub type DefaultCodec = Bincode;
/// The codec a [`Cache`](crate::Cache) uses unless told otherwise.
#[cfg(all(not(feature = "bincode"), feature = "postcard"))]
pub type DefaultCodec = Postcard;
/// The codec a [`Cache`](crate::Cache) uses unless told otherwise.
#[cfg(all(not(feature = "bincode"), not(feature = "postcard"), feature = "json"))]
pub type DefaultCodec = Json;
#[cfg(not(any(feature = "bincode", feature = "postcard", feature = "json")))]
compile_error!("herdcache needs a codec: enable the `bincode`, `postcard` or `json` feature");

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<C: Codec>(codec: C) {
        let value = (42u64, String::from("stock"), vec![1u8, 2, 3]);
        let mut buf = vec![9, 9];
        codec.encode(&value, &mut buf).unwrap();
        assert_eq!(&buf[..2], &[9, 9], "encode must append");
        let back: (u64, String, Vec<u8>) = codec.decode(&buf[2..]).unwrap();
        assert_eq!(back, value);
        let mut longer = buf[2..].to_vec();
        longer.push(0);
        assert!(codec.decode::<(u64, String, Vec<u8>)>(&longer).is_err());
        assert!(codec.decode::<(u64, String, Vec<u8>)>(&[0xff; 3]).is_err());
    }

    #[cfg(feature = "bincode")]
    #[test]
    fn bincode_round_trips_and_rejects_garbage() {
        round_trip(Bincode);
        // A length prefix claiming ~2^60 elements must fail, not allocate.
        let huge = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0x10];
        assert!(Bincode.decode::<Vec<u64>>(&huge).is_err());
    }

    #[cfg(feature = "postcard")]
    #[test]
    fn postcard_round_trips_and_rejects_garbage() {
        round_trip(Postcard);
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_round_trips_and_rejects_garbage() {
        round_trip(Json);
    }
}
