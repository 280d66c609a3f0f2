//! The cache's own Lua scripts. The lease primitives it shares with the
//! locks (take, extend, release with a token) are in `shared/scripts.rs`.
//!
//! Each one runs atomically on the server and touches only the value key and
//! the lock key of one cache key, which share a hash tag (see `keys.rs`), so
//! all of them are valid on Redis Cluster. `Script::invoke_async` sends
//! EVALSHA and falls back to EVAL once, so a restarted Redis (empty script
//! cache) costs one extra round trip, not an error.

use redis::Script;
use std::sync::LazyLock;

/// The read-or-lock probe: one round trip answers "is there a fresh value?"
/// and, if not, takes the rebuild lock. Freshness is read from the envelope
/// header (fresh-until, unix ms, little-endian at bytes 9..16), so deciding
/// "stale, so lock it" is atomic with the FILL that replaces it: a process
/// cannot see the old value, lose the CPU for a while, and then take the lock
/// after another process already refreshed the key.
/// KEYS: value, lock. ARGV: token, lock ttl ms, now (unix ms).
/// Returns `{'v', bytes}` (fresh, or not our format: the client decides),
/// `{'a'}` / `{'w', pttl}` (no value: acquired / locked by someone else),
/// `{'sa', bytes}` / `{'sw', bytes, pttl}` (stale value: acquired / locked).
pub(crate) static GET_OR_LOCK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local v = redis.call('GET', KEYS[1])
if v and string.len(v) >= 24 and string.byte(v, 1) == 196 then
  local fresh_until = 0
  for i = 16, 9, -1 do fresh_until = fresh_until * 256 + string.byte(v, i) end
  if fresh_until > tonumber(ARGV[3]) then return {'v', v} end
  if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'sa', v} end
  return {'sw', v, redis.call('PTTL', KEYS[2])}
end
if v then return {'v', v} end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {'a'} end
return {'w', redis.call('PTTL', KEYS[2])}
",
    )
});

/// The lease-checked fill: writes the value only if our token still holds the
/// lock, then releases the lock and publishes the fill notice, all at once,
/// so waiters are woken by the same step that makes the value visible.
/// KEYS: value, lock. ARGV: token, envelope, px, channel, notice, publish
/// command (see `Server::publish_verb`).
/// Returns 1 if written, 0 if the lease was lost (expired or voided).
pub(crate) static FILL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[2])
redis.call(ARGV[6], ARGV[4], ARGV[5])
return 1
",
    )
});

/// `set`: writes the value and voids any lease in flight (deletes the lock
/// whoever holds it), so a loader that read older data cannot overwrite
/// this write afterwards; then tells other processes to drop their L1 copy.
/// KEYS: value, lock. ARGV: envelope, px, channel, notice, publish command.
pub(crate) static SET_VOIDING: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
redis.call(ARGV[5], ARGV[3], ARGV[4])
return 1
",
    )
});

/// `invalidate`: deletes the value and voids any lease in flight, then tells
/// other processes to drop their L1 copy.
/// KEYS: value, lock. ARGV: channel, notice, publish command.
pub(crate) static INVALIDATE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call(ARGV[3], ARGV[1], ARGV[2])
return 1
",
    )
});

/// `clear`: moves the namespace to a new generation and announces it. The
/// notice is the prefix in ARGV[2] followed by the new generation number.
/// KEYS: generation counter. ARGV: channel, notice prefix, publish command.
/// Returns the
/// new generation.
pub(crate) static CLEAR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local g = redis.call('INCR', KEYS[1])
redis.call(ARGV[3], ARGV[1], ARGV[2] .. g)
return g
",
    )
});

/// Every script, loaded with each new connection (a Redis that restarted has
/// none): otherwise the first call of each script after a (re)start pays a
/// `NOSCRIPT` reply and a `SCRIPT LOAD`, two extra round trips on the
/// critical path of the first cold load.
pub(crate) fn all() -> [&'static Script; 5] {
    [&GET_OR_LOCK, &FILL, &SET_VOIDING, &INVALIDATE, &CLEAR]
}
