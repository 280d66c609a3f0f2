//! Distributed locks, uncontended: `Lock::acquire` + `LockGuard::release`
//! against the raw commands a hand-written lock sends, and `Redlock` over 5
//! masters against the single-node lock, each pair in one run.
//!
//! | bench | round trips | what one operation does |
//! |---|---|---|
//! | `herdcache` | 2 | `client.lock(name).acquire().await` (local queue permit; `MULTI; SET NX PX; INCR` of the fence counter`; EXEC` (a `FENCE_START` script only when the counter is new); the lease queued on the client's renewer), then `guard.release().await` (mark the lease released; `EVALSHA` compare-and-delete, `DEL` of the waiter marker, `PUBLISH` only if there was one) |
//! | `raw` | 2 | `SET lock token NX PX 10000`, then `EVALSHA` of the standard compare-and-delete (`GET` == token then `DEL`), on one `MultiplexedConnection` set up like herdcache's (RESP3): **the issue's baseline** |
//! | `raw_fenced` | 2 | herdcache's own two requests (`MULTI; SET NX PX; INCR; EXEC`, and its release script, copied here) sent on the raw connection: the server-side work of `herdcache` without its client-side code |
//! | `redlock_5` | 2 fan-outs | `redlock.lock(name).acquire().await` + `release()` over 5 masters (each: a plain `SET NX PX`, then `EVALSHA` compare-and-delete + `DEL` of the waiter marker, all 5 at once) |
//! | `herdcache_unfenced` | 2 | `client.lock(name).fenced(false)`: as `herdcache`, but the acquisition is a plain `SET NX PX` (no transaction, no fence counter); its token is 0 |
//! | `herdcache_single` | 2 | `herdcache` on one of those 5 masters (the baseline of `redlock_5`) |
//! | `raw_redlock_5` | 2 fan-outs | `raw` on all 5 masters at once (`join_all` of `SET NX PX`, then of compare-and-delete), checking a majority: what the 5 servers on this machine cost by themselves |
//!
//! | group | tasks | names |
//! |---|---|---|
//! | `dlock_1_task`, `redlock_1_task` | 1 | one, reused (free again after each release) |
//! | `dlock_unfenced_1_task`, `dlock_unfenced_64_tasks` | 1, 64 | as above: `herdcache_unfenced` against `raw` |
//! | `dlock_64_tasks`, `redlock_64_tasks` | 64 | task `t` locks its own name: nothing is ever contended |
//!
//! Every side generates a fresh 128-bit token per acquisition, as a correct
//! lock must. All of it runs on one `current_thread` runtime (as the other
//! benches); every Redis timeout is 5 s.
//!
//! Criterion runs the groups one side after the other, which on a shared
//! machine puts its drift into the ratios, so at the end the bench also
//! times **interleaved rounds**: each round runs every side of a group once
//! (in alternating order) for the same number of operations, and each
//! round gives one ratio; the median over the rounds is printed as a
//! `paired …` line. Those lines are the figures to trust. Each round also
//! reads the CPU time (`/proc/…/schedstat`, ns) of the bench's thread (all
//! client work: the runtime is `current_thread`) and of the Redis
//! servers, printed per operation as `cpu …` lines: where the time goes.
//!
//! Run: `cargo bench --bench dlock` (criterion and the rounds), or
//! `cargo bench --bench dlock -- only_paired` (the rounds alone; the filter
//! matches no criterion bench). See `docs/BENCHMARKS.md`.

#[path = "common/mod.rs"]
mod common;
#[path = "../tests/support/mod.rs"]
mod support;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herdcache::{Client, Redlock};
use redis::aio::MultiplexedConnection;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

/// Every side's Redis timeout (see `benches/l2_hit.rs`); also the
/// Redlock's node timeout, so a scheduler stall on this 2-core machine is
/// not a lost vote.
const TIMEOUT: Duration = Duration::from_secs(5);
/// herdcache's default lease; the raw side's `PX`.
const LEASE_MS: u64 = 10_000;
const MASTERS: usize = 5;
const MAX_TASKS: u64 = 64;

/// The standard compare-and-delete release.
const RAW_RELEASE: &str =
    "if redis.call('GET',KEYS[1])==ARGV[1] then return redis.call('DEL',KEYS[1]) else return 0 end";

/// herdcache's lock release (`src/lock/scripts.rs` `RELEASE`), verbatim:
/// compare-and-delete, and the notice only if a waiter marked the name.
const PUBLISHING_RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('DEL', KEYS[1], KEYS[2]) == 2 then redis.call(ARGV[4], ARGV[2], ARGV[3]) end
return 1
";

/// A token as unique as herdcache's: 128 random bits, in hex.
fn token() -> String {
    format!("{:032x}", fastrand::u128(..))
}

/// The raw connection and the SHA1s of the scripts loaded on its server.
#[derive(Clone)]
struct Raw {
    conn: MultiplexedConnection,
    release: String,
    publishing_release: String,
}

impl Raw {
    async fn new(url: &str) -> Raw {
        let (_, mut conn) = common::raw_connections(url, TIMEOUT).await;
        let mut load = async |script: &str| -> String {
            redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(script)
                .query_async(&mut conn)
                .await
                .expect("SCRIPT LOAD")
        };
        let release = load(RAW_RELEASE).await;
        let publishing_release = load(PUBLISHING_RELEASE).await;
        Raw {
            conn,
            release,
            publishing_release,
        }
    }

    /// The issue's baseline: `SET NX PX`, then compare-and-delete.
    async fn lock_unlock(&self, key: &str) {
        let mut conn = self.conn.clone();
        let token = token();
        let set: Option<String> = redis::cmd("SET")
            .arg(key)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(LEASE_MS)
            .query_async(&mut conn)
            .await
            .expect("SET NX PX");
        assert!(set.is_some(), "{key} was already held");
        let n: i64 = redis::cmd("EVALSHA")
            .arg(&self.release)
            .arg(1)
            .arg(key)
            .arg(&token)
            .query_async(&mut conn)
            .await
            .expect("EVALSHA release");
        assert_eq!(n, 1, "{key} was not ours at release");
    }

    /// herdcache's two requests, sent raw: `MULTI; SET NX PX; INCR fence;
    /// EXEC`, then its release script.
    async fn fenced_lock_unlock(&self, keys: &RawKeys) {
        let mut conn = self.conn.clone();
        let token = token();
        let (set, fence): (Option<String>, i64) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(&keys.lock)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(LEASE_MS)
            .cmd("INCR")
            .arg(&keys.fence)
            .query_async(&mut conn)
            .await
            .expect("MULTI SET INCR EXEC");
        assert!(set.is_some() && fence > 0, "{} was already held", keys.lock);
        let n: i64 = redis::cmd("EVALSHA")
            .arg(&self.publishing_release)
            .arg(2)
            .arg(&keys.lock)
            .arg(&keys.waiters)
            .arg(&token)
            .arg(&keys.channel)
            .arg("r")
            .arg("PUBLISH")
            .query_async(&mut conn)
            .await
            .expect("EVALSHA publishing release");
        assert_eq!(n, 1, "{} was not ours at release", keys.lock);
    }
}

/// The raw sides' keys for one name, laid out like herdcache's but under a
/// prefix of their own.
struct RawKeys {
    lock: String,
    fence: String,
    waiters: String,
    channel: String,
}

impl RawKeys {
    fn new(name: &str) -> RawKeys {
        let lock = format!("raw:lk:{{{name}}}");
        RawKeys {
            fence: format!("{lock}:f"),
            waiters: format!("{lock}:w"),
            channel: format!("{lock}:ch"),
            lock,
        }
    }
}

/// The lock name of task `t`.
fn name(t: u64) -> String {
    format!("bench:{t}")
}

async fn herd_lock_unlock(client: &Client, name: &str) {
    let guard = client.lock(name).acquire().await.expect("acquire");
    assert!(guard.release().await.expect("release"), "lease lost");
}

async fn herd_unfenced_lock_unlock(client: &Client, name: &str) {
    let guard = client
        .lock(name)
        .fenced(false)
        .acquire()
        .await
        .expect("acquire");
    assert_eq!(guard.fencing_token(), 0);
    assert!(guard.release().await.expect("release"), "lease lost");
}

/// A hand-written Redlock: `SET NX PX` on every master at once, a
/// majority required, then compare-and-delete on every master at once.
async fn raw_redlock(masters: &[Raw], key: &str) {
    let token = token();
    let sets = masters.iter().map(|m| {
        let mut conn = m.conn.clone();
        let token = &token;
        async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(token)
                .arg("NX")
                .arg("PX")
                .arg(LEASE_MS)
                .query_async(&mut conn)
                .await
                .expect("SET NX PX");
            set.is_some()
        }
    });
    let taken = futures_util::future::join_all(sets)
        .await
        .into_iter()
        .filter(|&t| t)
        .count();
    assert!(taken > masters.len() / 2, "{key}: no majority");
    let releases = masters.iter().map(|m| {
        let mut conn = m.conn.clone();
        let token = &token;
        async move {
            let n: i64 = redis::cmd("EVALSHA")
                .arg(&m.release)
                .arg(1)
                .arg(key)
                .arg(token)
                .query_async(&mut conn)
                .await
                .expect("EVALSHA release");
            n
        }
    });
    let released: i64 = futures_util::future::join_all(releases).await.iter().sum();
    assert!(released > masters.len() as i64 / 2, "{key}: lost");
}

async fn redlock_lock_unlock(redlock: &Redlock, name: &str) {
    let guard = redlock.lock(name).acquire().await.expect("redlock acquire");
    assert!(
        guard.release().await.expect("redlock release"),
        "redlock lease lost"
    );
}

/// Everything one side needs, shared by its tasks.
struct Env {
    client: Client,
    raw: Raw,
    /// Per task: the name, and the raw keys.
    names: Vec<(String, RawKeys)>,
    redlock: Redlock,
    single: Client,
    /// One raw connection per master, for `raw_redlock_5`.
    raw_masters: Vec<Raw>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Herdcache,
    HerdcacheUnfenced,
    Raw,
    RawFenced,
    Redlock5,
    HerdcacheSingle,
    RawRedlock5,
}

impl Side {
    fn label(self) -> &'static str {
        match self {
            Side::Herdcache => "herdcache",
            Side::HerdcacheUnfenced => "herdcache_unfenced",
            Side::Raw => "raw",
            Side::RawFenced => "raw_fenced",
            Side::Redlock5 => "redlock_5",
            Side::HerdcacheSingle => "herdcache_single",
            Side::RawRedlock5 => "raw_redlock_5",
        }
    }

    /// One operation of this side in task `t`.
    fn op(self, env: Arc<Env>, t: u64) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        Box::pin(async move {
            let (name, keys) = &env.names[t as usize];
            match self {
                Side::Herdcache => herd_lock_unlock(&env.client, name).await,
                Side::HerdcacheUnfenced => herd_unfenced_lock_unlock(&env.client, name).await,
                Side::Raw => env.raw.lock_unlock(&keys.lock).await,
                Side::RawFenced => env.raw.fenced_lock_unlock(keys).await,
                Side::Redlock5 => redlock_lock_unlock(&env.redlock, name).await,
                Side::HerdcacheSingle => herd_lock_unlock(&env.single, name).await,
                Side::RawRedlock5 => raw_redlock(&env.raw_masters, &keys.lock).await,
            }
        })
    }
}

/// Which runtime a group runs on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rt {
    /// `current_thread`, as every other bench here.
    Current,
    /// `multi_thread` with 2 workers (this machine's cores), as
    /// `#[tokio::main]` gives most applications.
    Multi,
}

/// One group: its name, runtime, tasks and sides (the first side is the
/// one measured; the ratios are against each of the others).
struct Group {
    name: &'static str,
    rt: Rt,
    tasks: u64,
    sides: &'static [Side],
}

const SINGLE: &[Side] = &[Side::Herdcache, Side::Raw, Side::RawFenced];
/// `Lock::fenced(false)` against the same raw lock: the tutorials' lock,
/// which takes no token either.
const UNFENCED: &[Side] = &[Side::HerdcacheUnfenced, Side::Raw];
const MAJORITY: &[Side] = &[Side::Redlock5, Side::HerdcacheSingle, Side::RawRedlock5];

const GROUPS: [Group; 8] = [
    Group {
        name: "dlock_1_task",
        rt: Rt::Current,
        tasks: 1,
        sides: SINGLE,
    },
    Group {
        name: "dlock_64_tasks",
        rt: Rt::Current,
        tasks: MAX_TASKS,
        sides: SINGLE,
    },
    Group {
        name: "dlock_unfenced_1_task",
        rt: Rt::Current,
        tasks: 1,
        sides: UNFENCED,
    },
    Group {
        name: "dlock_unfenced_64_tasks",
        rt: Rt::Current,
        tasks: MAX_TASKS,
        sides: UNFENCED,
    },
    Group {
        name: "dlock_1_task_mt",
        rt: Rt::Multi,
        tasks: 1,
        sides: SINGLE,
    },
    Group {
        name: "dlock_64_tasks_mt",
        rt: Rt::Multi,
        tasks: MAX_TASKS,
        sides: SINGLE,
    },
    Group {
        name: "redlock_1_task",
        rt: Rt::Current,
        tasks: 1,
        sides: MAJORITY,
    },
    Group {
        name: "redlock_64_tasks",
        rt: Rt::Current,
        tasks: MAX_TASKS,
        sides: MAJORITY,
    },
];

/// Per-operation latencies of one batch, in nanoseconds.
type Latencies = Arc<Mutex<Vec<u64>>>;

/// Runs `iters` operations of `side` spread over `tasks` spawned tasks and
/// returns the wall time of the whole batch; each operation's latency goes
/// into `lat`.
async fn batch(env: &Arc<Env>, side: Side, tasks: u64, iters: u64, lat: &Latencies) -> Duration {
    let mut set = JoinSet::new();
    let start = Instant::now();
    for t in 0..tasks {
        let share = iters / tasks + u64::from(t < iters % tasks);
        let (env, lat) = (env.clone(), lat.clone());
        set.spawn(async move {
            let mut mine = Vec::with_capacity(share as usize);
            for _ in 0..share {
                let t0 = Instant::now();
                side.op(env.clone(), t).await;
                mine.push(t0.elapsed().as_nanos() as u64);
            }
            lat.lock().expect("latency lock").extend(mine);
        });
    }
    while let Some(done) = set.join_next().await {
        done.expect("bench task");
    }
    start.elapsed()
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn take_sorted(lat: &Latencies) -> Vec<u64> {
    let mut v = std::mem::take(&mut *lat.lock().expect("latency lock"));
    v.sort_unstable();
    v
}

/// Nanoseconds on CPU of a thread (the first field of its `schedstat`);
/// `None` where there is no such file (not Linux).
fn cpu_ns(path: &str) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU time so far of this process (every thread: the runtimes' workers
/// and the main thread that drives `current_thread`) and of the servers'
/// main threads.
fn cpu_now(pids: &[u32]) -> Option<(u64, u64)> {
    let mut client = 0;
    for thread in std::fs::read_dir("/proc/self/task").ok()? {
        client += cpu_ns(thread.ok()?.path().join("schedstat").to_str()?)?;
    }
    let mut servers = 0;
    for pid in pids {
        servers += cpu_ns(&format!("/proc/{pid}/schedstat"))?;
    }
    Some((client, servers))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Connects every side. `dlock_*` use the first server alone; `redlock_*`
/// use all five, the single-node side the first of them, on a client of
/// its own. Called inside the runtime the sides will run on: a client's
/// connection task lives there.
async fn connect(urls: &[String]) -> Arc<Env> {
    let client = Client::builder(urls[0].clone())
        .redis_timeout(TIMEOUT)
        .connect()
        .await
        .expect("connect");
    let single = Client::builder(urls[0].clone())
        .redis_timeout(TIMEOUT)
        .connect()
        .await
        .expect("connect single");
    let redlock = Redlock::builder(urls)
        .node_timeout(TIMEOUT)
        .connect()
        .await
        .expect("connect redlock");
    let raw = Raw::new(&urls[0]).await;
    let mut raw_masters = Vec::new();
    for url in urls {
        raw_masters.push(Raw::new(url).await);
    }
    let names = (0..MAX_TASKS)
        .map(|t| (name(t), RawKeys::new(&name(t))))
        .collect();
    Arc::new(Env {
        client,
        raw,
        names,
        redlock,
        single,
        raw_masters,
    })
}

fn dlock(c: &mut Criterion) {
    let servers: Vec<support::RedisServer> = (0..MASTERS)
        .map(|_| support::RedisServer::start())
        .collect();
    let urls: Vec<String> = servers.iter().map(|s| s.url()).collect();
    let current = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let env = current.block_on(connect(&urls));
    let env_multi = multi.block_on(connect(&urls));
    let rig = |rt: Rt| match rt {
        Rt::Current => (&current, &env),
        Rt::Multi => (&multi, &env_multi),
    };

    // Every side must really take and release its lock (the ops assert
    // it), and herdcache's tokens must be fenced.
    for g in &GROUPS {
        let (rt, env) = rig(g.rt);
        for &side in g.sides {
            rt.block_on(side.op(env.clone(), 0));
        }
    }
    current.block_on(async {
        let a = env.client.lock(name(0)).acquire().await.expect("acquire");
        let fence = a.fencing_token();
        a.release().await.expect("release");
        let b = env.client.lock(name(0)).acquire().await.expect("acquire");
        assert!(b.fencing_token() > fence, "fencing tokens must increase");
        b.release().await.expect("release");
        println!("dlock: {} masters at {}", urls.len(), urls.join(" "));
    });

    for g in &GROUPS {
        let (rt, env) = rig(g.rt);
        let mut group = c.benchmark_group(g.name);
        group.throughput(Throughput::Elements(1));
        for &side in g.sides {
            group.bench_function(BenchmarkId::from_parameter(side.label()), |b| {
                b.to_async(rt).iter_custom(|iters| {
                    let env = env.clone();
                    async move { batch(&env, side, g.tasks, iters, &Latencies::default()).await }
                })
            });
        }
        group.finish();
    }

    // `cargo test --benches` runs the binary without `--bench`: one short
    // round each then, enough to see that everything works.
    let smoke = !std::env::args().any(|a| a == "--bench");
    let pids: Vec<u32> = servers.iter().filter_map(|s| s.pid()).collect();
    for g in &GROUPS {
        let (rt, env) = rig(g.rt);
        // `dlock_*` use the first server only.
        let pids = if g.name.starts_with("dlock") {
            &pids[..1]
        } else {
            &pids[..]
        };
        paired(rt, env, g, pids, smoke);
    }
    drop((env, env_multi));
    drop(servers);
}

/// Interleaved rounds of one group: each round runs every side for `ops`
/// operations, in alternating order, and gives one time ratio (and one p50
/// ratio) of the first side against each other side. Prints the medians.
fn paired(rt: &tokio::runtime::Runtime, env: &Arc<Env>, g: &Group, pids: &[u32], smoke: bool) {
    let (group_name, tasks, sides) = (g.name, g.tasks, g.sides);
    // The first rounds warm up and are not counted.
    let (warmup, rounds) = if smoke { (0, 1) } else { (3, 21) };
    let ops: u64 = match (tasks, smoke) {
        (_, true) => tasks * 4,
        (1, false) => 500,
        (_, false) => 8_000,
    };
    let n = sides.len();
    // Per side: the per-op time of each round (µs) and its p50 (µs).
    let mut per_op = vec![Vec::new(); n];
    let mut p50 = vec![Vec::new(); n];
    // Per other side: the time ratio and p50 ratio of each round.
    let mut time_ratio = vec![Vec::new(); n];
    let mut p50_ratio = vec![Vec::new(); n];
    // Per side: client and server CPU ns per op of each round.
    let mut client_cpu = vec![Vec::new(); n];
    let mut server_cpu = vec![Vec::new(); n];
    for round in 0..warmup + rounds {
        let mut took = vec![Duration::ZERO; n];
        let mut lat50 = vec![0.0; n];
        let order: Vec<usize> = if round % 2 == 0 {
            (0..n).collect()
        } else {
            (0..n).rev().collect()
        };
        for i in order {
            let lat = Latencies::default();
            let before = cpu_now(pids);
            took[i] = rt.block_on(batch(env, sides[i], tasks, ops, &lat));
            if let (Some(b), Some(a)) = (before, cpu_now(pids))
                && round >= warmup
            {
                client_cpu[i].push((a.0 - b.0) as f64 / ops as f64);
                server_cpu[i].push((a.1 - b.1) as f64 / ops as f64);
            }
            lat50[i] = percentile(&take_sorted(&lat), 0.5);
        }
        if round < warmup {
            continue;
        }
        for i in 0..n {
            per_op[i].push(took[i].as_secs_f64() * 1e6 / ops as f64);
            p50[i].push(lat50[i]);
            time_ratio[i].push(took[0].as_secs_f64() / took[i].as_secs_f64());
            p50_ratio[i].push(lat50[0] / lat50[i]);
        }
    }
    let mut line = format!("paired {group_name} over {rounds} interleaved rounds of {ops} ops:");
    for i in 0..n {
        line += &format!(
            " {} {:.1} us/op (p50 {:.1} us);",
            sides[i].label(),
            median(&mut per_op[i]),
            median(&mut p50[i])
        );
    }
    for i in 1..n {
        let (lo, hi) = (
            time_ratio[i].iter().copied().fold(f64::INFINITY, f64::min),
            time_ratio[i].iter().copied().fold(0.0, f64::max),
        );
        line += &format!(
            " {}/{} time ratio median {:.3} (min {:.3}, max {:.3}), p50 ratio median {:.3};",
            sides[0].label(),
            sides[i].label(),
            median(&mut time_ratio[i]),
            lo,
            hi,
            median(&mut p50_ratio[i])
        );
    }
    println!("{}", line.trim_end_matches(';'));
    if client_cpu[0].len() == rounds {
        let mut line = format!("cpu {group_name} per op (median of {rounds} rounds):");
        for i in 0..n {
            line += &format!(
                " {} client {:.2} us, servers {:.2} us;",
                sides[i].label(),
                median(&mut client_cpu[i]) / 1000.0,
                median(&mut server_cpu[i]) / 1000.0
            );
        }
        println!("{}", line.trim_end_matches(';'));
    }
}

criterion_group! {
    name = benches;
    config = common::criterion_config(20);
    targets = dlock
}
criterion_main!(benches);
