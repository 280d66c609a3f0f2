#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! One [`Client`] per process owns the Redis connection; each tool is a wing
//! over that shared layer, and no wing reaches into another's files.
//!
//! | wing | files | what it is for |
//! |---|---|---|
//! | `client.rs` | — | [`Client`], [`ClientBuilder`]: the one connection per process; makes caches and locks; warns once about an evicting Redis |
//! | `shared/` | `link.rs`, `server.rs`, `breaker.rs`, `scripts.rs`, `stream.rs`, `telemetry.rs` | what every tool uses: one multiplexed RESP3 connection, never waited for (heartbeat, replacement when lost or silent, resubscription; under Sentinel, the master asked anew at each connection) with a router that hands each pub/sub message to the listeners of its channel; on a Redis Cluster one cluster connection, sharded subscriptions, and the slot map watched; every call bounded and behind the circuit breaker; the token-checked lease scripts (take, extend, release); consumer groups over a stream (pending until acknowledged, taken over from a stopped consumer, dead-lettered after `max_deliveries`, trimmed without dropping what a group still needs); every span, event and metric of every tool (see "Observability" below) |
//! | `cache/` | `handle.rs`, `builder.rs`, `load.rs`, `rebuild.rs`, `local.rs`, `remote.rs`, `notify.rs`, `starter.rs`, `key.rs`, `keys.rs`, `envelope.rs`, `scripts.rs`, `stats.rs` | [`Cache`], [`CacheBuilder`]: the two tiers, the fleet-wide rebuild protocol, invalidation by notice (see `cache/mod.rs`) |
//! | `lock/` | `single.rs`, `redlock.rs`, `lease.rs`, `queue.rs`, `keys.rs`, `floor.rs`, `scripts.rs` | [`Lock`], [`LockGuard`] (fenced, renewed, woken by notice), [`Redlock`] over N masters; why the usual `SETNX`/`DEL`/`sleep` patterns are replaced (see `lock/mod.rs`) |
//! | `stock/` | `inventory.rs`, `batch.rs`, `orders.rs`, `scripts.rs`, `keys.rs` | [`Stock`]: flash-sale stock that never oversells, idempotent [`Reservation`]s (concurrent ones of a SKU sent to Redis in one script call), an order stream read by consumer groups ([`Orders`], [`Delivery`]) (see `stock/mod.rs`) |
//! | `queue/` | `mod.rs` | [`Queue`]: a typed queue on the same stream machinery; why `LPUSH`/`RPOP` loses messages |
//! | `rate/` | `counter.rs`, `limiter.rs`, `keys.rs`, `scripts.rs` | [`Counter`] (plain, or per fixed window of Redis's clock: add and expiry in one script, not `INCR` then `EXPIRE`), [`RateLimiter`] (GCRA on Redis's clock) answering [`RateDecision`]; keys `hc:ct:{<name>}`, `hc:rl:{<name>:<key>}` (see `rate/mod.rs`) |
//! | — | `codec.rs`, `borrow_de.rs` | [`Codec`], [`Bincode`] (default), `Postcard` (feature `postcard`), `Json` (feature `json`); a serde adapter that lets bincode decode strings without a zero-filled allocation |
//! | — | `error.rs` | [`Error`], [`ErrorKind`] |
//!
//! Redis keys: each tool has its own prefix, so no name of one can collide
//! with another's: a cache value `hc:{<ns>:<key>}:v` (`cache/keys.rs`), a
//! lock `hc:lk:{<name>}` (`lock/keys.rs`), a SKU's stock `hc:st:{<sku>}:…`
//! (`stock/keys.rs`), a queue `hc:q:{<name>}:…`, a counter `hc:ct:{<name>}`,
//! a rate limiter's key `hc:rl:{<name>:<key>}` (`rate/keys.rs`). Each tool's
//! keys for one name share a Cluster hash tag, so every script touches one
//! slot. On a Redis Cluster ([`Client::cluster`]) notices are sharded
//! (`SSUBSCRIBE`/`SPUBLISH` on a channel in the keys' slot), and a cache
//! namespace is split into hash-tag buckets, `hc:{<ns>:<bucket>}:<key>:v`,
//! each with its own channel (`cache/keys.rs`).
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
//! | failure | `Lock::acquire` | a held [`LockGuard`] | `release` |
//! |---|---|---|---|
//! | Redis down | [`ErrorKind::Redis`] at once (a lock that cannot be checked is not waited for) | the watchdog retries; [`LockGuard::lost`] fires at the end of the lease last confirmed | [`ErrorKind::Redis`]; the lock runs out with its lease |
//! | Redis slow or hung | each call bounded by `redis_timeout`, then as "down"; an acquisition that timed out is released in the background once Redis runs it (not left held by nobody for a lease) | as "down" | as "down" |
//! | holder crashed or paused past its lease | the lock is free when the lease runs out (at most `lease`); waiters wake then | the paused holder's `lost()` fires and `is_held()` is false when it resumes; its writes carry an old fencing token, which the resource refuses | `Ok(false)`: nothing of the new holder's is touched |
//! | caller cancelled | the wait is given up; a lock taken by an attempt in flight is released in the background | a guard dropped without `release` is released in the background at once | — |
//! | Redlock: a minority of masters down | acquires on the majority | renewed on the majority | released where reachable |
//! | Redlock: a majority down | [`ErrorKind::NoQuorum`] at once | `lost()` within the lease | [`ErrorKind::NoQuorum`] |
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `bincode` | yes | [`Bincode`], the default codec (bincode 2.0.x, pinned; see README) |
//! | `postcard` | no | `Postcard`, a maintained codec |
//! | `json` | no | `Json` (serde_json), a self-describing codec: takes `skip_serializing_if`, `flatten` and `untagged`, which bincode and postcard cannot (see README, Codecs) |
//! | `tracing` | yes | spans and events through `tracing` 0.1 (below). Off: no `tracing` dependency and no log lines at all (the counters stay in [`Stats`]) |
//! | `metrics` | no | counters and histograms through the `metrics` 0.24 facade (below) |
//!
//! # Observability
//!
//! **Tracing** (feature `tracing`, on by default). A span per call, with
//! its outcome recorded when known:
//!
//! | span (INFO) | fields |
//! |---|---|
//! | `herdcache.get_or_compute` (past L1) | `namespace`, `outcome` (`l1`, `l2`, `loaded`, `waited`, `stale`, `error`), `key` (only when DEBUG is on) |
//! | `herdcache.load` (the load task, a child of the call that started it) | `namespace`, `key` (only when DEBUG is on) |
//! | `herdcache.lock` ([`Lock`] and [`RedlockLock`] acquisitions) | `name`, `outcome` (`acquired`, `busy`, `timeout`, `error`), `fencing_token` |
//! | `herdcache.stock.reserve` | `sku`, `outcome` (`reserved`, `sold_out`, `user_limit`, `error`) |
//!
//! Events: a load finished (DEBUG, or INFO when it failed: `namespace`,
//! `duration_ms`, `outcome` = `ok`, `error`, `timeout`, `panic`); a wait
//! for another process's load (DEBUG, `duration_ms`); a lock waited for
//! (DEBUG, `name`, `duration_ms`); a lease lost (WARN, `name`); the
//! breaker opened (WARN) and closed (INFO); the connection lost (WARN) and
//! back (INFO, `down_ms`); plus the codec-problem and eviction-policy
//! warnings described above. Targets are the module paths (`herdcache::…`).
//!
//! Cache keys may be personal data (an email, a user id): they appear only
//! at DEBUG and TRACE, never at INFO or above (a loader's error, which
//! names the key, goes to the callers, not into an INFO event). An L1 hit
//! opens no span and logs nothing: with the feature on and no subscriber
//! installed it costs what it did before (`docs/BENCHMARKS.md`,
//! "Observability"). Why a default feature rather than always on: it costs
//! nothing measurable, hence on by default; a service that does not use
//! `tracing` can still drop the dependency.
//!
//! **Metrics** (feature `metrics`): counters and histograms through the
//! [`metrics`](https://docs.rs/metrics/0.24) facade, for whatever recorder
//! the application installs (a Prometheus exporter, …); the library
//! installs none. **Install the recorder before building clients and
//! caches**: a cache registers its handles when it is built (so that an L1
//! hit pays one increment, not a registry lookup), and handles registered
//! before any recorder count nothing. Lock, stock and connection metrics
//! are looked up per call. Durations are in seconds, as Prometheus names
//! them. Lock names, SKUs and keys are never labels (they are unbounded);
//! `namespace` is (a handful per service).
//!
//! | metric | type | labels | unit | counts |
//! |---|---|---|---|---|
//! | `herdcache_cache_requests_total` | counter | `namespace`, `outcome` (`l1`, `l2`, `loaded`, `waited`, `stale`, `error`) | calls | every [`Cache::get_or_compute`] (so also `get_or_compute_opt`, and each key `get_or_compute_many` does not find with its `MGET`) |
//! | `herdcache_cache_request_duration_seconds` | histogram | `namespace`, `outcome` (all but `l1`) | seconds | the same calls past L1, from the L1 miss to the answer. L1 hits are counted, not timed: a clock read would cost the hit more than its budget over raw moka |
//! | `herdcache_cache_load_duration_seconds` | histogram | `namespace`, `outcome` (`ok`, `error`, `timeout`, `panic`) | seconds | loader runs |
//! | `herdcache_cache_<stat>_total` | counter | `namespace` | events | one per [`Stats`] field, the same count: `l1_hits`, `l2_hits`, `misses`, `coalesced`, `loads`, `load_errors`, `lock_waits`, `notified_wakeups`, `wait_timeouts`, `lease_lost`, `decode_errors`, `codec_errors`, `redis_errors`, `redis_fallback_loads`, `breaker_rejections`, `stale_served`, `background_refreshes`, `fail_safe_served`, `remote_changes`, `remote_fills` (e.g. `herdcache_cache_decode_errors_total`) |
//! | `herdcache_lock_acquires_total` | counter | `outcome` (`acquired`, `busy`, `timeout`, `error`) | calls | `acquire`, `acquire_timeout`, `try_acquire` of [`Lock`] and [`RedlockLock`] |
//! | `herdcache_lock_acquire_duration_seconds` | histogram | `outcome` | seconds | the same, waiting included |
//! | `herdcache_lock_leases_lost_total` | counter | — | leases | held leases the watchdog could not renew ([`LockGuard::lost`] fired) |
//! | `herdcache_stock_reserves_total` | counter | `outcome` (`reserved`, `sold_out`, `user_limit`, `error`) | calls | [`Stock::reserve`] |
//! | `herdcache_stock_reserve_duration_seconds` | histogram | `outcome` | seconds | the same |
//! | `herdcache_breaker_opened_total` | counter | — | times | the circuit breaker in front of Redis opened |
//! | `herdcache_redis_connections_lost_total` | counter | — | connections | connections given up (dropped, timing out, a demoted master) |
//! | `herdcache_redis_reconnects_total` | counter | — | connections | new connections made after a loss |
//!
//! [`Stats`] stays: a snapshot of one cache's counters, with no feature
//! and no recorder. `tests/telemetry.rs` checks the metrics against
//! `metrics-util`'s recorder, `tests/spans.rs` the spans.

#[cfg(feature = "bincode")]
mod borrow_de;
mod cache;
mod client;
mod codec;
mod error;
mod lock;
mod queue;
mod rate;
mod shared;
mod stock;

pub use cache::builder::CacheBuilder;
pub use cache::handle::{Cache, Found};
pub use cache::key::{CacheKey, Key};
pub use cache::keys::{MAX_KEY_LEN, MAX_NAMESPACE_LEN};
pub use cache::stats::Stats;
pub use client::{Client, ClientBuilder};
#[cfg(feature = "json")]
pub use codec::Json;
#[cfg(feature = "postcard")]
pub use codec::Postcard;
#[cfg(feature = "bincode")]
pub use codec::{BINCODE_DECODE_LIMIT, Bincode};
pub use codec::{Codec, CodecError, DefaultCodec};
pub use error::{Error, ErrorKind};
pub use lock::keys::MAX_LOCK_NAME_LEN;
pub use lock::redlock::{DEFAULT_NODE_TIMEOUT, Redlock, RedlockBuilder, RedlockGuard, RedlockLock};
pub use lock::single::{DEFAULT_LEASE, Lock, LockGuard, MAX_LEASE, MIN_LEASE};
pub use queue::{MAX_QUEUE_NAME_LEN, Message, Queue, QueueConsumer};
pub use rate::counter::Counter;
pub use rate::keys::{MAX_COUNTER_NAME_LEN, MAX_LIMITER_KEY_LEN, MAX_LIMITER_NAME_LEN};
pub use rate::limiter::{RateDecision, RateLimiter};
/// The `redis` crate herdcache is built on, so that
/// [`CacheBuilder::client`] and [`Client::from_redis`] need no version match
/// in your manifest.
pub use redis;
pub use stock::inventory::{Cancellation, MAX_AVAILABLE, MAX_QTY, Reservation, Stock};
pub use stock::keys::MAX_ID_LEN;
pub use stock::orders::{Delivery, OrderConsumer, OrderEvent, Orders};
#[doc(hidden)]
pub use stock::scripts::RESERVE_LUA as __RESERVE_LUA;

/// The decoder as a pure function, for the fuzz harness
/// (`tests/fuzz_decoder.rs`) only: not part of the API, hidden, and free
/// to change in any release.
#[doc(hidden)]
pub mod __fuzz {
    use crate::cache::envelope::{self, Decoded, Header, Unusable};
    use crate::codec::Codec;
    use serde::de::DeserializeOwned;

    /// The envelope header's length.
    pub const HEADER_LEN: usize = envelope::HEADER_LEN;

    /// What a cache makes of `bytes` read from Redis at `now_ms`:
    /// `Ok(Some((value, fresh)))`, `Ok(None)` for a well-formed value past
    /// its stale window (a plain miss), or `Err(why)` for bytes the cache
    /// counts in `Stats::decode_errors`: `"too_large"`, `"envelope"` or
    /// `"codec"`.
    pub fn read<V: DeserializeOwned, C: Codec>(
        codec: &C,
        bytes: &[u8],
        max_value_size: usize,
        now_ms: u64,
    ) -> Result<Option<(V, bool)>, &'static str> {
        match envelope::read_value(codec, bytes, max_value_size, now_ms) {
            Ok(Some(Decoded::Fresh(_, v))) => Ok(Some((v, true))),
            Ok(Some(Decoded::Stale(_, v))) => Ok(Some((v, false))),
            Ok(None) => Ok(None),
            Err(Unusable::TooLarge(_)) => Err("too_large"),
            Err(Unusable::Envelope(_)) => Err("envelope"),
            Err(Unusable::Codec(_)) => Err("codec"),
        }
    }

    /// A well-formed envelope header (as the cache writes it) followed by
    /// `payload`.
    pub fn envelope(fresh_until_ms: u64, stale_until_ms: u64, payload: &[u8]) -> Vec<u8> {
        let header = Header {
            flags: 0,
            compute_ms: 5,
            fresh_until_ms,
            stale_until_ms,
        };
        let mut buf = header.start_buffer(payload.len());
        buf.extend_from_slice(payload);
        buf
    }
}
