//! Metrics (issue 15) against a real redis-server: the counters and
//! histograms reach a real recorder (`metrics-util`'s `DebuggingRecorder`).
//! The `tracing` spans are checked in `tests/spans.rs` (a binary of its
//! own: tracing's callsite interest is process-wide).

#![cfg(feature = "metrics")]

mod support;

use std::time::Duration;
use support::RedisServer;

mod metrics_recorder {
    use super::*;
    use herdcache::Cache;
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    use metrics_util::{CompositeKey, MetricKind};

    type Row = (
        CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        DebugValue,
    );

    fn find<'a>(rows: &'a [Row], name: &str, labels: &[(&str, &str)]) -> Option<&'a Row> {
        rows.iter().find(|(key, ..)| {
            let key = key.key();
            key.name() == name
                && labels.iter().all(|(k, v)| {
                    key.labels()
                        .any(|label| label.key() == *k && label.value() == *v)
                })
        })
    }

    fn counter(rows: &[Row], name: &str, labels: &[(&str, &str)]) -> u64 {
        match find(rows, name, labels) {
            Some((key, _, _, DebugValue::Counter(n))) if key.kind() == MetricKind::Counter => *n,
            other => panic!("no counter {name} {labels:?}: {other:?}"),
        }
    }

    fn samples(rows: &[Row], name: &str, labels: &[(&str, &str)]) -> usize {
        match find(rows, name, labels) {
            Some((_, _, _, DebugValue::Histogram(values))) => values.len(),
            None => 0,
            other => panic!("{name} {labels:?} is not a histogram: {other:?}"),
        }
    }

    fn snapshot(s: &Snapshotter) -> Vec<Row> {
        s.snapshot().into_vec()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn counters_and_histograms_reach_a_real_recorder() {
        // Installed before anything is built: handles are registered then.
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this test binary");

        let server = RedisServer::start();
        let client = herdcache::Client::connect(&server.url()).await.unwrap();
        let a: Cache<String> = client.cache("metered").build().await.unwrap();
        // Another "process" with no L1 (else `a`'s fill notice would put
        // the value into it): its read is an L2 hit.
        let b: Cache<String> = Cache::builder("metered")
            .redis_url(server.url())
            .local_ttl(Duration::ZERO)
            .build()
            .await
            .unwrap();
        let load = || async { Ok::<_, String>("v".to_owned()) };
        a.get_or_compute("k", load).await.unwrap(); // loaded
        a.get_or_compute("k", load).await.unwrap(); // l1
        b.get_or_compute("k", load).await.unwrap(); // l2
        let failed = a
            .get_or_compute("down", || async { Err::<String, _>("db down") })
            .await;
        assert!(failed.is_err()); // error

        let lock = client.lock("metered-lock");
        let guard = lock.acquire().await.unwrap();
        assert!(lock.try_acquire().await.unwrap().is_none()); // busy
        guard.release().await.unwrap();

        let stock = client.stock("metered-sku");
        stock.set_available(1).await.unwrap();
        stock.reserve("o1", "u1", 1).await.unwrap();
        stock.reserve("o2", "u2", 1).await.unwrap();

        let rows = snapshot(&snapshotter);
        let ns = ("namespace", "metered");
        let requests = "herdcache_cache_requests_total";
        // (`a` and `b` share the namespace, so their series add up.)
        for outcome in ["loaded", "l1", "l2", "error"] {
            let n = counter(&rows, requests, &[ns, ("outcome", outcome)]);
            assert_eq!(n, 1, "{outcome}");
        }
        let durations = "herdcache_cache_request_duration_seconds";
        assert_eq!(samples(&rows, durations, &[ns, ("outcome", "loaded")]), 1);
        assert_eq!(samples(&rows, durations, &[ns, ("outcome", "l2")]), 1);
        assert_eq!(
            samples(&rows, durations, &[ns, ("outcome", "l1")]),
            0,
            "L1 hits are counted, not timed"
        );
        let loads = "herdcache_cache_load_duration_seconds";
        assert_eq!(samples(&rows, loads, &[ns, ("outcome", "ok")]), 1);
        assert_eq!(samples(&rows, loads, &[ns, ("outcome", "error")]), 1);
        // Every `Stats` counter is mirrored.
        assert_eq!(counter(&rows, "herdcache_cache_l1_hits_total", &[ns]), 1);
        assert_eq!(counter(&rows, "herdcache_cache_l2_hits_total", &[ns]), 1);
        assert_eq!(counter(&rows, "herdcache_cache_loads_total", &[ns]), 2);
        assert_eq!(
            counter(&rows, "herdcache_cache_load_errors_total", &[ns]),
            1
        );
        assert_eq!(
            a.stats().l1_hits + b.stats().l1_hits,
            1,
            "Stats stays as it was"
        );
        // Units are described.
        let (_, unit, ..) = find(&rows, durations, &[ns]).unwrap();
        assert_eq!(*unit, Some(metrics::Unit::Seconds));

        let acquires = "herdcache_lock_acquires_total";
        assert_eq!(counter(&rows, acquires, &[("outcome", "acquired")]), 1);
        assert_eq!(counter(&rows, acquires, &[("outcome", "busy")]), 1);
        let waits = "herdcache_lock_acquire_duration_seconds";
        assert_eq!(samples(&rows, waits, &[("outcome", "acquired")]), 1);
        let reserves = "herdcache_stock_reserves_total";
        assert_eq!(counter(&rows, reserves, &[("outcome", "reserved")]), 1);
        assert_eq!(counter(&rows, reserves, &[("outcome", "sold_out")]), 1);
        let took = "herdcache_stock_reserve_duration_seconds";
        assert_eq!(samples(&rows, took, &[("outcome", "reserved")]), 1);
    }
}
