//! Distributed locks: [`Lock`](crate::Lock) on one Redis (fenced, renewed,
//! woken by notification) and [`Redlock`](crate::Redlock) over several
//! independent masters. Both use the shared layer's connection, breaker
//! and channel router (`crate::shared`) and its `EXTEND` lease script.
//!
//! | file | what it is for |
//! |---|---|
//! | `single.rs` | [`Lock`](crate::Lock), [`LockGuard`](crate::LockGuard): acquire, wait by notice, fencing token |
//! | `redlock.rs` | [`Redlock`](crate::Redlock): majority acquire in one fan-out, validity, no fencing (and why) |
//! | `lease.rs` | a held lease: one renewer per client (a timer queue, not a task per lease), `lost()`, release on drop |
//! | `queue.rs` | the waiters of one name in one process: FIFO, one contender in Redis, one subscription |
//! | `keys.rs` | `hc:lk:{<name>}` keys and channel; name checks; the holder's token |
//! | `floor.rs` | the fencing token across a failover: the counter floored at the server clock on each new connection |
//! | `scripts.rs` | acquire-and-fence, a Redlock master's acquire, and the release that publishes only when someone waits (the waiter marker) |
//!
//! # What the patterns users copy get wrong, and the line that answers each
//!
//! | seed pattern | what goes wrong | here |
//! |---|---|---|
//! | `SETNX lock 1` then `EXPIRE lock 10` | a crash between the two leaves a lock that never expires: the name is locked forever | one `SET lock token NX PX lease`, inside the transaction that also counts the fencing token (`single.rs`): the lock and its expiry are one write |
//! | `DEL lock` to release | the holder's lease may have run out and another taken the lock: the `DEL` frees *their* lock | compare-and-delete: `if GET lock == token then DEL` in one script (`scripts.rs` `RELEASE`); a guard releases only its own token |
//! | `while !acquired { sleep(100ms) }` | every waiter pays up to the whole sleep after each release (mean 50 ms hand-off), and all of them poll Redis | a waiter's failed attempt marks the name as waited for, and the release script then publishes a notice; the waiter subscribed *before* it re-checked, so it is woken at once (hand-off well under 1 ms); the poll is only a fallback. Nobody waiting: no notice |
//! | a long lease "to be safe" | a crashed holder blocks everyone for that long | a short lease renewed every lease/3 while the holder lives |
//! | renew and carry on when renewal fails | the work goes on after another process took the lock | [`LockGuard::lost`](crate::LockGuard::lost) fires no later than the lease's end; the fencing token lets the resource refuse the late writer |
//!
//! # Redis setup
//!
//! Locks are state, not cache. A Redis with `maxmemory` and an evicting
//! policy (`allkeys-*`, or `volatile-*`: lock keys have a TTL) may drop a
//! lock key, and a dropped lock key lets two holders in. Use `noeviction`,
//! or a separate Redis for locks; the client logs a warning once when it
//! can see an evicting policy. Asynchronous replication can lose the last
//! acquisition in a failover: the fencing token still increases (it is
//! floored by the server clock), but two holders may overlap until the old
//! one's lease ends; that is what fencing is for.

pub(crate) mod floor;
pub(crate) mod keys;
pub(crate) mod lease;
pub(crate) mod queue;
pub(crate) mod redlock;
pub(crate) mod scripts;
pub(crate) mod single;

pub(crate) use single::Lock;
