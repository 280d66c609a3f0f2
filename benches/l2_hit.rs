//! L2 hit: `Cache::get_or_compute` with L1 turned off
//! (`.local_ttl(Duration::ZERO)`), so every call reads Redis, side by side
//! with a raw redis-rs `GET` of the same stored bytes on one multiplexed
//! connection, with 1 and with 64 concurrent tasks on a `current_thread`
//! Tokio runtime, in one run.
//!
//! | bench | what one operation does |
//! |---|---|
//! | `<group>/herdcache_get_or_compute` | `cache.get_or_compute(key, loader).await`: L1 miss, join the key's flight, `GET` on herdcache's connection (one `MultiplexedConnection`, RESP3), decode the envelope and the value |
//! | `<group>/raw_get` | `GET` of the same Redis key on one `MultiplexedConnection` (`client.get_multiplexed_async_connection()`, RESP2), returning the bytes undecoded: the baseline |
//! | `<group>/raw_get_resp3` | the same `GET` on a `MultiplexedConnection` set up like herdcache's (RESP3, response timeout), to tell what herdcache's own code costs from what its choice of protocol costs |
//!
//! | group | tasks | keys |
//! |---|---|---|
//! | `l2_hit_1_tasks` | 1 | one |
//! | `l2_hit_64_tasks` | 64 | task `t` reads key `k<t>`: no two calls in flight share a key, so herdcache cannot coalesce them and every call is one `GET` |
//! | `l2_hit_64_tasks_one_key` | 64 | all read `k0`: herdcache coalesces concurrent calls of one key onto one `GET` (its design), raw does not |
//!
//! Each criterion iteration is one operation; the tasks share the
//! iterations, so criterion's time per iteration is 1 / throughput. Each
//! operation's latency is recorded too, and p50/p90/p99 are printed after
//! each group as `latency <group>/<bench> …` lines.
//! Run: `cargo bench --bench l2_hit`. See `docs/BENCHMARKS.md`.

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{Item, item};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herdcache::Cache;
use redis::aio::MultiplexedConnection;
use std::future::Future;
use std::hint::black_box;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const NAMESPACE: &str = "bench-l2";
const MAX_TASKS: u64 = 64;
/// Every side's Redis timeout. herdcache's default (500 ms) is also
/// redis-rs's, but on a shared 2-core machine a scheduler stall can exceed
/// it and fail a call; a longer timer costs nothing more per call.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The cache key task `t` reads.
fn key(t: u64) -> String {
    format!("k{t}")
}

/// Where herdcache stores `key(t)` (see `src/keys.rs`); the raw side reads it.
fn redis_key(t: u64) -> String {
    format!("hc:{{{NAMESPACE}:{}}}:v", key(t))
}

/// Per-operation latencies of one bench, in nanoseconds.
type Latencies = Arc<Mutex<Vec<u64>>>;

/// One herdcache operation of every bench here: an L2 hit.
async fn herd_get(cache: &Cache<Item>, key: &str) -> Arc<Item> {
    cache
        .get_or_compute(key, || async { Ok::<_, std::io::Error>(item()) })
        .await
        .expect("get_or_compute")
}

/// One raw operation: a `GET` of a stored value, bytes undecoded.
async fn raw_get(conn: &mut impl redis::aio::ConnectionLike, key: &str) -> Vec<u8> {
    let v: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("GET");
    v.expect("stored value")
}

/// Runs `iters` operations spread over `tasks` spawned tasks (`op(t)` in
/// task `t`), records each operation's latency, and returns the wall time of
/// the whole batch.
async fn batch<F, Fut>(tasks: u64, iters: u64, lat: &Latencies, op: F) -> Duration
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let mut set = JoinSet::new();
    let start = Instant::now();
    for t in 0..tasks {
        let share = iters / tasks + u64::from(t < iters % tasks);
        let (op, lat) = (op.clone(), lat.clone());
        set.spawn(async move {
            let mut mine = Vec::with_capacity(share as usize);
            for _ in 0..share {
                let t0 = Instant::now();
                op(t).await;
                mine.push(t0.elapsed().as_nanos() as u64);
            }
            lat.lock().expect("latency lock").extend(mine);
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("bench task");
    }
    start.elapsed()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn report(name: &str, lat: &Latencies) {
    let mut v = std::mem::take(&mut *lat.lock().expect("latency lock"));
    if v.is_empty() {
        return;
    }
    v.sort_unstable();
    println!(
        "latency {name}: n={} p50_us={:.1} p90_us={:.1} p99_us={:.1}",
        v.len(),
        percentile(&v, 0.50),
        percentile(&v, 0.90),
        percentile(&v, 0.99)
    );
}

fn l2_hit(c: &mut Criterion) {
    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");

    let (cache, conn, resp3): (Cache<Item>, MultiplexedConnection, MultiplexedConnection) = rt
        .block_on(async {
            let cache = Cache::builder(NAMESPACE)
                .redis_url(server.url())
                .ttl(Duration::from_secs(3600))
                .local_ttl(Duration::ZERO)
                .redis_timeout(TIMEOUT)
                .build()
                .await
                .expect("build cache");
            for t in 0..MAX_TASKS {
                cache.set(&key(t), item()).await.expect("set");
            }
            let (conn, resp3) = common::raw_connections(&server.url(), TIMEOUT).await;
            (cache, conn, resp3)
        });

    // Both sides must read the same bytes, and herdcache must really go to
    // Redis (an L2 hit), not to L1 and not to the loader.
    rt.block_on(async {
        let bytes: Option<Vec<u8>> = redis::cmd("GET")
            .arg(redis_key(0))
            .query_async(&mut conn.clone())
            .await
            .expect("raw GET");
        let bytes = bytes.expect("herdcache stored the value under redis_key(0)");
        println!("l2_hit: stored value is {} bytes", bytes.len());
        let before = cache.stats();
        for _ in 0..3 {
            cache
                .get_or_compute(&key(0), || async {
                    Err::<Item, _>(std::io::Error::other("miss"))
                })
                .await
                .expect("herdcache L2 hit");
        }
        let after = cache.stats();
        assert_eq!(after.l2_hits, before.l2_hits + 3, "not L2 hits");
        assert_eq!(after.l1_hits, before.l1_hits, "L1 is supposed to be off");
    });

    let herd_keys: Arc<Vec<String>> = Arc::new((0..MAX_TASKS).map(key).collect());
    let raw_keys: Arc<Vec<String>> = Arc::new((0..MAX_TASKS).map(redis_key).collect());
    for (group_name, tasks, distinct) in [
        ("l2_hit_1_tasks", 1u64, true),
        ("l2_hit_64_tasks", MAX_TASKS, true),
        ("l2_hit_64_tasks_one_key", MAX_TASKS, false),
    ] {
        let mut group = c.benchmark_group(group_name);
        group.throughput(Throughput::Elements(1));
        let herd_lat: Latencies = Arc::default();
        let raw_lat: Latencies = Arc::default();
        let resp3_lat: Latencies = Arc::default();
        let pick = move |t: u64| if distinct { t as usize } else { 0 };
        let coalesced_before = cache.stats().coalesced;

        group.bench_function(
            BenchmarkId::from_parameter("herdcache_get_or_compute"),
            |b| {
                b.to_async(&rt).iter_custom(|iters| {
                    let (cache, keys) = (cache.clone(), herd_keys.clone());
                    let lat = herd_lat.clone();
                    async move {
                        batch(tasks, iters, &lat, move |t| {
                            let (cache, keys) = (cache.clone(), keys.clone());
                            async move {
                                black_box(herd_get(&cache, &keys[pick(t)]).await);
                            }
                        })
                        .await
                    }
                })
            },
        );
        let coalesced = cache.stats().coalesced - coalesced_before;
        group.bench_function(BenchmarkId::from_parameter("raw_get"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (conn, keys) = (conn.clone(), raw_keys.clone());
                let lat = raw_lat.clone();
                async move {
                    batch(tasks, iters, &lat, move |t| {
                        let (mut conn, keys) = (conn.clone(), keys.clone());
                        async move {
                            black_box(raw_get(&mut conn, &keys[pick(t)]).await);
                        }
                    })
                    .await
                }
            })
        });
        group.bench_function(BenchmarkId::from_parameter("raw_get_resp3"), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let (conn, keys) = (resp3.clone(), raw_keys.clone());
                let lat = resp3_lat.clone();
                async move {
                    batch(tasks, iters, &lat, move |t| {
                        let (mut conn, keys) = (conn.clone(), keys.clone());
                        async move {
                            black_box(raw_get(&mut conn, &keys[pick(t)]).await);
                        }
                    })
                    .await
                }
            })
        });
        group.finish();
        report(&format!("{group_name}/herdcache_get_or_compute"), &herd_lat);
        report(&format!("{group_name}/raw_get"), &raw_lat);
        report(&format!("{group_name}/raw_get_resp3"), &resp3_lat);
        println!("coalesced {group_name}/herdcache_get_or_compute: {coalesced}");
        if distinct {
            assert_eq!(coalesced, 0, "distinct keys must not coalesce");
        }
    }

    paired(&rt, &cache, &conn, &herd_keys, &raw_keys);

    // Nothing above may have fallen back to the loader or failed in Redis.
    let s = cache.stats();
    assert_eq!(
        (s.loads, s.redis_errors, s.l1_hits),
        (0, 0, 0),
        "stats: {s:?}"
    );
}

/// The 64-task ratio measured *interleaved*: herdcache and raw `GET` batches
/// (and raw `GET` + decode batches) alternate, in alternating order, and
/// each round gives one ratio. On a
/// shared machine whose speed drifts over seconds, criterion's sequential
/// benches put the drift into the ratio; a pair taken within ~100 ms shares
/// it. Prints the median ratio of throughput and of p50 over the pairs.
fn paired(
    rt: &tokio::runtime::Runtime,
    cache: &Cache<Item>,
    conn: &MultiplexedConnection,
    herd_keys: &Arc<Vec<String>>,
    raw_keys: &Arc<Vec<String>>,
) {
    const PAIRS: usize = 31;
    const OPS: u64 = 20_000;
    let (mut throughput, mut p50, mut vs_decoded) = (Vec::new(), Vec::new(), Vec::new());
    // The first rounds warm up (connection buffers, allocator, branch
    // predictors) and are not counted.
    const WARMUP: usize = 5;
    for pair in 0..WARMUP + PAIRS {
        let herd = || {
            let (cache, keys, lat) = (cache.clone(), herd_keys.clone(), Latencies::default());
            let op = move |t: u64| {
                let (cache, keys) = (cache.clone(), keys.clone());
                async move {
                    black_box(herd_get(&cache, &keys[t as usize]).await);
                }
            };
            let took = rt.block_on(batch(MAX_TASKS, OPS, &lat, op));
            (took, lat)
        };
        let raw = || {
            let (conn, keys, lat) = (conn.clone(), raw_keys.clone(), Latencies::default());
            let op = move |t: u64| {
                let (mut conn, keys) = (conn.clone(), keys.clone());
                async move {
                    black_box(raw_get(&mut conn, &keys[t as usize]).await);
                }
            };
            let took = rt.block_on(batch(MAX_TASKS, OPS, &lat, op));
            (took, lat)
        };
        let decoded = || {
            let (conn, keys) = (conn.clone(), raw_keys.clone());
            let op = move |t: u64| {
                let (mut conn, keys) = (conn.clone(), keys.clone());
                async move {
                    use herdcache::Codec;
                    let bytes = raw_get(&mut conn, &keys[t as usize]).await;
                    let item: Item = herdcache::Bincode.decode(&bytes[24..]).expect("decode");
                    black_box(Arc::new(item));
                }
            };
            rt.block_on(batch(MAX_TASKS, OPS, &Latencies::default(), op))
        };
        let ((h_took, h_lat), (r_took, r_lat), d_took) = if pair % 2 == 0 {
            let h = herd();
            let r = raw();
            (h, r, decoded())
        } else {
            let d = decoded();
            let r = raw();
            (herd(), r, d)
        };
        if pair < WARMUP {
            continue;
        }
        vs_decoded.push(d_took.as_secs_f64() / h_took.as_secs_f64());
        let median = |lat: &Latencies| {
            let mut v = std::mem::take(&mut *lat.lock().expect("latency lock"));
            v.sort_unstable();
            percentile(&v, 0.5)
        };
        throughput.push(r_took.as_secs_f64() / h_took.as_secs_f64());
        p50.push(median(&h_lat) / median(&r_lat));
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "paired l2_hit_64_tasks herdcache/raw_get over {PAIRS} interleaved pairs of {OPS} ops: \
         throughput ratio median {:.3} (min {:.3}, max {:.3}), p50 ratio median {:.3}; \
         throughput vs raw GET + decode + Arc (hand-written cache-aside read) median {:.3}",
        med(&mut throughput),
        throughput[0],
        throughput[PAIRS - 1],
        med(&mut p50),
        med(&mut vs_decoded),
    );
}

criterion_group! {
    name = benches;
    config = common::criterion_config(30);
    targets = l2_hit
}
criterion_main!(benches);
