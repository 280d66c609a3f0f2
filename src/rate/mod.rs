//! Counters and rate limiting: [`Counter`](crate::Counter) (plain, or per
//! fixed window of Redis's clock) and [`RateLimiter`](crate::RateLimiter)
//! (GCRA), to shed a flood of requests before it reaches what it is after
//! (the stock of a flash sale). Both use the client's one connection,
//! bound and breaker (`crate::shared`).
//!
//! | file | what it is for |
//! |---|---|
//! | `counter.rs` | [`Counter`](crate::Counter): `incr`, `get`; `window` for fixed windows |
//! | `limiter.rs` | [`RateLimiter`](crate::RateLimiter): `rate`, `burst`, `check` → [`RateDecision`](crate::RateDecision) |
//! | `keys.rs` | `hc:ct:{<name>}`, `hc:ct:{<name>}:w<ms>`, `hc:rl:{<name>:<key>}`; name and key checks |
//! | `scripts.rs` | the windowed add and read, and the GCRA decision, each one script on Redis's clock |
//!
//! # What the patterns users copy get wrong, and the line that answers each
//!
//! | seed pattern | what goes wrong | here |
//! |---|---|---|
//! | `INCR k` then `EXPIRE k 60` as two calls (or `EXPIRE` only when `INCR` returned 1) | the second call can be lost: the process crashes or times out, or the connection drops, between the two. The counter then never expires: a per-minute limit becomes a lifetime one (that buyer is refused forever) and the key stays in Redis for good | the add and the expiry are one script (`scripts.rs` `WINDOW_INCR`): `HINCRBY` and `PEXPIREAT` the window's end, on every add |
//! | the window in the key's name from the client's clock (`k:<minute>`) | processes whose clocks differ count into different windows, and a key name built inside Lua cannot be routed by Redis Cluster | the window id comes from Redis's `TIME` inside the script and is stored *in* the one key (a hash `{w, n}`), which is passed in `KEYS` |
//! | a fixed-window counter as the rate limiter | `n` at the end of one window and `n` at the start of the next: 2x the limit in one window's length | [`RateLimiter`](crate::RateLimiter) holds the rate in every interval (GCRA); counters are documented with that edge |
//! | a token bucket kept by the client: `GET`, compute, `SET` | two processes read the same state and both admit; clocks that disagree refill early or late | the GCRA step is one script (`GCRA`) on Redis's clock, and its state is one number per key |
//! | a sliding log in a sorted set (`ZADD`, `ZREMRANGEBYSCORE`, `ZCARD`) | memory and work grow with the rate: one member per request | one number per key, with `PX` so idle keys vanish; refused requests write nothing |
//!
//! # Redis setup
//!
//! A limiter's key evicted by an evicting `maxmemory-policy` only forgets
//! that key's recent use (it is admitted as if idle): an error towards
//! admitting, never towards refusing. A counter evicted is lost; keep
//! counters that are state (stock, units sold) on a `noeviction` Redis.
//! Both follow the Redis server's clock: if it steps back, windowed counts
//! start afresh and limited keys wait the step longer.

pub(crate) mod counter;
pub(crate) mod keys;
pub(crate) mod limiter;
pub(crate) mod scripts;
