#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! | module | what it is for |
//! |---|---|
//! | `builder.rs` | [`CacheBuilder`]: every option, its default and trade-off |
//! | `cache.rs` | [`Cache`]: `get_or_compute`, `get`, `set`, `invalidate`; L1/L2 hit paths |
//! | `load.rs` | the rebuild protocol of a flight: lock, wait, load, fill, fail-safe |
//! | `local.rs` | the moka tier (L1), the per-process table of loads in flight, and the lanes that let an L2 hit skip that table |
//! | `remote.rs` | the Redis tier: one method per round trip, each bounded by `redis_timeout` |
//! | `link.rs` | the Redis connection: one multiplexed RESP3 connection, never waited for; one task pings it, replaces it when lost or silent, and resubscribes |
//! | `starter.rs` | one task per cache that spawns the refreshes callers start, so a caller serving a stale value returns without paying for a spawn |
//! | `breaker.rs` | circuit breaker: skip a Redis that is down, probe it, recover |
//! | `scripts.rs` | every Lua script, with why each is atomic |
//! | `lock.rs` | rebuild-lock tokens; running the loader under the watchdog |
//! | `notify.rs` | the namespace bus: fill notices wake waiters, change notices drop L1; our own writes hold back older fill notices |
//! | `keys.rs` | Redis key layout with a Cluster hash tag; key and namespace checks |
//! | `envelope.rs` | the stored byte format: 24-byte header + codec bytes |
//! | `borrow_de.rs` | a serde adapter that reads owned strings and bytes as borrowed ones, so bincode decodes them without a zero-filled allocation |
//! | `codec.rs` | [`Codec`], [`Bincode`] (default), `Postcard` (feature `postcard`) |
//! | `stats.rs` | [`Stats`] counters |
//! | `error.rs` | [`Error`], [`ErrorKind`] |
//!
//! # What each call does when something fails
//!
//! | failure | `get_or_compute` | `get` | `set`, `invalidate` |
//! |---|---|---|---|
//! | Redis down (refused, reset) | serves L1 (fresh, or stale inside the stale window); else runs the loader locally, once per process, and keeps its value in L1. The breaker then skips Redis for `breaker_cooldown` (250 ms) and probes it; no restart needed when it is back, and L1 is flushed once the connection returns (notices may have been lost) | L1 if fresh, else [`ErrorKind::Redis`] | [`ErrorKind::Redis`]; the key is dropped from this process's L1 |
//! | Redis slow or hung | each call is bounded by `redis_timeout` (500 ms), then as "down" | as "down" | as "down" |
//! | Redis gone without a reset (failover, NAT that forgot the flow) | as "slow"; after a streak of timeouts (3, over at least 2x `redis_timeout`; a `PING` every second finds it in a process that serves only from L1) the connection is replaced, L1 is flushed, and Redis is used again | as "down" | as "down" |
//! | loader error | the stale value if there is one (fail-safe), kept fresh fleet-wide for `fail_safe_throttle`; else [`ErrorKind::Loader`], the same error for every coalesced caller; nothing cached; lock released | — | — |
//! | loader slow | with a stale value: served at once (or after `soft_timeout`) while the load finishes in the background and fills; the loader is aborted at `load_timeout`, then stale or [`ErrorKind::LoadTimeout`] | — | — |
//! | loader panic | as loader error, with [`ErrorKind::LoaderPanicked`]; lock released, key not stuck | — | — |
//! | caller cancelled | the load goes on in its own task, fills both tiers, releases the lock; other callers are served by it | nothing held | L1 copy dropped before the write is sent; Redis has the old or the new state, never a mix |
//! | lock holder crashed | waiters wake when its lock expires (at most `lock_ttl`, as the dead holder's watchdog stops) and one of them loads | — | — |
//! | bytes in Redis that do not decode | a miss: counted in [`Stats::decode_errors`], recomputed, overwritten | `None` | — |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `bincode` | yes | [`Bincode`], the default codec (bincode 2.0.x, pinned; see README) |
//! | `postcard` | no | `Postcard`, a maintained codec |

#[cfg(feature = "bincode")]
mod borrow_de;
mod cache;
mod client;
mod codec;
mod error;
mod lock;
mod shared;

pub use cache::builder::CacheBuilder;
pub use cache::handle::Cache;
pub use cache::keys::{MAX_KEY_LEN, MAX_NAMESPACE_LEN};
pub use cache::stats::Stats;
pub use client::{Client, ClientBuilder};
#[cfg(feature = "postcard")]
pub use codec::Postcard;
#[cfg(feature = "bincode")]
pub use codec::{BINCODE_DECODE_LIMIT, Bincode};
pub use codec::{Codec, CodecError, DefaultCodec};
pub use error::{Error, ErrorKind};
pub use lock::keys::MAX_LOCK_NAME_LEN;
pub use lock::redlock::{DEFAULT_NODE_TIMEOUT, Redlock, RedlockBuilder, RedlockGuard, RedlockLock};
pub use lock::single::{DEFAULT_LEASE, Lock, LockGuard, MIN_LEASE};
/// The `redis` crate herdcache is built on, so that
/// [`CacheBuilder::client`] and [`Client::from_redis`] need no version match
/// in your manifest.
pub use redis;
