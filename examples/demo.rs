//! The stampede demo: a cold hot key hit by 4 processes x 50 tasks at the
//! same instant, with a 50 ms loader, once with plain cache-aside and once
//! with herdcache. Prints loader calls and latency for both.
//!
//! ```text
//! cargo run --release --example demo                 # starts its own redis-server
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --release --example demo
//! ```
//!
//! The same binary is the worker process (`demo worker …`) that the demo and
//! the multi-process tests spawn. Workers count loads, values seen and
//! latencies in Redis, so the counts cross process boundaries honestly.

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use common::{Opts, now_ms, now_us};

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Item {
    nonce: u64,
    loaded_by: u32,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.first().map(String::as_str) {
        Some("worker") => rt.block_on(worker(Opts::parse(&args[1..]))),
        None => rt.block_on(demo()),
        Some(other) => {
            eprintln!("unknown command {other:?}; usage: demo [worker --option value …]");
            std::process::exit(2);
        }
    }
}

/// One worker process: `tasks` concurrent callers of one key, released at the
/// instant the orchestrator writes under `<run>:go`.
async fn worker(o: Opts) {
    let url = o.str("redis", "redis://127.0.0.1:6379/");
    let run = o.str("run", "run");
    let strategy = o.str("strategy", "herdcache");
    let tasks = o.num("tasks", 50);
    let loader_ms = o.num("loader-ms", 50);
    let key = o.str("key", "item:42");
    let ttl = Duration::from_millis(o.num("ttl-ms", 60_000));

    // Bookkeeping (and the checker's "database") on `--log`, by default
    // the cache's Redis: a separate plain Redis when the cache's is a
    // Cluster (`redis-cluster://…`).
    let log = o.str("log", &url);
    let client = redis::Client::open(log.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let cache = if strategy == "herdcache" {
        Some(
            herdcache::Cache::<Item>::builder(format!("demo-{run}"))
                .redis_url(&url)
                .ttl(ttl)
                .lock_ttl(Duration::from_millis(o.num("lock-ttl-ms", 3_000)))
                .wait_timeout(Duration::from_millis(o.num("wait-timeout-ms", 10_000)))
                .load_timeout(Duration::from_millis(o.num("load-timeout-ms", 120_000)))
                .stale_for(Duration::from_millis(o.num("stale-ms", 0)))
                .jitter(o.num("jitter-pct", 10) as f64 / 100.0)
                .early_refresh_beta(o.num("beta-pct", 100) as f64 / 100.0)
                .redis_timeout(Duration::from_millis(o.num("redis-timeout-ms", 500)))
                .build()
                .await
                .unwrap(),
        )
    } else {
        None
    };

    let _: u64 = con.incr(format!("{run}:ready"), 1).await.unwrap();
    let go_at: u64 = loop {
        let go: Option<u64> = con.get(format!("{run}:go")).await.unwrap();
        if let Some(go) = go {
            break go;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let start = tokio::time::Instant::now() + Duration::from_millis(go_at.saturating_sub(now_ms()));
    if o.str("mode", "cold") == "steady" {
        let cache = cache.expect("steady mode needs --strategy herdcache");
        return steady(o, cache, client, run, start).await;
    }

    let mut handles = Vec::new();
    let records: Records = Default::default();
    for _ in 0..tasks {
        let (cache, con, key, run) = (cache.clone(), con.clone(), key.clone(), run.clone());
        let records = records.clone();
        handles.push(tokio::spawn(async move {
            tokio::time::sleep_until(start).await;
            let t0 = std::time::Instant::now();
            let loader = {
                let con = con.clone();
                let run = run.clone();
                move || async move {
                    // The demo's own bookkeeping goes to Redis from tasks
                    // of its own, so the load takes the loader's 50 ms and
                    // not also the round trips that count it.
                    let mut pipe = redis::pipe();
                    pipe.rpush(format!("{run}:load_started"), now_us())
                        .ignore()
                        .incr(format!("{run}:loads"), 1)
                        .ignore();
                    record(&records, con.clone(), pipe);
                    tokio::time::sleep(Duration::from_millis(loader_ms)).await;
                    // The fill is after this: a caller's end minus this
                    // bounds the fill-to-wake time from above.
                    let mut pipe = redis::pipe();
                    pipe.rpush(format!("{run}:load_ended"), now_us()).ignore();
                    record(&records, con, pipe);
                    Ok::<_, redis::RedisError>(Item {
                        nonce: fastrand::u64(..),
                        loaded_by: std::process::id(),
                    })
                }
            };
            let got: Result<u64, String> = match &cache {
                Some(cache) => cache
                    .get_or_compute(&key, loader)
                    .await
                    .map(|i| i.nonce)
                    .map_err(|e| e.to_string()),
                None => cache_aside(con, &key, ttl, loader)
                    .await
                    .map_err(|e| e.to_string()),
            };
            (t0.elapsed().as_micros() as u64, now_us(), got)
        }));
    }
    let mut lat = Vec::new();
    let mut ends = Vec::new();
    let mut seen = Vec::new();
    let mut errors = Vec::new();
    for h in handles {
        let (us, end, got) = h.await.unwrap();
        lat.push(us);
        ends.push(end);
        match got {
            Ok(nonce) => seen.push(nonce),
            Err(e) => errors.push(e),
        }
    }
    let pending = std::mem::take(&mut *records.lock().unwrap());
    for sent in pending {
        sent.await
            .unwrap()
            .expect("demo bookkeeping (load counts) reached Redis");
    }
    let mut pipe = redis::pipe();
    if !lat.is_empty() {
        pipe.rpush(format!("{run}:lat"), &lat).ignore();
        pipe.rpush(format!("{run}:ends"), &ends).ignore();
    }
    if !seen.is_empty() {
        pipe.rpush(format!("{run}:seen"), &seen).ignore();
    }
    if !errors.is_empty() {
        pipe.rpush(format!("{run}:errors"), &errors).ignore();
    }
    let _: () = pipe.query_async(&mut con).await.unwrap();
    if let Some(cache) = cache {
        println!("{:?}", cache.stats());
    }
}

/// Bookkeeping sent to Redis from tasks of their own (`record`), awaited
/// before the worker reports.
type Records = Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<redis::RedisResult<()>>>>>;

/// Sends `pipe` from a task of its own, so the caller does not wait for it.
fn record(records: &Records, mut con: redis::aio::MultiplexedConnection, pipe: redis::Pipeline) {
    let sent = tokio::spawn(async move { pipe.query_async::<()>(&mut con).await });
    records.lock().unwrap().push(sent);
}

/// Steady load: `tasks` loops of `get_or_compute` over `keys` keys until
/// `duration-ms` is up, through whatever happens to Redis meanwhile. The
/// loader counts its calls in memory (Redis may be down), and a canary task
/// records when Redis answers again after failing. Results go to Redis at
/// the end, under `<run>:w:<pid>`.
async fn steady(
    o: Opts,
    cache: herdcache::Cache<Item>,
    client: redis::Client,
    run: String,
    start: tokio::time::Instant,
) {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU64, Ordering};
    let tasks = o.num("tasks", 8);
    let keys = o.num("keys", 1);
    let loader_ms = o.num("loader-ms", 5);
    let pause = Duration::from_micros(o.num("pause-us", 500));
    let end = start + Duration::from_millis(o.num("duration-ms", 5_000));
    // Requests in the warm-up (the cold first load) are not measured.
    let measure_from = start + Duration::from_millis(o.num("warmup-ms", 0));
    // With --record-requests, every measured request is kept as (start in
    // unix µs, latency in µs) and stored in Redis, so the test can pick out
    // the requests that crossed an expiry (whose instants only the fleet's
    // load times, known after the run, tell).
    let record = o.num("record-requests", 0) == 1;
    let load_times = Arc::new(Mutex::new(Vec::new()));
    let loads = Arc::new(AtomicU64::new(0));
    tokio::time::sleep_until(start).await;

    let canary = {
        let cache = cache.clone();
        tokio::spawn(async move {
            let (mut down, mut recovered_at, mut failed) = (false, 0u64, 0u64);
            while tokio::time::Instant::now() < end {
                match cache.get("__canary").await {
                    Err(_) => {
                        down = true;
                        failed += 1;
                    }
                    Ok(_) if down && recovered_at == 0 => recovered_at = now_ms(),
                    Ok(_) => {}
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (recovered_at, failed)
        })
    };
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (cache, load_times, loads) = (cache.clone(), load_times.clone(), loads.clone());
        handles.push(tokio::spawn(async move {
            let (mut lat, mut errors, mut requests) = (Vec::new(), Vec::new(), Vec::new());
            let mut i = t;
            while tokio::time::Instant::now() < end {
                let key = format!("k{}", i % keys);
                i += 1;
                let (load_times, loads) = (load_times.clone(), loads.clone());
                let start_us = now_us();
                let t0 = std::time::Instant::now();
                let got = cache
                    .get_or_compute(&key, move || async move {
                        load_times.lock().unwrap().push(now_us());
                        loads.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(loader_ms)).await;
                        Ok::<_, std::io::Error>(Item {
                            nonce: fastrand::u64(..),
                            loaded_by: std::process::id(),
                        })
                    })
                    .await;
                if tokio::time::Instant::from_std(t0) >= measure_from {
                    let us = t0.elapsed().as_micros() as u64;
                    lat.push(us);
                    if record {
                        requests.extend_from_slice(&start_us.to_le_bytes());
                        requests.extend_from_slice(&us.to_le_bytes());
                    }
                    if let Err(e) = got {
                        errors.push(e.to_string());
                    }
                }
                tokio::time::sleep(pause).await;
            }
            (lat, errors, requests)
        }));
    }
    let (mut lat, mut errors, mut requests) = (Vec::new(), Vec::new(), Vec::new());
    for h in handles {
        let (l, e, r) = h.await.unwrap();
        lat.extend(l);
        errors.extend(e);
        requests.extend(r);
    }
    let (recovered_at, canary_failed) = canary.await.unwrap();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).clamp(1, lat.len()) - 1];
    let stats = cache.stats();
    let summary: Vec<(&str, String)> = vec![
        ("served", (lat.len() - errors.len()).to_string()),
        ("errors", errors.len().to_string()),
        ("first_error", errors.first().cloned().unwrap_or_default()),
        ("loads", loads.load(Ordering::Relaxed).to_string()),
        ("p50_us", pct(0.5).to_string()),
        ("p99_us", pct(0.99).to_string()),
        ("p999_us", pct(0.999).to_string()),
        ("max_us", lat.last().unwrap().to_string()),
        ("recovered_at", recovered_at.to_string()),
        ("canary_failed", canary_failed.to_string()),
        ("stats", format!("{stats:?}")),
    ];
    // Redis may still be coming back: retry the report for a few seconds.
    let times = load_times.lock().unwrap().clone();
    for _ in 0..100 {
        let mut pipe = redis::pipe();
        pipe.hset_multiple(format!("{run}:w:{}", std::process::id()), &summary)
            .ignore();
        if !times.is_empty() {
            pipe.rpush(format!("{run}:load_times"), &times).ignore();
        }
        if record {
            // 16 bytes per request: start (unix µs), latency (µs), both u64 LE.
            pipe.set(format!("{run}:req:{}", std::process::id()), &requests)
                .ignore();
        }
        pipe.incr(format!("{run}:done"), 1).ignore();
        // A new connection each try: the old one died with the old server.
        if let Ok(mut con) = client.get_multiplexed_async_connection().await
            && pipe.query_async::<()>(&mut con).await.is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("could not report results to Redis");
}

/// Plain cache-aside, as most services write it: GET, and on a miss load and
/// SET. No lock: every caller that misses runs the loader.
async fn cache_aside<F, Fut>(
    mut con: redis::aio::MultiplexedConnection,
    key: &str,
    ttl: Duration,
    loader: F,
) -> redis::RedisResult<u64>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = redis::RedisResult<Item>>,
{
    let key = format!("aside:{key}");
    if let Some(nonce) = con.get::<_, Option<u64>>(&key).await? {
        return Ok(nonce);
    }
    let item = loader().await?;
    let _: () = con
        .pset_ex(&key, item.nonce, ttl.as_millis() as u64)
        .await?;
    Ok(item.nonce)
}

fn worker_args(url: &str, run: &str, strategy: &str, tasks: u64, loader_ms: u64) -> Vec<String> {
    [
        "worker",
        "--redis",
        url,
        "--run",
        run,
        "--strategy",
        strategy,
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--tasks".into(),
        tasks.to_string(),
        "--loader-ms".into(),
        loader_ms.to_string(),
    ])
    .collect()
}

async fn demo() {
    let (_server, url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let server = support::RedisServer::start();
            let url = server.url();
            println!("started a throwaway redis-server on {url}");
            (Some(server), url)
        }
    };
    let (procs, tasks, loader_ms) = (4, 50, 50);
    println!("cold-key stampede: {procs} processes x {tasks} tasks, {loader_ms} ms loader\n");
    println!(
        "{:<12} {:>12} {:>10} {:>9} {:>9} {:>9} {:>7}",
        "strategy", "loader calls", "callers ok", "p50 ms", "p99 ms", "max ms", "errors"
    );
    let run_id = format!("{:x}", fastrand::u32(..));
    for strategy in ["none", "herdcache"] {
        let url = url.clone();
        let run = format!("{run_id}-{strategy}");
        let exe = std::env::current_exe().unwrap();
        let args = worker_args(&url, &run, strategy, tasks, loader_ms);
        let r = tokio::task::spawn_blocking(move || {
            support::run_stampede(&exe, &url, &run, procs, &args)
        })
        .await
        .unwrap();
        let ms = |us: u64| us as f64 / 1000.0;
        println!(
            "{:<12} {:>12} {:>10} {:>9.1} {:>9.1} {:>9.1} {:>7}",
            strategy,
            r.loads,
            r.seen.len(),
            ms(support::percentile(&r.lat_us, 0.50)),
            ms(support::percentile(&r.lat_us, 0.99)),
            ms(*r.lat_us.last().unwrap_or(&0)),
            r.errors.len()
        );
        if strategy == "herdcache" {
            // The loader's own time varies by a millisecond or more (a timer
            // tick, scheduling); what herdcache adds is the rest.
            if let Some(loader_us) = r.loader_us {
                println!(
                    "\nthe load took {:.1} ms (its tokio sleep, timer tick included); p99 less that: {:.1} ms; \
                     answers after the loader returned: p50 {:.2} ms, p99 {:.2} ms",
                    ms(loader_us),
                    ms(support::percentile(&r.lat_us, 0.99).saturating_sub(loader_us)),
                    ms(support::percentile(&r.after_load_us, 0.50)),
                    ms(support::percentile(&r.after_load_us, 0.99)),
                );
            }
            println!("\nherdcache stats per process:");
            for s in &r.stats {
                println!("  {s}");
            }
        }
    }
}
