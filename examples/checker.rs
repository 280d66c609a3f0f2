//! One process of the randomized consistency checker (issue 4); the test
//! `tests/consistency.rs` starts four of them against one redis-server.
//!
//! The "database" is a versioned row per id: an integer under
//! `db:<prefix>:row:<id>`, outside the cache namespace, bumped with INCR.
//! Writers update a row, then `invalidate` it; readers read it through
//! `get_or_compute`, whose loader GETs the row. Every operation is recorded
//! with wall-clock microseconds (all processes share one machine clock), and
//! pushed to Redis at the end, so the test can judge the whole fleet's
//! history at once:
//!
//! ```text
//! <prefix>:reads   "row version start_us end_us pid"
//! <prefix>:writes  "row version incr_start_us incr_end_us inval_end_us pid"
//!                  (inval_end_us i64::MAX: the invalidate failed)
//! <prefix>:errors  error messages
//! <prefix>:stats:<pid>  hash of Stats counters
//! ```
//!
//! ```text
//! checker --redis URL --prefix P [--rows 16] [--readers 6] [--writers 2]
//!         [--ops 10000] [--seed 1] [--ttl-ms 2000] [--max-ms 30000]
//!         [--write-pause-us 4000]
//! ```

#[path = "common/mod.rs"]
mod common;

use common::{Opts, now_us};
use redis::AsyncCommands;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let o = Opts::parse(&args);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(o));
}

/// Few rows make many races; half the reads go to 3 hot rows so that hits,
/// loads and invalidations of the same row keep overlapping.
fn pick_row(rng: &mut fastrand::Rng, rows: u64) -> u64 {
    if rng.bool() {
        rng.u64(0..rows.min(3))
    } else {
        rng.u64(0..rows)
    }
}

async fn run(o: Opts) {
    let url = o.str("redis", "redis://127.0.0.1:6379/");
    let prefix = o.str("prefix", "ck");
    let rows = o.num("rows", 16).max(1);
    let readers = o.num("readers", 6);
    let writers = o.num("writers", 2);
    let ops = o.num("ops", 10_000);
    let write_pause = o.num("write-pause-us", 4_000).max(1);
    let seed = o.num("seed", 1);
    let ttl = Duration::from_millis(o.num("ttl-ms", 2_000));
    let max = Duration::from_millis(o.num("max-ms", 30_000));
    let pid = std::process::id();

    // Bookkeeping (and the checker's "database") on `--log`, by default
    // the cache's Redis: a separate plain Redis when the cache's is a
    // Cluster (`redis-cluster://…`).
    let log = o.str("log", &url);
    let client = redis::Client::open(log.as_str()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    // Default stale_for (0): a stale value is never served on purpose, so
    // any old version seen after an invalidate is a real defect.
    let cache = herdcache::Cache::<u64>::builder(format!("ck-{prefix}"))
        .redis_url(&url)
        .ttl(ttl)
        .build()
        .await
        .unwrap();

    // Start together: the test sets `<prefix>:go` once all are subscribed.
    let _: u64 = con.incr(format!("{prefix}:ready"), 1).await.unwrap();
    let wait_go = Instant::now();
    while con
        .get::<_, Option<u64>>(format!("{prefix}:go"))
        .await
        .unwrap()
        .is_none()
    {
        assert!(wait_go.elapsed() < max, "no go signal");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }

    // Tasks draw operations from one budget, so the process does exactly
    // `ops` of them whatever the mix turns out to be; `deadline` bounds it.
    let budget = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + max;
    let mut handles = Vec::new();
    for t in 0..readers + writers {
        let is_writer = t >= readers;
        let mut w = Worker {
            cache: cache.clone(),
            db: con.clone(),
            prefix: prefix.clone(),
            rng: fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003) ^ (t << 32)),
            pid,
            reads: Vec::new(),
            writes: Vec::new(),
            errors: Vec::new(),
        };
        let budget = budget.clone();
        let take =
            move || budget.fetch_add(1, Ordering::Relaxed) < ops && Instant::now() < deadline;
        handles.push(tokio::spawn(async move {
            while take() {
                let row = pick_row(&mut w.rng, rows);
                if !is_writer {
                    w.read(row).await;
                    tokio::time::sleep(Duration::from_micros(w.rng.u64(0..300))).await;
                    continue;
                }
                w.write(row).await;
                // Half the time the writer reads its row back 0-16 ms later,
                // as a service does after an update: its own process must
                // not serve the old version either, before or after the
                // 5 ms bound.
                if w.rng.bool() && take() {
                    tokio::time::sleep(Duration::from_micros(w.rng.u64(0..16_000))).await;
                    w.read(row).await;
                }
                // Writes are rarer than reads, as in the services this
                // models; a random pause keeps them so.
                tokio::time::sleep(Duration::from_micros(w.rng.u64(0..write_pause))).await;
            }
            (w.reads, w.writes, w.errors)
        }));
    }
    let (mut reads, mut writes, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    for h in handles {
        let (r, w, e) = h.await.unwrap();
        reads.extend(r);
        writes.extend(w);
        errors.extend(e);
    }

    let s = cache.stats();
    let counters = [
        ("l1_hits", s.l1_hits),
        ("l2_hits", s.l2_hits),
        ("misses", s.misses),
        ("coalesced", s.coalesced),
        ("loads", s.loads),
        ("lock_waits", s.lock_waits),
        ("notified_wakeups", s.notified_wakeups),
        ("lease_lost", s.lease_lost),
        ("background_refreshes", s.background_refreshes),
        ("remote_changes", s.remote_changes),
        ("remote_fills", s.remote_fills),
        ("redis_errors", s.redis_errors),
    ];
    let mut pipe = redis::pipe();
    for (name, list) in [("reads", &reads), ("writes", &writes), ("errors", &errors)] {
        if !list.is_empty() {
            pipe.rpush(format!("{prefix}:{name}"), list).ignore();
        }
    }
    pipe.hset_multiple(format!("{prefix}:stats:{pid}"), &counters)
        .ignore();
    let _: () = pipe.query_async(&mut con).await.unwrap();
    println!("pid {pid}: {s:?}");
}

/// One task's handles and records.
struct Worker {
    cache: herdcache::Cache<u64>,
    db: redis::aio::MultiplexedConnection,
    prefix: String,
    rng: fastrand::Rng,
    pid: u32,
    reads: Vec<String>,
    writes: Vec<String>,
    errors: Vec<String>,
}

impl Worker {
    /// Update the row (the commit is the INCR), then invalidate it.
    async fn write(&mut self, row: u64) {
        let incr_start = now_us();
        let version: u64 = self
            .db
            .incr(format!("db:{}:row:{row}", self.prefix), 1)
            .await
            .unwrap();
        let incr_end = now_us();
        match self.cache.invalidate(&row.to_string()).await {
            Ok(()) => self.writes.push(format!(
                "{row} {version} {incr_start} {incr_end} {} {}",
                now_us(),
                self.pid
            )),
            Err(e) => {
                // The update is committed all the same: recorded, with an
                // invalidate that never returned (no read is judged
                // against it), so the row's versions stay contiguous.
                self.writes.push(format!(
                    "{row} {version} {incr_start} {incr_end} {} {}",
                    i64::MAX,
                    self.pid
                ));
                self.errors.push(format!("invalidate {row}: {e}"));
            }
        }
    }

    /// Read the row through the cache; the loader reads the database.
    async fn read(&mut self, row: u64) {
        // A third of the loads stall 0-3 ms after reading the row: the
        // slow-loader race (read old row, row updated and invalidated,
        // loader fills) needs that window.
        let delay = if self.rng.u8(0..3) == 0 {
            Duration::from_micros(self.rng.u64(0..3_000))
        } else {
            Duration::ZERO
        };
        let (mut db, db_key) = (self.db.clone(), format!("db:{}:row:{row}", self.prefix));
        let loader = move || async move {
            let version: Option<u64> = db.get(&db_key).await?;
            tokio::time::sleep(delay).await;
            Ok::<_, redis::RedisError>(version.unwrap_or(0))
        };
        let start = now_us();
        let got = self.cache.get_or_compute(&row.to_string(), loader).await;
        let end = now_us();
        match got {
            Ok(version) => self
                .reads
                .push(format!("{row} {version} {start} {end} {}", self.pid)),
            Err(e) => self.errors.push(format!("read {row}: {e}")),
        }
    }
}
