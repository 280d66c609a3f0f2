//! A serde deserializer adapter that asks for borrowed strings and bytes
//! where a type asked for owned ones, at every depth of the value.
//!
//! Why: bincode 2 reads an owned `String` (or `Vec<u8>` buffer) into a
//! zero-filled allocation, and glibc's `calloc` never takes from its
//! per-thread cache, so each decoded string cost an L2 hit ~400 of its
//! ~10,000 instructions (callgrind, `examples/l1_callgrind.rs`). Asked for a
//! borrowed `&str` instead, bincode checks it in place and the type's
//! visitor copies it into a plain `malloc`, which the thread cache serves.
//!
//! The value is the same: serde's visitors for owned strings and bytes take
//! borrowed ones too (self-describing formats hand out borrowed strings all
//! the time). A rare visitor that implements only `visit_string` (serde
//! falls back from owned to borrowed, not the other way) fails here, and the
//! codec then decodes the value bincode's own way (`codec.rs`). The size a
//! malicious length prefix can claim stays bounded, now by the input
//! itself: borrowed bytes must be there.
//!
//! Everything else is forwarded unchanged, wrapping whatever the inner
//! deserializer hands a visitor (sequences, maps, enums, options, newtypes)
//! so nested strings are read borrowed too.

use serde::de::{
    DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};
use std::fmt;

/// Wraps a deserializer (see the module docs).
pub(crate) struct Borrowing<D>(pub(crate) D);

/// Wraps a visitor so what it is handed is wrapped in turn.
struct Wrap<V>(V);

/// Forwards `deserialize_*` methods unchanged but for the wrapped visitor.
macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*)),* $(,)?) => {$(
        fn $method<V: Visitor<'de>>(
            self,
            $($arg: $ty,)*
            visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0.$method($($arg,)* Wrap(visitor))
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Borrowing<D> {
    type Error = D::Error;

    forward_deserialize!(
        deserialize_any(),
        deserialize_bool(),
        deserialize_i8(),
        deserialize_i16(),
        deserialize_i32(),
        deserialize_i64(),
        deserialize_i128(),
        deserialize_u8(),
        deserialize_u16(),
        deserialize_u32(),
        deserialize_u64(),
        deserialize_u128(),
        deserialize_f32(),
        deserialize_f64(),
        deserialize_char(),
        deserialize_str(),
        deserialize_bytes(),
        deserialize_option(),
        deserialize_unit(),
        deserialize_seq(),
        deserialize_map(),
        deserialize_identifier(),
        deserialize_ignored_any(),
        deserialize_unit_struct(name: &'static str),
        deserialize_newtype_struct(name: &'static str),
        deserialize_tuple(len: usize),
        deserialize_tuple_struct(name: &'static str, len: usize),
        deserialize_struct(name: &'static str, fields: &'static [&'static str]),
        deserialize_enum(name: &'static str, variants: &'static [&'static str]),
    );

    // The point of the adapter: owned asks become borrowed asks.
    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_str(Wrap(visitor))
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        self.0.deserialize_bytes(Wrap(visitor))
    }

    fn is_human_readable(&self) -> bool {
        self.0.is_human_readable()
    }
}

/// Forwards `visit_*` methods that take one plain value.
macro_rules! forward_visit {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: serde::de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.0.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    forward_visit!(
        visit_bool(bool),
        visit_i8(i8),
        visit_i16(i16),
        visit_i32(i32),
        visit_i64(i64),
        visit_i128(i128),
        visit_u8(u8),
        visit_u16(u16),
        visit_u32(u32),
        visit_u64(u64),
        visit_u128(u128),
        visit_f32(f32),
        visit_f64(f64),
        visit_char(char),
        visit_str(&str),
        visit_borrowed_str(&'de str),
        visit_string(String),
        visit_bytes(&[u8]),
        visit_borrowed_bytes(&'de [u8]),
        visit_byte_buf(Vec<u8>),
    );

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_none()
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        self.0.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_some(Borrowing(d))
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.visit_newtype_struct(Borrowing(d))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        self.0.visit_seq(Wrap(seq))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        self.0.visit_map(Wrap(map))
    }

    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Self::Value, A::Error> {
        self.0.visit_enum(Wrap(data))
    }
}

/// A seed whose deserializer is wrapped.
impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Wrap<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        self.0.deserialize(Borrowing(d))
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0.next_element_seed(Wrap(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.0.next_key_seed(Wrap(seed))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.0.next_value_seed(Wrap(seed))
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Wrap<A> {
    type Error = A::Error;
    type Variant = Wrap<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), Self::Error> {
        let (value, variant) = self.0.variant_seed(Wrap(seed))?;
        Ok((value, Wrap(variant)))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Wrap<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        self.0.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        self.0.newtype_variant_seed(Wrap(seed))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.tuple_variant(len, Wrap(visitor))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0.struct_variant(fields, Wrap(visitor))
    }
}

/// Deserializes a `T` through [`Borrowing`], for formats that take a seed
/// (bincode's `seed_decode_from_slice`, which also reports bytes read).
pub(crate) struct BorrowingSeed<T>(pub(crate) std::marker::PhantomData<T>);

impl<'de, T: serde::Deserialize<'de>> DeserializeSeed<'de> for BorrowingSeed<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        T::deserialize(Borrowing(d))
    }
}

#[cfg(test)]
mod tests {
    use crate::codec::{Bincode, Codec};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    /// Bytes serialized as bytes (not a sequence), read with `deserialize_byte_buf`.
    #[derive(Debug, PartialEq)]
    struct Buf(Vec<u8>);

    impl Serialize for Buf {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_bytes(&self.0)
        }
    }

    impl<'de> Deserialize<'de> for Buf {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Buf;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("bytes")
                }
                fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Buf, E> {
                    Ok(Buf(v.to_vec()))
                }
                fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Buf, E> {
                    Ok(Buf(v))
                }
            }
            d.deserialize_byte_buf(V)
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Kind {
        Unit,
        Newtype(String),
        Tuple(String, u8),
        Struct { name: String, tags: Vec<String> },
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wrapper(String);

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Row {
        id: u64,
        name: String,
        maybe: Option<String>,
        none: Option<String>,
        kinds: Vec<Kind>,
        by_name: BTreeMap<String, Vec<String>>,
        wrapped: Wrapper,
        raw: Buf,
        letter: char,
        unit: (),
        nested: (i32, (String, f64)),
    }

    fn row() -> Row {
        Row {
            id: 7,
            name: "widget".into(),
            maybe: Some("é ünïcode".into()),
            none: None,
            kinds: vec![
                Kind::Unit,
                Kind::Newtype("n".into()),
                Kind::Tuple("t".into(), 3),
                Kind::Struct {
                    name: "s".into(),
                    tags: vec!["a".into(), String::new()],
                },
            ],
            by_name: BTreeMap::from([("k".into(), vec!["v".into()])]),
            wrapped: Wrapper("w".into()),
            raw: Buf(vec![0, 255, 1]),
            letter: 'ß',
            unit: (),
            nested: (-5, ("deep".into(), 1.5)),
        }
    }

    #[test]
    fn decodes_what_plain_bincode_decodes_at_every_depth() {
        let mut bytes = Vec::new();
        Bincode.encode(&row(), &mut bytes).unwrap();
        let plain: (Row, usize) =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard()).unwrap();
        assert_eq!(plain.0, row());
        assert_eq!(Bincode.decode::<Row>(&bytes).unwrap(), row());
    }

    /// A string whose visitor takes only owned strings.
    #[derive(Debug, PartialEq)]
    struct OwnedOnly(String);

    impl<'de> Deserialize<'de> for OwnedOnly {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            // Deliberately the misuse clippy warns about: such types
            // exist, and must still decode.
            #[allow(clippy::serde_api_misuse)]
            impl serde::de::Visitor<'_> for V {
                type Value = OwnedOnly;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("an owned string")
                }
                fn visit_string<E: serde::de::Error>(self, v: String) -> Result<OwnedOnly, E> {
                    Ok(OwnedOnly(v))
                }
            }
            d.deserialize_string(V)
        }
    }

    #[test]
    fn a_visitor_that_takes_only_owned_strings_still_decodes() {
        let mut bytes = Vec::new();
        Bincode
            .encode(&"only owned".to_string(), &mut bytes)
            .unwrap();
        assert_eq!(
            Bincode.decode::<OwnedOnly>(&bytes).unwrap(),
            OwnedOnly("only owned".into())
        );
    }

    #[test]
    fn bad_bytes_are_still_errors() {
        let mut bytes = Vec::new();
        Bincode.encode(&row(), &mut bytes).unwrap();
        // Cut short anywhere: an error, never a panic or a partial value.
        for len in 0..bytes.len() {
            assert!(Bincode.decode::<Row>(&bytes[..len]).is_err(), "{len}");
        }
        // Invalid UTF-8 in a string.
        let mut s = Vec::new();
        Bincode.encode(&"ab".to_string(), &mut s).unwrap();
        *s.last_mut().unwrap() = 0xff;
        assert!(Bincode.decode::<String>(&s).is_err());
        // A string whose length prefix claims ~2^40 bytes: an error, and
        // nothing of that size is allocated (borrowed bytes must be there).
        let huge = [0xfd, 0, 0, 0, 0, 0, 1, 0, 0, b'a'];
        assert!(Bincode.decode::<String>(&huge).is_err());
    }
}
