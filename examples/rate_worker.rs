//! The rate limiter tests' worker process: one of several processes that
//! hammer one limiter key, recording each admission by the Redis server's
//! clock so that a test can judge all of them with one clock.
//!
//! ```text
//! rate_worker URL NAME N PER_MS BURST RUN_MS
//! ```
//!
//! Connects a herdcache `Client` to `URL`, counts itself in `ready`, waits
//! for the key `go` (at most 30 s), then for `RUN_MS` checks key `k` of the
//! limiter `NAME` (rate `N` per `PER_MS` ms, burst `BURST`) at cost 1. Around
//! each check it reads Redis's `TIME` (µs) on a connection of its own, so
//! the admission happened between the two stamps; each admission is
//! pushed as `"<before> <after>"` to the list `admitted:NAME`. A limited
//! check sleeps its `retry_after` (at most 50 ms) and tries again, as a
//! client would; every check is counted in `checks:NAME`, every error
//! pushed to `errors:NAME`. At most 100,000 checks per run.

use herdcache::{Client, RateDecision};
use redis::aio::MultiplexedConnection;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| -> &str { args.get(i).map(String::as_str).expect("missing argument") };
    let url = arg(0).to_owned();
    let name = arg(1).to_owned();
    let n: u64 = arg(2).parse().expect("N");
    let per = Duration::from_millis(arg(3).parse().expect("PER_MS"));
    let burst: u64 = arg(4).parse().expect("BURST");
    let run = Duration::from_millis(arg(5).parse().expect("RUN_MS"));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(work(url, name, n, per, burst, run));
}

async fn time_us(log: &mut MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(log).await.expect("TIME");
    s * 1_000_000 + us
}

async fn work(url: String, name: String, n: u64, per: Duration, burst: u64, run: Duration) {
    let client = Client::connect(&url).await.expect("connect");
    let mut log = redis::Client::open(url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("log connection");
    let limiter = client.rate_limiter(&name).rate(n, per).burst(burst);
    let _: i64 = redis::cmd("INCR")
        .arg("ready")
        .query_async(&mut log)
        .await
        .expect("ready");
    let waiting = Instant::now();
    loop {
        let go: bool = redis::cmd("EXISTS")
            .arg("go")
            .query_async(&mut log)
            .await
            .expect("go");
        if go {
            break;
        }
        assert!(waiting.elapsed() < Duration::from_secs(30), "no go in 30 s");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let started = Instant::now();
    let mut checks = 0u64;
    while started.elapsed() < run && checks < 100_000 {
        checks += 1;
        let before = time_us(&mut log).await;
        let decision = limiter.check("k", 1).await;
        let after = time_us(&mut log).await;
        match decision {
            Ok(RateDecision::Allowed { .. }) => {
                let _: i64 = redis::cmd("RPUSH")
                    .arg(format!("admitted:{name}"))
                    .arg(format!("{before} {after}"))
                    .query_async(&mut log)
                    .await
                    .expect("log admission");
            }
            Ok(RateDecision::Limited { retry_after, .. }) => {
                tokio::time::sleep(retry_after.min(Duration::from_millis(50))).await;
            }
            Ok(other) => panic!("unknown decision {other:?}"),
            Err(e) => {
                let _: i64 = redis::cmd("RPUSH")
                    .arg(format!("errors:{name}"))
                    .arg(e.to_string())
                    .query_async(&mut log)
                    .await
                    .expect("log error");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let _: i64 = redis::cmd("INCRBY")
        .arg(format!("checks:{name}"))
        .arg(checks)
        .query_async(&mut log)
        .await
        .expect("log checks");
}
