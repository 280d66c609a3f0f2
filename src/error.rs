//! The one public error type.
//!
//! `Error` is cheap to clone because a single failed load is handed to every
//! caller that was coalesced onto it: they all get the *same* error, not a
//! re-run of the loader and not a stringly copy of it.
//!
//! Display prints what failed and our own context only (`redis error:
//! GET`, `loader failed for key "42"`); the cause is reached through
//! [`source`](std::error::Error::source), never printed twice. That is the
//! Rust API guidelines' rule (C-GOOD-ERR: a wrapper either shows its
//! source's text or returns it from `source()`, not both), and it is what
//! makes `{:#}` with anyhow, or an error-chain logger, print each cause once:
//! `loader failed for key "42": no such table: products`.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

/// What went wrong, to match on. New kinds may be added.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Redis refused, timed out or could not be reached.
    Redis,
    /// The loader returned an error; [`Error::loader_error`] gives it back.
    Loader,
    /// The loader panicked. The lock was released and nothing was cached.
    LoaderPanicked,
    /// The loader ran longer than `load_timeout`; the lock was released.
    LoadTimeout,
    /// Another caller held the rebuild lock for longer than `wait_timeout`.
    WaitTimeout,
    /// The encoded value is larger than `max_value_size`; nothing was written.
    ValueTooLarge,
    /// The codec could not encode the value.
    Encode,
    /// The value encodes but does not decode back from its own bytes with
    /// this codec, so no other process (and no later read) could use it;
    /// nothing was written. Typically a serde attribute that a
    /// non-self-describing codec (bincode, postcard) cannot take, such as
    /// `skip_serializing_if`: see the README's Codecs section.
    Codec,
    /// The key is not acceptable (too long).
    InvalidKey,
    /// The builder was given a setting that cannot work.
    Config,
    /// A lock was still held by another when the acquire's timeout ran out.
    LockTimeout,
    /// Fewer than a majority of a [`Redlock`](crate::Redlock)'s masters
    /// answered.
    NoQuorum,
    /// What the call needs was never set up (a [`Stock`](crate::Stock)
    /// whose units were never set).
    NotFound,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Redis => "redis error",
            ErrorKind::Loader => "loader failed",
            ErrorKind::LoaderPanicked => "loader panicked",
            ErrorKind::LoadTimeout => "loader timed out",
            ErrorKind::WaitTimeout => "timed out waiting for another caller's load",
            ErrorKind::ValueTooLarge => "value too large",
            ErrorKind::Encode => "could not encode value",
            ErrorKind::Codec => "value does not survive the codec's round trip",
            ErrorKind::InvalidKey => "invalid key",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::LockTimeout => "timed out waiting for a lock",
            ErrorKind::NoQuorum => "no quorum of Redis masters",
            ErrorKind::NotFound => "not found",
        })
    }
}

type Source = Box<dyn StdError + Send + Sync + 'static>;

/// The error of every fallible call. Cloning it is an `Arc` bump.
///
/// `Display` names the failure and our context (the Redis operation, the
/// key); the cause, if any, is [`source`](std::error::Error::source). Print
/// the whole chain with `{:#}` of an `anyhow::Error`, or by walking
/// `source()`.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    /// Our own context, without the source's text (may be empty).
    context: Box<str>,
    source: Option<Source>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, context: impl Into<Box<str>>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                context: context.into(),
                source: None,
            }),
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        context: impl Into<Box<str>>,
        source: impl Into<Source>,
    ) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                context: context.into(),
                source: Some(source.into()),
            }),
        }
    }

    /// A failed Redis call: Display `redis error: <op>`, and the
    /// `RedisError` as the source ([`Error::redis_error`] gives it back).
    pub(crate) fn redis(op: &str, e: redis::RedisError) -> Self {
        Error::with_source(ErrorKind::Redis, op, RedisCause(e))
    }

    /// The loader's own error, kept whole (not turned into a string), so
    /// [`Error::loader_error`] can hand it back for a downcast.
    pub(crate) fn loader(key: &str, e: Source) -> Self {
        Error::with_source(ErrorKind::Loader, format!("for key {key:?}"), e)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The loader's own error, when [`kind`](Self::kind) is
    /// [`ErrorKind::Loader`]. Downcast it to get your type back:
    ///
    /// ```
    /// # #[derive(Debug, thiserror::Error)] #[error("no such row")] struct DbError;
    /// # fn check(e: &herdcache::Error) -> bool {
    /// e.loader_error().and_then(|e| e.downcast_ref::<DbError>()).is_some()
    /// # }
    /// ```
    ///
    /// Any loader error type that converts into `Box<dyn Error + Send +
    /// Sync>` is accepted, and what is kept is that box: a `thiserror` or
    /// other `std::error::Error` type (boxed as itself, so the downcast
    /// above works), a `Box<dyn Error + Send + Sync>`, a `String` or a
    /// `&'static str` (boxed as a private message type), or an
    /// `anyhow::Error`. anyhow boxes itself in its own wrapper, which shows
    /// the same text and chain but does not downcast to your type: a loader
    /// that returns `anyhow::Result` and wants the error matched later can
    /// end with `.map_err(anyhow::Error::reallocate_into_boxed_dyn_error_without_backtrace)`
    /// (the box then holds the original error, unless `.context(…)` was
    /// added to it), or return its own error type.
    pub fn loader_error(&self) -> Option<&(dyn StdError + Send + Sync + 'static)> {
        match self.inner.kind {
            ErrorKind::Loader => self.inner.source.as_deref(),
            _ => None,
        }
    }

    /// The `redis` crate's error, when [`kind`](Self::kind) is
    /// [`ErrorKind::Redis`] and Redis (or the connection to it) answered
    /// with one, e.g. to ask `is_connection_refusal()`.
    pub fn redis_error(&self) -> Option<&redis::RedisError> {
        self.inner
            .source
            .as_deref()?
            .downcast_ref::<RedisCause>()
            .map(|c| &c.0)
    }

    /// True when both are the very same error value (as coalesced callers
    /// receive), not merely equal-looking ones.
    pub fn same_as(&self, other: &Error) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.inner.kind, f)?;
        if !self.inner.context.is_empty() {
            // "loader failed for key …" reads as one phrase; any other
            // context follows a colon ("redis error: GET").
            let sep = if self.inner.context.starts_with("for ") {
                " "
            } else {
                ": "
            };
            f.write_str(sep)?;
            f.write_str(&self.inner.context)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.inner.kind)
            .field("context", &self.inner.context)
            .field("source", &self.inner.source)
            .finish()
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
    }
}

/// Prints an error and its whole source chain, `: `-separated, for logs.
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
pub(crate) struct Chain<'a>(pub(crate) &'a Error);

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self.0, f)?;
        let mut next = StdError::source(self.0);
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

/// A `RedisError` as a source. `redis` itself breaks the one-or-the-other
/// rule: an I/O, server or parse error displays its inner error's text
/// *and* returns that error from `source()`, so a chain printer shows
/// "Connection refused (os error 111)" twice. This shows redis's text and
/// skips the inner error it already printed.
struct RedisCause(redis::RedisError);

impl fmt::Display for RedisCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl fmt::Debug for RedisCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl StdError for RedisCause {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        let inner = self.0.source()?;
        // Every redis error with a source displays that source's text as
        // its own (redis 1.x); should a later version print its own words
        // instead, the inner error is a cause worth showing again.
        if inner.to_string() == self.0.to_string() {
            inner.source()
        } else {
            Some(inner)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(e: &dyn StdError) -> Vec<String> {
        let mut out = vec![e.to_string()];
        let mut next = e.source();
        while let Some(s) = next {
            out.push(s.to_string());
            next = s.source();
        }
        out
    }

    #[test]
    fn a_refused_connection_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = Error::redis("connect", redis::RedisError::from(io));
        assert_eq!(
            chain(&e),
            ["redis error: connect", "Connection refused"],
            "{e:?}"
        );
        assert!(e.redis_error().is_some_and(|r| r.is_io_error()));
    }

    #[test]
    fn loader_errors_are_kept_whole_and_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("no such table: products")]
        struct Db;
        let e = Error::loader("42", Box::new(Db));
        assert_eq!(
            chain(&e),
            ["loader failed for key \"42\"", "no such table: products"]
        );
        assert!(e.loader_error().unwrap().downcast_ref::<Db>().is_some());
        assert!(e.same_as(&e.clone()));
        assert!(!e.same_as(&Error::loader("42", Box::new(Db))));
        let plain = Error::new(ErrorKind::Config, "");
        assert_eq!(plain.to_string(), "invalid configuration");
    }
}
