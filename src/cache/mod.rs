//! The two-tier cache: [`Cache`](crate::Cache) and its builder, the rebuild
//! protocol, and the namespace bus. It uses the shared layer for its
//! connection, breaker and pub/sub channel (`crate::shared`).
//!
//! | file | what it is for |
//! |---|---|
//! | `builder.rs` | [`CacheBuilder`](crate::CacheBuilder): every option, its default and trade-off |
//! | `handle.rs` | [`Cache`](crate::Cache): `get_or_compute`, `get`, `set`, `invalidate`; L1/L2 hit paths |
//! | `load.rs` | the rebuild protocol of a flight: lock, wait, load, fill, fail-safe |
//! | `rebuild.rs` | rebuild-lock tokens; running the loader under the watchdog |
//! | `local.rs` | the moka tier (L1), the per-process table of loads in flight, and the lanes that let an L2 hit skip that table |
//! | `remote.rs` | the Redis tier: one method per round trip, each bounded by `redis_timeout` |
//! | `starter.rs` | one task per cache that spawns the refreshes callers start, so a caller serving a stale value returns without paying for a spawn |
//! | `scripts.rs` | the cache's Lua scripts, with why each is atomic |
//! | `notify.rs` | the namespace bus: fill notices wake waiters, change notices drop L1; our own writes hold back older fill notices |
//! | `key.rs` | [`CacheKey`](crate::CacheKey): what a call takes as a key (strings, integers), with no cost for `&str` |
//! | `keys.rs` | Redis key layout with a Cluster hash tag; key and namespace checks |
//! | `envelope.rs` | the stored byte format: 24-byte header + codec bytes |
//! | `stats.rs` | [`Stats`](crate::Stats) counters |

pub(crate) mod builder;
pub(crate) mod envelope;
pub(crate) mod handle;
pub(crate) mod key;
pub(crate) mod keys;
pub(crate) mod load;
pub(crate) mod local;
pub(crate) mod notify;
pub(crate) mod rebuild;
pub(crate) mod remote;
pub(crate) mod scripts;
pub(crate) mod starter;
pub(crate) mod stats;
