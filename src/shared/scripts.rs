//! The lease primitives every tool shares: take a lock with a token, extend
//! it only while the token still holds it, release it only while it does.
//! Never a plain `DEL` of a lock: a lease that expired and was taken by
//! someone else must not be freed (or extended) by its old holder.
//! `Script::invoke_async` sends EVALSHA and falls back to EVAL once, so a
//! restarted Redis (empty script cache) costs one extra round trip.

use redis::Script;
use std::sync::LazyLock;

/// `SET lock token NX PX ttl`, answering the holder's remaining time when it
/// is taken: the cache's rebuild lock when a value is there but unusable
/// (the read-or-lock probe would return the bytes instead). (A Redlock
/// sends each master a plain `SET NX PX`: `lock/redlock.rs`.)
/// KEYS: lock. ARGV: token, lock ttl ms.
/// Returns -1 if acquired, else the holder's remaining ms (>= 0).
pub(crate) static TRY_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return -1 end
return math.max(redis.call('PTTL', KEYS[1]), 0)
",
    )
});

/// Compare-and-delete release, with a notice so waiters retry at once
/// instead of at their next poll. Never a plain DEL: a lock
/// that expired and was taken by someone else must not be freed by us.
/// KEYS: lock. ARGV: token, channel, notice, publish command (`PUBLISH`, or
/// `SPUBLISH` on a Cluster: see `Server::publish_verb`). Returns 1 if released.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call(ARGV[4], ARGV[2], ARGV[3])
return 1
",
    )
});

/// The watchdog's extension: compare-token-then-PEXPIRE.
/// KEYS: lock. ARGV: token, ttl ms. Returns 1 if still ours.
pub(crate) static EXTEND: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
return redis.call('PEXPIRE', KEYS[1], ARGV[2])
",
    )
});

/// The shared scripts, loaded with each new connection.
pub(crate) fn all() -> [&'static Script; 3] {
    [&TRY_LOCK, &RELEASE, &EXTEND]
}
