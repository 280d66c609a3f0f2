//! This wing's scripts. Each multi-step change is one script, so no crash,
//! timeout or lost connection between two commands can leave half of it
//! done; each takes its one key in `KEYS` (never a name built inside Lua,
//! which Redis Cluster could not route); and each reads the time from
//! Redis's own clock (`TIME`), so processes whose clocks disagree still
//! agree on windows and on the limiter's state.
//!
//! Numbers: Lua has only doubles. Every time here is a whole number of
//! milliseconds or microseconds since 1970, below 2^53, so it is exact;
//! times are written back with `string.format('%d', …)` (Lua's own
//! number-to-string keeps 14 digits, which would round microseconds). The
//! windowed count itself never passes through Lua: `HINCRBY` adds in
//! Redis's 64-bit integers and the reply is the stored string.

use redis::Script;
use std::sync::LazyLock;

/// Adds to the count of the current fixed window, starting a new window if
/// the stored one is over, and sets the key to expire when the window ends.
///
/// WHY one script: the tutorial's `INCR k` then `EXPIRE k 60` is two calls,
/// and the second can be lost (the process crashes or times out, the
/// connection drops, between them). The counter is then never expiring: a
/// per-minute limit becomes a lifetime one, and the key stays forever.
/// Here the add and the expiry are one atomic step, and the expiry is set
/// on every add (`PEXPIREAT` the window's end), so even a key written some
/// other way gets one.
///
/// WHY the window id is stored in the key (a hash `{w, n}`) and not in the
/// key's name: a name per window (`…:<window id>`) would have to be built
/// from `TIME` inside the script, which Redis Cluster cannot route (keys
/// must be declared in `KEYS`), or from the client's clock, which the
/// fleet does not share. With the id stored, a count left from an earlier
/// window (the key not yet expired, or a clock that stepped back) is
/// recognised and replaced, never added to.
///
/// KEYS: the counter's hash. ARGV: window length in ms, amount to add.
/// Returns the count of the current window after the add.
pub(crate) static WINDOW_INCR: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local len = tonumber(ARGV[1])
local id = math.floor(now / len)
local w = string.format('%d', id)
if redis.call('HGET', KEYS[1], 'w') == w then
  redis.call('HINCRBY', KEYS[1], 'n', ARGV[2])
else
  redis.call('HSET', KEYS[1], 'w', w, 'n', ARGV[2])
end
redis.call('PEXPIREAT', KEYS[1], string.format('%d', (id + 1) * len))
return redis.call('HGET', KEYS[1], 'n')
",
    )
});

/// The count of the current fixed window: 0 if the key is absent or holds
/// an earlier window's count. Writes nothing.
///
/// WHY a script for a read: the current window is decided by Redis's
/// clock, which only a script can read and compare in one step.
///
/// KEYS: the counter's hash. ARGV: window length in ms.
pub(crate) static WINDOW_GET: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local w = string.format('%d', math.floor(now / tonumber(ARGV[1])))
local cur = redis.call('HMGET', KEYS[1], 'w', 'n')
if cur[1] == w then return cur[2] end
return 0
",
    )
});

/// GCRA (the generic cell rate algorithm, as in redis-cell): admit `cost`
/// units for one limiter key, or say how long until they would fit.
///
/// The state is one number per key, the *theoretical arrival time* (TAT):
/// when the key's bucket would be empty again if nothing more came. Each
/// admitted unit pushes it one emission interval (`per / n`) later; a
/// request is admitted if, after it, the TAT is at most `burst` intervals
/// ahead of now. That is a token bucket of `burst` tokens refilled at `n`
/// per `per`, kept without a refill loop or a second key.
///
/// WHY one script: reading the TAT, deciding and writing it back are a
/// read-modify-write; done from the client as `GET` then `SET`, two
/// processes read the same TAT and both admit. WHY `TIME`: a TAT written by
/// one process's clock and compared with another's lets a process whose
/// clock runs ahead admit early (and one behind refuse); Redis's clock is
/// the one clock every process sees. WHY `PX`: the key expires when its TAT
/// is reached, when it would mean the same as no key at all, so idle keys
/// (one per buyer, per IP) vanish by themselves. A refused request writes
/// nothing: a flood that is refused costs Redis no writes.
///
/// All in whole microseconds: the interval is rounded to one when the
/// limiter is built (`limiter.rs`), so every sum here is exact and a burst
/// of exactly `burst` units at one instant is admitted, not one less.
///
/// KEYS: the key's TAT. ARGV: interval µs, tolerance µs (interval x
/// burst), cost (0 ..= burst). Returns `{1, remaining}` (unit requests that
/// would still be admitted now) or `{0, retry_after µs}`.
pub(crate) static GCRA: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local new_tat = tat + interval * cost
local allow_at = new_tat - tolerance
if allow_at > now then
  return {0, allow_at - now}
end
if cost > 0 then
  redis.call('SET', KEYS[1], string.format('%d', new_tat),
    'PX', string.format('%d', math.ceil((new_tat - now) / 1000)))
end
return {1, math.floor((now - allow_at) / interval)}
",
    )
});

/// This wing's scripts, loaded with each new connection.
pub(crate) fn all() -> [&'static Script; 3] {
    [&WINDOW_INCR, &WINDOW_GET, &GCRA]
}
