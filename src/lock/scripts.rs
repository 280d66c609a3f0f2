//! The lock's own script: take the lock and issue its fencing token in one
//! step. Extending and releasing use the shared lease primitives
//! (`shared/scripts.rs`).

use redis::Script;
use std::sync::LazyLock;

/// `SET lock token NX PX lease`, and if taken, the next fencing token.
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
/// KEYS: lock, fence. ARGV: token, lease ms, fence key ttl ms.
/// Returns `{1, fence}` if taken, else `{0, pttl}` (the holder's remaining ms).
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local fence = redis.call('INCR', KEYS[2])
  if fence == 1 then
    local t = redis.call('TIME')
    fence = tonumber(t[1]) * 1000000 + tonumber(t[2])
    redis.call('SET', KEYS[2], string.format('%d', fence), 'PX', ARGV[3])
  end
  return {1, fence}
end
return {0, math.max(redis.call('PTTL', KEYS[1]), 0)}
",
    )
});

/// The lock's scripts, loaded with each new connection.
pub(crate) fn all() -> [&'static Script; 1] {
    [&ACQUIRE]
}
