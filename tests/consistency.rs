//! The randomized consistency checker of issue 4: four checker processes
//! (`examples/checker.rs`) read and write 16 versioned rows through one
//! namespace on a real redis-server, and the whole fleet's history is then
//! judged here.
//!
//! The rule: a read of row `k` that starts at `s` must not see a version
//! older than any version of `k` whose `invalidate` returned at or before
//! `s - bound`. `bound` is the propagation allowance for other processes'
//! L1 copies: 0, 1, 5 and 10 ms are reported and 10 ms is asserted. In the
//! process that ran the invalidate there is no allowance: bound 0 is
//! asserted there (read-your-invalidations).
//!
//! Why 10 ms and not 5 for other processes: the issue's 5 ms is a p99 target
//! for propagation, and the bound here is a maximum. On this 2-core machine,
//! with four debug-build processes and Redis sharing it, a stale read past
//! 5 ms shows up in about 1 run in 10 (5.7 ms the worst seen). Each one was
//! an L1 hit at the end of a 7–24 ms stall of that process's runtime while
//! the change notice had already reached its socket 0.1–0.6 ms after the
//! invalidate (measured with a bus tap on its own thread). That is the
//! process not being scheduled, not a notice lost or misordered.
//!
//! ```text
//! cargo test --test consistency -- --nocapture
//! CHECKER_SEED=42 cargo test --test consistency -- --nocapture
//! ```

mod support;

use herdcache::Cache;
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{RedisCluster, RedisServer, checker_bin, now_ms};

const PROCS: usize = 4;
const OPS_PER_PROC: u64 = 10_000;
const ROWS: u64 = 16;
/// The bounds reported, in µs; the last one is asserted.
const BOUNDS_US: [i64; 4] = [0, 1_000, 5_000, 10_000];

#[derive(Debug, Clone, Copy)]
struct Read {
    row: u64,
    version: u64,
    start: i64,
    end: i64,
    pid: u32,
}

#[derive(Debug, Clone, Copy)]
struct Write {
    row: u64,
    version: u64,
    incr_start: i64,
    incr_end: i64,
    inval_end: i64,
    pid: u32,
}

/// A read that saw an older version after an invalidate had returned.
#[derive(Debug, Clone, Copy)]
struct Stale {
    read: Read,
    /// The newer write whose invalidate returned first, `lag` µs before the
    /// read started.
    write: Write,
    lag: i64,
}

#[derive(Debug, Default)]
struct Verdict {
    /// Per bound of `BOUNDS_US`: reads stale beyond it.
    violations: [usize; BOUNDS_US.len()],
    /// Reads that started after some newer version's invalidate returned,
    /// worst first.
    stale: Vec<Stale>,
    /// Reads that saw a version whose INCR had not even started by the time
    /// the read ended, or that was never written.
    future: Vec<Read>,
    /// Reads that saw a version older than the database held when they
    /// started (expected: between an update and its invalidate).
    older_than_db: usize,
    /// Reads that overlapped an update+invalidate of the same row.
    raced: usize,
}

fn parse<const N: usize>(line: &str) -> [i64; N] {
    let fields: Vec<i64> = line
        .split(' ')
        .map(|f| f.parse().unwrap_or_else(|_| panic!("bad record {line:?}")))
        .collect();
    fields
        .try_into()
        .unwrap_or_else(|_| panic!("bad record {line:?}"))
}

fn read_record(line: &str) -> Read {
    let [row, version, start, end, pid] = parse(line);
    Read {
        row: row as u64,
        version: version as u64,
        start,
        end,
        pid: pid as u32,
    }
}

fn write_record(line: &str) -> Write {
    let [row, version, incr_start, incr_end, inval_end, pid] = parse(line);
    Write {
        row: row as u64,
        version: version as u64,
        incr_start,
        incr_end,
        inval_end,
        pid: pid as u32,
    }
}

/// Judges a history. Versions of a row are 1, 2, … (INCR from nothing);
/// a read of a row never written sees 0.
fn judge(reads: &[Read], writes: &[Write]) -> Verdict {
    // Per row, writes indexed by version - 1.
    let mut by_row: HashMap<u64, Vec<Write>> = HashMap::new();
    for w in writes {
        by_row.entry(w.row).or_default().push(*w);
    }
    struct RowIndex {
        writes: Vec<Write>,
        /// `first_inval[i]`: the write of version > i whose invalidate
        /// returned first (the one a read of version i is stale against
        /// soonest).
        first_inval: Vec<Option<Write>>,
        /// (incr_end, highest version committed by then), by incr_end.
        committed: Vec<(i64, u64)>,
    }
    let index: HashMap<u64, RowIndex> = by_row
        .into_iter()
        .map(|(row, mut ws)| {
            ws.sort_by_key(|w| w.version);
            for (i, w) in ws.iter().enumerate() {
                assert_eq!(w.version, i as u64 + 1, "row {row}: an update is missing");
            }
            let mut first_inval: Vec<Option<Write>> = vec![None; ws.len() + 1];
            for i in (0..ws.len()).rev() {
                let w = ws[i];
                first_inval[i] = match first_inval[i + 1] {
                    Some(later) if later.inval_end <= w.inval_end => Some(later),
                    _ => Some(w),
                };
            }
            let mut committed: Vec<(i64, u64)> =
                ws.iter().map(|w| (w.incr_end, w.version)).collect();
            committed.sort_unstable();
            let mut highest = 0;
            for c in &mut committed {
                highest = highest.max(c.1);
                c.1 = highest;
            }
            let idx = RowIndex {
                writes: ws,
                first_inval,
                committed,
            };
            (row, idx)
        })
        .collect();

    let mut verdict = Verdict::default();
    for r in reads {
        let Some(ix) = index.get(&r.row) else {
            // Never written: only version 0 is possible.
            if r.version != 0 {
                verdict.future.push(*r);
            }
            continue;
        };
        if r.version > ix.writes.len() as u64
            || (r.version > 0 && ix.writes[r.version as usize - 1].incr_start > r.end)
        {
            verdict.future.push(*r);
            continue;
        }
        if let Some(w) = ix.first_inval[r.version as usize] {
            let lag = r.start - w.inval_end;
            for (count, bound) in verdict.violations.iter_mut().zip(BOUNDS_US) {
                *count += usize::from(lag >= bound);
            }
            if lag >= 0 {
                verdict.stale.push(Stale {
                    read: *r,
                    write: w,
                    lag,
                });
            }
        }
        let at_start = ix.committed.partition_point(|c| c.0 <= r.start);
        if at_start > 0 && r.version < ix.committed[at_start - 1].1 {
            verdict.older_than_db += 1;
        }
        if ix
            .writes
            .iter()
            .any(|w| w.incr_start <= r.end && w.inval_end >= r.start)
        {
            verdict.raced += 1;
        }
    }
    verdict.stale.sort_by_key(|s| std::cmp::Reverse(s.lag));
    verdict
}

/// Waits for `child` until `deadline`, then kills it (by its PID: it is
/// our child) and fails.
fn wait_bounded(mut child: Child, deadline: Instant) -> String {
    loop {
        match child.try_wait().expect("poll checker process") {
            Some(status) => {
                let out = child.wait_with_output().expect("checker output");
                assert!(status.success(), "checker process failed: {status}");
                return String::from_utf8_lossy(&out.stdout).trim().to_owned();
            }
            None if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "checker process {} still running at the deadline",
                    child.id()
                );
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The checker's timing claims need the 2-core machine to itself: the tests
/// of this file run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn list(con: &mut redis::Connection, key: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(key)
        .arg(0)
        .arg(-1)
        .query(con)
        .unwrap()
}

#[test]
fn no_read_sees_a_version_older_than_a_returned_invalidate() {
    let _serial = serial();
    let server = RedisServer::start();
    check_fleet(&server.url(), &server, None);
}

/// The same checker with the cache on a Redis Cluster (3 masters + 3
/// replicas; its 16 rows over the namespace's buckets on every master,
/// notices sharded), the rows' "database" and the records on a separate
/// plain Redis.
#[test]
fn no_read_sees_a_version_older_than_a_returned_invalidate_on_a_cluster() {
    let _serial = serial();
    let cluster = RedisCluster::start(3, 1);
    let log = RedisServer::start();
    check_fleet(&cluster.url(), &log, Some(&cluster));
}

/// The same fleet on a Cluster whose busiest master is `SIGKILL`ed 2.5 s
/// into the run: its replica is promoted (node timeout 1 s) and the run
/// goes on past it. Calls on that master's keys fail until the promotion
/// (counted, not judged: an invalidate that did not return promises
/// nothing). Across it, a process serves its L1 until its own connection
/// is back and flushes it, while others may already write through the
/// promoted master: reads 10-15 ms stale were seen right after the
/// promotion in some runs. Asserted: none staler than 250 ms (no notice
/// lost for good, which would leave a value stale until its TTL).
///
/// Over loopback, a write's replication reaches the replica's socket
/// before the write's reply reaches the client, so an acknowledged
/// invalidate survives the kill here. Across hosts, asynchronous
/// replication can lose the last acknowledged writes of a killed master,
/// and with them an invalidate: that value is then served until its TTL
/// (the README's failover section).
#[test]
fn no_read_is_stale_across_a_cluster_failover() {
    let _serial = serial();
    let cluster = RedisCluster::start(3, 1);
    let log = RedisServer::start();
    check_fleet_with(&cluster.url(), &log, Some(&cluster), Some(2_500));
}

/// Runs `PROCS` checker processes with their cache on `url`, records and
/// rows on `log`, and judges the history.
fn check_fleet(url: &str, log: &RedisServer, cluster: Option<&RedisCluster>) {
    check_fleet_with(url, log, cluster, None);
}

/// `kill_after_ms`: `SIGKILL` the master holding the most keys that long
/// after the start (a Cluster only), and judge the run across the failover.
fn check_fleet_with(
    url: &str,
    log: &RedisServer,
    cluster: Option<&RedisCluster>,
    kill_after_ms: Option<u64>,
) {
    let mut con = log.connection();
    // Across a failover the run goes on well past the promotion.
    let ops = if kill_after_ms.is_some() {
        2 * OPS_PER_PROC
    } else {
        OPS_PER_PROC
    };
    let log_url = log.url();
    let bin = checker_bin();
    // Random by default (it is a randomized checker); printed, and settable,
    // so a failing mix can be rerun.
    let seed: u64 = std::env::var("CHECKER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(now_ms);
    let prefix = "ck";
    let mut children: Vec<Child> = (0..PROCS as u64)
        .map(|i| {
            Command::new(&bin)
                .args(["--redis", url, "--log", &log_url, "--prefix", prefix])
                .args(["--rows", &ROWS.to_string()])
                .args(["--readers", "6", "--writers", "2"])
                .args(["--ops", &ops.to_string()])
                .args(["--seed", &(seed + i).to_string()])
                .args(["--ttl-ms", "2000", "--max-ms", "40000"])
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn checker process")
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(50);
    loop {
        let ready: Option<usize> = redis::cmd("GET")
            .arg(format!("{prefix}:ready"))
            .query(&mut con)
            .unwrap();
        if ready == Some(PROCS) {
            break;
        }
        assert!(Instant::now() < deadline, "checkers not ready: {ready:?}");
        for c in &mut children {
            if let Some(status) = c.try_wait().expect("poll checker process") {
                panic!(
                    "checker process {} exited before starting: {status}",
                    c.id()
                );
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Each process subscribed to the namespace's bus when its cache was
    // built, so all four hear each other's invalidations from the first op.
    // (On a Cluster, on every bucket's sharded channel, checked below by
    // the notices that flowed.)
    if cluster.is_none() {
        let (_, subscribers): (String, usize) = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(format!("hc:bus:ck-{prefix}"))
            .query(&mut con)
            .unwrap();
        assert_eq!(subscribers, PROCS, "every process listens on the bus");
    }
    let _: () = redis::cmd("SET")
        .arg(format!("{prefix}:go"))
        .arg(1)
        .query(&mut con)
        .unwrap();
    let t0 = Instant::now();
    let killed = kill_after_ms.map(|ms| {
        let cluster = cluster.expect("a failover needs a Cluster");
        let victim = cluster.busiest_master();
        let pid = cluster.nodes[victim].pid().expect("victim running");
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            let at = now_ms() as i64 * 1000;
            let ok = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -9 {pid}");
            at
        })
    });
    let outputs: Vec<String> = children
        .into_iter()
        .map(|c| wait_bounded(c, deadline))
        .collect();
    let elapsed = t0.elapsed();

    let killed_at_us = killed.map(|k| k.join().expect("killer thread"));
    let errors = list(&mut con, &format!("{prefix}:errors"));
    if killed_at_us.is_none() {
        assert!(errors.is_empty(), "operations failed: {errors:?}");
    }
    let reads: Vec<Read> = list(&mut con, &format!("{prefix}:reads"))
        .iter()
        .map(|l| read_record(l))
        .collect();
    let writes: Vec<Write> = list(&mut con, &format!("{prefix}:writes"))
        .iter()
        .map(|l| write_record(l))
        .collect();
    let mut totals: HashMap<String, u64> = HashMap::new();
    let stat_keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:stats:*"))
        .query(&mut con)
        .unwrap();
    assert_eq!(stat_keys.len(), PROCS);
    for key in stat_keys {
        let h: HashMap<String, u64> = redis::cmd("HGETALL").arg(key).query(&mut con).unwrap();
        for (name, n) in h {
            *totals.entry(name).or_default() += n;
        }
    }
    let stat = |name: &str| totals.get(name).copied().unwrap_or(0);
    // PUBLISH calls made by the scripts (fill, invalidate): the notices the
    // other three processes each received. (`Stats` has no counter of
    // notices received.) On a Cluster, SPUBLISH calls on the masters.
    let published_on = |con: &mut redis::Connection, command: &str| -> u64 {
        let commandstats: String = redis::cmd("INFO").arg("commandstats").query(con).unwrap();
        commandstats
            .lines()
            .find_map(|l| l.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|l| l.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    let published: u64 = match cluster {
        None => published_on(&mut con, "publish"),
        Some(cluster) => cluster
            .masters()
            .into_iter()
            .map(|m| published_on(&mut cluster.nodes[m].connection(), "spublish"))
            .sum(),
    };

    let v = judge(&reads, &writes);
    let ops = reads.len() + writes.len();
    let max_lag_us = v.stale.first().map_or(0, |s| s.lag);
    // Where the violations at the asserted bound come from: the writer's own
    // process, or another; served at L1 speed (no Redis round trip fits in
    // 100 µs) or not.
    let beyond: Vec<&Stale> = v
        .stale
        .iter()
        .filter(|s| s.lag >= BOUNDS_US[BOUNDS_US.len() - 1])
        .collect();
    let own_process = beyond.iter().filter(|s| s.read.pid == s.write.pid).count();
    let own_at_0 = stale_in_own_process(&reads, &writes);
    let l1_speed = beyond
        .iter()
        .filter(|s| s.read.end - s.read.start < 100)
        .count();
    for o in &outputs {
        println!("  {o}");
    }
    println!(
        "consistency: seed {seed}, {PROCS} processes, {ops} ops ({} reads, {} writes) in {elapsed:.1?}; \
         stale violations at bound 0 / 1 / 5 / 10 ms: {} / {} / {} / {} (at 10 ms: {own_process} in the \
         invalidating process, {l1_speed} at L1 speed); in the invalidating process at bound 0: \
         {}; max lag {max_lag_us} µs; \
         reads older than the database at their start: {}; reads racing a write of their row: {}; \
         future reads: {}; stats (sum): l1_hits {}, l2_hits {}, loads {}, coalesced {}, lock_waits {}, \
         lease_lost {}, misses {}, remote_changes {}, remote_fills {}; bus notices published \
         {published}",
        reads.len(),
        writes.len(),
        v.violations[0],
        v.violations[1],
        v.violations[2],
        v.violations[3],
        own_at_0.len(),
        v.older_than_db,
        v.raced,
        v.future.len(),
        stat("l1_hits"),
        stat("l2_hits"),
        stat("loads"),
        stat("coalesced"),
        stat("lock_waits"),
        stat("lease_lost"),
        stat("misses"),
        stat("remote_changes"),
        stat("remote_fills"),
    );
    // The worst stale reads, for diagnosis: a read that took a few µs was an
    // L1 hit; one that took longer went to Redis or waited for a load.
    for s in v.stale.iter().take(10) {
        println!(
            "  stale: lag {} µs; read pid {} row {} saw v{} in {} µs; v{} by pid {} invalidated at {}",
            s.lag,
            s.read.pid,
            s.read.row,
            s.read.version,
            s.read.end - s.read.start,
            s.write.version,
            s.write.pid,
            s.write.inval_end
        );
    }

    if let Some(at) = killed_at_us {
        // The kill landed mid-run, calls failed around it, and the fleet
        // used Redis again after it: invalidates returned well after.
        let recovered = writes
            .iter()
            .filter(|w| w.inval_end != i64::MAX && w.inval_end > at + 5_000_000 / 2)
            .count();
        let last_failed = writes
            .iter()
            .filter(|w| w.inval_end == i64::MAX)
            .map(|w| w.incr_end)
            .max();
        println!(
            "failover: master killed at {at} µs; {} calls failed, the last invalidate to fail \
             started {:?} ms after the kill; {recovered} invalidates returned more than 2.5 s \
             after it",
            errors.len(),
            last_failed.map(|l| (l - at) / 1000)
        );
        assert!(!errors.is_empty(), "the kill failed no call: did it land?");
        assert!(recovered > 0, "no invalidate returned after the failover");
    }
    assert!(ops >= 10_000, "only {ops} operations");
    assert!(v.future.is_empty(), "reads from the future: {:?}", v.future);
    // The run must have been able to fail: reads raced writes, old versions
    // were served (between update and invalidate), every tier was used, and
    // notices flowed between processes.
    assert!(v.raced >= 100, "only {} reads raced a write", v.raced);
    assert!(v.older_than_db > 0, "no read ever saw an old version");
    for name in [
        "l1_hits",
        "l2_hits",
        "loads",
        "coalesced",
        "lease_lost",
        "remote_changes",
        "remote_fills",
    ] {
        assert!(stat(name) > 0, "no {name} in {totals:?}");
    }
    if killed_at_us.is_none() {
        assert!(published >= writes.len() as u64, "{published} notices");
    } else {
        // The killed master's counts died with it.
        assert!(published > 0, "no notices");
    }
    assert!(
        own_at_0.is_empty(),
        "the invalidating process itself served an older version after its invalidate \
         returned: {:?}",
        &own_at_0[..own_at_0.len().min(10)]
    );
    if killed_at_us.is_some() {
        // Across a failover: a process serves its L1 until its own
        // connection is back (then flushes it), and the others may write
        // through the promoted master a few ms before. Measured: at most
        // 15 ms after an invalidate returned; asserted: 250 ms (nothing
        // left stale until its TTL, 2 s, by a notice lost for good).
        assert!(
            max_lag_us < FAILOVER_BOUND_US,
            "a read saw an older version {max_lag_us} µs after an invalidate returned, \
             across the failover; worst: {:?}",
            &v.stale[..v.stale.len().min(10)]
        );
        return;
    }
    assert_eq!(
        v.violations[BOUNDS_US.len() - 1],
        0,
        "reads saw an older version more than 10 ms after an invalidate returned; worst: {:?}",
        &v.stale[..v.stale.len().min(10)]
    );
}

/// Across a failover, the bound asserted (µs).
const FAILOVER_BOUND_US: i64 = 250_000;

/// Reads that saw a version older than one their own process had written
/// and invalidated (the invalidate returned) before the read started.
fn stale_in_own_process(reads: &[Read], writes: &[Write]) -> Vec<(Read, Write)> {
    let mut newest: HashMap<(u32, u64), Vec<Write>> = HashMap::new();
    for w in writes {
        newest.entry((w.pid, w.row)).or_default().push(*w);
    }
    reads
        .iter()
        .filter_map(|r| {
            let mine = newest.get(&(r.pid, r.row))?;
            mine.iter()
                .filter(|w| w.inval_end <= r.start && w.version > r.version)
                .max_by_key(|w| w.version)
                .map(|w| (*r, *w))
        })
        .collect()
}

/// The judge itself flags what it must: a stale read past each bound, a
/// version from the future, and not a read that merely raced.
#[test]
fn the_judge_flags_stale_and_future_reads() {
    let write = |version, incr_start, inval_end| Write {
        row: 0,
        version,
        incr_start,
        incr_end: incr_start + 10,
        inval_end,
        pid: 1,
    };
    let read = |version, start| Read {
        row: 0,
        version,
        start,
        end: start + 10,
        pid: 2,
    };
    let writes = [write(1, 1_000, 1_100), write(2, 2_000, 2_100)];
    let reads = [
        read(1, 1_050), // raced v1's write; saw it: fine
        read(0, 1_050), // raced v1's write; saw the old one: fine
        read(0, 1_100), // as v1's invalidate returned: raced, and stale at bound 0
        read(1, 3_200), // 1.1 ms after v2's: stale at 0 and 1 ms
        read(0, 8_000), // far after: stale at every bound
        read(2, 8_000), // current: fine
        read(2, 1_500), // v2's INCR started at 2000, after this read ended
        read(3, 9_000), // never written
    ];
    let v = judge(&reads, &writes);
    assert_eq!(v.violations, [3, 2, 1, 0]);
    // All three are by another process; one more read, by the writer's own
    // process right after its invalidate, is caught with no allowance.
    let own = stale_in_own_process(
        &[
            read(0, 1_100),
            Read {
                pid: 1,
                ..read(0, 1_100)
            },
        ],
        &writes,
    );
    assert_eq!(own.len(), 1);
    assert_eq!(own[0].0.pid, 1);
    assert_eq!(v.future.len(), 2);
    assert_eq!(v.stale[0].lag, 8_000 - 1_100);
    assert_eq!(v.raced, 3);
    assert_eq!(v.older_than_db, 4);
}

/// Reproduction of what the checker found: a process's own `invalidate`
/// can be undone in its own L1 by another process's fill notice that Redis
/// sent *before* the invalidate ran, but that the bus listener applies
/// *after* the invalidate returned. The old value then sits in L1 until its
/// TTL (or the next notice for the key), though Redis no longer has it.
#[test]
fn a_late_fill_notice_does_not_resurrect_a_value_we_invalidated() {
    let _serial = serial();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(late_fill_notice());
}

async fn late_fill_notice() {
    let server = RedisServer::start();
    let build = || {
        Cache::<u64>::builder("race")
            .redis_url(server.url())
            .ttl(Duration::from_secs(60))
            .build()
    };
    let (filler, writer) = (build().await.unwrap(), build().await.unwrap());
    let mut db = redis::Client::open(server.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let mut resurrected = Vec::new();
    let mut filled_first = 0;
    for i in 0..300u64 {
        let key = format!("k{i}");
        // The filler's loader holds the lock until released, so its fill
        // and the writer's invalidate reach Redis at about the same time.
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let release = Arc::new(tokio::sync::Barrier::new(2));
        let load = tokio::spawn({
            let (filler, key, release) = (filler.clone(), key.clone(), release.clone());
            async move {
                filler
                    .get_or_compute(&key, move || async move {
                        let _ = started_tx.send(());
                        release.wait().await;
                        Ok::<_, std::io::Error>(i)
                    })
                    .await
            }
        });
        started_rx.await.unwrap();
        release.wait().await;
        writer.invalidate(&key).await.unwrap();
        load.await.unwrap().unwrap();
        // Long past any propagation delay: Redis has no value for the key
        // (the invalidate deleted it, or voided the lease of the fill).
        tokio::time::sleep(Duration::from_millis(5)).await;
        let lease_lost = filler.stats().lease_lost;
        filled_first = i + 1 - lease_lost;
        let in_redis: bool = redis::cmd("EXISTS")
            .arg(format!("hc:{{race:{key}}}:v"))
            .query_async(&mut db)
            .await
            .unwrap();
        assert!(!in_redis, "{key} is still in Redis after invalidate");
        if let Some(v) = writer.get(&key).await.unwrap() {
            resurrected.push((key, *v));
        }
    }
    println!(
        "late fill notice: {} of {filled_first} fills that preceded the invalidate \
         came back into the writer's L1 after its invalidate returned",
        resurrected.len()
    );
    assert!(
        resurrected.is_empty(),
        "values back in the writer's L1 after its own invalidate: {resurrected:?}"
    );
}
