#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! | module | what it is for |
//! |---|---|
//! | `builder.rs` | [`CacheBuilder`]: every option, its default and trade-off |
//! | `cache.rs` | [`Cache`]: `get_or_compute`, `get`, `set`, `invalidate`; L1/L2 hit paths |
//! | `load.rs` | the rebuild protocol of a flight: lock, wait, load, fill, fail-safe |
//! | `local.rs` | the moka tier (L1) and the per-process table of loads in flight |
//! | `remote.rs` | the Redis tier: one method per round trip, each bounded by `redis_timeout` |
//! | `breaker.rs` | circuit breaker: skip a Redis that is down, probe it, recover |
//! | `scripts.rs` | every Lua script, with why each is atomic |
//! | `lock.rs` | rebuild-lock tokens; running the loader under the watchdog |
//! | `notify.rs` | the namespace bus: fill notices wake waiters, change notices drop L1 |
//! | `keys.rs` | Redis key layout with a Cluster hash tag; key and namespace checks |
//! | `envelope.rs` | the stored byte format: 24-byte header + codec bytes |
//! | `codec.rs` | [`Codec`], [`Bincode`] (default), `Postcard` (feature `postcard`) |
//! | `stats.rs` | [`Stats`] counters |
//! | `error.rs` | [`Error`], [`ErrorKind`] |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `bincode` | yes | [`Bincode`], the default codec (bincode 2.0.x, pinned; see README) |
//! | `postcard` | no | `Postcard`, a maintained codec |

mod breaker;
mod builder;
mod cache;
mod codec;
mod envelope;
mod error;
mod keys;
mod load;
mod local;
mod lock;
mod notify;
mod remote;
mod scripts;
mod stats;

pub use builder::CacheBuilder;
pub use cache::Cache;
#[cfg(feature = "postcard")]
pub use codec::Postcard;
#[cfg(feature = "bincode")]
pub use codec::{BINCODE_DECODE_LIMIT, Bincode};
pub use codec::{Codec, CodecError, DefaultCodec};
pub use error::{Error, ErrorKind};
pub use keys::{MAX_KEY_LEN, MAX_NAMESPACE_LEN};
pub use stats::Stats;
