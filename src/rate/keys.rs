//! Where counters and rate limiters live in Redis.
//!
//! - a counter: `hc:ct:{<name>}` (a plain integer);
//! - a windowed counter: `hc:ct:{<name>}:w<ms>` (a hash `{w, n}`: the id of
//!   the window the count belongs to, and the count). The window's length
//!   is part of the key, so a counter per second and a counter per minute
//!   under one name are two counters, not one that both reset;
//! - a rate limiter's state for one key: `hc:rl:{<name>:<key>}` (the
//!   theoretical arrival time, see `scripts.rs`).
//!
//! The `hc:ct:` and `hc:rl:` prefixes are this wing's own: cache keys start
//! `hc:{`, `hc:g<n>:{`, `hc:gen:` or `hc:bus:`, locks `hc:lk:`, so no name
//! of one tool can collide with another's. The braces are a Redis Cluster
//! hash tag, so each script's one key is routed by the whole name. A brace
//! inside a name or key could move the tag, so both are refused; a colon in
//! a limiter's name is refused too, or `a:b` + key `c` and `a` + key `b:c`
//! would share a key (the key itself may hold colons: the name's end is the
//! first colon).

use crate::error::{Error, ErrorKind};

/// Longest accepted counter name, in bytes.
pub const MAX_COUNTER_NAME_LEN: usize = 1024;

/// Longest accepted rate limiter name, in bytes.
pub const MAX_LIMITER_NAME_LEN: usize = 256;

/// Longest accepted rate limiter key (the `key` of
/// [`RateLimiter::check`](crate::RateLimiter::check)), in bytes.
pub const MAX_LIMITER_KEY_LEN: usize = 1024;

/// The Redis key of a counter; `window_ms` for a windowed one.
pub(crate) fn counter_key(name: &str, window_ms: Option<u64>) -> Result<String, Error> {
    check("counter name", name, MAX_COUNTER_NAME_LEN, false)?;
    Ok(match window_ms {
        None => format!("hc:ct:{{{name}}}"),
        Some(ms) => format!("hc:ct:{{{name}}}:w{ms}"),
    })
}

/// Checks a limiter's name once (it is the same for every key).
pub(crate) fn check_limiter_name(name: &str) -> Result<(), Error> {
    check("rate limiter name", name, MAX_LIMITER_NAME_LEN, true)
}

/// The Redis key of one limiter key, its name already checked.
pub(crate) fn limiter_key(name: &str, key: &str) -> Result<String, Error> {
    check("rate limiter key", key, MAX_LIMITER_KEY_LEN, false)?;
    Ok(format!("hc:rl:{{{name}:{key}}}"))
}

fn check(what: &str, s: &str, max: usize, no_colon: bool) -> Result<(), Error> {
    if s.is_empty() || s.len() > max {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("{what} must be 1 to {max} bytes, not {}", s.len()),
        ));
    }
    if s.contains(['{', '}']) {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "{what} {s:?} contains `{{` or `}}`, which would move its Redis Cluster hash tag"
            ),
        ));
    }
    if no_colon && s.contains(':') {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("{what} {s:?} contains `:`, which would let two limiters' keys collide"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_their_own_prefix_and_bad_names_are_refused() {
        assert_eq!(counter_key("sold:42", None).unwrap(), "hc:ct:{sold:42}");
        assert_eq!(
            counter_key("sold:42", Some(1000)).unwrap(),
            "hc:ct:{sold:42}:w1000"
        );
        assert_eq!(
            limiter_key("buy", "ip:10.0.0.1").unwrap(),
            "hc:rl:{buy:ip:10.0.0.1}"
        );
        let long = "x".repeat(MAX_COUNTER_NAME_LEN + 1);
        for bad in ["", "a{b", "a}b", &long] {
            assert_eq!(
                counter_key(bad, None).unwrap_err().kind(),
                ErrorKind::InvalidKey
            );
        }
        assert!(counter_key(&"x".repeat(MAX_COUNTER_NAME_LEN), None).is_ok());
        let long = "x".repeat(MAX_LIMITER_NAME_LEN + 1);
        for bad in ["", "a{b", "a}b", "a:b", &long] {
            assert_eq!(
                check_limiter_name(bad).unwrap_err().kind(),
                ErrorKind::InvalidKey
            );
        }
        let long = "x".repeat(MAX_LIMITER_KEY_LEN + 1);
        for bad in ["", "a{b", "a}b", &long] {
            assert_eq!(
                limiter_key("buy", bad).unwrap_err().kind(),
                ErrorKind::InvalidKey
            );
        }
        assert!(limiter_key("buy", &"x".repeat(MAX_LIMITER_KEY_LEN)).is_ok());
    }
}
