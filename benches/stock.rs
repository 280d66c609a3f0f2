//! `Stock::reserve` against the issue's baseline: a raw `EVALSHA` of a
//! minimal check-and-`DECR` script on one multiplexed connection, 64 tasks,
//! in interleaved rounds of the same run (these machines are noisy: the
//! figure is the median of the per-round ratios).
//!
//! | side | what one operation does |
//! |---|---|
//! | `raw_check_decr` | `EVALSHA` of `if GET n >= 1 then DECR n`: no idempotency, no per-user limit, no order message |
//! | `raw_reserve_script` | `EVALSHA` of herdcache's own reserve script on a raw connection, one order per call, with the same keys and arguments (`herdcache::__RESERVE_LUA`): what Redis alone costs for the guarantees when each reservation is its own call |
//! | `herdcache_reserve` | `stock.reserve(order, user, 1)`: the reserve script (answer lookup, per-user count, check, `DECRBY`, `XADD` of the order, answer stored) through the client's connection, breaker and bounds, and the answer parsed; the 64 tasks' concurrent calls go to Redis in batches (group commit, `src/stock/batch.rs`), so one script call carries many orders |
//!
//! The stock is large enough never to sell out during the run: every
//! operation takes the reserving path. A second set of rounds then runs
//! both sides on a stock of 0 (`sold out …` lines): the minimal script's
//! `GET` and compare against a reserve that still records its answer for
//! the order id (a retry must get it), the moment a flash sale spends most
//! of its calls in. Run:
//! `cargo bench --bench stock` (`-- --rounds 9 --secs 2` for longer).

#[path = "../tests/support/mod.rs"]
mod support;

use herdcache::{Client, Reservation};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const TASKS: u64 = 64;

const MINIMAL: &str = r"
local n = tonumber(redis.call('GET', KEYS[1]) or '0')
if n >= tonumber(ARGV[1]) then return redis.call('DECRBY', KEYS[1], ARGV[1]) end
return -1
";

/// Runs `op(task, i)` in `TASKS` tasks for `secs`; returns operations per
/// second and the sorted latencies in µs.
async fn run<F, Fut>(secs: Duration, op: F) -> (f64, Vec<u64>)
where
    F: Fn(u64, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (op, done) = (op.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0;
            while started.elapsed() < secs {
                let s = Instant::now();
                op(t, i).await;
                lat.push(s.elapsed().as_micros() as u64);
                i += 1;
            }
            done.fetch_add(i, Ordering::Relaxed);
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    (done.load(Ordering::Relaxed) as f64 / elapsed, lat)
}

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; a filter that names another bench
    // would still run this one, which is fine: it is one figure.
    let rounds = arg("--rounds", 7);
    let secs = Duration::from_secs(arg("--secs", 1));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = support::RedisServer::start();
    // The raw side has a server of its own, so that each server's
    // `INFO commandstats` tells what one call costs Redis itself.
    let raw_redis = support::RedisServer::start();
    rt.block_on(async {
        let client = Client::builder(redis.url())
            .redis_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        let stock = client.stock("bench");
        stock.set_available(1 << 50).await.unwrap();
        let conn = redis::Client::open(raw_redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let script = redis::Script::new(MINIMAL);
        let same = redis::Script::new(herdcache::__RESERVE_LUA);
        let () = redis::cmd("SET")
            .arg("hc:st:{raw}:n")
            .arg(1u64 << 50)
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        let () = redis::cmd("SET")
            .arg("raw-stock")
            .arg(1u64 << 50)
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        let (mut ratios, mut raw_all, mut herd_all) = (Vec::new(), Vec::new(), Vec::new());
        let (mut same_ratios, mut same_all) = (Vec::new(), Vec::new());
        let (mut raw_p99, mut herd_p99, mut raw_p50, mut herd_p50) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let raw = {
                let (conn, script) = (conn.clone(), script.clone());
                move |_t: u64, _i: u64| {
                    let (mut conn, script) = (conn.clone(), script.clone());
                    async move {
                        let n: i64 = script
                            .key("raw-stock")
                            .arg(1)
                            .invoke_async(&mut conn)
                            .await
                            .unwrap();
                        assert!(n >= 0);
                    }
                }
            };
            let same_script = {
                let (conn, same) = (conn.clone(), same.clone());
                move |t: u64, i: u64| {
                    let (mut conn, same) = (conn.clone(), same.clone());
                    async move {
                        let answer: Vec<String> = same
                            .key("hc:st:{raw}:n")
                            .key("hc:st:{raw}:a")
                            .key("hc:st:{raw}:u")
                            .key("hc:st:{raw}:o")
                            .arg("raw")
                            .arg(format!("o{round}-{t}-{i}"))
                            .arg("user")
                            .arg(1)
                            .arg(0)
                            .invoke_async(&mut conn)
                            .await
                            .unwrap();
                        assert!(answer[0].starts_with("R|"));
                    }
                }
            };
            let herd = {
                let stock = stock.clone();
                move |t: u64, i: u64| {
                    let stock = stock.clone();
                    async move {
                        let order = format!("o{round}-{t}-{i}");
                        let r = stock.reserve(&order, "user", 1).await.unwrap();
                        assert!(matches!(r, Reservation::Reserved { .. }));
                    }
                }
            };
            // Alternate which side goes first.
            let (r, s, h) = if round % 2 == 0 {
                let r = run(secs, raw).await;
                let s = run(secs, same_script).await;
                (r, s, run(secs, herd).await)
            } else {
                let h = run(secs, herd).await;
                let s = run(secs, same_script).await;
                (run(secs, raw).await, s, h)
            };
            same_ratios.push(h.0 / s.0);
            same_all.push(s.0);
            println!(
                "round {round}: same script raw {:.0}/s p50 {} p99 {} µs",
                s.0,
                support::percentile(&s.1, 0.5),
                support::percentile(&s.1, 0.99)
            );
            println!(
                "round {round}: raw {:.0}/s p50 {} p99 {} µs | reserve {:.0}/s p50 {} p99 {} µs | ratio {:.3}",
                r.0,
                support::percentile(&r.1, 0.5),
                support::percentile(&r.1, 0.99),
                h.0,
                support::percentile(&h.1, 0.5),
                support::percentile(&h.1, 0.99),
                h.0 / r.0
            );
            ratios.push(h.0 / r.0);
            raw_all.push(r.0);
            herd_all.push(h.0);
            raw_p50.push(support::percentile(&r.1, 0.5) as f64);
            herd_p50.push(support::percentile(&h.1, 0.5) as f64);
            raw_p99.push(support::percentile(&r.1, 0.99) as f64);
            herd_p99.push(support::percentile(&h.1, 0.99) as f64);
        }
        println!(
            "median: the same reserve script sent raw {:.0}/s; reserve against it {:.3} (the client's own cost)",
            median(&mut same_all),
            median(&mut same_ratios)
        );
        let usec = |server: &support::RedisServer| {
            let info: String = redis::cmd("INFO").arg("commandstats").query(&mut server.connection()).unwrap();
            info.lines()
                .find(|l| l.starts_with("cmdstat_evalsha:"))
                .and_then(|l| l.split(',').find(|f| f.starts_with("usec_per_call=")))
                .map(|f| f.trim_start_matches("usec_per_call=").to_owned())
                .unwrap_or_default()
        };
        println!(
            "Redis CPU per call (INFO commandstats, usec_per_call of EVALSHA): raw server (minimal and same script mixed) {} µs, reserve {} µs",
            usec(&raw_redis),
            usec(&redis)
        );
        // The sale's usual moment: sold out. Every call of both sides is
        // answered "none left": the minimal script's `GET` and compare,
        // against a reserve that still stores its answer for the order id
        // (a retry must get it) in a batch.
        let zero = client.stock("bench-zero");
        zero.set_available(0).await.unwrap();
        let () = redis::cmd("SET")
            .arg("raw-zero")
            .arg(0)
            .query_async(&mut conn.clone())
            .await
            .unwrap();
        let (mut sold_out_ratios, mut raw_zero, mut herd_zero) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let raw = {
                let (conn, script) = (conn.clone(), script.clone());
                move |_t: u64, _i: u64| {
                    let (mut conn, script) = (conn.clone(), script.clone());
                    async move {
                        let n: i64 = script
                            .key("raw-zero")
                            .arg(1)
                            .invoke_async(&mut conn)
                            .await
                            .unwrap();
                        assert_eq!(n, -1);
                    }
                }
            };
            let herd = {
                let zero = zero.clone();
                move |t: u64, i: u64| {
                    let zero = zero.clone();
                    async move {
                        let order = format!("z{round}-{t}-{i}");
                        let r = zero.reserve(&order, "user", 1).await.unwrap();
                        assert_eq!(r, Reservation::SoldOut);
                    }
                }
            };
            let (r, h) = if round % 2 == 0 {
                let r = run(secs, raw).await;
                (r, run(secs, herd).await)
            } else {
                let h = run(secs, herd).await;
                (run(secs, raw).await, h)
            };
            println!(
                "sold out, round {round}: raw {:.0}/s | reserve {:.0}/s | ratio {:.3}",
                r.0,
                h.0,
                h.0 / r.0
            );
            sold_out_ratios.push(h.0 / r.0);
            raw_zero.push(r.0);
            herd_zero.push(h.0);
        }
        println!(
            "sold out, median over {rounds} rounds, {TASKS} tasks: raw {:.0}/s, reserve {:.0}/s, throughput ratio {:.3}",
            median(&mut raw_zero),
            median(&mut herd_zero),
            median(&mut sold_out_ratios)
        );
        println!(
            "median over {rounds} rounds, {TASKS} tasks: raw {:.0}/s, reserve {:.0}/s, throughput ratio {:.3}; \
             p50 {:.0} vs {:.0} µs, p99 {:.0} vs {:.0} µs",
            median(&mut raw_all),
            median(&mut herd_all),
            median(&mut ratios),
            median(&mut raw_p50),
            median(&mut herd_p50),
            median(&mut raw_p99),
            median(&mut herd_p99),
        );
    });
}
