//! What every tool shares: the one Redis connection of a [`Client`](crate::Client)
//! (`link.rs`: multiplexed RESP3, heartbeat, reconnect, and the channel
//! router that hands each pub/sub message to the cache or lock listening on
//! its channel) and the circuit breaker in front of it (`breaker.rs`).
//!
//! `telemetry.rs` is where every tool reports to `tracing` and `metrics`
//! (each behind its feature).
//!
//! No tool opens a connection of its own: ten caches and a hundred lock
//! waiters in one process share one connection to Redis.

pub(crate) mod breaker;
pub(crate) mod link;
pub(crate) mod scripts;
pub(crate) mod server;
pub(crate) mod stream;
pub(crate) mod telemetry;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock now in unix milliseconds. Wall clock, not `Instant`, because
/// the instants stored in Redis are compared across processes.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

/// A token unique across the fleet: 128 random bits from a generator seeded
/// by the OS. Hex, so it is printable in `redis-cli`.
pub(crate) fn new_token() -> String {
    format!("{:032x}", fastrand::u128(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = new_token();
        assert_eq!(a.len(), 32);
        assert_ne!(a, new_token());
    }
}
