//! N L1 hits in a loop, for counting instructions per hit with callgrind.
//!
//! ```text
//! cargo build --release --example l1_callgrind
//! valgrind --tool=callgrind --callgrind-out-file=cg.herd.N \
//!     target/release/examples/l1_callgrind herdcache 100000
//! valgrind --tool=callgrind --callgrind-out-file=cg.herd.0 \
//!     target/release/examples/l1_callgrind herdcache 0
//! ```
//!
//! The default build has the `tracing` feature (no subscriber is installed
//! here); add `--features metrics` to count with metrics compiled in (no
//! recorder), or `--no-default-features --features bincode` for neither.
//!
//! Instructions per hit = (Ir of the N run - Ir of the 0 run) / N: the setup
//! (a `redis-server` child process, the Redis connection, the caches) is
//! identical in both runs and cancels out. Modes:
//!
//! | mode | one hit is |
//! |---|---|
//! | `herdcache` | `cache.get_or_compute("k", loader).await` on a key in L1 |
//! | `moka-future` | `moka::future::Cache::get("k").await` |
//! | `moka-sync` | `moka::sync::Cache::get("k")` |
//! | `herdcache-l2` | `get_or_compute("k", loader).await` on a cache built with `.local_ttl(Duration::ZERO)`: an L2 hit, one `GET` to Redis |
//! | `raw-get` | a redis-rs `GET` of the same Redis key on one `MultiplexedConnection` |
//! | `raw-get-resp3` | the same `GET` on a `MultiplexedConnection` with RESP3 and a response timeout, as herdcache sets up its own |
//! | `raw-get-decode` | `raw-get`, then what any reader must do with the bytes: decode the `Item` (skipping herdcache's 24-byte header) and `Arc` it: hand-written cache-aside |
//!
//! The last two are not L1 hits: they count the client-side instructions of
//! one L2 read (network waits cost no instructions), to find what herdcache
//! adds around the `GET`.
//!
//! Every mode does the same setup (all three caches are built and filled),
//! and every loop runs inside one `block_on` of a `current_thread` runtime.
//! The mode can also come from `L1_MODE`, and N from `L1_HITS` (default
//! 100000). `L2_TASKS=64` runs the L2 modes (the last four) as 64 concurrent
//! tasks, task `t` on key `k<t>`, as the 64-task L2 bench does: the replies
//! then come back in batches, as they do under load. See `docs/BENCHMARKS.md`.

#[path = "../benches/common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{Item, item};

use herdcache::Cache;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

const KEY: &str = "k";
const TTL: Duration = Duration::from_secs(3600);
/// Every Redis timeout, on every side: valgrind slows everything ~50x.
const TIMEOUT: Duration = Duration::from_secs(10);
/// Most concurrent tasks `L2_TASKS` may ask for (one key each).
const MAX_TASKS: u64 = 64;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Herdcache,
    MokaFuture,
    MokaSync,
    HerdcacheL2,
    RawGet,
    RawGetResp3,
    RawGetDecode,
}

fn usage() -> ! {
    eprintln!(
        "usage: l1_callgrind [herdcache|moka-future|moka-sync|herdcache-l2|raw-get|raw-get-resp3|raw-get-decode] [N]"
    );
    std::process::exit(2)
}

/// The timed loops, each its own function so `callgrind_annotate` (or
/// `--toggle-collect`) can single them out.
#[inline(never)]
async fn herdcache_hits(cache: &Cache<Item>, key: &str, n: u64) {
    for _ in 0..n {
        let v = cache
            .get_or_compute(black_box(key), || async { Ok::<_, std::io::Error>(item()) })
            .await;
        black_box(v.is_ok());
    }
}

#[inline(never)]
async fn moka_future_hits(cache: &moka::future::Cache<String, Arc<Item>>, n: u64) {
    for _ in 0..n {
        black_box(cache.get(black_box(KEY)).await);
    }
}

#[inline(never)]
fn moka_sync_hits(cache: &moka::sync::Cache<String, Arc<Item>>, n: u64) {
    for _ in 0..n {
        black_box(cache.get(black_box(KEY)));
    }
}

/// `decode`: also decode the value (after herdcache's 24-byte header) and
/// `Arc` it, as a hand-written cache-aside read does.
#[inline(never)]
async fn raw_gets(conn: &mut impl redis::aio::ConnectionLike, key: &str, n: u64, decode: bool) {
    use herdcache::Codec;
    for _ in 0..n {
        let v: Option<Vec<u8>> = redis::cmd("GET")
            .arg(black_box(key))
            .query_async(conn)
            .await
            .expect("GET");
        let bytes = v.expect("stored value");
        if decode {
            let item: Item = herdcache::Bincode.decode(&bytes[24..]).expect("decode");
            black_box(Arc::new(item));
        } else {
            black_box(bytes);
        }
    }
}

/// The L2 modes with `tasks` concurrent tasks (`L2_TASKS`), task `t` on
/// key `k<t>` (so herdcache cannot coalesce them), `n` reads in all.
async fn l2_reads(
    mode: Mode,
    tasks: u64,
    n: u64,
    cache: &Cache<Item>,
    conn: &redis::aio::MultiplexedConnection,
    resp3: &redis::aio::MultiplexedConnection,
) {
    let mut set = tokio::task::JoinSet::new();
    for t in 0..tasks {
        let per = n / tasks + u64::from(t < n % tasks);
        let redis_key = format!("hc:{{l1-callgrind:k{t}}}:v");
        let (cache, mut conn, mut resp3) = (cache.clone(), conn.clone(), resp3.clone());
        set.spawn(async move {
            match mode {
                Mode::HerdcacheL2 => herdcache_hits(&cache, &format!("k{t}"), per).await,
                Mode::RawGet => raw_gets(&mut conn, &redis_key, per, false).await,
                Mode::RawGetResp3 => raw_gets(&mut resp3, &redis_key, per, false).await,
                Mode::RawGetDecode => raw_gets(&mut conn, &redis_key, per, true).await,
                _ => unreachable!("not an L2 mode"),
            }
        });
    }
    set.join_all().await;
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mode = args
        .next()
        .or_else(|| std::env::var("L1_MODE").ok())
        .unwrap_or_else(|| "herdcache".to_owned());
    let mode = match mode.as_str() {
        "herdcache" => Mode::Herdcache,
        "moka-future" => Mode::MokaFuture,
        "moka-sync" => Mode::MokaSync,
        "herdcache-l2" => Mode::HerdcacheL2,
        "raw-get" => Mode::RawGet,
        "raw-get-resp3" => Mode::RawGetResp3,
        "raw-get-decode" => Mode::RawGetDecode,
        _ => usage(),
    };
    let n: u64 = args
        .next()
        .or_else(|| std::env::var("L1_HITS").ok())
        .map_or(100_000, |s| s.parse().unwrap_or_else(|_| usage()));
    let tasks: u64 = std::env::var("L2_TASKS")
        .ok()
        .map_or(1, |s| s.parse().unwrap_or_else(|_| usage()))
        .clamp(1, MAX_TASKS);

    let server = support::RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let cache: Cache<Item> = Cache::builder("l1-callgrind")
            .redis_url(server.url())
            .ttl(TTL)
            .redis_timeout(TIMEOUT)
            .build()
            .await
            .expect("build cache");
        cache.set(KEY, item()).await.expect("set");
        for t in 0..MAX_TASKS {
            cache.set(&format!("k{t}"), item()).await.expect("set");
        }
        let l2_cache: Cache<Item> = Cache::builder("l1-callgrind")
            .redis_url(server.url())
            .ttl(TTL)
            .local_ttl(Duration::ZERO)
            .redis_timeout(TIMEOUT)
            .build()
            .await
            .expect("build L2-only cache");
        let (conn, resp3) = common::raw_connections(&server.url(), TIMEOUT).await;
        let future_cache = moka::future::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(TTL)
            .build();
        let sync_cache = moka::sync::Cache::builder()
            .max_capacity(10_000)
            .time_to_live(TTL)
            .build();
        let value = Arc::new(item());
        future_cache.insert(KEY.to_owned(), value.clone()).await;
        sync_cache.insert(KEY.to_owned(), value);

        let before = cache.stats().l1_hits;
        let l2_before = l2_cache.stats().l2_hits;
        match mode {
            Mode::Herdcache => herdcache_hits(&cache, KEY, n).await,
            Mode::MokaFuture => moka_future_hits(&future_cache, n).await,
            Mode::MokaSync => moka_sync_hits(&sync_cache, n),
            _ => l2_reads(mode, tasks, n, &l2_cache, &conn, &resp3).await,
        }
        let l1_hits = cache.stats().l1_hits - before;
        let l2_hits = l2_cache.stats().l2_hits - l2_before;
        match mode {
            Mode::Herdcache => assert_eq!(l1_hits, n, "every call must be an L1 hit"),
            Mode::HerdcacheL2 => assert_eq!(l2_hits, n, "every call must be an L2 hit"),
            _ => {}
        }
        println!(
            "mode={} n={n} tasks={tasks} l1_hits={l1_hits} l2_hits={l2_hits}",
            mode_name(mode)
        );
    });
}

fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Herdcache => "herdcache",
        Mode::MokaFuture => "moka-future",
        Mode::MokaSync => "moka-sync",
        Mode::HerdcacheL2 => "herdcache-l2",
        Mode::RawGet => "raw-get",
        Mode::RawGetResp3 => "raw-get-resp3",
        Mode::RawGetDecode => "raw-get-decode",
    }
}
