//! Behaviour of one cache against a real redis-server. Two `Cache` values
//! built separately have separate connections, L1s and origins: to Redis and
//! to each other they are two processes.

mod support;

use herdcache::{Cache, ErrorKind};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::RedisServer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    name: String,
}

fn row(id: u64) -> Row {
    Row {
        id,
        name: format!("row {id}"),
    }
}

async fn cache(server: &RedisServer) -> Cache<Row> {
    Cache::builder("t")
        .redis_url(server.url())
        .build()
        .await
        .unwrap()
}

#[derive(Debug, thiserror::Error)]
#[error("database said no")]
struct DbError;

/// A loader that counts its calls.
fn counting(
    calls: &Arc<AtomicUsize>,
    value: Row,
    delay: Duration,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Row, DbError>> + Send>>
+ Send
+ 'static {
    let calls = calls.clone();
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            Ok(value)
        })
    }
}

/// Commands Redis has run, less `INFO` (ours) and `PING` (each cache's
/// connection heartbeat, once a second).
fn commands_processed(con: &mut redis::Connection) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    info.lines()
        .filter_map(|l| l.strip_prefix("cmdstat_"))
        .filter(|l| !l.starts_with("info:") && !l.starts_with("ping:"))
        .map(|l| {
            let calls = l.split("calls=").nth(1).unwrap();
            calls[..calls.find(',').unwrap()].parse::<u64>().unwrap()
        })
        .sum()
}

fn exists(con: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query(con).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn miss_loads_once_then_l1_hits_make_no_redis_call() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let a = cache(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let v = a
        .get_or_compute("1", counting(&calls, row(1), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(*v, row(1));

    let before = commands_processed(&mut con);
    for _ in 0..100 {
        let v = a
            .get_or_compute("1", counting(&calls, row(99), Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(*v, row(1));
    }
    assert_eq!(
        commands_processed(&mut con) - before,
        0,
        "L1 hits must not touch Redis"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = a.stats();
    assert_eq!((s.loads, s.l1_hits, s.misses), (1, 100, 1));

    // Another "process" finds it in Redis without loading.
    let b = cache(&server).await;
    let v = b
        .get_or_compute("1", counting(&calls, row(99), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(*v, row(1));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(b.stats().l2_hits, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_misses_in_one_process_run_one_load() {
    let server = RedisServer::start();
    let a = cache(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let (a, calls) = (a.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            a.get_or_compute("k", counting(&calls, row(7), Duration::from_millis(30)))
                .await
        }));
    }
    for t in tasks {
        assert_eq!(*t.await.unwrap().unwrap(), row(7));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = a.stats();
    assert_eq!(s.loads, 1);
    assert_eq!(s.coalesced + s.l1_hits + s.loads, 100, "{s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn set_get_invalidate_reach_both_tiers_and_other_processes() {
    let server = RedisServer::start();
    let a = cache(&server).await;
    let b = cache(&server).await;
    assert_eq!(a.get("x").await.unwrap(), None);
    a.set("x", row(1)).await.unwrap();
    assert_eq!(b.get("x").await.unwrap().as_deref(), Some(&row(1)));

    // b now holds x in L1; a's set must make b drop it.
    a.set("x", row(2)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    while b.get("x").await.unwrap().as_deref() != Some(&row(2)) {
        assert!(
            Instant::now() < deadline,
            "b kept serving the old value from L1"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    a.invalidate("x").await.unwrap();
    assert_eq!(a.get("x").await.unwrap(), None);
    let deadline = Instant::now() + Duration::from_secs(2);
    while b.get("x").await.unwrap().is_some() {
        assert!(
            Instant::now() < deadline,
            "b kept serving an invalidated value"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn loader_error_reaches_every_coalesced_caller_and_is_not_cached() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let a = cache(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (a, calls) = (a.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            a.get_or_compute("e", move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Err::<Row, _>(DbError)
            })
            .await
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.push(t.await.unwrap().unwrap_err());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for e in &errors {
        assert_eq!(e.kind(), ErrorKind::Loader);
        assert!(e.same_as(&errors[0]), "one shared error, not copies");
        assert!(
            e.loader_error()
                .unwrap()
                .downcast_ref::<DbError>()
                .is_some()
        );
    }
    assert!(!exists(&mut con, "hc:{t:e}:l"), "lock released");
    assert!(!exists(&mut con, "hc:{t:e}:v"), "error not cached");
    let v = a
        .get_or_compute("e", counting(&calls, row(3), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(*v, row(3));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(a.stats().load_errors, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn undecodable_bytes_are_a_counted_miss_and_get_overwritten() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let a = cache(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    // Not our format at all; then our header with another type's payload.
    let mut header_other_type = vec![0xC4, 1, 0, 0, 0, 0, 0, 0];
    let far = herdcache_now_ms() + 60_000;
    header_other_type.extend_from_slice(&far.to_le_bytes());
    header_other_type.extend_from_slice(&far.to_le_bytes());
    header_other_type.extend_from_slice(&[0xff, 0xff, 0xff]);
    for (i, junk) in [b"{\"json\":true}".to_vec(), header_other_type, vec![]]
        .into_iter()
        .enumerate()
    {
        let key = format!("c{i}");
        let _: () = redis::cmd("SET")
            .arg(format!("hc:{{t:{key}}}:v"))
            .arg(junk)
            .query(&mut con)
            .unwrap();
        assert_eq!(a.get(&key).await.unwrap(), None);
        let v = a
            .get_or_compute(&key, counting(&calls, row(i as u64), Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(*v, row(i as u64));
        let raw: Vec<u8> = redis::cmd("GET")
            .arg(format!("hc:{{t:{key}}}:v"))
            .query(&mut con)
            .unwrap();
        assert_eq!(raw[0], 0xC4, "overwritten with a real envelope");
        let b = cache(&server).await;
        assert_eq!(b.get(&key).await.unwrap().as_deref(), Some(&row(i as u64)));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert!(a.stats().decode_errors >= 6, "{:?}", a.stats());
}

fn herdcache_now_ms() -> u64 {
    support::now_ms()
}

/// The decoder fuzz harness (`tests/fuzz_decoder.rs`) checks the pure
/// decoder without Redis; this checks the counting through the public API:
/// each of 120 bad inputs written to a value key (random bytes, a real
/// envelope truncated, its magic or version changed, its payload replaced
/// by a huge length prefix or another type) reads as `None` and adds
/// exactly one to `decode_errors`.
#[tokio::test(flavor = "multi_thread")]
async fn every_bad_input_is_exactly_one_counted_miss() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let a = cache(&server).await;
    a.set("source", row(7)).await.unwrap();
    let real: Vec<u8> = redis::cmd("GET")
        .arg("hc:{t:source}:v")
        .query(&mut con)
        .unwrap();
    let far = herdcache_now_ms() + 60_000;
    let mut rng = fastrand::Rng::with_seed(15);
    let mut other_type = Vec::new();
    herdcache::Codec::encode(&herdcache::Bincode, &(1.5f64, true), &mut other_type).unwrap();
    for i in 0..120u64 {
        let junk: Vec<u8> = match i % 6 {
            0 => (0..rng.usize(0..200)).map(|_| rng.u8(..)).collect(),
            1 => real[..rng.usize(0..real.len())].to_vec(),
            2 => {
                let mut v = real.clone();
                v[0] = rng.u8(..0xC4);
                v
            }
            3 => {
                let mut v = real.clone();
                v[1] = rng.u8(2..);
                v
            }
            4 => herdcache::__fuzz::envelope(far, far, &[0xfc, 0xff, 0xff, 0xff, 0x0f, b'a']),
            _ => herdcache::__fuzz::envelope(far, far, &other_type),
        };
        let key = format!("bad{i}");
        let _: () = redis::cmd("SET")
            .arg(format!("hc:{{t:{key}}}:v"))
            .arg(&junk)
            .query(&mut con)
            .unwrap();
        let before = a.stats().decode_errors;
        assert_eq!(a.get(&key).await.unwrap(), None, "input {i}: {junk:02x?}");
        assert_eq!(
            a.stats().decode_errors,
            before + 1,
            "input {i}: {junk:02x?}"
        );
    }
    assert_eq!(a.stats().decode_errors, 120);
    assert_eq!(a.stats().misses, 120);
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_values_are_refused_with_a_typed_error() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let a: Cache<Row> = Cache::builder("t")
        .redis_url(server.url())
        .max_value_size(1000)
        .build()
        .await
        .unwrap();
    let big = Row {
        id: 1,
        name: "x".repeat(5000),
    };
    let e = a.set("big", big.clone()).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ValueTooLarge);
    let e = a
        .get_or_compute("big", move || async move { Ok::<_, DbError>(big) })
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ValueTooLarge);
    assert!(!exists(&mut con, "hc:{t:big}:v"));
    assert!(
        !exists(&mut con, "hc:{t:big}:l"),
        "lock released after refusing"
    );
    a.set("small", row(1)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn odd_keys_round_trip_and_stay_distinct() {
    let server = RedisServer::start();
    let a = cache(&server).await;
    let long = "k".repeat(herdcache::MAX_KEY_LEN);
    let keys = [
        "",
        "a}b",
        "{x}",
        "}}{{",
        "ключ",
        "with space\nand newline",
        "a}:v",
        long.as_str(),
    ];
    for (i, k) in keys.iter().enumerate() {
        a.set(k, row(i as u64)).await.unwrap();
    }
    let b = cache(&server).await;
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            b.get(k).await.unwrap().as_deref(),
            Some(&row(i as u64)),
            "key {k:?}"
        );
    }
    let too_long = "k".repeat(herdcache::MAX_KEY_LEN + 1);
    assert_eq!(
        a.get(&too_long).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    let bad_ns = Cache::<Row>::builder("a{b")
        .redis_url(server.url())
        .build()
        .await;
    assert_eq!(bad_ns.err().unwrap().kind(), ErrorKind::Config);
    // Settings that cannot work: a typed error at build, not a cache that
    // refuses every write or overflows its clock.
    let settings: [fn(herdcache::CacheBuilder<Row>) -> herdcache::CacheBuilder<Row>; 4] = [
        |b| b.max_value_size(0),
        |b| b.ttl(Duration::MAX),
        |b| b.lock_ttl(Duration::MAX),
        |b| b.stale_for(Duration::MAX),
    ];
    for (i, setting) in settings.iter().enumerate() {
        let built = setting(Cache::<Row>::builder("ok").redis_url(server.url()))
            .build()
            .await;
        assert_eq!(
            built.err().unwrap().kind(),
            ErrorKind::Config,
            "setting {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn panicking_loader_is_an_error_for_all_and_frees_the_key() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let a = cache(&server).await;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            a.get_or_compute("p", || async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if true {
                    panic!("loader bug");
                }
                Ok::<Row, DbError>(row(0))
            })
            .await
        }));
    }
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::LoaderPanicked);
        assert!(e.to_string().contains("loader bug"), "{e}");
    }
    assert!(!exists(&mut con, "hc:{t:p}:l"));
    let calls = Arc::new(AtomicUsize::new(0));
    assert_eq!(
        *a.get_or_compute("p", counting(&calls, row(5), Duration::ZERO))
            .await
            .unwrap(),
        row(5)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn dropped_caller_leaves_the_load_running_and_filling() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let a = cache(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let call = a.get_or_compute("d", counting(&calls, row(4), Duration::from_millis(200)));
    assert!(
        tokio::time::timeout(Duration::from_millis(50), call)
            .await
            .is_err()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        exists(&mut con, "hc:{t:d}:v"),
        "the abandoned load still filled Redis"
    );
    assert!(!exists(&mut con, "hc:{t:d}:l"), "and released the lock");
    let b = cache(&server).await;
    assert_eq!(
        *b.get_or_compute("d", counting(&calls, row(9), Duration::ZERO))
            .await
            .unwrap(),
        row(4)
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn watchdog_holds_the_lock_through_a_loader_longer_than_lock_ttl() {
    let server = RedisServer::start();
    let build = || {
        Cache::<Row>::builder("t")
            .redis_url(server.url())
            .lock_ttl(Duration::from_millis(300))
            .build()
    };
    let (a, b) = (build().await.unwrap(), build().await.unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    let slow = tokio::spawn({
        let (a, f) = (
            a.clone(),
            counting(&calls, row(1), Duration::from_millis(1200)),
        );
        async move { a.get_or_compute("w", f).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let v = b
        .get_or_compute("w", counting(&calls, row(2), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(*v, row(1), "b waited for a's load instead of loading");
    assert_eq!(*slow.await.unwrap().unwrap(), row(1));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = b.stats();
    assert_eq!((s.lock_waits, s.loads), (1, 0));
    assert!(s.notified_wakeups >= 1, "woken by the fill notice: {s:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn wait_past_wait_timeout_is_a_typed_error() {
    let server = RedisServer::start();
    let a = cache(&server).await;
    let b: Cache<Row> = Cache::builder("t")
        .redis_url(server.url())
        .wait_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let _slow = tokio::spawn({
        let (a, f) = (
            a.clone(),
            counting(&calls, row(1), Duration::from_millis(2000)),
        );
        async move { a.get_or_compute("slow", f).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    let e = b
        .get_or_compute("slow", counting(&calls, row(2), Duration::ZERO))
        .await
        .unwrap_err();
    let waited = t0.elapsed();
    assert_eq!(e.kind(), ErrorKind::WaitTimeout);
    assert!(
        waited >= Duration::from_millis(190) && waited < Duration::from_millis(1000),
        "{waited:?}"
    );
    assert_eq!(b.stats().wait_timeouts, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn set_during_a_load_voids_its_fill() {
    let server = RedisServer::start();
    let a = cache(&server).await;
    let b = cache(&server).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let old_load = tokio::spawn({
        let (a, f) = (
            a.clone(),
            counting(&calls, row(1), Duration::from_millis(300)),
        );
        async move { a.get_or_compute("v", f).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    b.set("v", row(2)).await.unwrap();
    // The old load finishes and hands its value to its own callers…
    assert_eq!(*old_load.await.unwrap().unwrap(), row(1));
    // …but it reached neither Redis nor a's L1.
    assert_eq!(a.stats().lease_lost, 1);
    assert_eq!(a.get("v").await.unwrap().as_deref(), Some(&row(2)));
    let c = cache(&server).await;
    assert_eq!(c.get("v").await.unwrap().as_deref(), Some(&row(2)));
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_down_reads_fall_back_to_the_loader_and_writes_fail_typed() {
    let mut server = RedisServer::start();
    let a: Cache<Row> = Cache::builder("t")
        .redis_url(server.url())
        .redis_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    a.set("cached", row(1)).await.unwrap();
    server.kill();
    let calls = Arc::new(AtomicUsize::new(0));
    // A fresh L1 value is served as before.
    assert_eq!(
        *a.get_or_compute("cached", counting(&calls, row(9), Duration::ZERO))
            .await
            .unwrap(),
        row(1)
    );
    // A miss is computed locally, once per process, within the timeout.
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (a, f) = (
            a.clone(),
            counting(&calls, row(2), Duration::from_millis(20)),
        );
        tasks.push(tokio::spawn(
            async move { a.get_or_compute("new", f).await },
        ));
    }
    for t in tasks {
        assert_eq!(*t.await.unwrap().unwrap(), row(2));
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert_eq!(a.stats().redis_fallback_loads, 1);
    assert_eq!(a.get("other").await.unwrap_err().kind(), ErrorKind::Redis);
    assert_eq!(
        a.set("other", row(3)).await.unwrap_err().kind(),
        ErrorKind::Redis
    );
    assert_eq!(
        a.invalidate("other").await.unwrap_err().kind(),
        ErrorKind::Redis
    );

    server.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.set("back", row(4)).await.is_err() {
        assert!(Instant::now() < deadline, "cache did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(feature = "postcard")]
#[tokio::test(flavor = "multi_thread")]
async fn postcard_codec_round_trips_through_redis() {
    let server = RedisServer::start();
    let build = || {
        Cache::<Row>::builder("pc")
            .codec(herdcache::Postcard)
            .redis_url(server.url())
            .build()
    };
    let a = build().await.unwrap();
    a.set("1", row(1)).await.unwrap();
    let b = build().await.unwrap();
    assert_eq!(b.get("1").await.unwrap().as_deref(), Some(&row(1)));
}

/// An early refresh answers its flight at once with the current value, and
/// may wait on while another process holds the lock. Past that value's
/// expiry (hard here: no stale window) no caller may be handed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refresh_answer_is_not_served_past_its_expiry() {
    fn unix_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }
    let server = RedisServer::start();
    let cache: Cache<Row> = Cache::builder("t")
        .redis_url(server.url())
        .ttl(Duration::from_millis(1000))
        .jitter(0.0)
        .wait_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    // A 300 ms load makes the early-refresh window wide (it scales with the
    // compute time), so the refresh draws start well before the expiry.
    let first = cache
        .get_or_compute("k", || async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, DbError>(row(1))
        })
        .await
        .unwrap();
    assert_eq!(first.id, 1);
    let mut con = server.connection();
    let bytes: Vec<u8> = redis::cmd("GET").arg("hc:{t:k}:v").query(&mut con).unwrap();
    let expires = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
    // "Another process" is refreshing and holds the lock past the expiry.
    let _: () = redis::cmd("SET")
        .arg("hc:{t:k}:l")
        .arg("other")
        .arg("PX")
        .arg(10_000)
        .query(&mut con)
        .unwrap();
    let late = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (cache, late) = (cache.clone(), late.clone());
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u32;
            while unix_ms() < expires + 300 && calls < 1_000_000 {
                calls += 1;
                let started = unix_ms();
                let got = tokio::time::timeout(
                    Duration::from_millis(50),
                    cache.get_or_compute("k", || async { Ok::<_, DbError>(row(2)) }),
                )
                .await;
                if let Ok(Ok(v)) = got
                    && v.id == 1
                    && started > expires
                {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                tokio::task::yield_now().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let stats = cache.stats();
    assert!(stats.background_refreshes >= 1, "{stats:?}");
    assert_eq!(
        late.load(Ordering::Relaxed),
        0,
        "calls started after the expiry got the expired value; {stats:?}"
    );
}
