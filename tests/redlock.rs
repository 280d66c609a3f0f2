//! Redlock over 5 real redis-servers: a majority is enough, a minority is
//! `NoQuorum` within the deadline, and killed masters come back into use
//! when restarted, with no new client.

mod support;

use herdcache::{ErrorKind, Redlock};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use support::RedisServer;

fn masters(n: usize) -> (Vec<RedisServer>, Vec<String>) {
    let servers: Vec<RedisServer> = (0..n).map(|_| RedisServer::start()).collect();
    let urls = servers.iter().map(RedisServer::url).collect();
    (servers, urls)
}

/// Tasks of two Redlock clients contend for one name: never two inside.
async fn assert_excludes(a: &Redlock, b: &Redlock, rounds: u32) {
    let inside = Arc::new(AtomicU32::new(0));
    let overlaps = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let redlock = if i % 2 == 0 { a.clone() } else { b.clone() };
        let (inside, overlaps) = (inside.clone(), overlaps.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..rounds {
                let g = redlock
                    .lock("r")
                    .lease(Duration::from_secs(2))
                    .acquire_timeout(Duration::from_secs(10))
                    .await
                    .expect("acquire");
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                assert!(g.release().await.expect("release"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_majority_acquires_a_minority_is_no_quorum_and_restarted_masters_return() {
    let (mut servers, urls) = masters(5);
    let a = Redlock::connect(&urls).await.unwrap();
    let b = Redlock::connect(&urls).await.unwrap();
    assert_eq!(a.quorum(), 3);
    assert_excludes(&a, &b, 10).await;

    // Two masters down: three still make a majority.
    servers[0].kill();
    servers[1].kill();
    assert_excludes(&a, &b, 10).await;
    let held = a.lock("x").acquire().await.unwrap();
    assert!(b.lock("x").try_acquire().await.unwrap().is_none());
    held.release().await.unwrap();

    // Three down: no majority can answer. A typed error, within the
    // deadline (at once: nothing to wait for).
    servers[2].kill();
    let t = Instant::now();
    let err = a
        .lock("y")
        .acquire_timeout(Duration::from_secs(2))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoQuorum, "{err}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // Restarted: the same clients use them again.
    for s in &mut servers[..3] {
        s.restart();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let g = loop {
        match a.lock("y").try_acquire().await {
            Ok(Some(g)) => break g,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("masters not back in use: {other:?}"),
        }
    };
    g.release().await.unwrap();
    assert_excludes(&a, &b, 5).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_is_woken_by_the_release_and_lost_fires_without_a_majority() {
    let (mut servers, urls) = masters(5);
    let a = Redlock::connect(&urls).await.unwrap();
    let b = Redlock::connect(&urls).await.unwrap();
    let held = a.lock("w").acquire().await.unwrap();
    let waiter = tokio::spawn(async move {
        let g = b.lock("w").acquire().await.unwrap();
        (Instant::now(), g)
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let (got, g) = waiter.await.unwrap();
    let handoff = got.duration_since(released);
    assert!(handoff < Duration::from_millis(100), "{handoff:?}");
    g.release().await.unwrap();

    // A held lease whose majority goes away: lost() within the lease.
    let lease = Duration::from_millis(400);
    let g = a.lock("l").lease(lease).acquire().await.unwrap();
    let lost = g.lost();
    for s in &mut servers[..3] {
        s.kill();
    }
    tokio::time::timeout(lease + Duration::from_millis(50), lost)
        .await
        .expect("lost() within the lease");
    assert!(!g.is_held());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_without_a_reachable_majority_is_no_quorum() {
    let (mut servers, urls) = masters(3);
    servers[0].kill();
    servers[1].kill();
    let err = Redlock::connect(&urls).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoQuorum);
    let err = Redlock::connect::<&str>(&[]).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
}

/// Two of three masters hang while a lease is held: lost() fires (its
/// renewals cut off at the lease's end), and once they resume the same
/// Redlock acquires again (no breaker left open by a renewal that never
/// reported, no `SET` left behind by an attempt that timed out).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masters_that_hang_and_resume_are_used_again() {
    let (servers, urls) = masters(3);
    let redlock = Redlock::connect(&urls).await.unwrap();
    let g = redlock.lock("warm").acquire().await.unwrap();
    g.release().await.unwrap();
    let lease = Duration::from_millis(600);
    let g = redlock.lock("h").lease(lease).acquire().await.unwrap();
    let lost = g.lost();
    for s in &servers[1..] {
        s.freeze();
    }
    tokio::time::timeout(Duration::from_secs(2), lost)
        .await
        .expect("lost() within the lease");
    // An attempt while they hang: no quorum, and its SET queued on the
    // hung masters must not outlive it.
    let err = redlock.lock("q").try_acquire().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NoQuorum, "{err}");
    for s in &servers[1..] {
        s.thaw();
    }
    drop(g);
    let t = Instant::now();
    for name in ["h", "q"] {
        loop {
            match redlock.lock(name).try_acquire().await {
                Ok(Some(g)) => {
                    g.release().await.unwrap();
                    break;
                }
                other => assert!(
                    t.elapsed() < Duration::from_secs(2),
                    "{name}: still {other:?} {:?} after the thaw",
                    t.elapsed()
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
