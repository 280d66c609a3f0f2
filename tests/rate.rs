//! Counters and the rate limiter against real redis-server processes:
//! counts, fixed windows that reset and expire by Redis's clock, GCRA
//! bursts and retry times, the rate held across four OS processes judged
//! by one clock, bad input refused before anything is sent, Redis down and
//! back with the same client, and the latency of one `check`.

mod support;

use herdcache::{
    Client, ErrorKind, MAX_COUNTER_NAME_LEN, MAX_LIMITER_KEY_LEN, MAX_LIMITER_NAME_LEN,
    RateDecision,
};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::RedisServer;

/// Tests that measure time or load the machine run one at a time (the
/// machine may have two cores).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn client(redis: &RedisServer) -> Client {
    Client::connect(&redis.url()).await.expect("connect")
}

/// Redis's clock, in µs.
fn redis_us(con: &mut redis::Connection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query(con).unwrap();
    s * 1_000_000 + us
}

/// Sleeps until 5 ms into the next fixed window of `len_ms` by Redis's
/// clock; returns that window's id.
async fn next_window(con: &mut redis::Connection, len_ms: u64) -> u64 {
    let now_ms = redis_us(con) / 1000;
    let id = now_ms / len_ms + 1;
    tokio::time::sleep(Duration::from_millis(id * len_ms - now_ms + 5)).await;
    id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counter_incr_and_get_are_shared_and_atomic() {
    let redis = RedisServer::start();
    let (a, b) = (client(&redis).await, client(&redis).await);
    let sold = a.counter("sold:42");
    assert_eq!(sold.get().await.unwrap(), 0, "absent is 0");
    assert_eq!(sold.incr(5).await.unwrap(), 5);
    assert_eq!(sold.incr(-2).await.unwrap(), 3);
    assert_eq!(
        b.counter("sold:42").get().await.unwrap(),
        3,
        "another client"
    );
    assert_eq!(a.counter("sold:43").get().await.unwrap(), 0, "another name");

    // 8 tasks on two clients, 50 adds each: none lost.
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = if i % 2 == 0 { &a } else { &b }.counter("sold:42");
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                c.incr(1).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(sold.get().await.unwrap(), 403);

    // A plain counter is one integer with no expiry, at its own prefix.
    let mut con = redis.connection();
    let raw: i64 = redis::cmd("GET")
        .arg("hc:ct:{sold:42}")
        .query(&mut con)
        .unwrap();
    assert_eq!(raw, 403);
    let ttl: i64 = redis::cmd("PTTL")
        .arg("hc:ct:{sold:42}")
        .query(&mut con)
        .unwrap();
    assert_eq!(ttl, -1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_counter_resets_each_window_and_its_key_expires() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let mut con = redis.connection();
    let len = 200;
    let hits = client.counter("hits").window(Duration::from_millis(len));
    let key = "hc:ct:{hits}:w200";

    let id = next_window(&mut con, len).await;
    for i in 1..=5 {
        assert_eq!(hits.incr(1).await.unwrap(), i);
    }
    assert_eq!(hits.incr(10).await.unwrap(), 15);
    assert_eq!(hits.get().await.unwrap(), 15);
    let w: u64 = redis::cmd("HGET")
        .arg(key)
        .arg("w")
        .query(&mut con)
        .unwrap();
    assert_eq!(w, id, "the window id comes from Redis's clock");
    // Expires when its window ends, set by the add itself.
    let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
    assert!(pttl > 0 && pttl <= len as i64, "pttl {pttl}");
    let expires_at: i64 = redis::cmd("PEXPIRETIME").arg(key).query(&mut con).unwrap();
    assert_eq!(expires_at as u64, (id + 1) * len, "at the window's end");
    // The plain counter of the same name is another counter.
    assert_eq!(client.counter("hits").get().await.unwrap(), 0);

    // The next window starts from 0, and the old key is gone.
    next_window(&mut con, len).await;
    let exists: i64 = redis::cmd("EXISTS").arg(key).query(&mut con).unwrap();
    assert_eq!(exists, 0, "the key disappears with its window");
    assert_eq!(hits.get().await.unwrap(), 0);
    assert_eq!(hits.incr(2).await.unwrap(), 2);

    // A count left from an earlier window (its expiry removed, as if the
    // key were written some other way) is recognised and replaced, and the
    // add sets the expiry again.
    let _: i64 = redis::cmd("PERSIST").arg(key).query(&mut con).unwrap();
    next_window(&mut con, len).await;
    let exists: i64 = redis::cmd("EXISTS").arg(key).query(&mut con).unwrap();
    assert_eq!(exists, 1, "persisted, so still there");
    assert_eq!(
        hits.get().await.unwrap(),
        0,
        "an old window's count is not read"
    );
    assert_eq!(hits.incr(1).await.unwrap(), 1, "nor added to");
    let pttl: i64 = redis::cmd("PTTL").arg(key).query(&mut con).unwrap();
    assert!(pttl > 0 && pttl <= len as i64, "expiry set again: {pttl}");

    // Nothing is left once the window is over (EXISTS, not DBSIZE: DBSIZE
    // counts expired keys Redis has not reclaimed yet).
    tokio::time::sleep(Duration::from_millis(len + 20)).await;
    let exists: i64 = redis::cmd("EXISTS").arg(key).query(&mut con).unwrap();
    assert_eq!(exists, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_takes_a_burst_then_paces_and_idle_keys_vanish() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let mut con = redis.connection();
    // 10 per second (one every 100 ms), 3 at once.
    let limiter = client
        .rate_limiter("buy")
        .rate(10, Duration::from_secs(1))
        .burst(3);
    for left in [2, 1, 0] {
        assert_eq!(
            admitted(limiter.check("user:1", 1).await.unwrap()),
            Some(left)
        );
    }
    let RateDecision::Limited { retry_after, .. } = limiter.check("user:1", 1).await.unwrap()
    else {
        panic!("the burst is spent");
    };
    assert!(
        retry_after > Duration::from_millis(50) && retry_after <= Duration::from_millis(100),
        "retry_after {retry_after:?}"
    );
    // Another key has its own allowance; a peek (cost 0) takes nothing.
    assert_eq!(admitted(limiter.check("user:2", 0).await.unwrap()), Some(3));
    let exists: i64 = redis::cmd("EXISTS")
        .arg("hc:rl:{buy:user:2}")
        .query(&mut con)
        .unwrap();
    assert_eq!(exists, 0, "a peek writes nothing");
    assert_eq!(admitted(limiter.check("user:2", 3).await.unwrap()), Some(0));
    let err = limiter.check("user:2", 4).await.unwrap_err();
    assert_eq!(
        err.kind(),
        ErrorKind::Config,
        "a cost above the burst: {err}"
    );

    // After retry_after the same request fits.
    tokio::time::sleep(retry_after).await;
    assert!(limiter.check("user:1", 1).await.unwrap().is_allowed());
    assert!(!limiter.check("user:1", 1).await.unwrap().is_allowed());

    // The state is one number with an expiry at which it means nothing.
    let pttl: i64 = redis::cmd("PTTL")
        .arg("hc:rl:{buy:user:1}")
        .query(&mut con)
        .unwrap();
    assert!(pttl > 200 && pttl <= 300, "pttl {pttl}");
    tokio::time::sleep(Duration::from_millis(pttl as u64 + 20)).await;
    let left: i64 = redis::cmd("EXISTS")
        .arg("hc:rl:{buy:user:1}")
        .arg("hc:rl:{buy:user:2}")
        .query(&mut con)
        .unwrap();
    assert_eq!(left, 0, "idle keys vanish");
    // And an idle key has its whole burst again.
    assert_eq!(admitted(limiter.check("user:1", 1).await.unwrap()), Some(2));
}

/// `Some(remaining)` if admitted, `None` if limited.
fn admitted(d: RateDecision) -> Option<u64> {
    match d {
        RateDecision::Allowed { remaining, .. } => Some(remaining),
        _ => None,
    }
}

/// One run of 4 worker processes on limiter `name`; returns each
/// admission as `(before, after)` by Redis's clock (µs), sorted.
fn run_workers(
    redis: &RedisServer,
    name: &str,
    n: u64,
    per_ms: u64,
    burst: u64,
    run_ms: u64,
) -> Vec<(u64, u64)> {
    const PROCS: usize = 4;
    let exe = support::rate_worker_bin();
    let mut con = redis.connection();
    let _: i64 = redis::cmd("DEL")
        .arg("ready")
        .arg("go")
        .query(&mut con)
        .unwrap();
    let mut children: Vec<Child> = (0..PROCS)
        .map(|_| {
            Command::new(&exe)
                .args([redis.url(), name.to_owned()])
                .args([n, per_ms, burst, run_ms].map(|v| v.to_string()))
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn rate_worker")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready: Option<usize> = redis::cmd("GET").arg("ready").query(&mut con).unwrap();
        if ready == Some(PROCS) {
            break;
        }
        assert!(Instant::now() < deadline, "workers not ready after 30 s");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _: () = redis::cmd("SET").arg("go").arg(1).query(&mut con).unwrap();
    let deadline = Instant::now() + Duration::from_millis(run_ms) + Duration::from_secs(30);
    for child in &mut children {
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                assert!(status.success(), "worker failed: {status}");
                break;
            }
            if Instant::now() > deadline {
                for c in &mut children {
                    let _ = c.kill();
                }
                panic!("workers still running 30 s after their run");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let errors: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("errors:{name}"))
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap();
    assert!(errors.is_empty(), "worker errors: {errors:?}");
    let raw: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("admitted:{name}"))
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap();
    let mut admitted: Vec<(u64, u64)> = raw
        .iter()
        .map(|s| {
            let (b, a) = s.split_once(' ').expect("before after");
            (b.parse().unwrap(), a.parse().unwrap())
        })
        .collect();
    admitted.sort_unstable();
    admitted
}

/// The most admissions certainly inside one interval of `per_us`: an
/// admission happened between its two stamps, so one whose stamps both lie
/// inside an interval was admitted inside it. Returns the maximum over
/// every interval starting at a stamp (sliding) and over the intervals
/// aligned to the epoch (per period).
fn most_in_a_period(admitted: &[(u64, u64)], per_us: u64) -> (usize, usize) {
    let sliding = admitted
        .iter()
        .enumerate()
        .map(|(i, &(start, _))| {
            admitted[i..]
                .iter()
                .filter(|&&(b, a)| b >= start && a < start + per_us)
                .count()
        })
        .max()
        .unwrap_or(0);
    let mut buckets = std::collections::HashMap::<u64, usize>::new();
    for &(b, a) in admitted {
        if b / per_us == a / per_us {
            *buckets.entry(b / per_us).or_default() += 1;
        }
    }
    (sliding, buckets.into_values().max().unwrap_or(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limiter_holds_its_rate_across_four_processes() {
    let _heavy = HEAVY.lock().await;
    let redis = RedisServer::start();
    // 10 per 100 ms: one every 10 ms. Judged over every interval of
    // 100 ms: GCRA admits at most n + burst - 1 in one (k admissions in an
    // interval L need (k - 1) intervals of per/n to fit in L plus the
    // burst's tolerance); the brief's "+1 for the boundary" is allowed on
    // top.
    let (n, per_ms, run_ms) = (10u64, 100u64, 2_000u64);
    for burst in [1, n] {
        let name = format!("flood{burst}");
        let admitted =
            tokio::task::block_in_place(|| run_workers(&redis, &name, n, per_ms, burst, run_ms));
        let per_us = per_ms * 1000;
        let (sliding, aligned) = most_in_a_period(&admitted, per_us);
        let span = admitted.last().unwrap().1 - admitted.first().unwrap().0;
        let ideal = burst + span * n / per_us;
        let mut widths: Vec<u64> = admitted.iter().map(|(b, a)| a - b).collect();
        widths.sort_unstable();
        println!(
            "burst {burst}: {} admitted by 4 processes in {:.2} s (ideal {ideal}); most in one \
             {per_ms} ms interval: {sliding} sliding, {aligned} aligned (bound {}); admission \
             stamp width p50 {} µs",
            admitted.len(),
            span as f64 / 1e6,
            n + burst - 1,
            widths[widths.len() / 2]
        );
        let bound = (n + burst - 1 + 1) as usize;
        assert!(sliding <= bound, "{sliding} in one interval, bound {bound}");
        assert!(aligned <= bound, "{aligned} in one period, bound {bound}");
        assert!(
            admitted.len() as u64 <= ideal + 1,
            "{} admitted over the whole run, at most {ideal} fit",
            admitted.len()
        );
        assert!(
            admitted.len() as u64 >= ideal / 2,
            "{} admitted of {ideal}: the limiter starves its clients",
            admitted.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_keys_and_settings_are_typed_errors_and_take_nothing() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let mut con = redis.connection();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut con)
        .unwrap();
    let kind = |r: Result<i64, herdcache::Error>| r.unwrap_err().kind();

    let long_counter = "c".repeat(MAX_COUNTER_NAME_LEN + 1);
    for bad in ["", "a{b", "a}b", &long_counter] {
        let c = client.counter(bad);
        assert_eq!(kind(c.incr(1).await), ErrorKind::InvalidKey, "{bad:?}");
        assert_eq!(kind(c.get().await), ErrorKind::InvalidKey, "{bad:?}");
        let w = c.window(Duration::from_secs(1));
        assert_eq!(kind(w.incr(1).await), ErrorKind::InvalidKey, "{bad:?}");
    }
    for window in [
        Duration::ZERO,
        Duration::from_micros(999),
        Duration::from_micros(1500),
        Duration::from_secs(u64::MAX),
    ] {
        let c = client.counter("ok").window(window);
        assert_eq!(kind(c.incr(1).await), ErrorKind::Config, "{window:?}");
        assert_eq!(kind(c.get().await), ErrorKind::Config, "{window:?}");
    }

    let good = |name: &str| client.rate_limiter(name).rate(5, Duration::from_secs(1));
    let check = |l: herdcache::RateLimiter, key: &'static str, cost: u64| async move {
        l.check(key, cost).await.unwrap_err().kind()
    };
    let long_name = "n".repeat(MAX_LIMITER_NAME_LEN + 1);
    for bad in ["", "a{b", "a}b", "a:b", &long_name] {
        assert_eq!(
            check(good(bad), "k", 1).await,
            ErrorKind::InvalidKey,
            "{bad:?}"
        );
    }
    let long_key: &'static str = "k".repeat(MAX_LIMITER_KEY_LEN + 1).leak();
    for bad in ["", "a{b", "a}b", long_key] {
        assert_eq!(
            check(good("buy"), bad, 1).await,
            ErrorKind::InvalidKey,
            "{bad:?}"
        );
    }
    let sec = Duration::from_secs(1);
    for (limiter, what) in [
        (client.rate_limiter("buy"), "no rate"),
        (client.rate_limiter("buy").rate(0, sec), "n of 0"),
        (
            client.rate_limiter("buy").rate(5, Duration::ZERO),
            "per of 0",
        ),
        (good("buy").burst(0), "burst 0"),
        (
            client.rate_limiter("buy").rate(10_000_000, sec),
            "over 2 per µs",
        ),
        (
            client
                .rate_limiter("buy")
                .rate(1, Duration::from_secs(86_400 * 365))
                .burst(100),
            "a tolerance of 100 years",
        ),
    ] {
        assert_eq!(check(limiter, "k", 1).await, ErrorKind::Config, "{what}");
    }
    assert_eq!(
        check(good("buy"), "k", 6).await,
        ErrorKind::Config,
        "cost above burst"
    );
    assert_eq!(check(good("buy").burst(2), "k", 3).await, ErrorKind::Config);

    // Nothing was written, and nothing of ours was even sent.
    let keys: i64 = redis::cmd("DBSIZE").query(&mut con).unwrap();
    assert_eq!(keys, 0);
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut con)
        .unwrap();
    for cmd in ["evalsha", "eval:", "incrby", "cmdstat_get:", "cmdstat_set:"] {
        assert!(!stats.contains(cmd), "{cmd} was sent:\n{stats}");
    }
    // The same client and names work with good input.
    assert!(good("buy").check("k", 5).await.unwrap().is_allowed());
    assert_eq!(client.counter("ok").incr(1).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_a_typed_error_and_the_same_client_works_after_restart() {
    let mut redis = RedisServer::start();
    let client = client(&redis).await;
    let plain = client.counter("sold");
    let windowed = client.counter("orders").window(Duration::from_secs(1));
    let limiter = client.rate_limiter("buy").rate(100, Duration::from_secs(1));
    assert_eq!(plain.incr(1).await.unwrap(), 1);
    assert_eq!(windowed.incr(1).await.unwrap(), 1);
    assert!(limiter.check("u", 1).await.unwrap().is_allowed());

    redis.kill();
    let t = Instant::now();
    assert_eq!(plain.incr(1).await.unwrap_err().kind(), ErrorKind::Redis);
    assert_eq!(plain.get().await.unwrap_err().kind(), ErrorKind::Redis);
    assert_eq!(windowed.incr(1).await.unwrap_err().kind(), ErrorKind::Redis);
    assert_eq!(windowed.get().await.unwrap_err().kind(), ErrorKind::Redis);
    let err = limiter.check("u", 1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Redis, "{err}");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "failed fast: {:?}",
        t.elapsed()
    );

    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match plain.incr(1).await {
            // A Redis without persistence restarts empty.
            Ok(n) => {
                assert_eq!(n, 1);
                break;
            }
            Err(e) if Instant::now() < deadline => {
                assert_eq!(e.kind(), ErrorKind::Redis);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("not back 5 s after the restart: {e}"),
        }
    }
    // The scripts are loaded again into the new Redis.
    assert_eq!(windowed.incr(1).await.unwrap(), 1);
    assert_eq!(windowed.get().await.unwrap(), 1);
    assert!(limiter.check("u", 1).await.unwrap().is_allowed());
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

/// Not an assertion: prints the latency of one `check` (run with
/// `cargo test --release --test rate -- --nocapture`), next to a plain
/// `PING` on a redis-rs connection to the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_latency() {
    const CALLS: usize = 2_000;
    let _heavy = HEAVY.lock().await;
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let mut plain = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    // Admits every call (one per µs, a burst of a million): each pays the
    // write. The limited path is measured on a spent key.
    let open = client
        .rate_limiter("lat")
        .rate(1_000_000, Duration::from_secs(1));
    let shut = client
        .rate_limiter("shut")
        .rate(1, Duration::from_secs(3600))
        .burst(1);
    assert!(shut.check("k", 1).await.unwrap().is_allowed());
    let mut time = async |what: &str| -> Vec<u64> {
        let mut lat = Vec::with_capacity(CALLS);
        for i in 0..CALLS + 200 {
            let t = Instant::now();
            match what {
                "allowed" => assert!(open.check("k", 1).await.unwrap().is_allowed()),
                "limited" => assert!(!shut.check("k", 1).await.unwrap().is_allowed()),
                _ => {
                    let _: String = redis::cmd("PING").query_async(&mut plain).await.unwrap();
                }
            }
            if i >= 200 {
                lat.push(t.elapsed().as_nanos() as u64);
            }
        }
        lat.sort_unstable();
        lat
    };
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    for what in ["allowed", "limited", "PING"] {
        let lat = time(what).await;
        println!(
            "{profile}: {what:>7} p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs over {CALLS} sequential calls",
            percentile(&lat, 0.5) as f64 / 1e3,
            percentile(&lat, 0.9) as f64 / 1e3,
            percentile(&lat, 0.99) as f64 / 1e3,
        );
    }
}
