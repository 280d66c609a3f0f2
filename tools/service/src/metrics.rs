//! `GET /metrics`: Prometheus text exposition (format 0.0.4) of the
//! service's own counters and the cache's [`herdcache::Stats`].

use herdcache::Stats;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

/// Requests answered, by method, route (the matched pattern, such as
/// `/products/{id}`, so ids do not become labels) and status.
#[derive(Default)]
pub(crate) struct Requests {
    counts: Mutex<BTreeMap<(String, String, u16), u64>>,
}

impl Requests {
    pub(crate) fn record(&self, method: &str, route: &str, status: u16) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        *counts
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default() += 1;
    }

    fn snapshot(&self) -> Vec<((String, String, u16), u64)> {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// What one scrape shows.
pub(crate) struct Snapshot<'a> {
    pub(crate) requests: &'a Requests,
    pub(crate) db_queries: u64,
    pub(crate) db_writes: u64,
    pub(crate) invalidate_errors: u64,
    pub(crate) namespace: &'a str,
    pub(crate) cache: Stats,
}

/// The cache's counters, each with its help text (see herdcache's
/// `src/cache/stats.rs`).
fn cache_counters(s: &Stats) -> [(&'static str, &'static str, u64); 20] {
    [
        (
            "l1_hits",
            "Fresh values served from the in-process tier, with no Redis call.",
            s.l1_hits,
        ),
        (
            "l2_hits",
            "Fresh values read from Redis (then kept in L1).",
            s.l2_hits,
        ),
        (
            "misses",
            "Reads that found no usable value in either tier.",
            s.misses,
        ),
        (
            "coalesced",
            "Callers that joined a load already running in this process.",
            s.coalesced,
        ),
        ("loads", "Loader runs started by this process.", s.loads),
        (
            "load_errors",
            "Loader runs that failed (error, panic or timeout).",
            s.load_errors,
        ),
        (
            "lock_waits",
            "Loads that waited because another process held the rebuild lock.",
            s.lock_waits,
        ),
        (
            "notified_wakeups",
            "Waits for another process's load woken by its fill notice.",
            s.notified_wakeups,
        ),
        (
            "wait_timeouts",
            "Waits that ran past wait_timeout.",
            s.wait_timeouts,
        ),
        (
            "lease_lost",
            "Fills refused because the lock was lost or voided while the loader ran.",
            s.lease_lost,
        ),
        (
            "decode_errors",
            "Values in Redis that did not decode; treated as misses and overwritten.",
            s.decode_errors,
        ),
        (
            "codec_errors",
            "Writes refused because the value did not decode back from its own encoding.",
            s.codec_errors,
        ),
        (
            "redis_errors",
            "Redis commands that failed or timed out.",
            s.redis_errors,
        ),
        (
            "redis_fallback_loads",
            "Loads done without Redis because a Redis command failed.",
            s.redis_fallback_loads,
        ),
        (
            "breaker_rejections",
            "Redis calls refused at once because the circuit breaker was open.",
            s.breaker_rejections,
        ),
        (
            "stale_served",
            "Stale values served while one caller refreshes.",
            s.stale_served,
        ),
        (
            "background_refreshes",
            "Refreshes started in the background for a stale or early-expiring value.",
            s.background_refreshes,
        ),
        (
            "fail_safe_served",
            "Failed loads answered with the stale value (fail-safe).",
            s.fail_safe_served,
        ),
        (
            "remote_changes",
            "Change notices (set/invalidate in another process) applied to this process's L1.",
            s.remote_changes,
        ),
        (
            "remote_fills",
            "Fill notices from another process whose value was taken into L1.",
            s.remote_fills,
        ),
    ]
}

/// Prometheus label values escape `\`, `"` and newlines.
fn label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('\n', r"\n")
}

fn counter_head(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
}

impl Snapshot<'_> {
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        counter_head(
            &mut out,
            "service_requests_total",
            "HTTP requests answered, by method, matched route and status.",
        );
        for ((method, route, status), n) in self.requests.snapshot() {
            let _ = writeln!(
                out,
                "service_requests_total{{method=\"{}\",route=\"{}\",status=\"{status}\"}} {n}",
                label(&method),
                label(&route),
            );
        }
        for (name, help, n) in [
            (
                "service_db_queries_total",
                "Product reads run against SQLite (each one a run of the cache's loader).",
                self.db_queries,
            ),
            (
                "service_db_writes_total",
                "Product writes committed to SQLite (PUT).",
                self.db_writes,
            ),
            (
                "service_invalidate_errors_total",
                "PUTs whose row was committed but whose cache invalidation failed (answered 500).",
                self.invalidate_errors,
            ),
        ] {
            counter_head(&mut out, name, help);
            let _ = writeln!(out, "{name} {n}");
        }
        let ns = label(self.namespace);
        for (field, help, n) in cache_counters(&self.cache) {
            let name = format!("herdcache_{field}_total");
            counter_head(&mut out, &name, help);
            let _ = writeln!(out, "{name}{{cache=\"{ns}\"}} {n}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_typed_counters_with_escaped_labels() {
        let requests = Requests::default();
        requests.record("GET", "/products/{id}", 200);
        requests.record("GET", "/products/{id}", 200);
        requests.record("PUT", "/x\"y", 500);
        let text = Snapshot {
            requests: &requests,
            db_queries: 3,
            db_writes: 1,
            invalidate_errors: 0,
            namespace: "products",
            cache: Stats::default(),
        }
        .render();
        assert!(text.contains(
            "service_requests_total{method=\"GET\",route=\"/products/{id}\",status=\"200\"} 2\n"
        ));
        assert!(text.contains("route=\"/x\\\"y\",status=\"500\"} 1\n"));
        assert!(
            text.contains("# TYPE service_db_queries_total counter\nservice_db_queries_total 3\n")
        );
        assert!(text.contains("herdcache_l1_hits_total{cache=\"products\"} 0\n"));
        // Every sample has a TYPE line before it.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} counter")), "{line}");
        }
    }
}
