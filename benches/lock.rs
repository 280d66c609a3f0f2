//! Lock acquire + release: a cold `Cache::get_or_compute` on a fresh key each
//! iteration, with a loader that returns at once, side by side with the naive
//! raw-command equivalents, in one run. herdcache's lock functions are
//! private, so the public cold path is what is measured.
//!
//! | bench | round trips | what one iteration does |
//! |---|---|---|
//! | `herdcache_cold_get_or_compute` | 3 | L1 miss; `GET` (miss); flight task: `EVALSHA` read-or-lock (GET + `SET NX PX`), loader task, `EVALSHA` fill (check token, `SET PX`, `DEL` lock, `PUBLISH`); L1 insert |
//! | `raw_setnx_del` | 2 | `SET lock token NX PX 3000`; `DEL lock` |
//! | `raw_setnx_set_del` | 3 | `SET lock token NX PX 3000`; `SET value bytes PX 3600000`; `DEL lock` |
//! | `raw_get_setnx_set_del` | 4 | `GET value` (miss); then as `raw_setnx_set_del` |
//!
//! The raw side uses one `MultiplexedConnection`, a fixed token and no Lua:
//! it does not check the token before writing or deleting (so it is not
//! safe against a lock that expired), publishes nothing and decodes nothing.
//! `value bytes` are the same envelope herdcache stores.
//! Run: `cargo bench --bench lock`. See `docs/BENCHMARKS.md`.

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{Item, item};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use herdcache::Cache;
use redis::aio::MultiplexedConnection;
use std::cell::Cell;
use std::hint::black_box;
use std::time::Duration;

/// Every side's Redis timeout (see `benches/l2_hit.rs`).
const TIMEOUT: Duration = Duration::from_secs(5);
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

async fn set_nx(conn: &mut MultiplexedConnection, lock: &str) {
    let got: Option<String> = redis::cmd("SET")
        .arg(lock)
        .arg(TOKEN)
        .arg("NX")
        .arg("PX")
        .arg(3000)
        .query_async(conn)
        .await
        .expect("SET NX");
    assert!(got.is_some(), "lock {lock} was already held");
}

async fn set_value(conn: &mut MultiplexedConnection, key: &str, bytes: &[u8]) {
    let () = redis::cmd("SET")
        .arg(key)
        .arg(bytes)
        .arg("PX")
        .arg(3_600_000)
        .query_async(conn)
        .await
        .expect("SET value");
}

async fn del(conn: &mut MultiplexedConnection, key: &str) {
    let n: i64 = redis::cmd("DEL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("DEL");
    debug_assert_eq!(n, 1);
}

fn lock(c: &mut Criterion) {
    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let (cache, conn, envelope): (Cache<Item>, MultiplexedConnection, Vec<u8>) =
        rt.block_on(async {
            let cache = Cache::builder("bench-lock")
                .redis_url(server.url())
                .ttl(Duration::from_secs(3600))
                .redis_timeout(TIMEOUT)
                .build()
                .await
                .expect("build cache");
            let client = redis::Client::open(server.url()).expect("client");
            let mut conn = client
                .get_multiplexed_async_connection_with_config(
                    &redis::AsyncConnectionConfig::new().set_response_timeout(Some(TIMEOUT)),
                )
                .await
                .expect("multiplexed connection");
            cache.set("probe", item()).await.expect("set");
            let envelope: Vec<u8> = redis::cmd("GET")
                .arg("hc:{bench-lock:probe}:v")
                .query_async(&mut conn)
                .await
                .expect("GET envelope");
            (cache, conn, envelope)
        });

    // Every iteration uses a key never used before, on both sides.
    let next = Cell::new(0u64);
    let fresh = |prefix: &str| {
        let n = next.get();
        next.set(n + 1);
        format!("{prefix}{n}")
    };

    let mut group = c.benchmark_group("lock");
    group.throughput(Throughput::Elements(1));
    group.bench_function("herdcache_cold_get_or_compute", |b| {
        b.to_async(&rt).iter(|| {
            let key = fresh("c");
            let cache = &cache;
            async move {
                cache
                    .get_or_compute(&key, || async { Ok::<_, std::io::Error>(item()) })
                    .await
                    .expect("cold get_or_compute")
            }
        })
    });
    group.bench_function("raw_setnx_del", |b| {
        b.to_async(&rt).iter(|| {
            let n = fresh("");
            let mut conn = conn.clone();
            async move {
                let lock = format!("raw:{{{n}}}:l");
                set_nx(&mut conn, &lock).await;
                del(&mut conn, &lock).await;
            }
        })
    });
    group.bench_function("raw_setnx_set_del", |b| {
        b.to_async(&rt).iter(|| {
            let n = fresh("");
            let mut conn = conn.clone();
            let envelope = &envelope;
            async move {
                let (value, lock) = (format!("raw:{{{n}}}:v"), format!("raw:{{{n}}}:l"));
                set_nx(&mut conn, &lock).await;
                set_value(&mut conn, &value, envelope).await;
                del(&mut conn, &lock).await;
            }
        })
    });
    group.bench_function("raw_get_setnx_set_del", |b| {
        b.to_async(&rt).iter(|| {
            let n = fresh("");
            let mut conn = conn.clone();
            let envelope = &envelope;
            async move {
                let (value, lock) = (format!("raw:{{{n}}}:v"), format!("raw:{{{n}}}:l"));
                let miss: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(&value)
                    .query_async(&mut conn)
                    .await
                    .expect("GET");
                assert!(black_box(miss).is_none());
                set_nx(&mut conn, &lock).await;
                set_value(&mut conn, &value, envelope).await;
                del(&mut conn, &lock).await;
            }
        })
    });
    group.finish();

    // Every herdcache iteration must have been a real miss that took the lock
    // and filled: no lock waits, no Redis errors, no local-only loads.
    let s = cache.stats();
    assert_eq!(s.loads, s.misses, "stats: {s:?}");
    assert_eq!(
        (
            s.lock_waits,
            s.redis_errors,
            s.redis_fallback_loads,
            s.lease_lost
        ),
        (0, 0, 0, 0),
        "stats: {s:?}"
    );
    println!("lock: herdcache did {} cold loads", s.loads);
}

criterion_group! {
    name = benches;
    config = common::criterion_config(30);
    targets = lock
}
criterion_main!(benches);
