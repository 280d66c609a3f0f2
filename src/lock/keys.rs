//! Where a lock lives in Redis: `hc:lk:{<name>}` holds the holder's token,
//! `hc:lk:{<name>}:f` the last fencing token, `hc:lk:{<name>}:w` marks that
//! someone waits (see `scripts.rs`), and releases are announced on the
//! channel `hc:lk:{<name>}:ch`. The `hc:lk:` prefix is the lock's own:
//! cache keys start `hc:{`, `hc:g<n>:{`, `hc:gen:` or `hc:bus:`, so no lock
//! name can collide with a cache key. The braces are a Redis Cluster hash
//! tag: the lock, its fence key, its waiter marker and its channel share a
//! slot, so one script may touch them all. A name with a brace could move the tag, so it is refused.

use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// Longest accepted lock name, in bytes.
pub const MAX_LOCK_NAME_LEN: usize = 1024;

/// How long a waiter's mark lasts after its last failed attempt: four
/// times the longest fallback poll, so a waiter that is still waiting
/// always renews it in time (see `scripts.rs`).
pub(crate) const WAITER_TTL: Duration =
    Duration::from_millis(4 * crate::lock::queue::POLL_MAX.as_millis() as u64);

/// A holder's token: 128 random bits, in hex so that it is printable in
/// `redis-cli`, kept inline: no allocation per acquisition.
#[derive(Clone, Copy)]
pub(crate) struct Token([u8; 32]);

impl Token {
    pub(crate) fn new() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bits = fastrand::u128(..);
        let mut hex = [0; 32];
        for (i, digit) in hex.iter_mut().enumerate() {
            *digit = HEX[((bits >> (124 - 4 * i)) & 0xf) as usize];
        }
        Token(hex)
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

#[derive(Debug)]
pub(crate) struct LockKeys {
    pub(crate) lock: String,
    pub(crate) fence: String,
    pub(crate) waiters: String,
    pub(crate) channel: String,
    /// The connection on which this handle last floored the fence counter
    /// (`lock/floor.rs`).
    pub(crate) floored: std::sync::atomic::AtomicU64,
}

impl LockKeys {
    pub(crate) fn new(name: &str) -> Result<Self, Error> {
        check_name(name)?;
        let lock = format!("hc:lk:{{{name}}}");
        Ok(LockKeys {
            fence: format!("{lock}:f"),
            waiters: format!("{lock}:w"),
            channel: format!("{lock}:ch"),
            floored: std::sync::atomic::AtomicU64::new(crate::lock::floor::NEVER),
            lock,
        })
    }
}

fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_LOCK_NAME_LEN {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "lock name must be 1 to {MAX_LOCK_NAME_LEN} bytes, not {}",
                name.len()
            ),
        ));
    }
    if name.contains(['{', '}']) {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "lock name {name:?} contains `{{` or `}}`, which would move its Redis Cluster hash tag"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_a_tag_and_bad_names_are_refused() {
        let k = LockKeys::new("orders:42").unwrap();
        assert_eq!(k.lock, "hc:lk:{orders:42}");
        assert_eq!(k.fence, "hc:lk:{orders:42}:f");
        assert_eq!(k.waiters, "hc:lk:{orders:42}:w");
        assert_eq!(k.channel, "hc:lk:{orders:42}:ch");
        for bad in ["", "a{b", "a}b", &"x".repeat(MAX_LOCK_NAME_LEN + 1)] {
            assert_eq!(
                LockKeys::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidKey
            );
        }
        assert!(LockKeys::new(&"x".repeat(MAX_LOCK_NAME_LEN)).is_ok());
    }

    #[test]
    fn tokens_are_hex_and_distinct() {
        let (a, b) = (Token::new(), Token::new());
        assert_eq!(a.as_bytes().len(), 32);
        assert!(a.as_bytes().iter().all(u8::is_ascii_hexdigit));
        assert_ne!(a.as_bytes(), b.as_bytes());
    }
}
