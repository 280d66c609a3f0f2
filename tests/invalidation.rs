//! Invalidation that sticks, against a real redis-server. Separately built
//! caches have their own connections, L1s and origins: to Redis and to each
//! other they are separate processes.

mod support;

use herdcache::Cache;
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use support::RedisServer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    version: u64,
}

async fn cache(server: &RedisServer) -> Cache<Row> {
    Cache::builder("inv")
        .redis_url(server.url())
        .build()
        .await
        .unwrap()
}

/// The "database": a version counter in Redis under another prefix.
async fn db_version(url: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg("db:row")
        .query_async::<Option<u64>>(&mut con)
        .await
        .unwrap()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_loader_that_read_the_old_row_cannot_write_it_back() {
    let server = RedisServer::start();
    let url = server.url();
    let mut db = server.connection();
    let _: () = redis::cmd("SET")
        .arg("db:row")
        .arg(1)
        .query(&mut db)
        .unwrap();
    let (reader, writer) = (cache(&server).await, cache(&server).await);

    // The reader's loader reads version 1, then stalls.
    let slow = tokio::spawn({
        let (reader, url) = (reader.clone(), url.clone());
        async move {
            reader
                .get_or_compute("row", move || async move {
                    let version = db_version(&url).await;
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    Ok::<_, std::io::Error>(Row { version })
                })
                .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // Meanwhile the row is updated, then invalidated.
    let _: () = redis::cmd("SET")
        .arg("db:row")
        .arg(2)
        .query(&mut db)
        .unwrap();
    writer.invalidate("row").await.unwrap();
    // The slow loader finishes with the old row…
    assert_eq!(slow.await.unwrap().unwrap().version, 1);
    // …which is neither in Redis nor in the reader's L1.
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg("hc:{inv:row}:v")
        .query(&mut db)
        .unwrap();
    assert!(raw.is_none(), "the voided fill reached Redis");
    assert_eq!(
        reader.get("row").await.unwrap(),
        None,
        "old row in the reader's L1"
    );
    assert_eq!(reader.stats().lease_lost, 1);
    let fresh = cache(&server).await;
    let v = fresh
        .get_or_compute("row", move || async move {
            Ok::<_, std::io::Error>(Row {
                version: db_version(&url).await,
            })
        })
        .await
        .unwrap();
    assert_eq!(v.version, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn l1_copies_in_other_processes_are_dropped_within_milliseconds() {
    let server = RedisServer::start();
    let (a, b) = (cache(&server).await, cache(&server).await);
    let mut lags = Vec::new();
    for version in 1..=200u64 {
        a.set("k", Row { version }).await.unwrap();
        let t0 = Instant::now();
        // b holds the previous version in L1 until a's notice arrives.
        loop {
            if b.get("k").await.unwrap().map(|r| r.version) == Some(version) {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(2),
                "b never saw version {version}"
            );
            tokio::task::yield_now().await;
        }
        lags.push(t0.elapsed());
    }
    lags.sort();
    let p50 = lags[lags.len() / 2];
    let p99 = lags[lags.len() * 99 / 100];
    println!(
        "L1 invalidation reached the other cache: p50 {p50:?}, p99 {p99:?}, max {:?}",
        lags.last().unwrap()
    );
    // The figure itself (target p99 <= 5 ms) is reported, not asserted: a
    // timed assertion would flake on a busy 2-core machine. The bound here
    // only catches a broken bus (a lost notice would take local_ttl).
    assert!(p99 <= Duration::from_millis(100), "p99 {p99:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn invalidate_many_and_clear_empty_every_process() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let (a, b) = (cache(&server).await, cache(&server).await);
    let keys: Vec<String> = (0..100).map(|i| format!("k{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        a.set(k, Row { version: i as u64 }).await.unwrap();
        assert!(b.get(k).await.unwrap().is_some()); // now in b's L1
    }
    a.invalidate_many(&keys[..50]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    for k in &keys[..50] {
        while b.get(k).await.unwrap().is_some() {
            assert!(
                Instant::now() < deadline,
                "{k} survived invalidate_many in b"
            );
            tokio::task::yield_now().await;
        }
    }
    assert!(b.get("k60").await.unwrap().is_some());

    let commands_before: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap();
    a.clear().await.unwrap();
    let commands_after: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap();
    for stats in [&commands_before, &commands_after] {
        assert!(
            !stats.contains("cmdstat_keys:") && !stats.contains("cmdstat_scan:"),
            "clear used KEYS/SCAN"
        );
    }
    assert_eq!(a.get("k60").await.unwrap(), None);
    let deadline = Instant::now() + Duration::from_secs(2);
    while b.get("k60").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "k60 survived clear in b");
        tokio::task::yield_now().await;
    }
    // The namespace works as before, in the new generation, for new caches too.
    b.set("k60", Row { version: 7 }).await.unwrap();
    assert_eq!(
        a.get("k60").await.unwrap(),
        Some(std::sync::Arc::new(Row { version: 7 }))
    );
    let c = cache(&server).await;
    assert_eq!(
        c.get("k61").await.unwrap(),
        None,
        "a cache built after clear sees the new generation"
    );
    assert_eq!(c.get("k60").await.unwrap().map(|r| r.version), Some(7));
}

fn command_calls(con: &mut redis::Connection, name: &str) -> u64 {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("cmdstat_{name}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn get_many_of_100_keys_in_redis_is_one_round_trip() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let writer = cache(&server).await;
    let keys: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    for (i, k) in keys.iter().enumerate() {
        writer.set(k, Row { version: i as u64 }).await.unwrap();
    }
    let reader = cache(&server).await; // empty L1
    let (mget0, get0, eval0) = (
        command_calls(&mut con, "mget"),
        command_calls(&mut con, "get"),
        command_calls(&mut con, "evalsha"),
    );
    let got = reader.get_many(&keys).await.unwrap();
    assert_eq!(command_calls(&mut con, "mget") - mget0, 1);
    assert_eq!(command_calls(&mut con, "get") - get0, 0);
    assert_eq!(command_calls(&mut con, "evalsha") - eval0, 0);
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v.as_ref().unwrap().version, i as u64);
    }
    // Now in L1: no Redis call at all.
    let mget1 = command_calls(&mut con, "mget");
    reader.get_many(&keys).await.unwrap();
    assert_eq!(command_calls(&mut con, "mget"), mget1);

    // get_or_compute_many: 100 present + 20 missing; the loader runs only for
    // the missing ones, once each.
    let more: Vec<String> = (0..120).map(|i| format!("m{i}")).collect();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = calls.clone();
    let fresh_reader = cache(&server).await;
    let got = fresh_reader
        .get_or_compute_many(&more, move |key: String| {
            let c = c.clone();
            async move {
                c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok::<_, std::io::Error>(Row {
                    version: key[1..].parse::<u64>().unwrap(),
                })
            }
        })
        .await
        .unwrap();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 20);
    for (i, v) in got.iter().enumerate() {
        assert_eq!(v.version, i as u64);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_rows_are_cached_briefly_so_lookups_stop_reaching_the_database() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let build = || {
        Cache::<Option<Row>>::builder("neg")
            .redis_url(server.url())
            .ttl(Duration::from_secs(60))
            .negative_ttl(Duration::from_millis(300))
            .build()
    };
    let (a, b) = (build().await.unwrap(), build().await.unwrap());
    let db_calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lookup = |c: std::sync::Arc<std::sync::atomic::AtomicUsize>, exists: bool| {
        move || async move {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<_, std::io::Error>(exists.then_some(Row { version: 1 }))
        }
    };
    let before = command_calls(&mut con, "evalsha") + command_calls(&mut con, "get");
    // 200 lookups of a row that does not exist, from two processes: one DB call.
    for _ in 0..100 {
        assert_eq!(
            *a.get_or_compute("ghost", lookup(db_calls.clone(), false))
                .await
                .unwrap(),
            None
        );
        assert_eq!(
            *b.get_or_compute("ghost", lookup(db_calls.clone(), false))
                .await
                .unwrap(),
            None
        );
    }
    assert_eq!(db_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let redis_calls = command_calls(&mut con, "evalsha") + command_calls(&mut con, "get") - before;
    assert!(
        redis_calls <= 10,
        "L1 absorbed the repeats: {redis_calls} Redis calls"
    );
    // The negative entry is short-lived: once the row exists, it shows up.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let v = a
        .get_or_compute("ghost", lookup(db_calls.clone(), true))
        .await
        .unwrap();
    assert_eq!(*v, Some(Row { version: 1 }));
    assert_eq!(db_calls.load(std::sync::atomic::Ordering::SeqCst), 2);
    // Present rows keep the long TTL.
    let pttl: i64 = redis::cmd("PTTL")
        .arg("hc:{neg:ghost}:v")
        .query(&mut con)
        .unwrap();
    assert!(pttl > 50_000, "{pttl}");
}
