//! The lock's own scripts: take the lock and issue its fencing token in one
//! step (on a Cluster; on one node `single.rs` does it with
//! `MULTI; SET NX PX; INCR; EXEC`, and these scripts cover what a
//! transaction cannot branch on), mark a waiter, and release the lock with
//! a notice only when someone waits. Extending uses the shared lease
//! primitive (`shared/scripts.rs` `EXTEND`).
//!
//! **The waiter marker.** A waiter whose attempt fails sets
//! `hc:lk:{<name>}:w` (with a short expiry, [`WAITER_TTL`](crate::lock::keys::WAITER_TTL))
//! in the same script that found the lock taken; the release deletes the
//! marker and publishes the notice only if there was one. An uncontended
//! lock (the common case) so publishes nothing: a `DEL` of a missing key
//! costs Redis less than a `PUBLISH`, and nothing crosses the wire to
//! subscribers. No wake-up is lost: a waiter sleeps only after a failed
//! attempt, and only once it is subscribed (it subscribes, then attempts
//! again, before its first sleep). That attempt set the marker atomically
//! with finding the lock taken, and only a release deletes it, so the
//! first release after it finds the marker and publishes, to a waiter
//! already subscribed. A later release may find no marker (the earlier one
//! took it), but every waiter it could concern was woken by that earlier
//! notice and is attempting again, which sets the marker anew if it fails.
//! The marker expires only if no waiter has attempted for its whole TTL,
//! far above the fallback poll (250 ms) every waiter keeps: such a waiter
//! is not waiting any more (or its process is stopped, and then its
//! overdue poll makes it attempt at once when it runs again).

use redis::Script;
use std::sync::LazyLock;

/// On a Cluster: `SET lock token NX PX lease`, and if taken, the next
/// fencing token; if not, the waiter marker (unless its TTL is 0: `try_acquire` does not
/// wait) and the holder's remaining time.
///
/// The token is the name's counter (`INCR`), started at the server's clock
/// in microseconds (`TIME`) whenever the counter is new. A counter alone
/// would go back to 1 when a Redis without persistence restarts (or a
/// replica without the last write is promoted, or the key expires); started
/// at the clock, it starts above every token issued before, as long as the
/// server's clock does not step back and fewer acquisitions were made than
/// microseconds passed since the old counter began. The counter key expires
/// a day after it was started (a name used once does not stay in Redis
/// forever); it then starts again at the clock, far above its old values.
/// Microseconds since 1970 stay below 2^53, so Lua's numbers hold them
/// exactly. Only the first acquisition of a counter pays for `TIME` and a
/// `SET`: the rest is one `INCR` (the earlier read-compare-write of the
/// fence key cost Redis ~3.7 µs per acquisition).
///
/// With the floor flag (the first acquisition of the name on a new
/// connection, `lock/floor.rs`), the counter is also raised to the clock
/// if it is below it: a promoted replica may have lost its last increments.
///
/// KEYS: lock, fence, waiter marker. ARGV: token, lease ms, fence key ttl
/// ms, waiter marker ttl ms (0: none), floor (`1` or `0`).
/// Returns `{1, fence}` if taken, else `{0, pttl}` (the holder's remaining ms).
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  if fence < 1000000000000000 or ARGV[5] == '1' then
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    if now > fence then
      fence = now
      redis.call('SET', KEYS[2], string.format('%d', fence), 'PX', ARGV[3])
    end
  end
  return {1, fence}
end
if ARGV[4] ~= '0' then redis.call('SET', KEYS[3], '1', 'PX', ARGV[4]) end
return {0, math.max(redis.call('PTTL', KEYS[1]), 0)}
",
    )
});

/// Fencing tokens from a counter at or above this were started at the
/// server's clock (µs since 1970: this is 2001); below it, the counter was
/// lost and recreated by an `INCR`, and must be started at the clock again
/// before a token is handed out (see [`FENCE_START`]).
pub(crate) const CLOCK_STARTED: u64 = 1_000_000_000_000_000;

/// The fence of an acquisition whose `INCR` found the counter new (below
/// [`CLOCK_STARTED`]): while the lock is still ours, start the counter at
/// the server's clock in µs (with its day-long expiry) and return that, or
/// if someone started it meanwhile, the next value. Token-checked, so a
/// token is only issued to the holder: holders follow one another, so it
/// is above every earlier holder's. (The multi-command acquisition cannot
/// branch on the counter, hence this second round trip, paid only by the
/// first acquisition of a counter.)
/// With the floor flag (the first acquisition of the name on a new
/// connection, `lock/floor.rs`), a started counter below the clock is
/// raised to it too.
/// KEYS: lock, fence. ARGV: token, fence key ttl ms, floor (`1` or `0`).
/// Returns the fence, or 0 if the lock is no longer ours.
pub(crate) static FENCE_START: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local f = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if f >= 1000000000000000 and ARGV[3] ~= '1' then return redis.call('INCR', KEYS[2]) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now <= f then return redis.call('INCR', KEYS[2]) end
redis.call('SET', KEYS[2], string.format('%d', now), 'PX', ARGV[2])
return now
",
    )
});

/// A waiter's mark after an acquisition without a script (a `SET NX` that
/// found the lock taken): set the waiter marker, and answer the holder's
/// remaining time, 0 if the lock is free by now. A release between the
/// failed `SET` and this mark found no marker and published nothing, but
/// then the lock is free here (0), or taken by another whose release comes
/// after the mark: the waiter retries at once, or is notified.
/// KEYS: lock, waiter marker. ARGV: waiter marker ttl ms.
pub(crate) static MARK_WAITER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
return math.max(redis.call('PTTL', KEYS[1]), 0)
",
    )
});

/// Compare-and-delete release that publishes the notice only if a waiter
/// marked the name (see the module docs): one `DEL` of the lock and the
/// marker, which counts 2 when there was a marker (the lock is there: its
/// token was just read), one `redis.call` less than a separate check. Never a plain `DEL`: a lock that
/// expired and was taken by someone else must not be freed by us.
/// KEYS: lock, waiter marker. ARGV: token, channel, notice, publish
/// command (`PUBLISH`, or `SPUBLISH` on a Cluster: see
/// `Server::publish_verb`). Returns 1 if released.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('DEL', KEYS[1], KEYS[2]) == 2 then redis.call(ARGV[4], ARGV[2], ARGV[3]) end
return 1
",
    )
});

/// The lock's scripts, loaded with each new connection.
pub(crate) fn all() -> [&'static Script; 4] {
    [&ACQUIRE, &FENCE_START, &MARK_WAITER, &RELEASE]
}
