//! The one public error type.
//!
//! `Error` is cheap to clone because a single failed load is handed to every
//! caller that was coalesced onto it: they all get the *same* error, not a
//! re-run of the loader and not a stringly copy of it.

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
    /// The key is not acceptable (too long).
    InvalidKey,
    /// The builder was given a setting that cannot work.
    Config,
    /// A lock was still held by another when the acquire's timeout ran out.
    LockTimeout,
    /// Fewer than a majority of a [`Redlock`](crate::Redlock)'s masters
    /// answered.
    NoQuorum,
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
            ErrorKind::InvalidKey => "invalid key",
            ErrorKind::Config => "invalid configuration",
            ErrorKind::LockTimeout => "timed out waiting for a lock",
            ErrorKind::NoQuorum => "no quorum of Redis masters",
        })
    }
}

type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// The error of every fallible call. Cloning it is an `Arc` bump.
#[derive(Clone, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct Error {
    kind: ErrorKind,
    message: Arc<str>,
    #[source]
    source: Option<Source>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, message: impl Into<Arc<str>>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn with_source(
        kind: ErrorKind,
        message: impl Into<Arc<str>>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error {
            kind,
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }

    pub(crate) fn redis(op: &str, e: redis::RedisError) -> Self {
        Error::with_source(ErrorKind::Redis, format!("{op}: {e}"), e)
    }

    pub(crate) fn loader<E: std::error::Error + Send + Sync + 'static>(e: E) -> Self {
        Error::with_source(ErrorKind::Loader, e.to_string(), e)
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The loader's own error, when [`kind`](Self::kind) is
    /// [`ErrorKind::Loader`]; downcast it to get your type back.
    pub fn loader_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        match self.kind {
            ErrorKind::Loader => self.source.as_deref(),
            _ => None,
        }
    }

    /// True when both are the very same error value (as coalesced callers
    /// receive), not merely equal-looking ones.
    pub fn same_as(&self, other: &Error) -> bool {
        Arc::ptr_eq(&self.message, &other.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .finish()
    }
}
