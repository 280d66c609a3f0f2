//! The single-instance lock against a real redis-server: exclusion inside a
//! process, fencing tokens, timeouts, hand-off by notice, release on drop,
//! lost() when Redis hangs, bad input, and one connection for everything;
//! a release publishes its notice only when someone waits.

mod support;

use herdcache::{Client, ErrorKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use support::RedisServer;

async fn client(redis: &RedisServer) -> Client {
    Client::connect(&redis.url()).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_release_and_fencing_tokens_increase() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let lock = client.lock("orders:1");
    let mut last = 0;
    for _ in 0..20 {
        let guard = lock.acquire().await.unwrap();
        assert!(guard.is_held());
        assert!(guard.fencing_token() > last, "tokens increase");
        last = guard.fencing_token();
        assert!(guard.release().await.unwrap(), "still ours at release");
    }
    // Another name has its own lock, free while this one is held.
    let a = lock.acquire().await.unwrap();
    let b = client.lock("orders:2").try_acquire().await.unwrap();
    assert!(b.is_some());
    assert!(lock.try_acquire().await.unwrap().is_none(), "held");
    a.release().await.unwrap();
    assert!(lock.try_acquire().await.unwrap().is_some(), "free again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_of_one_process_exclude_each_other() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let inside = Arc::new(AtomicU32::new(0));
    let overlaps = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let (client, inside, overlaps) = (client.clone(), inside.clone(), overlaps.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                let g = client.lock("shared").acquire().await.unwrap();
                if inside.fetch_add(1, Ordering::SeqCst) != 0 {
                    overlaps.fetch_add(1, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
                inside.fetch_sub(1, Ordering::SeqCst);
                g.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(overlaps.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_timeout_is_a_typed_error_and_a_waiter_is_woken_by_the_release() {
    let redis = RedisServer::start();
    let (a, b) = (client(&redis).await, client(&redis).await);
    let held = a.lock("k").acquire().await.unwrap();
    let t = Instant::now();
    let err = b
        .lock("k")
        .acquire_timeout(Duration::from_millis(150))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::LockTimeout);
    assert!(t.elapsed() >= Duration::from_millis(150));
    assert!(
        t.elapsed() < Duration::from_millis(600),
        "{:?}",
        t.elapsed()
    );

    // A waiter on another connection is woken by the release notice, not
    // by its poll (which by now is 250 ms apart).
    let waiter = tokio::spawn(async move {
        let g = b.lock("k").acquire().await.unwrap();
        (Instant::now(), g.release().await.unwrap())
    });
    tokio::time::sleep(Duration::from_millis(600)).await;
    let released = Instant::now();
    held.release().await.unwrap();
    let (got, _) = waiter.await.unwrap();
    let handoff = got.duration_since(released);
    assert!(
        handoff < Duration::from_millis(100),
        "hand-off took {handoff:?}"
    );
}

/// Counts the notices published on `channel`, on a connection of its own
/// (a plain subscriber, so it marks nothing as waited for).
struct Notices {
    count: Arc<AtomicU32>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Notices {
    fn start(redis: &RedisServer, channel: &str) -> Notices {
        let count = Arc::new(AtomicU32::new(0));
        let stop: Arc<std::sync::atomic::AtomicBool> = Arc::default();
        let (ready_tx, ready) = std::sync::mpsc::channel();
        let mut conn = redis.connection();
        let channel = channel.to_owned();
        let (c, s) = (count.clone(), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut sub = conn.as_pubsub();
            sub.subscribe(&channel).unwrap();
            sub.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            ready_tx.send(()).unwrap();
            while !s.load(Ordering::SeqCst) {
                if sub.get_message().is_ok() {
                    c.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        ready.recv().unwrap();
        Notices {
            count,
            stop,
            thread: Some(thread),
        }
    }

    /// The count once every notice sent so far has had time to arrive.
    fn settled(&self) -> u32 {
        std::thread::sleep(Duration::from_millis(100));
        self.count.load(Ordering::SeqCst)
    }
}

impl Drop for Notices {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_publishes_only_when_someone_waits() {
    let redis = RedisServer::start();
    let (a, b) = (client(&redis).await, client(&redis).await);
    let notices = Notices::start(&redis, "hc:lk:{n}:ch");

    // Nobody waits: acquisitions, releases, a dropped guard and a
    // try_acquire that finds the lock taken (it does not wait) publish
    // nothing.
    for _ in 0..20 {
        a.lock("n")
            .acquire()
            .await
            .unwrap()
            .release()
            .await
            .unwrap();
    }
    drop(a.lock("n").acquire().await.unwrap());
    tokio::time::sleep(Duration::from_millis(50)).await;
    let held = a.lock("n").acquire().await.unwrap();
    assert!(b.lock("n").try_acquire().await.unwrap().is_none());
    held.release().await.unwrap();
    assert_eq!(notices.settled(), 0, "a release with no waiter published");

    // A waiter on another connection: the release publishes, and the
    // waiter is woken by it (well before its 20-250 ms fallback poll).
    for round in 1..=3 {
        let held = a.lock("n").acquire().await.unwrap();
        let b = b.clone();
        let waiter = tokio::spawn(async move {
            let g = b.lock("n").acquire().await.unwrap();
            let got = Instant::now();
            g.release().await.unwrap();
            got
        });
        // Long enough for the waiter to have failed, subscribed, failed
        // again, and gone to sleep with its poll at 80 ms and more.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let released = Instant::now();
        held.release().await.unwrap();
        let handoff = waiter.await.unwrap().duration_since(released);
        assert!(
            handoff < Duration::from_millis(50),
            "round {round}: hand-off took {handoff:?}"
        );
        // One notice for the waited-for release; the waiter's own release
        // finds no waiter and publishes nothing.
        assert_eq!(notices.settled(), round, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_guard_is_released_at_once() {
    let redis = RedisServer::start();
    let (a, b) = (client(&redis).await, client(&redis).await);
    let guard = a
        .lock("d")
        .lease(Duration::from_secs(30))
        .acquire()
        .await
        .unwrap();
    drop(guard);
    let t = Instant::now();
    let g = b
        .lock("d")
        .acquire_timeout(Duration::from_secs(2))
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watchdog_keeps_a_short_lease_and_lost_fires_when_redis_hangs() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let lease = Duration::from_millis(300);
    let guard = client.lock("w").lease(lease).acquire().await.unwrap();
    // Held well past its lease while the watchdog renews it.
    tokio::time::sleep(lease * 3).await;
    assert!(guard.is_held());
    let mut conn = redis.connection();
    let pttl: i64 = redis::cmd("PTTL")
        .arg("hc:lk:{w}")
        .query(&mut conn)
        .unwrap();
    assert!(pttl > 0, "the key is still there: {pttl}");
    // Redis hangs: renewal cannot succeed, and lost() fires within the lease.
    let lost = guard.lost();
    redis.freeze();
    let t = Instant::now();
    tokio::time::timeout(lease + Duration::from_millis(50), lost)
        .await
        .expect("lost() fired within the lease");
    let fired = t.elapsed();
    assert!(!guard.is_held());
    redis.thaw();
    // Within the lease after the freeze (the last renewal was before it),
    // give or take a timer tick.
    assert!(
        fired <= lease + Duration::from_millis(5),
        "lost after {fired:?}"
    );
    drop(guard);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error_and_takes_nothing() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    for name in [
        "",
        "a{b",
        "a}b",
        &"x".repeat(herdcache::MAX_LOCK_NAME_LEN + 1),
    ] {
        let err = client.lock(name).acquire().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey, "{name:?}");
        let err = client.lock(name).try_acquire().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey);
    }
    let err = client
        .lock("z")
        .lease(Duration::ZERO)
        .acquire()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
    assert!(keys.is_empty(), "nothing taken: {keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_keys_never_collide_with_cache_keys() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let cache = client.cache::<u64>("ns").build().await.unwrap();
    cache.set("x", 7).await.unwrap();
    let g = client.lock("ns:x").acquire().await.unwrap();
    assert_eq!(*cache.get("x").await.unwrap().unwrap(), 7);
    g.release().await.unwrap();
    assert_eq!(*cache.get("x").await.unwrap().unwrap(), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_caches_and_a_hundred_waiters_use_one_connection() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let mut caches = Vec::new();
    for i in 0..10 {
        caches.push(client.cache::<u64>(format!("ns{i}")).build().await.unwrap());
    }
    let held = client.lock("busy").acquire().await.unwrap();
    let mut waiters = Vec::new();
    for i in 0..100 {
        let client = client.clone();
        let name = if i % 2 == 0 { "busy" } else { "busy2" };
        waiters.push(tokio::spawn(async move {
            let _ = client
                .lock(name)
                .acquire_timeout(Duration::from_millis(500))
                .await;
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut conn = redis.connection();
    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).unwrap();
    // Ours, plus the test's own bookkeeping connection.
    assert_eq!(list.lines().count(), 2, "{list}");
    held.release().await.unwrap();
    for w in waiters {
        w.await.unwrap();
    }
    drop(caches);
}

/// The fence counter lost while a lock is held (an eviction, a failover
/// to a replica that missed it) and recreated by waiters' attempts, which
/// count it up from 1: the next holder's token is still above every
/// earlier one, because a counter that was not started at the server's
/// clock is started there before a token is handed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_counter_recreated_by_waiters_still_gives_a_higher_token() {
    let redis = RedisServer::start();
    let (a, b) = (client(&redis).await, client(&redis).await);
    let held = a.lock("f").acquire().await.unwrap();
    let old = held.fencing_token();
    assert!(old > 1_000_000_000_000_000, "started at the clock: {old}");
    let mut raw = redis.connection();
    let () = redis::cmd("DEL")
        .arg("hc:lk:{f}:f")
        .query(&mut raw)
        .unwrap();
    for _ in 0..3 {
        assert!(b.lock("f").try_acquire().await.unwrap().is_none());
    }
    let counted: u64 = redis::cmd("GET")
        .arg("hc:lk:{f}:f")
        .query(&mut raw)
        .unwrap();
    assert!(counted < 10, "recreated from 1 by the failed attempts");
    held.release().await.unwrap();
    let next = b.lock("f").acquire().await.unwrap();
    assert!(
        next.fencing_token() > old,
        "{} <= {old}",
        next.fencing_token()
    );
    let pttl: i64 = redis::cmd("PTTL")
        .arg("hc:lk:{f}:f")
        .query(&mut raw)
        .unwrap();
    assert!(pttl > 0, "the restarted counter expires again: {pttl}");
    let after = b.lock("f");
    next.release().await.unwrap();
    let last = after.acquire().await.unwrap();
    assert_eq!(last.fencing_token(), {
        let v: u64 = redis::cmd("GET")
            .arg("hc:lk:{f}:f")
            .query(&mut raw)
            .unwrap();
        v
    });
    last.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acquire_fails_fast_while_redis_is_down_and_works_when_it_is_back() {
    let mut redis = RedisServer::start();
    let client = client(&redis).await;
    let before = client.lock("r").acquire().await.unwrap();
    let old_token = before.fencing_token();
    before.release().await.unwrap();
    redis.kill();
    let t = Instant::now();
    let err = client.lock("r").acquire().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Redis);
    assert!(t.elapsed() < Duration::from_secs(1));
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match client.lock("r").try_acquire().await {
            Ok(Some(g)) => {
                // A Redis without persistence lost the counter: the token
                // starts again at the server's clock, above the old one.
                assert!(g.fencing_token() > old_token, "fencing token went back");
                g.release().await.unwrap();
                break;
            }
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => panic!("not back after restart: {other:?}"),
        }
    }
}

/// The leases of a client are renewed by one task, started by the client's
/// first lease on that lease's runtime. When that runtime is gone, the next
/// lease starts it again on its own: a short lease is still renewed.
#[test]
fn leases_are_renewed_after_the_runtime_of_the_first_lease_is_gone() {
    let redis = RedisServer::start();
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = main.block_on(client(&redis));
    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    other.block_on(async {
        let g = client.lock("first").acquire().await.unwrap();
        g.release().await.unwrap();
    });
    drop(other);
    main.block_on(async {
        let guard = client
            .lock("second")
            .lease(Duration::from_millis(90))
            .acquire()
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(guard.is_held(), "a 90 ms lease not renewed for 400 ms");
        assert!(guard.release().await.unwrap(), "the lock ran out");
    });
}

/// A failover to a replica that missed the fence counter's last
/// increments (here: the counter set back by hand, and every client
/// connection killed, as the old master's loss does): the first
/// acquisition on the new connection floors the counter at the server
/// clock, so no token handed out before is handed out again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fence_counter_behind_after_a_failover_gives_no_token_twice() {
    let server = RedisServer::start();
    let client = Client::connect(&server.url()).await.unwrap();
    let lock = client.lock("ff");
    let mut last = 0;
    for _ in 0..3 {
        let g = lock.acquire().await.unwrap();
        assert!(g.fencing_token() > last);
        last = g.fencing_token();
        assert!(g.release().await.unwrap());
    }
    let mut con = server.connection();
    // The promoted replica's counter: 1,000 increments behind.
    let () = redis::cmd("SET")
        .arg("hc:lk:{ff}:f")
        .arg(last - 1000)
        .query(&mut con)
        .unwrap();
    let _: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("normal")
        .arg("SKIPME")
        .arg("yes")
        .query(&mut con)
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let token = loop {
        match lock.acquire_timeout(Duration::from_millis(500)).await {
            Ok(g) => break g.fencing_token(),
            Err(e) => assert!(std::time::Instant::now() < deadline, "no reconnect: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(token > last, "token {token} after {last}: handed out again");
    // A new handle of the same name on the same connection does not floor
    // again: the next token is the counter's next value.
    let next = client.lock("ff").acquire().await.unwrap().fencing_token();
    assert!(next > token && next - token < 1000, "{token} then {next}");
}

/// `Lock::fenced(false)`: one `SET NX PX`, token 0, and otherwise the same
/// lock: exclusion against fenced handles of the name in another process,
/// the release notice waking a waiter, the watchdog, release on drop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfenced_lock_excludes_wakes_and_renews_like_the_fenced_one() {
    let redis = RedisServer::start();
    let (a, b) = (client(&redis).await, client(&redis).await);
    let lease = Duration::from_millis(300);
    let unfenced = a.lock("u").lease(lease).fenced(false);
    let guard = unfenced.acquire().await.unwrap();
    assert_eq!(guard.fencing_token(), 0, "no token taken");
    let mut conn = redis.connection();
    let fence: Option<u64> = redis::cmd("GET")
        .arg("hc:lk:{u}:f")
        .query(&mut conn)
        .unwrap();
    assert_eq!(fence, None, "no fence counter touched");
    // Another process's fenced handle of the name is kept out...
    assert!(b.lock("u").try_acquire().await.unwrap().is_none());
    // ...while the watchdog keeps the short lease well past its end.
    tokio::time::sleep(lease * 3).await;
    assert!(guard.is_held());
    assert!(b.lock("u").try_acquire().await.unwrap().is_none());
    // A waiter in the other process is woken by the release's notice (the
    // fallback poll would take 20 ms and more; the lease is not what frees it).
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            let g = b
                .lock("u")
                .acquire_timeout(Duration::from_secs(5))
                .await
                .unwrap();
            (Instant::now(), g)
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let released = Instant::now();
    assert!(guard.release().await.unwrap());
    let (woken, fenced) = waiter.await.unwrap();
    assert!(
        woken.duration_since(released) < Duration::from_millis(100),
        "woken {:?} after the release",
        woken.duration_since(released)
    );
    assert!(fenced.fencing_token() > 0, "the fenced handle still fences");
    // The unfenced handle waits for the fenced holder in turn.
    assert!(unfenced.try_acquire().await.unwrap().is_none());
    drop(fenced);
    let again = unfenced
        .acquire_timeout(Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(again.fencing_token(), 0);
    // A guard dropped without release frees the name at once.
    drop(again);
    let t = Instant::now();
    b.lock("u")
        .acquire_timeout(Duration::from_secs(2))
        .await
        .unwrap()
        .release()
        .await
        .unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(200),
        "{:?}",
        t.elapsed()
    );
}

/// A call that was the breaker's probe and never reported (its future
/// dropped after one poll) must not leave the breaker open for good while
/// Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_probe_does_not_leave_the_breaker_open() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    redis.freeze();
    let err = client.lock("a").try_acquire().await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Redis, "{err}");
    redis.thaw();
    // Past the breaker's cooldown (250 ms): the next call is the probe.
    tokio::time::sleep(Duration::from_millis(400)).await;
    {
        let lock = client.lock("b");
        let probe = lock.try_acquire();
        tokio::pin!(probe);
        // Polled once (sent, or at least admitted), then dropped.
        assert!(futures_util::FutureExt::now_or_never(&mut probe).is_none());
    }
    let t = Instant::now();
    loop {
        match client.lock("c").try_acquire().await {
            Ok(Some(g)) => {
                g.release().await.unwrap();
                break;
            }
            Ok(None) => panic!("c is free"),
            Err(e) => assert!(
                t.elapsed() < Duration::from_secs(2),
                "still failing after {:?}: {e}",
                t.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An acquisition that timed out on a stalled Redis is still run by Redis
/// when it resumes: it must be released then, not left locked by nobody
/// for its whole lease. The same when renewals are cut off at a lease's
/// end (the renewer drops them): the client is usable right after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_leaves_no_lock_held_by_nobody_and_the_client_usable() {
    let redis = RedisServer::start();
    let (a, b) = (client(&redis).await, client(&redis).await);
    for fenced in [true, false] {
        let name = format!("orders-{fenced}");
        redis.freeze();
        let err = a
            .lock(&name)
            .fenced(fenced)
            .lease(Duration::from_secs(10))
            .acquire()
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Redis, "{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        redis.thaw();
        let t = Instant::now();
        let g = b
            .lock(&name)
            .acquire_timeout(Duration::from_secs(8))
            .await
            .unwrap();
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "fenced={fenced}: free after {:?}",
            t.elapsed()
        );
        g.release().await.unwrap();
        // Let the breaker close before the next round.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // A short redis_timeout and a lease lost while Redis hangs.
    let quick = Client::builder(redis.url())
        .redis_timeout(Duration::from_millis(100))
        .connect()
        .await
        .unwrap();
    let guard = quick
        .lock("w")
        .lease(Duration::from_millis(600))
        .acquire()
        .await
        .unwrap();
    let lost = guard.lost();
    redis.freeze();
    tokio::time::timeout(Duration::from_secs(2), lost)
        .await
        .expect("lost() within the lease");
    redis.thaw();
    drop(guard);
    // Calls fail fast through the breaker's cooldown, then work.
    let t = Instant::now();
    let g = loop {
        match quick.lock("x").try_acquire().await {
            Ok(g) => break g.expect("x is free"),
            Err(e) => assert!(
                t.elapsed() < Duration::from_millis(1500),
                "client unusable after {:?}: {e}",
                t.elapsed()
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    g.release().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_timeouts_out_of_range() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    for lease in [
        Duration::MAX,
        herdcache::MAX_LEASE + Duration::from_millis(1),
        Duration::from_secs(18_446_744_073_709_552),
    ] {
        let err = client.lock("l").lease(lease).acquire().await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{lease:?}: {err}");
    }
    let mut conn = redis.connection();
    let exists: bool = redis::cmd("EXISTS")
        .arg("hc:lk:{l}:f")
        .query(&mut conn)
        .unwrap();
    assert!(!exists, "nothing sent");
    let g = client
        .lock("l")
        .lease(herdcache::MAX_LEASE)
        .acquire_timeout(Duration::MAX)
        .await
        .unwrap();
    let pttl: i64 = redis::cmd("PTTL")
        .arg("hc:lk:{l}")
        .query(&mut conn)
        .unwrap();
    assert!(pttl > 364 * 24 * 3600 * 1000, "{pttl}");
    g.release().await.unwrap();
}
