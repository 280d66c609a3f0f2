//! The fencing token across a failover.
//!
//! A lock's fence counter is an `INCR`, started at the server's clock (µs)
//! when the counter is new. A promoted replica (Sentinel or Cluster
//! failover) may hold the counter without its last increments, which
//! asynchronous replication lost: counted on from there, tokens already
//! handed out would be handed out again, and a fenced resource that takes
//! a token equal to the highest it has seen would let two holders in. So
//! the first acquisition of a name on each new connection of this process
//! also floors the counter at the server's clock (`FENCE_START`'s floor):
//! every connection that reaches a promoted master is a new one (the old
//! master's loss, or its `READONLY`, replaces it), and the clock is above
//! every token issued before, as long as the servers' clocks agree and
//! fewer acquisitions were made than microseconds passed since the
//! counter began. One round trip more per name per connection; the rest
//! of the acquisitions are unchanged.
//!
//! Which names were floored on which connection: per `Lock` handle (an
//! atomic in its keys: no lookup on the hot path), and per client in a
//! bounded map, so that a handle made per call does not floor every time.
//! A name evicted from the map costs one floor more, nothing else.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Names remembered per client.
const REMEMBERED: u64 = 10_000;

pub(crate) struct Floors {
    done: moka::sync::Cache<std::sync::Arc<str>, u64>,
}

impl Default for Floors {
    fn default() -> Self {
        Floors {
            done: moka::sync::Cache::new(REMEMBERED),
        }
    }
}

/// "Never floored" in a handle's atomic.
pub(crate) const NEVER: u64 = u64::MAX;

impl Floors {
    /// Whether `name`'s first acquisition on connection `serial` is still
    /// to come; `handle` is the `Lock` handle's own record.
    pub(crate) fn needed(
        &self,
        name: &std::sync::Arc<str>,
        handle: &AtomicU64,
        serial: u64,
    ) -> bool {
        if handle.load(Relaxed) == serial {
            return false;
        }
        if self.done.get(name) == Some(serial) {
            handle.store(serial, Relaxed);
            return false;
        }
        true
    }

    /// `name`'s counter was floored on connection `serial`.
    pub(crate) fn done(&self, name: &std::sync::Arc<str>, handle: &AtomicU64, serial: u64) {
        handle.store(serial, Relaxed);
        self.done.insert(name.clone(), serial);
    }
}
