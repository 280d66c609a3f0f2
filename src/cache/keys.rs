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
//!
//! **On a Redis Cluster** a script may publish (`SPUBLISH`, sharded) only
//! to a channel in its keys' slot, and one channel per namespace would put
//! every notice of the namespace on one shard. So there the namespace is
//! split into `buckets` hash-tag buckets (64 by default), chosen by a hash
//! of the user key: `hc:{<ns>:<b>}:<key>:v` and `:l`, notices on
//! `hc:bus:{<ns>:<b>}`, the generation counter at `hc:gen:{<ns>:0}` (it
//! announces a `clear()` on bucket 0's channel). Each process subscribes
//! to every bucket's channel (each notice must reach every process that
//! may hold the key in L1); a notice goes to its bucket's shard alone,
//! and the buckets spread the namespace's keys and notices over the
//! masters. Every process of a fleet must use the same bucket count.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::{Error, ErrorKind};

/// Longest accepted user key, in bytes. Redis would take far more, but a key
/// this long is a bug in the caller, and it is copied into every notice.
pub const MAX_KEY_LEN: usize = 4096;

/// Longest accepted namespace, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 256;

/// Default hash-tag buckets of a namespace on a Redis Cluster.
pub(crate) const DEFAULT_CLUSTER_BUCKETS: u16 = 64;

#[derive(Debug)]
pub(crate) struct Layout {
    namespace: String,
    /// One channel on one node; one per bucket on a Cluster.
    channels: Vec<String>,
    generation_key: String,
    generation: AtomicU64,
    /// On a Cluster: the bucket count (see the module docs).
    buckets: Option<u16>,
}

/// The Redis keys of one cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisKeys {
    pub(crate) value: String,
    pub(crate) lock: String,
    /// The generation they were built in.
    pub(crate) generation: u64,
}

impl Layout {
    /// `buckets`: `Some` on a Redis Cluster (see the module docs).
    pub(crate) fn new(namespace: &str, buckets: Option<u16>) -> Result<Self, Error> {
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
        let (channels, generation_key) = match buckets {
            None => (
                vec![format!("hc:bus:{namespace}")],
                format!("hc:gen:{namespace}"),
            ),
            Some(0) => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "cluster_buckets must be at least 1",
                ));
            }
            Some(n) => (
                (0..n)
                    .map(|b| format!("hc:bus:{{{namespace}:{b}}}"))
                    .collect(),
                format!("hc:gen:{{{namespace}:0}}"),
            ),
        };
        Ok(Layout {
            namespace: namespace.to_owned(),
            channels,
            generation_key,
            generation: AtomicU64::new(0),
            buckets,
        })
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    pub(crate) fn generation_key(&self) -> &str {
        &self.generation_key
    }

    /// The generation keys are built in now.
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Relaxed)
    }

    /// Whether the namespace is split into buckets (a Cluster).
    pub(crate) fn bucketed(&self) -> bool {
        self.buckets.is_some()
    }

    /// Moves to generation `g` if it is newer; true if it moved.
    pub(crate) fn advance_generation(&self, g: u64) -> bool {
        self.generation.fetch_max(g, Relaxed) < g
    }

    /// Every channel a process listens on for this namespace.
    pub(crate) fn channels(&self) -> &[String] {
        &self.channels
    }

    /// The channel of `key`'s notices.
    pub(crate) fn channel(&self, key: &str) -> &str {
        &self.channels[self.bucket(key).map_or(0, usize::from)]
    }

    /// The channel of `clear()`'s notice (in the generation key's slot).
    pub(crate) fn clear_channel(&self) -> &str {
        &self.channels[0]
    }

    /// On a Cluster, `key`'s bucket: FNV-1a of its bytes, fixed forever
    /// (every process and version must agree on where a key lives).
    fn bucket(&self, key: &str) -> Option<u16> {
        let n = self.buckets?;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &b in key.as_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        Some((h % u64::from(n)) as u16)
    }

    pub(crate) fn keys(&self, key: &str) -> RedisKeys {
        // Read before the name is built: a `clear()` in between makes the
        // keys newer than the generation recorded, never older.
        let generation = self.generation();
        let value = self.value_key(key);
        let mut lock = value.clone();
        lock.pop();
        lock.push('l');
        RedisKeys {
            value,
            lock,
            generation,
        }
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
        if let Some(b) = self.bucket(key) {
            write!(out, "{b}}}:")?;
            out.write_all(key.as_bytes())?;
            return out.write_all(b":v");
        }
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
        if self.layout.generation.load(Relaxed) == 0
            && self.layout.buckets.is_none()
            && 8 + ns.len() + key.len() <= buf.len()
        {
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
        let layout = Layout::new("products", None).unwrap();
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
        let layout = Layout::new("ns", None).unwrap();
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
        let layout = Layout::new("ns", None).unwrap();
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
        let layout = Layout::new("ns", None).unwrap();
        assert!(layout.advance_generation(3));
        assert!(!layout.advance_generation(2));
        let k = layout.keys("a");
        assert_eq!(k.value, "hc:g3:{ns:a}:v");
        assert_eq!(hash_tag(&k.value), hash_tag(&k.lock));
    }

    #[test]
    fn cluster_buckets_keep_a_key_its_lock_and_its_channel_in_one_slot() {
        let layout = Layout::new("ns", Some(16)).unwrap();
        assert_eq!(layout.channels().len(), 16);
        let mut used = std::collections::HashSet::new();
        for key in [
            "42", "", "a}b", "{x}", "}}", "ключ", "a:1", "b", "c", "d", "e",
        ] {
            let k = layout.keys(key);
            let channel = layout.channel(key);
            assert_eq!(hash_tag(&k.value), hash_tag(&k.lock), "key {key:?}");
            assert_eq!(hash_tag(&k.value), hash_tag(channel), "key {key:?}");
            assert!(k.value.ends_with(":v") && k.lock.ends_with(":l"));
            used.insert(channel.to_owned());
        }
        assert!(used.len() > 4, "keys spread over buckets: {used:?}");
        assert_eq!(
            hash_tag(layout.generation_key()),
            hash_tag(layout.clear_channel())
        );
        layout.advance_generation(3);
        assert!(layout.keys("42").value.starts_with("hc:g3:{ns:"));
        let arg = redis::ToRedisArgs::to_redis_args(&layout.value_key_arg("42"));
        assert_eq!(arg, vec![layout.keys("42").value.into_bytes()]);
        assert!(Layout::new("ns", Some(0)).is_err());
    }

    #[test]
    fn bad_namespaces_and_keys_are_refused() {
        for ns in ["", "a{b", "a}b", "{}", "a:b"] {
            assert_eq!(Layout::new(ns, None).unwrap_err().kind(), ErrorKind::Config);
        }
        assert!(check_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        let err = check_key(&"k".repeat(MAX_KEY_LEN + 1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey);
    }
}
