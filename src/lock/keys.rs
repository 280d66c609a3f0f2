//! Where a lock lives in Redis: `hc:lk:{<name>}` holds the holder's token,
//! `hc:lk:{<name>}:f` the last fencing token, and releases are announced on
//! the channel `hc:lk:{<name>}:ch`. The `hc:lk:` prefix is the lock's own:
//! cache keys start `hc:{`, `hc:g<n>:{`, `hc:gen:` or `hc:bus:`, so no lock
//! name can collide with a cache key. The braces are a Redis Cluster hash
//! tag: the lock and its fence key share a slot, so one script may touch
//! both. A name with a brace could move the tag, so it is refused.

use crate::error::{Error, ErrorKind};

/// Longest accepted lock name, in bytes.
pub const MAX_LOCK_NAME_LEN: usize = 1024;

#[derive(Debug, Clone)]
pub(crate) struct LockKeys {
    pub(crate) lock: String,
    pub(crate) fence: String,
    pub(crate) channel: String,
}

impl LockKeys {
    pub(crate) fn new(name: &str) -> Result<Self, Error> {
        check_name(name)?;
        let lock = format!("hc:lk:{{{name}}}");
        Ok(LockKeys {
            fence: format!("{lock}:f"),
            channel: format!("{lock}:ch"),
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
        assert_eq!(k.channel, "hc:lk:{orders:42}:ch");
        for bad in ["", "a{b", "a}b", &"x".repeat(MAX_LOCK_NAME_LEN + 1)] {
            assert_eq!(
                LockKeys::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidKey
            );
        }
        assert!(LockKeys::new(&"x".repeat(MAX_LOCK_NAME_LEN)).is_ok());
    }
}
