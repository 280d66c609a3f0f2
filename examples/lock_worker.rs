//! The lock tests' worker process. It takes herdcache locks on one Redis and
//! records what it did on another (the *log* Redis), by that Redis's clock,
//! so that a test can judge the history of many processes with one clock.
//!
//! ```text
//! lock_worker exclusion LOCK_URL LOG_URL TASKS NAMES LEASE_MS
//! lock_worker handoff   LOCK_URL LOG_URL TASKS HOLD_US
//! lock_worker hold      LOCK_URL LOG_URL NAME LEASE_MS
//! ```
//!
//! - `exclusion`: TASKS tasks loop over NAMES lock names (`m0`, `m1`, …):
//!   acquire, then one to four steps of (pause, write to the fenced
//!   resource with the fencing token, check the guard). Every write is
//!   logged as `name token t accepted held` in the list `writes`, where
//!   `t` is the log Redis's `TIME` taken inside the fenced write, and
//!   `held` says whether the guard still held its lease *after* the write
//!   returned (then it held it at `t`: a lease never comes back once its
//!   validity has passed). The fenced resource is a script that accepts a
//!   token only above the highest one it has seen for the name. The test
//!   stops and resumes (`SIGSTOP`/`SIGCONT`) and kills these processes.
//! - `handoff`: TASKS tasks contend for one lock `h`; each holder stamps
//!   the log Redis's `TIME` just before releasing, and the next holder
//!   stamps it just after its acquire returns; the differences go to the
//!   list `handoffs` (µs).
//! - `hold`: takes NAME, logs `held <token>` to the list `events`, and
//!   holds it until killed.
//!
//! Every loop stops when the key `stop` exists on the log Redis, and within
//! 120 s regardless.

#[path = "../tests/support/mod.rs"]
mod support;

use herdcache::Client;
use redis::aio::MultiplexedConnection;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

const MAX_RUN: Duration = Duration::from_secs(120);

/// The fenced resource: keeps the highest token written per name and
/// refuses any other. Returns `{accepted, TIME in µs}`.
static FENCED_WRITE: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local max = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if tonumber(ARGV[2]) > max then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  return {1, now}
end
return {0, now}
",
    )
});

/// Stamps the moment before a release.
static STAMP_RELEASING: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
redis.call('SET', 'released_at', string.format('%d', tonumber(t[1]) * 1000000 + tonumber(t[2])))
return 1
",
    )
});

/// Logs the time since the last release stamp (if any) to `handoffs`.
static STAMP_ACQUIRED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = redis.call('GET', 'released_at')
if last then redis.call('RPUSH', 'handoffs', string.format('%d', now - tonumber(last))) end
return 1
",
    )
});

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).expect("missing argument") };
    match arg(0) {
        "exclusion" => rt.block_on(exclusion(
            arg(1),
            arg(2),
            arg(3).parse().expect("tasks"),
            arg(4).parse().expect("names"),
            Duration::from_millis(arg(5).parse().expect("lease ms")),
        )),
        "handoff" => rt.block_on(handoff(
            arg(1),
            arg(2),
            arg(3).parse().expect("tasks"),
            Duration::from_micros(arg(4).parse().expect("hold µs")),
        )),
        "hold" => rt.block_on(hold(
            arg(1),
            arg(2),
            arg(3),
            Duration::from_millis(arg(4).parse().expect("lease ms")),
        )),
        other => panic!("unknown mode {other:?}"),
    }
}

async fn log_conn(url: &str) -> MultiplexedConnection {
    support::bookkeeping(url).await
}

async fn stopped(log: &mut MultiplexedConnection, started: Instant) -> bool {
    let stop: bool = redis::cmd("EXISTS")
        .arg("stop")
        .query_async(log)
        .await
        .unwrap_or(true);
    stop || started.elapsed() > MAX_RUN
}

async fn exclusion(lock_url: &str, log_url: &str, tasks: usize, names: usize, lease: Duration) {
    let client = Client::connect(lock_url).await.expect("connect");
    let log = log_conn(log_url).await;
    let started = Instant::now();
    let mut all = Vec::new();
    for _ in 0..tasks {
        let (client, mut log) = (client.clone(), log.clone());
        all.push(tokio::spawn(async move {
            while !stopped(&mut log, started).await {
                let name = format!("m{}", fastrand::usize(..names));
                let lock = client.lock(&name).lease(lease);
                let Ok(guard) = lock.acquire_timeout(Duration::from_secs(5)).await else {
                    continue;
                };
                let token = guard.fencing_token();
                let _: redis::RedisResult<i64> = redis::cmd("INCR")
                    .arg("acquired")
                    .query_async(&mut log)
                    .await;
                for _ in 0..fastrand::u32(1..=4) {
                    tokio::time::sleep(Duration::from_micros(fastrand::u64(0..2000))).await;
                    let (accepted, t): (i64, u64) = FENCED_WRITE
                        .key("fenced")
                        .arg(&name)
                        .arg(token)
                        .invoke_async(&mut log)
                        .await
                        .expect("fenced write");
                    let held = guard.is_held();
                    let entry = format!("{name} {token} {t} {accepted} {}", held as u8);
                    let _: redis::RedisResult<i64> = redis::cmd("RPUSH")
                        .arg("writes")
                        .arg(entry)
                        .query_async(&mut log)
                        .await;
                    if !held {
                        break;
                    }
                }
                let _ = guard.release().await;
            }
        }));
    }
    for t in all {
        t.await.expect("task");
    }
}

async fn handoff(lock_url: &str, log_url: &str, tasks: usize, hold: Duration) {
    let client = Client::connect(lock_url).await.expect("connect");
    let log = log_conn(log_url).await;
    let started = Instant::now();
    let mut all = Vec::new();
    for _ in 0..tasks {
        let (client, mut log) = (client.clone(), log.clone());
        all.push(tokio::spawn(async move {
            while !stopped(&mut log, started).await {
                let Ok(guard) = client
                    .lock("h")
                    .acquire_timeout(Duration::from_secs(5))
                    .await
                else {
                    continue;
                };
                // One round trip each side: the stamps are taken inside
                // the log Redis, so the figure is release + notice +
                // acquire plus about one log round trip.
                let _: i64 = STAMP_ACQUIRED
                    .prepare_invoke()
                    .invoke_async(&mut log)
                    .await
                    .expect("stamp acquired");
                tokio::time::sleep(hold).await;
                let _: i64 = STAMP_RELEASING
                    .prepare_invoke()
                    .invoke_async(&mut log)
                    .await
                    .expect("stamp releasing");
                let _ = guard.release().await;
            }
        }));
    }
    for t in all {
        t.await.expect("task");
    }
}

async fn hold(lock_url: &str, log_url: &str, name: &str, lease: Duration) {
    let client = Client::connect(lock_url).await.expect("connect");
    let mut log = log_conn(log_url).await;
    let guard = client
        .lock(name)
        .lease(lease)
        .acquire()
        .await
        .expect("acquire");
    let _: i64 = redis::cmd("RPUSH")
        .arg("events")
        .arg(format!("held {}", guard.fencing_token()))
        .query_async(&mut log)
        .await
        .expect("RPUSH");
    tokio::time::sleep(MAX_RUN).await;
    drop(guard);
}
