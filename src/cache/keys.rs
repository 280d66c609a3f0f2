//! Where a cache key lives in Redis.
//!
//! `hc:{<ns>:<key>}:v` holds the value envelope and `hc:{<ns>:<key>}:l` the
//! rebuild lock. The braces are a Redis Cluster hash tag: both keys hash to
//! one slot, so one Lua script may touch both. Redis takes the tag from the
//! first `{` to the first `}` after it; the first `{` is always ours, so a `}`
//! inside the user key only shortens the tag — identically for both keys —
//! and every user key still maps to distinct Redis keys (the suffix is fixed).
//! A namespace with a brace could make the tag empty or split it, and one
//! with a colon could make two namespaces' keys collide (`a:1` + `x` versus
//! `a` + `1:x`), so both are refused.
//!
//! `clear()` moves a namespace to a new *generation* instead of deleting its
//! keys (no KEYS, no SCAN): generation 0 uses the layout above, generation
//! `n > 0` prefixes it as `hc:g<n>:{<ns>:<key>}:v`. Keys of old generations
//! are never read again and expire with their TTL. The counter lives at
//! `hc:gen:<ns>`.
//!
//! Notices travel on one channel per namespace, `hc:bus:<ns>`, rather than
//! one per key: each process subscribes once when the cache is built, so
//! waiting for a fill costs no SUBSCRIBE round trip.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::{Error, ErrorKind};

/// Longest accepted user key, in bytes. Redis would take far more, but a key
/// this long is a bug in the caller, and it is copied into every notice.
pub const MAX_KEY_LEN: usize = 4096;

/// Longest accepted namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 256;

#[derive(Debug)]
pub(crate) struct Layout {
    namespace: String,
    channel: String,
    generation_key: String,
    generation: AtomicU64,
}

/// The Redis keys of one cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisKeys {
    pub(crate) value: String,
    pub(crate) lock: String,
}

impl Layout {
    pub(crate) fn new(namespace: &str) -> Result<Self, Error> {
        if namespace.is_empty() || namespace.len() > MAX_NAMESPACE_LEN {
            return Err(Error::new(
                ErrorKind::Config,
                format!("namespace must be 1 to {MAX_NAMESPACE_LEN} bytes"),
            ));
        }
        if namespace.contains(['{', '}', ':']) {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "namespace {namespace:?} contains `{{`, `}}` or `:`, which would break \
                     the Redis Cluster hash tag or let two namespaces' keys collide"
                ),
            ));
        }
        Ok(Layout {
            namespace: namespace.to_owned(),
            channel: format!("hc:bus:{namespace}"),
            generation_key: format!("hc:gen:{namespace}"),
            generation: AtomicU64::new(0),
        })
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn generation_key(&self) -> &str {
        &self.generation_key
    }

    /// Moves to generation `g` if it is newer; true if it moved.
    pub(crate) fn advance_generation(&self, g: u64) -> bool {
        self.generation.fetch_max(g, Relaxed) < g
    }

    pub(crate) fn channel(&self) -> &str {
        &self.channel
    }

    pub(crate) fn keys(&self, key: &str) -> RedisKeys {
        let value = self.value_key(key);
        let mut lock = value.clone();
        lock.pop();
        lock.push('l');
        RedisKeys { value, lock }
    }

    /// The value key alone: a plain read needs no lock key.
    pub(crate) fn value_key(&self, key: &str) -> String {
        let mut value = Vec::with_capacity(self.namespace.len() + key.len() + 16);
        self.write_value_key(&mut value, key)
            .expect("writes to a Vec do not fail");
        String::from_utf8(value).expect("built from str pieces")
    }

    /// The value key as a command argument, for the L2 hit's `GET`: written
    /// straight into the command, so that path allocates no `String` for it.
    pub(crate) fn value_key_arg<'a>(&'a self, key: &'a str) -> ValueKeyArg<'a> {
        ValueKeyArg { layout: self, key }
    }

    fn write_value_key(&self, out: &mut impl std::io::Write, key: &str) -> std::io::Result<()> {
        match self.generation.load(Relaxed) {
            0 => out.write_all(b"hc:{")?,
            g => write!(out, "hc:g{g}:{{")?,
        }
        out.write_all(self.namespace.as_bytes())?;
        out.write_all(b":")?;
        out.write_all(key.as_bytes())?;
        out.write_all(b"}:v")
    }
}

/// See [`Layout::value_key_arg`].
pub(crate) struct ValueKeyArg<'a> {
    layout: &'a Layout,
    key: &'a str,
}

impl redis::ToRedisArgs for ValueKeyArg<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        // The common case (generation 0, a short key) is put together on the
        // stack and written as one argument: a `String`, or writing the
        // pieces into the command one by one, costs ~3x the instructions.
        let (ns, key) = (self.layout.namespace.as_bytes(), self.key.as_bytes());
        let mut buf = [0u8; 256];
        if self.layout.generation.load(Relaxed) == 0 && 8 + ns.len() + key.len() <= buf.len() {
            let mut len = 0;
            for part in [b"hc:{", ns, b":", key, b"}:v"] {
                buf[len..len + part.len()].copy_from_slice(part);
                len += part.len();
            }
            out.write_arg(&buf[..len]);
        } else {
            out.write_arg(self.layout.value_key(self.key).as_bytes());
        }
    }
}

#[inline]
pub(crate) fn check_key(key: &str) -> Result<(), Error> {
    if key.len() > MAX_KEY_LEN {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("key is {} bytes; the limit is {MAX_KEY_LEN}", key.len()),
        ));
    }
    Ok(())
}

/// The hash tag Redis Cluster would use for `key` (test helper and doc aid).
#[cfg(test)]
fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_and_lock_share_a_hash_tag() {
        let layout = Layout::new("products").unwrap();
        for key in ["42", "", "a}b", "{x}", "}}", "with space", "ключ", "a\nb"] {
            let k = layout.keys(key);
            assert_eq!(hash_tag(&k.value), hash_tag(&k.lock), "key {key:?}");
            assert!(k.value.ends_with(":v") && k.lock.ends_with(":l"));
        }
        assert_eq!(layout.keys("42").value, "hc:{products:42}:v");
        assert_eq!(hash_tag("hc:{products:42}:v"), "products:42");
    }

    #[test]
    fn the_value_key_argument_is_the_value_key() {
        use redis::ToRedisArgs;
        let layout = Layout::new("ns").unwrap();
        for generation in [0, 7] {
            layout.advance_generation(generation);
            for key in ["42", "", "a}b", "ключ", &"x".repeat(300)] {
                let arg = layout.value_key_arg(key).to_redis_args();
                assert_eq!(arg, vec![layout.keys(key).value.into_bytes()]);
            }
        }
        assert_eq!(layout.keys("1").value, "hc:g7:{ns:1}:v");
    }

    #[test]
    fn distinct_user_keys_map_to_distinct_redis_keys() {
        let layout = Layout::new("ns").unwrap();
        let keys = ["a", "a}:v", "a}:l", "a}", "a:", ""];
        let mut all: Vec<String> = keys
            .iter()
            .flat_map(|k| {
                let r = layout.keys(k);
                [r.value, r.lock]
            })
            .collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
    }

    #[test]
    fn generations_prefix_keys_and_only_move_forward() {
        let layout = Layout::new("ns").unwrap();
        assert!(layout.advance_generation(3));
        assert!(!layout.advance_generation(2));
        let k = layout.keys("a");
        assert_eq!(k.value, "hc:g3:{ns:a}:v");
        assert_eq!(hash_tag(&k.value), hash_tag(&k.lock));
    }

    #[test]
    fn bad_namespaces_and_keys_are_refused() {
        for ns in ["", "a{b", "a}b", "{}", "a:b"] {
            assert_eq!(Layout::new(ns).unwrap_err().kind(), ErrorKind::Config);
        }
        assert!(check_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        let err = check_key(&"k".repeat(MAX_KEY_LEN + 1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey);
    }
}
