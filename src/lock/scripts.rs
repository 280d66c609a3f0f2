//! The lock's own script: take the lock and issue its fencing token in one
//! step. Extending and releasing use the shared lease primitives
//! (`shared/scripts.rs`).

use redis::Script;
use std::sync::LazyLock;

/// `SET lock token NX PX lease`, and if taken, the next fencing token.
///
/// The token is one more than the last one issued for this name, and never
/// below the server's clock in microseconds (`TIME`). The counter alone
/// would go back to 1 when a Redis without persistence restarts (or a
/// replica without the last write is promoted); the clock floor keeps the
/// tokens increasing across that, as long as the server's clock does not
/// step back. The counter covers several acquisitions within one
/// microsecond, and a clock that steps back while its key lives.
/// Microseconds since 1970 stay below 2^53, so Lua's doubles hold them
/// exactly.
///
/// KEYS: lock, fence. ARGV: token, lease ms, fence key ttl ms.
/// Returns `{1, fence}` if taken, else `{0, pttl}` (the holder's remaining ms).
pub(crate) static ACQUIRE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local t = redis.call('TIME')
  local floor = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local last = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
  local fence = math.max(last + 1, floor)
  redis.call('SET', KEYS[2], string.format('%d', fence), 'PX', ARGV[3])
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
