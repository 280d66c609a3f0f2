//! The stock's scripts. Each is one atomic step on one SKU's keys (one
//! Cluster slot), so no reservation is ever without its order message, and
//! no check can be overtaken between reading the stock and taking from it.

use redis::Script;
use std::sync::LazyLock;

/// Reserve, for a batch of orders of one SKU taken in one step (the
/// concurrent `reserve` calls of a process, coalesced: `batch.rs`). For
/// each order, in the order given: idempotency check, per-user limit,
/// stock check, decrement, the order message and the answer.
///
/// - A retry of an order id returns the answer first given to it, whatever
///   happened since (even if stock was added or the order cancelled); an
///   order id twice in one batch is answered once, then as a retry.
/// - `avail < qty` is sold out: the stock never goes below zero (the
///   reference implementations' oversell-by-one was a `>=` where `>` was
///   meant; here the comparison is on what is left after taking).
/// - The order goes to the SKU's stream (`XADD`) in the same step as the
///   decrement, so a reserved unit always has its order message, even if
///   the caller crashes the instant after.
///
/// Numbers are written with `%d`: Lua's own number-to-string would write
/// a count above 10^14 as `1.1e+15` (stock is at most 2^53 - 1,
/// `MAX_AVAILABLE`, exact in Lua's numbers). The quantity goes to Redis as
/// the string it came as: a Lua number would be formatted with `%.14g`
/// on every call (measured: `printf_fp` was ~1 % of Redis's time).
/// Answers, one per order: `R|<remaining>|<qty>|<user>`, `S` (sold out),
/// `U` (user limit); `N` if the SKU's stock was never set (nothing stored).
/// KEYS: available, answers, users, orders stream.
/// ARGV: sku, then per order: order id, user id, qty, per-user limit (0: none).
pub(crate) static RESERVE: LazyLock<Script> = LazyLock::new(|| Script::new(RESERVE_LUA));

/// The text of the reserve script (the stock bench runs it raw, as a baseline).
pub const RESERVE_LUA: &str = r"
local out = {}
local avail = redis.call('GET', KEYS[1])
for i = 2, #ARGV, 4 do
  local order, user, qs, limit = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  local answer = redis.call('HGET', KEYS[2], order)
  if not answer then
    if not avail then
      answer = 'N'
    else
      local qty = tonumber(qs)
      if limit > 0 and tonumber(redis.call('HGET', KEYS[3], user) or '0') + qty > limit then
        answer = 'U'
      elseif tonumber(avail) < qty then
        answer = 'S'
      else
        avail = redis.call('DECRBY', KEYS[1], qs)
        redis.call('HINCRBY', KEYS[3], user, qs)
        redis.call('XADD', KEYS[4], '*', 'kind', 'reserved', 'order', order, 'user', user, 'qty', qs, 'sku', ARGV[1])
        answer = 'R|' .. string.format('%d', avail) .. '|' .. qs .. '|' .. user
      end
      redis.call('HSET', KEYS[2], order, answer)
    end
  end
  out[#out + 1] = answer
end
return out
";

/// Cancel: gives a reserved order's units back once, and records the
/// cancellation in the order stream.
/// Answers: `C|<available>` (cancelled now), `A` (already cancelled),
/// `X` (the order was answered but not reserved), `N` (unknown order).
/// KEYS: available, answers, users, cancelled, orders stream.
/// ARGV: order id, sku.
pub(crate) static CANCEL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local first = redis.call('HGET', KEYS[2], ARGV[1])
if not first then return 'N' end
local _, _, qty, user = string.find(first, '^R|%d+|(%d+)|(.*)$')
if not qty then return 'X' end
if redis.call('HSETNX', KEYS[4], ARGV[1], '1') == 0 then return 'A' end
local n = redis.call('INCRBY', KEYS[1], qty)
redis.call('HINCRBY', KEYS[3], user, -tonumber(qty))
redis.call('XADD', KEYS[5], '*', 'kind', 'cancelled', 'order', ARGV[1], 'user', user, 'qty', qty, 'sku', ARGV[2])
return 'C|' .. string.format('%d', n)
",
    )
});

/// Add (a restock): `INCRBY`, unless the stock would go above the most a
/// SKU may hold (`MAX_AVAILABLE`, exact in Lua's numbers): then `-1` and
/// nothing added. A SKU never set starts from 0.
/// KEYS: available. ARGV: units to add, the most allowed.
pub(crate) static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local now = tonumber(redis.call('GET', KEYS[1]) or '0')
if now + tonumber(ARGV[1]) > tonumber(ARGV[2]) then return -1 end
return redis.call('INCRBY', KEYS[1], ARGV[1])
",
    )
});

/// The stock's scripts, loaded with each new connection.
pub(crate) fn all() -> [&'static Script; 3] {
    [&RESERVE, &CANCEL, &ADD]
}
