//! Fail-safe behaviour against a real redis-server: stale window, soft and
//! hard timeouts, failing loaders, Redis outages.

mod support;

use herdcache::{Cache, ErrorKind};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::RedisServer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row(u64);

#[derive(Debug, thiserror::Error)]
#[error("database down")]
struct DbDown;

type Boxed = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Row, DbDown>> + Send>>;

/// A loader that counts calls, sleeps `delay`, then returns `Row(n)` or fails.
fn loader(
    calls: &Arc<AtomicUsize>,
    n: Option<u64>,
    delay: Duration,
) -> impl FnOnce() -> Boxed + Send + 'static {
    let calls = calls.clone();
    move || {
        Box::pin(async move {
            calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(delay).await;
            n.map(Row).ok_or(DbDown)
        })
    }
}

fn builder(server: &RedisServer) -> herdcache::CacheBuilder<Row> {
    Cache::builder("fs")
        .redis_url(server.url())
        .ttl(Duration::from_millis(200))
        .jitter(0.0)
        .stale_for(Duration::from_secs(30))
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_values_are_served_at_once_while_one_refresh_runs_fleet_wide() {
    let server = RedisServer::start();
    let (a, b) = (
        builder(&server).build().await.unwrap(),
        builder(&server).build().await.unwrap(),
    );
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_compute("k", loader(&calls, Some(1), Duration::ZERO))
        .await
        .unwrap();
    b.get_or_compute("k", loader(&calls, Some(99), Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await; // both L1 copies are stale now

    // Hammer both "processes" while the 150 ms refresh runs.
    let mut slowest = Duration::ZERO;
    let t_end = Instant::now() + Duration::from_millis(100);
    while Instant::now() < t_end {
        for c in [&a, &b] {
            let t0 = Instant::now();
            let v = c
                .get_or_compute("k", loader(&calls, Some(2), Duration::from_millis(150)))
                .await
                .unwrap();
            slowest = slowest.max(t0.elapsed());
            assert_eq!(*v, Row(1), "stale value served while refreshing");
        }
    }
    assert!(
        slowest < Duration::from_millis(50),
        "a stale hit waited {slowest:?}"
    );
    // The refresh lands everywhere.
    let deadline = Instant::now() + Duration::from_secs(2);
    for c in [&a, &b] {
        while *c
            .get_or_compute("k", loader(&calls, Some(3), Duration::ZERO))
            .await
            .unwrap()
            != Row(2)
        {
            assert!(Instant::now() < deadline, "refresh never arrived");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one initial load + exactly one refresh across both"
    );
    assert!(a.stats().stale_served + b.stats().stale_served > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_stale_window_expiry_is_hard() {
    let server = RedisServer::start();
    let a = builder(&server)
        .stale_for(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_compute("k", loader(&calls, Some(1), Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let t0 = Instant::now();
    let v = a
        .get_or_compute("k", loader(&calls, Some(2), Duration::from_millis(100)))
        .await
        .unwrap();
    assert_eq!(*v, Row(2));
    assert!(
        t0.elapsed() >= Duration::from_millis(95),
        "waited for the loader"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_loader_serves_stale_and_throttles_retries_fleet_wide() {
    let server = RedisServer::start();
    let build = || {
        builder(&server)
            .fail_safe_throttle(Duration::from_millis(600))
            .build()
    };
    let (a, b) = (build().await.unwrap(), build().await.unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_compute("k", loader(&calls, Some(1), Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;

    // The refresh fails: the caller still gets the old value…
    let v = a
        .get_or_compute("k", loader(&calls, None, Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(*v, Row(1));
    let deadline = Instant::now() + Duration::from_secs(2);
    while a.stats().fail_safe_served == 0 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // …and for the throttle period nobody in the fleet calls the failing loader.
    for _ in 0..20 {
        assert_eq!(
            *a.get_or_compute("k", loader(&calls, None, Duration::ZERO))
                .await
                .unwrap(),
            Row(1)
        );
        assert_eq!(
            *b.get_or_compute("k", loader(&calls, None, Duration::ZERO))
                .await
                .unwrap(),
            Row(1)
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2, "throttled");
    // After it, the loader is tried again.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        *a.get_or_compute("k", loader(&calls, Some(5), Duration::ZERO))
            .await
            .unwrap(),
        Row(1)
    );
    let deadline = Instant::now() + Duration::from_secs(2);
    while *a
        .get_or_compute("k", loader(&calls, Some(5), Duration::ZERO))
        .await
        .unwrap()
        != Row(5)
    {
        assert!(
            Instant::now() < deadline,
            "recovered loader never refreshed"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn soft_timeout_answers_stale_and_the_load_fills_later() {
    let server = RedisServer::start();
    let a = builder(&server)
        .soft_timeout(Duration::from_millis(50))
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_compute("k", loader(&calls, Some(1), Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    // A fast refresh within the soft timeout is returned fresh.
    let v = a
        .get_or_compute("k", loader(&calls, Some(2), Duration::from_millis(5)))
        .await
        .unwrap();
    assert_eq!(*v, Row(2));
    tokio::time::sleep(Duration::from_millis(250)).await;
    // A slow one: stale after ~50 ms, and the value fills in the background.
    let t0 = Instant::now();
    let v = a
        .get_or_compute("k", loader(&calls, Some(3), Duration::from_millis(300)))
        .await
        .unwrap();
    let waited = t0.elapsed();
    assert_eq!(*v, Row(2));
    assert!(
        waited >= Duration::from_millis(45) && waited < Duration::from_millis(250),
        "{waited:?}"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&Row(3)));
}

#[tokio::test(flavor = "multi_thread")]
async fn hard_timeout_bounds_the_caller_and_frees_the_key() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let a = builder(&server)
        .load_timeout(Duration::from_millis(150))
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    // Nothing stale: a typed timeout error, quickly.
    let t0 = Instant::now();
    let e = a
        .get_or_compute("hang", loader(&calls, Some(1), Duration::from_secs(30)))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::LoadTimeout);
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    let lock: bool = redis::cmd("EXISTS")
        .arg("hc:{fs:hang}:l")
        .query(&mut con)
        .unwrap();
    assert!(!lock, "lock released after the hard timeout");
    // Something stale: served, instead of an error.
    a.get_or_compute("k", loader(&calls, Some(1), Duration::ZERO))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let v = a
        .get_or_compute("k", loader(&calls, Some(2), Duration::from_secs(30)))
        .await
        .unwrap();
    assert_eq!(*v, Row(1));
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_fails_fast_serves_l1_and_recovers_by_itself() {
    let mut server = RedisServer::start();
    let a = builder(&server)
        .ttl(Duration::from_secs(60))
        .redis_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_compute("had", loader(&calls, Some(1), Duration::ZERO))
        .await
        .unwrap();
    server.kill();
    // 100 misses on distinct keys: the breaker makes them skip Redis, so the
    // whole batch costs far less than 100 x redis_timeout.
    let t0 = Instant::now();
    for i in 0..100 {
        let v = a
            .get_or_compute(&format!("new{i}"), loader(&calls, Some(i), Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(*v, Row(i));
    }
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(a.stats().breaker_rejections > 50, "{:?}", a.stats());
    assert_eq!(
        *a.get_or_compute("had", loader(&calls, Some(9), Duration::ZERO))
            .await
            .unwrap(),
        Row(1)
    );

    server.restart();
    let back = Instant::now();
    let deadline = back + Duration::from_secs(5);
    while a.set("probe", Row(0)).await.is_err() {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovery = back.elapsed();
    println!("first successful Redis command {recovery:?} after restart");
    assert!(recovery < Duration::from_secs(1), "{recovery:?}");
}

/// A hung Redis (SIGSTOP: it accepts connections but answers nothing). Every
/// call is bounded by `redis_timeout`: a plain read (bounded by the
/// connection's response timeout alone), a script, and a miss that falls back
/// to the loader; a key in L1 is served without waiting at all. Once Redis
/// answers again, the cache uses it again by itself.
#[tokio::test(flavor = "multi_thread")]
async fn hung_redis_bounds_every_call_by_redis_timeout() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let server = RedisServer::start();
    let a = builder(&server)
        .ttl(Duration::from_secs(60))
        .redis_timeout(TIMEOUT)
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_compute("had", loader(&calls, Some(1), Duration::ZERO))
        .await
        .unwrap();
    server.freeze();
    let bound = TIMEOUT + Duration::from_millis(200);

    let t0 = Instant::now();
    let e = a.get("elsewhere").await.unwrap_err();
    let took = t0.elapsed();
    assert_eq!(e.kind(), ErrorKind::Redis, "{e}");
    assert!(
        took >= TIMEOUT - Duration::from_millis(20) && took < bound,
        "GET took {took:?}"
    );

    let t0 = Instant::now();
    let v = a
        .get_or_compute("had", loader(&calls, Some(9), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(*v, Row(1));
    assert!(
        t0.elapsed() < Duration::from_millis(50),
        "L1 hit took {:?}",
        t0.elapsed()
    );

    let t0 = Instant::now();
    let v = a
        .get_or_compute("new", loader(&calls, Some(2), Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(*v, Row(2));
    assert!(t0.elapsed() < bound, "miss took {:?}", t0.elapsed());

    let t0 = Instant::now();
    assert_eq!(
        a.set("x", Row(3)).await.unwrap_err().kind(),
        ErrorKind::Redis
    );
    assert!(t0.elapsed() < bound, "set took {:?}", t0.elapsed());

    server.thaw();
    let back = Instant::now();
    while a.set("probe", Row(0)).await.is_err() {
        assert!(back.elapsed() < Duration::from_secs(5), "never recovered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!("first successful write {:?} after SIGCONT", back.elapsed());
    assert!(back.elapsed() < Duration::from_secs(1));
    assert_eq!(a.get("probe").await.unwrap().as_deref(), Some(&Row(0)));
}

/// A TCP proxy on loopback in front of Redis, whose live connections can be
/// made to vanish without a reset: they stay open and swallow every byte,
/// as after a failover or a NAT that forgot the flow. Connections opened
/// after that are forwarded normally (Redis is reachable again, as the new
/// primary would be).
struct VanishingProxy {
    port: u16,
    /// Connections opened before this epoch are blackholed.
    epoch: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl VanishingProxy {
    fn start(upstream: u16) -> Self {
        use std::io::{Read, Write};
        use std::net::{TcpListener, TcpStream};
        use std::sync::atomic::{AtomicBool, AtomicU64};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let epoch = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (e, s) = (epoch.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                client.set_nonblocking(false).unwrap();
                let server = TcpStream::connect(("127.0.0.1", upstream)).unwrap();
                let born = e.load(Ordering::SeqCst);
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let (e, s) = (e.clone(), s.clone());
                    std::thread::spawn(move || {
                        from.set_read_timeout(Some(Duration::from_millis(20)))
                            .unwrap();
                        let mut buf = [0u8; 16 * 1024];
                        while !s.load(Ordering::SeqCst) {
                            let n = match from.read(&mut buf) {
                                Ok(0) => return,
                                Ok(n) => n,
                                Err(_) => continue, // read timeout: check the flags
                            };
                            // A vanished peer: bytes go nowhere, nothing is closed.
                            if e.load(Ordering::SeqCst) == born && to.write_all(&buf[..n]).is_err()
                            {
                                return;
                            }
                        }
                    });
                }
            }
        });
        VanishingProxy { port, epoch, stop }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Every connection open now goes silent for good.
    fn vanish_open_connections(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
    }
}

/// A cache whose connection goes through `proxy`, quick to time out.
fn through(proxy: &VanishingProxy, namespace: &str) -> herdcache::CacheBuilder<Row> {
    Cache::builder(namespace)
        .redis_url(proxy.url())
        .ttl(Duration::from_secs(60))
        .redis_timeout(Duration::from_millis(200))
}

/// A cache of the same namespace straight to Redis: another process.
async fn direct(server: &RedisServer, namespace: &str) -> Cache<Row> {
    Cache::builder(namespace)
        .redis_url(server.url())
        .build()
        .await
        .unwrap()
}

impl Drop for VanishingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// After a failover the old connection's peer is gone without a reset, so
/// no error ever arrives on it: calls only time out. The cache replaces the
/// connection after a few timeouts in a row, rather than waiting out TCP's
/// own ~15 minutes, and uses Redis again.
#[tokio::test(flavor = "multi_thread")]
async fn a_connection_whose_peer_vanished_is_replaced() {
    let server = RedisServer::start();
    let proxy = VanishingProxy::start(server.port());
    let a = through(&proxy, "vanish")
        .breaker_cooldown(Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    a.set("k", Row(1)).await.unwrap();
    proxy.vanish_open_connections();
    let t0 = Instant::now();
    let mut failed = 0;
    while a.set("k", Row(2)).await.is_err() {
        failed += 1;
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "still no Redis after {failed} failed calls"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "a new connection worked {:?} after the old one vanished ({failed} failed calls)",
        t0.elapsed()
    );
    // Writes and reads both go through the new connection, and other caches
    // see the write.
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&Row(2)));
    let b = direct(&server, "vanish").await;
    assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&Row(2)));
}

/// The same vanished peer, seen by a process that serves everything from
/// L1 and so sends no commands of its own. Its connection's heartbeat finds
/// the streak of timeouts, the connection is replaced, and L1 is flushed of
/// what changed meanwhile (the change notice went down with the old
/// connection). Without the heartbeat the old value would be served until
/// its TTL (60 s).
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_process_notices_a_vanished_connection() {
    let server = RedisServer::start();
    let proxy = VanishingProxy::start(server.port());
    let a = through(&proxy, "idle").build().await.unwrap();
    let b = direct(&server, "idle").await;
    let calls = Arc::new(AtomicUsize::new(0));
    a.get_or_compute("k", loader(&calls, Some(1), Duration::ZERO))
        .await
        .unwrap();
    proxy.vanish_open_connections();
    b.set("k", Row(2)).await.unwrap();
    let t0 = Instant::now();
    loop {
        let v = a
            .get_or_compute("k", loader(&calls, Some(9), Duration::ZERO))
            .await
            .unwrap();
        if *v == Row(2) {
            break;
        }
        assert_eq!(*v, Row(1));
        assert!(
            t0.elapsed() < Duration::from_secs(8),
            "the old value is still served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "the idle process saw the change {:?} after its connection vanished",
        t0.elapsed()
    );
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "read from Redis, not loaded"
    );
}
