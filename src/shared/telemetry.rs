//! Observability: `tracing` spans and events (feature `tracing`, on by
//! default) and `metrics` counters and histograms (feature `metrics`).
//! Every tool reports through the functions here, so neither feature puts
//! a `cfg` into the tools' code, and with a feature off its half of every
//! function compiles to nothing.
//!
//! What is reported, and at which level (names and labels of the metrics:
//! the crate docs, "Observability"):
//!
//! | what | tracing | metric |
//! |---|---|---|
//! | a `get_or_compute` past L1 | span `herdcache.get_or_compute` (INFO: `namespace`, `outcome`; `key` only when DEBUG is on) | `herdcache_cache_requests_total`, `herdcache_cache_request_duration_seconds` |
//! | an L1 hit | nothing (no span: the hit stays as cheap as raw moka) | `herdcache_cache_requests_total{outcome="l1"}` |
//! | a load task | span `herdcache.load` (INFO: `namespace`; `key` at DEBUG), event "load finished" (DEBUG when it succeeded, INFO when not; `duration_ms`, `outcome`) | `herdcache_cache_load_duration_seconds` |
//! | a wait for another process's load | event "waited for another process's load" (DEBUG, `duration_ms`) | `herdcache_cache_lock_waits_total` |
//! | `Lock::acquire`, `Redlock` acquisitions | span `herdcache.lock` (INFO: `name`, `outcome`, `fencing_token` of a single-instance lock), event "lock waited" (DEBUG) | `herdcache_lock_acquires_total`, `herdcache_lock_acquire_duration_seconds` |
//! | a lease lost (watchdog) | event (WARN, `name`) | `herdcache_lock_leases_lost_total` |
//! | `Stock::reserve` | span `herdcache.stock.reserve` (INFO: `sku`, `outcome`) | `herdcache_stock_reserves_total`, `herdcache_stock_reserve_duration_seconds` |
//! | breaker opened / closed | event (WARN / INFO) | `herdcache_breaker_opened_total` |
//! | connection lost / back | event (WARN / INFO, `down_ms`) | `herdcache_redis_connections_lost_total`, `herdcache_redis_reconnects_total` |
//!
//! Cache keys may be personal data (an email, a user id): they appear only
//! in DEBUG and TRACE output, never at INFO or above, and never in a metric
//! label. Lock names and SKUs are the application's own names (INFO is
//! fine), but they are unbounded in number, so they are not metric labels
//! either.

use std::future::Future;
use std::time::Duration;

/// Logs through `tracing` when the feature is on; nothing otherwise.
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        #[cfg(feature = "tracing")]
        {
            ::tracing::$level!($($arg)*);
        }
    };
}
pub(crate) use log;

/// How a cache call was answered: the `outcome` of its span and metric
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Served {
    /// A fresh value from this process's L1.
    L1 = 0,
    /// A fresh value read from Redis by this call's flight.
    L2 = 1,
    /// This call's flight ran the loader.
    Loaded = 2,
    /// The value came from a load elsewhere: another caller's flight in
    /// this process, or another process holding the rebuild lock.
    Waited = 3,
    /// A stale value (stale window, fail-safe).
    Stale = 4,
    /// An error.
    Error = 5,
}

impl Served {
    pub(crate) const ALL: [Served; 6] = [
        Served::L1,
        Served::L2,
        Served::Loaded,
        Served::Waited,
        Served::Stale,
        Served::Error,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Served::L1 => "l1",
            Served::L2 => "l2",
            Served::Loaded => "loaded",
            Served::Waited => "waited",
            Served::Stale => "stale",
            Served::Error => "error",
        }
    }

    pub(crate) fn from_u8(n: u8) -> Served {
        Served::ALL
            .get(usize::from(n))
            .copied()
            .unwrap_or(Served::Loaded)
    }
}

/// A span around one call, or nothing without the `tracing` feature.
pub(crate) struct CallSpan {
    #[cfg(feature = "tracing")]
    span: tracing::Span,
}

/// A future inside its span (the future itself without `tracing`).
#[cfg(feature = "tracing")]
pub(crate) type Traced<F> = tracing::instrument::Instrumented<F>;
/// A future inside its span (the future itself without `tracing`).
#[cfg(not(feature = "tracing"))]
pub(crate) type Traced<F> = F;

/// Records `key` on `span` only if DEBUG is on for this crate: keys may be
/// personal data.
#[cfg(feature = "tracing")]
fn record_key(span: &tracing::Span, key: &str) {
    if !span.is_disabled() && tracing::enabled!(tracing::Level::DEBUG) {
        span.record("key", key);
    }
}

impl CallSpan {
    /// `herdcache.get_or_compute` for a call that missed L1.
    #[inline]
    pub(crate) fn get_or_compute(namespace: &str, key: &str) -> CallSpan {
        let _ = (namespace, key);
        CallSpan {
            #[cfg(feature = "tracing")]
            span: {
                let span = tracing::info_span!(
                    "herdcache.get_or_compute",
                    namespace,
                    outcome = tracing::field::Empty,
                    key = tracing::field::Empty,
                );
                record_key(&span, key);
                span
            },
        }
    }

    /// `herdcache.load`: a cache's load task (a child of the call that
    /// started it).
    #[inline]
    pub(crate) fn load(namespace: &str, key: &str) -> CallSpan {
        let _ = (namespace, key);
        CallSpan {
            #[cfg(feature = "tracing")]
            span: {
                let span =
                    tracing::info_span!("herdcache.load", namespace, key = tracing::field::Empty,);
                record_key(&span, key);
                span
            },
        }
    }

    /// `herdcache.lock`: one acquisition of a lock.
    #[inline]
    pub(crate) fn lock(name: &str) -> CallSpan {
        let _ = name;
        CallSpan {
            #[cfg(feature = "tracing")]
            span: tracing::info_span!(
                "herdcache.lock",
                name,
                outcome = tracing::field::Empty,
                fencing_token = tracing::field::Empty,
            ),
        }
    }

    /// `herdcache.stock.reserve`: one reservation.
    #[inline]
    pub(crate) fn reserve(sku: &str) -> CallSpan {
        let _ = sku;
        CallSpan {
            #[cfg(feature = "tracing")]
            span: tracing::info_span!(
                "herdcache.stock.reserve",
                sku,
                outcome = tracing::field::Empty,
            ),
        }
    }

    /// Records the call's outcome.
    #[inline]
    pub(crate) fn outcome(&self, outcome: &'static str) {
        let _ = outcome;
        #[cfg(feature = "tracing")]
        self.span.record("outcome", outcome);
    }

    /// Records a lock's fencing token.
    #[inline]
    pub(crate) fn fencing_token(&self, token: u64) {
        let _ = token;
        #[cfg(feature = "tracing")]
        self.span.record("fencing_token", token);
    }

    /// `fut`, entered into this span whenever it is polled.
    #[inline]
    pub(crate) fn instrument<F: Future>(&self, fut: F) -> Traced<F> {
        #[cfg(feature = "tracing")]
        {
            tracing::Instrument::instrument(fut, self.span.clone())
        }
        #[cfg(not(feature = "tracing"))]
        {
            fut
        }
    }
}

#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
fn ms(d: Duration) -> u64 {
    d.as_millis().min(u128::from(u64::MAX)) as u64
}

/// A cache's load finished (`outcome`: `ok`, `error`, `timeout`, `panic`).
/// The key is on the enclosing `herdcache.load` span (DEBUG only), and the
/// error, which names the key, goes to the callers, not here.
pub(crate) fn load_finished(namespace: &str, took: Duration, outcome: &'static str) {
    let _ = (namespace, took, outcome);
    if outcome == "ok" {
        log!(
            debug,
            namespace,
            duration_ms = ms(took),
            outcome,
            "herdcache: load finished"
        );
    } else {
        log!(
            info,
            namespace,
            duration_ms = ms(took),
            outcome,
            "herdcache: load finished"
        );
    }
}

/// A cache's flight waited `took` for another process's load.
pub(crate) fn fill_waited(namespace: &str, took: Duration) {
    let _ = (namespace, took);
    log!(
        debug,
        namespace,
        duration_ms = ms(took),
        "herdcache: waited for another process's load"
    );
}

/// `Lock::acquire` (or `try_acquire`) ended: `outcome` is `acquired`,
/// `busy` (`try_acquire` found it held), `timeout` or `error`; `waited`
/// is the time from the call to that end.
pub(crate) fn lock_acquire(span: &CallSpan, name: &str, outcome: &'static str, waited: Duration) {
    let _ = name;
    span.outcome(outcome);
    if waited >= Duration::from_millis(1) {
        log!(
            debug,
            name,
            outcome,
            duration_ms = ms(waited),
            "herdcache: lock waited"
        );
    }
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("herdcache_lock_acquires_total", "outcome" => outcome).increment(1);
        metrics::histogram!("herdcache_lock_acquire_duration_seconds", "outcome" => outcome)
            .record(waited.as_secs_f64());
    }
}

/// A held lease could not be renewed (or was found gone): its guard's
/// `lost()` fired.
pub(crate) fn lease_lost(name: &str) {
    let _ = name;
    log!(
        warn,
        name,
        "herdcache: lock lease lost (not renewed in time, or taken over); stop writing with its fencing token"
    );
    #[cfg(feature = "metrics")]
    metrics::counter!("herdcache_lock_leases_lost_total").increment(1);
}

/// `Stock::reserve` ended (`outcome`: `reserved`, `sold_out`,
/// `user_limit`, `error`).
pub(crate) fn reserve(span: &CallSpan, outcome: &'static str, took: Duration) {
    let _ = took;
    span.outcome(outcome);
    #[cfg(feature = "metrics")]
    {
        metrics::counter!("herdcache_stock_reserves_total", "outcome" => outcome).increment(1);
        metrics::histogram!("herdcache_stock_reserve_duration_seconds", "outcome" => outcome)
            .record(took.as_secs_f64());
    }
}

/// The circuit breaker opened (from closed): Redis calls fail at once for
/// `cooldown`, then one probes.
pub(crate) fn breaker_opened(cooldown_ms: u64) {
    let _ = cooldown_ms;
    log!(
        warn,
        cooldown_ms,
        "herdcache: Redis unreachable, circuit breaker open (calls fail fast; caches serve L1 and loaders)"
    );
    #[cfg(feature = "metrics")]
    metrics::counter!("herdcache_breaker_opened_total").increment(1);
}

/// A call succeeded after the breaker had opened: it is closed again.
pub(crate) fn breaker_closed() {
    log!(
        info,
        "herdcache: Redis answers again, circuit breaker closed"
    );
}

/// The connection was given up (dropped, timing out, or not the master
/// any more); the reconnect task takes over.
pub(crate) fn connection_lost(serial: u64) {
    let _ = serial;
    log!(
        warn,
        serial,
        "herdcache: Redis connection lost, reconnecting"
    );
    #[cfg(feature = "metrics")]
    metrics::counter!("herdcache_redis_connections_lost_total").increment(1);
}

/// A new connection is up and subscribed, `down` after the loss.
pub(crate) fn reconnected(down: Duration) {
    let _ = down;
    log!(info, down_ms = ms(down), "herdcache: Redis connection back");
    #[cfg(feature = "metrics")]
    metrics::counter!("herdcache_redis_reconnects_total").increment(1);
}

/// Per-cache metric handles, registered once when the cache is built (so
/// the hot path pays an increment, not a registry lookup). Without the
/// `metrics` feature: nothing.
pub(crate) struct CacheMetrics {
    #[cfg(feature = "metrics")]
    requests: [metrics::Counter; 6],
    #[cfg(feature = "metrics")]
    durations: [metrics::Histogram; 6],
    #[cfg(feature = "metrics")]
    loads: [metrics::Histogram; 4],
}

/// The `outcome` label of a load.
pub(crate) const LOAD_OUTCOMES: [&str; 4] = ["ok", "error", "timeout", "panic"];

impl CacheMetrics {
    pub(crate) fn new(namespace: &str) -> CacheMetrics {
        let _ = namespace;
        #[cfg(feature = "metrics")]
        describe();
        CacheMetrics {
            #[cfg(feature = "metrics")]
            requests: Served::ALL.map(|s| {
                metrics::counter!(
                    "herdcache_cache_requests_total",
                    "namespace" => namespace.to_owned(),
                    "outcome" => s.as_str()
                )
            }),
            #[cfg(feature = "metrics")]
            durations: Served::ALL.map(|s| {
                metrics::histogram!(
                    "herdcache_cache_request_duration_seconds",
                    "namespace" => namespace.to_owned(),
                    "outcome" => s.as_str()
                )
            }),
            #[cfg(feature = "metrics")]
            loads: LOAD_OUTCOMES.map(|o| {
                metrics::histogram!(
                    "herdcache_cache_load_duration_seconds",
                    "namespace" => namespace.to_owned(),
                    "outcome" => o
                )
            }),
        }
    }

    /// An L1 hit: counted, not timed (reading the clock would cost the hit
    /// more than the rest of its budget over raw moka).
    #[inline(always)]
    pub(crate) fn l1_hit(&self) {
        #[cfg(feature = "metrics")]
        self.requests[Served::L1 as usize].increment(1);
    }

    /// A call past L1, answered as `served` after `took`.
    pub(crate) fn request(&self, served: Served, took: Duration) {
        let _ = (served, took);
        #[cfg(feature = "metrics")]
        {
            self.requests[served as usize].increment(1);
            self.durations[served as usize].record(took.as_secs_f64());
        }
    }

    /// A load (index into [`LOAD_OUTCOMES`]) that took `took`.
    pub(crate) fn load(&self, outcome: usize, took: Duration) {
        let _ = (outcome, took);
        #[cfg(feature = "metrics")]
        self.loads[outcome].record(took.as_secs_f64());
    }
}

/// Describes every metric to the recorder once per process (units and
/// help text, for exporters that print them).
#[cfg(feature = "metrics")]
pub(crate) fn describe() {
    use metrics::{Unit, describe_counter, describe_histogram};
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        describe_counter!(
            "herdcache_cache_requests_total",
            Unit::Count,
            "get_or_compute calls by namespace and outcome (l1, l2, loaded, waited, stale, error)"
        );
        describe_histogram!(
            "herdcache_cache_request_duration_seconds",
            Unit::Seconds,
            "get_or_compute calls that missed L1, by namespace and outcome"
        );
        describe_histogram!(
            "herdcache_cache_load_duration_seconds",
            Unit::Seconds,
            "loader runs by namespace and outcome (ok, error, timeout, panic)"
        );
        crate::cache::stats::describe();
        describe_counter!(
            "herdcache_lock_acquires_total",
            Unit::Count,
            "lock acquisitions by outcome (acquired, busy, timeout, error)"
        );
        describe_histogram!(
            "herdcache_lock_acquire_duration_seconds",
            Unit::Seconds,
            "time from an acquire call to its end, waiting included, by outcome"
        );
        describe_counter!(
            "herdcache_lock_leases_lost_total",
            Unit::Count,
            "held leases the watchdog could not renew"
        );
        describe_counter!(
            "herdcache_stock_reserves_total",
            Unit::Count,
            "Stock::reserve calls by outcome (reserved, sold_out, user_limit, error)"
        );
        describe_histogram!(
            "herdcache_stock_reserve_duration_seconds",
            Unit::Seconds,
            "Stock::reserve calls by outcome"
        );
        describe_counter!(
            "herdcache_breaker_opened_total",
            Unit::Count,
            "times the circuit breaker in front of Redis opened"
        );
        describe_counter!(
            "herdcache_redis_connections_lost_total",
            Unit::Count,
            "Redis connections given up (dropped, timing out, demoted master)"
        );
        describe_counter!(
            "herdcache_redis_reconnects_total",
            Unit::Count,
            "new Redis connections made after a loss"
        );
    });
}

/// The start of a call timed only for metrics: an `Instant` with the
/// `metrics` feature, nothing (and no clock read) without it.
pub(crate) struct Stopwatch {
    #[cfg(feature = "metrics")]
    start: std::time::Instant,
}

impl Stopwatch {
    #[inline]
    pub(crate) fn start() -> Stopwatch {
        Stopwatch {
            #[cfg(feature = "metrics")]
            start: std::time::Instant::now(),
        }
    }

    /// Time since `start` (zero without the `metrics` feature).
    #[inline]
    pub(crate) fn elapsed(&self) -> Duration {
        #[cfg(feature = "metrics")]
        {
            self.start.elapsed()
        }
        #[cfg(not(feature = "metrics"))]
        {
            Duration::ZERO
        }
    }
}
