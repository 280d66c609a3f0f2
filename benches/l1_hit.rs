//! L1 hit: `Cache::get_or_compute` on a key already in the in-process tier,
//! side by side with raw moka on the same key and value type, in one run.
//!
//! | bench | what one iteration does |
//! |---|---|
//! | `herdcache_get_or_compute` | `cache.get_or_compute("k", loader).await`, value in L1 |
//! | `moka_future_get` | `moka::future::Cache::get("k").await` (the baseline) |
//! | `moka_sync_get` | `moka::sync::Cache::get("k")` (what herdcache calls inside) |
//! | `moka_sync_get_expire_after` | `moka::sync::Cache::get("k")` on a cache built the way herdcache builds its L1 (per-entry `Expiry`, value wrapped in an entry with two `Instant`s), then herdcache's freshness check (`Instant::now() < fresh_until`) |
//! | `std_instant_now` | `Instant::now()` alone: the price of one clock read, for scale |
//!
//! All four run inside one `block_on` of a `current_thread` Tokio runtime
//! (criterion's `to_async`), so the runtime's cost is the same for each.
//! Run: `cargo bench --bench l1_hit`. See `docs/BENCHMARKS.md`.

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{Item, item};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herdcache::Cache;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What herdcache keeps per L1 entry (`src/local.rs`), rebuilt here so the
/// baseline can be given the same per-entry expiry policy.
#[derive(Clone)]
struct Entry {
    value: Arc<Item>,
    fresh_until: Instant,
    expires_at: Instant,
}

struct PerEntryExpiry;

impl moka::Expiry<String, Entry> for PerEntryExpiry {
    fn expire_after_create(&self, _: &String, e: &Entry, at: Instant) -> Option<Duration> {
        Some(e.expires_at.saturating_duration_since(at))
    }
}

const KEY: &str = "k";
const TTL: Duration = Duration::from_secs(600);

fn l1_hit(c: &mut Criterion) {
    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let cache: Cache<Item> = rt.block_on(async {
        let cache = Cache::builder("bench-l1")
            .redis_url(server.url())
            .ttl(TTL)
            .build()
            .await
            .expect("build cache");
        cache.set(KEY, item()).await.expect("set");
        cache
    });
    let future_cache: moka::future::Cache<String, Arc<Item>> = moka::future::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(TTL)
        .build();
    let sync_cache: moka::sync::Cache<String, Arc<Item>> = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .time_to_live(TTL)
        .build();
    let expiry_cache: moka::sync::Cache<String, Entry> = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .expire_after(PerEntryExpiry)
        .build();
    let value = Arc::new(item());
    let now = Instant::now();
    rt.block_on(future_cache.insert(KEY.to_owned(), value.clone()));
    sync_cache.insert(KEY.to_owned(), value.clone());
    expiry_cache.insert(
        KEY.to_owned(),
        Entry {
            value,
            fresh_until: now + TTL,
            expires_at: now + TTL,
        },
    );

    // Every bench must really hit, or the comparison is void.
    rt.block_on(async {
        let before = cache.stats().l1_hits;
        cache
            .get_or_compute(KEY, || async {
                Err::<Item, _>(std::io::Error::other("miss"))
            })
            .await
            .expect("herdcache L1 hit");
        assert_eq!(cache.stats().l1_hits, before + 1, "not an L1 hit");
        assert!(future_cache.get(KEY).await.is_some());
    });
    assert!(sync_cache.get(KEY).is_some() && expiry_cache.get(KEY).is_some());

    let mut group = c.benchmark_group("l1_hit");
    group.throughput(Throughput::Elements(1));
    group.bench_function("herdcache_get_or_compute", |b| {
        b.to_async(&rt).iter(|| async {
            cache
                .get_or_compute(black_box(KEY), || async { Ok::<_, std::io::Error>(item()) })
                .await
        })
    });
    group.bench_function("moka_future_get", |b| {
        b.to_async(&rt)
            .iter(|| async { future_cache.get(black_box(KEY)).await })
    });
    group.bench_function("moka_sync_get", |b| {
        b.to_async(&rt)
            .iter(|| async { sync_cache.get(black_box(KEY)) })
    });
    group.bench_function("moka_sync_get_expire_after", |b| {
        b.to_async(&rt).iter(|| async {
            let e = expiry_cache.get(black_box(KEY))?;
            (Instant::now() < e.fresh_until).then_some(e.value)
        })
    });
    group.bench_function("std_instant_now", |b| {
        b.to_async(&rt).iter(|| async { Instant::now() })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = common::criterion_config(50);
    targets = l1_hit
}
criterion_main!(benches);
