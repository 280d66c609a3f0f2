//! How values become bytes: the [`Codec`] trait, with bincode 2 as the
//! default and postcard one feature flag away.
//!
//! bincode is the default because users asked for it, but the bincode project
//! has declared itself finished (RUSTSEC-2025-0141 marks 1.x and 2.0
//! unmaintained; 3.0.0 is only a `compile_error!`). We pin 2.0.x and keep it
//! behind this trait so switching codecs is one line.

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
    /// bytes were written for another type.
    fn decode<V: DeserializeOwned>(&self, bytes: &[u8]) -> Result<V, CodecError>;
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
            // decode it bincode's own way. Only failures pay for this.
            Err(_) => bincode::serde::decode_from_slice(bytes, config)?,
        };
        if read != bytes.len() {
            return Err(format!("{} trailing bytes", bytes.len() - read).into());
        }
        Ok(value)
    }
}

/// postcard (maintained, compact, `no_std`-friendly). Enable the `postcard`
/// feature and pass `.codec(Postcard)` to the builder.
#[cfg(feature = "postcard")]
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl Codec for Postcard {
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

/// The codec a [`Cache`](crate::Cache) uses unless told otherwise.
#[cfg(feature = "bincode")]
pub type DefaultCodec = Bincode;
/// The codec a [`Cache`](crate::Cache) uses unless told otherwise.
#[cfg(all(not(feature = "bincode"), feature = "postcard"))]
pub type DefaultCodec = Postcard;
#[cfg(not(any(feature = "bincode", feature = "postcard")))]
compile_error!("herdcache needs a codec: enable the `bincode` or `postcard` feature");

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
}
