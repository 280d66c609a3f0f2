//! [`CacheKey`]: what a cache call accepts as a key. A key is a string in
//! the end (it is part of a Redis key and travels in notices), but call
//! sites hold ids as integers or `String`s, and writing `&id.to_string()`
//! everywhere is noise.
//!
//! A `&str` key costs what it did before there was a trait: `to_key` wraps
//! the `&str` and is inlined, and the branch on what it wrapped folds away
//! (measured with callgrind: docs/BENCHMARKS.md). Integers are formatted
//! into a buffer on the stack ([`Key`]), so they allocate nothing either.

use std::fmt::{self, Write as _};

/// A value usable as a cache key: its string form is the key.
///
/// Implemented for `str`, `String`, `Box<str>`, `Arc<str>`, `Rc<str>`,
/// `Cow<str>`, every integer type, `char`, and references to any of these,
/// so all of these name the same entry:
///
/// ```no_run
/// # async fn demo(cache: herdcache::Cache<u32>) -> Result<(), herdcache::Error> {
/// let id: u64 = 42;
/// let a = cache.get("42").await?;
/// let b = cache.get(42u64).await?;
/// let c = cache.get(&id).await?;
/// let d = cache.get(id.to_string()).await?;
/// # Ok(()) }
/// ```
///
/// For a type of your own, format it with [`Key::display`] (no allocation
/// for keys up to [`Key::INLINE`] bytes):
///
/// ```
/// use herdcache::{CacheKey, Key};
///
/// struct ProductId { shop: u32, sku: u64 }
///
/// impl CacheKey for ProductId {
///     fn to_key(&self) -> Key<'_> {
///         Key::display(format_args!("{}/{}", self.shop, self.sku))
///     }
/// }
/// assert_eq!(ProductId { shop: 7, sku: 42 }.to_key().as_str(), "7/42");
/// ```
pub trait CacheKey {
    /// The key as a string: borrowed for string types, formatted on the
    /// stack for integers.
    fn to_key(&self) -> Key<'_>;
}

impl CacheKey for str {
    #[inline(always)]
    fn to_key(&self) -> Key<'_> {
        Key(Repr::Borrowed(self))
    }
}

impl<T: CacheKey + ?Sized> CacheKey for &T {
    #[inline(always)]
    fn to_key(&self) -> Key<'_> {
        (**self).to_key()
    }
}

macro_rules! string_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            #[inline(always)]
            fn to_key(&self) -> Key<'_> {
                Key(Repr::Borrowed(self))
            }
        }
    )*};
}
string_keys!(
    String,
    Box<str>,
    std::sync::Arc<str>,
    std::rc::Rc<str>,
    std::borrow::Cow<'_, str>
);

macro_rules! display_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            #[inline]
            fn to_key(&self) -> Key<'_> {
                Key::display(self)
            }
        }
    )*};
}
display_keys!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, char
);

/// A key's string form: borrowed from a string key, or built on the
/// stack (up to [`INLINE`](Self::INLINE) bytes, every integer fits), or on
/// the heap past that.
///
/// A concrete type rather than an associated type of [`CacheKey`]: a
/// future holding an associated type across an `.await` trips a compiler
/// limitation ("implementation is not general enough") when it is spawned.
/// For a `&str` key the branch on the representation is folded away, as
/// the variant is known where the key is made (callgrind: the L1 hit costs
/// what it did with `&str` keys; docs/BENCHMARKS.md).
#[derive(Clone)]
pub struct Key<'a>(Repr<'a>);

#[derive(Clone)]
enum Repr<'a> {
    Borrowed(&'a str),
    Inline { len: u8, bytes: [u8; Key::INLINE] },
    Heap(String),
}

impl Key<'_> {
    /// Longest key kept inline (the longest `i128` is 40 bytes).
    pub const INLINE: usize = 48;

    /// The `Display` form of `value` as a key.
    pub fn display(value: impl fmt::Display) -> Key<'static> {
        let mut w = Writer {
            len: 0,
            bytes: [0; Key::INLINE],
            heap: None,
        };
        write!(w, "{value}").expect("a Display impl returned an error");
        match w.heap {
            Some(s) => Key(Repr::Heap(s)),
            None => Key(Repr::Inline {
                len: w.len as u8,
                bytes: w.bytes,
            }),
        }
    }

    /// The key.
    #[inline(always)]
    pub fn as_str(&self) -> &str {
        match &self.0 {
            Repr::Borrowed(s) => s,
            // Only whole `str`s were copied in (see `Writer`), so this is
            // UTF-8; checking costs a few instructions per key byte, on a
            // path that just formatted those bytes anyway.
            Repr::Inline { len, bytes } => {
                std::str::from_utf8(&bytes[..*len as usize]).expect("whole str pieces")
            }
            Repr::Heap(s) => s,
        }
    }
}

impl<'a> From<&'a str> for Key<'a> {
    fn from(s: &'a str) -> Self {
        Key(Repr::Borrowed(s))
    }
}

impl From<String> for Key<'static> {
    fn from(s: String) -> Self {
        Key(Repr::Heap(s))
    }
}

impl AsRef<str> for Key<'_> {
    #[inline(always)]
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl std::ops::Deref for Key<'_> {
    type Target = str;
    #[inline(always)]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl CacheKey for Key<'_> {
    #[inline(always)]
    fn to_key(&self) -> Key<'_> {
        Key(Repr::Borrowed(self.as_str()))
    }
}

/// Fills the inline buffer, moving everything to a `String` at the first
/// piece that does not fit.
struct Writer {
    len: usize,
    bytes: [u8; Key::INLINE],
    heap: Option<String>,
}

impl fmt::Write for Writer {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if let Some(heap) = &mut self.heap {
            heap.push_str(s);
        } else if self.len + s.len() <= Key::INLINE {
            self.bytes[self.len..self.len + s.len()].copy_from_slice(s.as_bytes());
            self.len += s.len();
        } else {
            let mut heap = String::with_capacity(self.len + s.len());
            heap.push_str(std::str::from_utf8(&self.bytes[..self.len]).expect("whole str pieces"));
            heap.push_str(s);
            self.heap = Some(heap);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<K: CacheKey>(k: K) -> String {
        k.to_key().as_str().to_owned()
    }

    #[test]
    // The borrows are the point: call sites hold `&id` and `&String`s.
    #[allow(clippy::needless_borrows_for_generic_args)]
    fn every_form_of_one_id_is_one_key() {
        let id = 42u64;
        let s = String::from("42");
        for k in [
            key("42"),
            key(42u64),
            key(&id),
            key(&&id),
            key(42i32),
            key(42u8),
            key(s.clone()),
            key(&s),
            key(Box::<str>::from("42")),
            key(std::sync::Arc::<str>::from("42")),
            key(std::borrow::Cow::Borrowed("42")),
        ] {
            assert_eq!(k, "42");
        }
        assert_eq!(key(i128::MIN), i128::MIN.to_string());
        assert_eq!(key(u128::MAX), u128::MAX.to_string());
        assert_eq!(key(-7i64), "-7");
        assert_eq!(key('é'), "é");
    }

    #[test]
    fn long_display_keys_move_to_the_heap() {
        let long = "é".repeat(40); // 80 bytes, multi-byte chars across the edge
        let k = Key::display(format_args!("{}{}", "x".repeat(47), long));
        assert_eq!(k.as_str(), format!("{}{}", "x".repeat(47), long));
        assert!(matches!(k.0, Repr::Heap(_)));
        let short = Key::display(format_args!("{}", "x".repeat(48)));
        assert!(matches!(short.0, Repr::Inline { len: 48, .. }));
    }
}
