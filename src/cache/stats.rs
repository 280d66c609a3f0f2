//! Counters of what the cache did, readable at any time as a [`Stats`]
//! snapshot. Relaxed atomics: they are statistics, not synchronisation.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// A snapshot of the cache's counters since it was built.
        #[non_exhaustive]
        #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
        pub struct Stats {
            $($(#[$doc])* pub $name: u64,)*
        }

        #[derive(Debug)]
        pub(crate) struct Counters {
            $(pub(crate) $name: Count,)*
        }

        impl Counters {
            /// The counters of the cache of `namespace`: with the `metrics`
            /// feature, each is also the counter
            /// `herdcache_cache_<name>_total{namespace}`.
            pub(crate) fn new(namespace: &str) -> Self {
                let _ = namespace;
                Counters {
                    $($name: Count {
                        n: AtomicU64::new(0),
                        #[cfg(feature = "metrics")]
                        m: metrics::counter!(
                            concat!("herdcache_cache_", stringify!($name), "_total"),
                            "namespace" => namespace.to_owned()
                        ),
                    },)*
                }
            }

            pub(crate) fn snapshot(&self) -> Stats {
                Stats { $($name: self.$name.n.load(Relaxed),)* }
            }
        }

        /// Describes `herdcache_cache_<name>_total` for each counter.
        #[cfg(feature = "metrics")]
        pub(crate) fn describe() {
            $(metrics::describe_counter!(
                concat!("herdcache_cache_", stringify!($name), "_total"),
                metrics::Unit::Count,
                concat!("Stats::", stringify!($name), " by namespace")
            );)*
        }
    };
}

/// One counter: the atomic `Stats` reads, and with the `metrics` feature its
/// metric handle (a no-op without a recorder: one branch).
#[derive(Debug)]
pub(crate) struct Count {
    n: AtomicU64,
    #[cfg(feature = "metrics")]
    m: metrics::Counter,
}

counters! {
    /// Fresh values served from the in-process tier, with no Redis call.
    l1_hits,
    /// Fresh values read from Redis (then kept in L1).
    l2_hits,
    /// Reads that found no usable value in either tier.
    misses,
    /// Callers that joined a load already running in this process.
    coalesced,
    /// Loader runs started by this process.
    loads,
    /// Loader runs that failed (error, panic or timeout).
    load_errors,
    /// Loads that waited because another process held the rebuild lock.
    lock_waits,
    /// Waits for another process's load woken by its fill notice.
    notified_wakeups,
    /// Waits that ran past `wait_timeout`.
    wait_timeouts,
    /// Fills refused because the lock was lost or voided (by `set`,
    /// `invalidate` or expiry) while the loader ran.
    lease_lost,
    /// Values in Redis that did not decode (old format, other type,
    /// corruption); treated as misses and overwritten. The first one, then
    /// at most one a minute, is logged with `tracing::warn!`.
    decode_errors,
    /// Writes refused because the value did not decode back from its own
    /// encoding ([`ErrorKind::Codec`](crate::ErrorKind::Codec)); nothing was
    /// written. Logged as `decode_errors` are.
    codec_errors,
    /// Redis commands that failed or timed out.
    redis_errors,
    /// Loads done without Redis because a Redis command failed.
    redis_fallback_loads,
    /// Redis calls refused at once because the circuit breaker was open.
    breaker_rejections,
    /// Stale values served (stale window) while one caller refreshes.
    stale_served,
    /// Refreshes started in the background for a stale (or early-expiring) value.
    background_refreshes,
    /// Loads that failed or timed out while a stale value existed, answered
    /// with that value (fail-safe), which is then kept for `fail_safe_throttle`.
    fail_safe_served,
    /// Change notices (`set`/`invalidate` in another process) applied to
    /// this process's L1.
    remote_changes,
    /// Fill notices from another process whose value was taken into L1.
    remote_fills,
}

impl Counters {
    #[inline(always)]
    pub(crate) fn bump(counter: &Count) {
        counter.n.fetch_add(1, Relaxed);
        #[cfg(feature = "metrics")]
        counter.m.increment(1);
    }
}
