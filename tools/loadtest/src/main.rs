//! `loadtest`: herdcache against three other ways of reading through a
//! cache, in real worker processes sharing one Redis; with `--scenario
//! lock`, herdcache's lock against two common Redis locks; with `--scenario
//! seckill`, herdcache's flash-sale stock against three common ways of
//! selling it.
//!
//! ```text
//! cargo run --release -p herdcache-loadtest                    # cold-key stampede, all four strategies
//! cargo run --release -p herdcache-loadtest -- --duration 10s --keys 100 --dist zipf --ttl-ms 1000
//! cargo run --release -p herdcache-loadtest -- --scenario lock # locks: sections/s, hand-off latency
//! cargo run --release -p herdcache-loadtest -- --scenario seckill --chart sale.svg # flash sale: oversold, orders, accepted/s
//! cargo run --release -p herdcache-loadtest -- --scenario scaling # Redis cost per operation; model vs 1..16 processes
//! cargo run --release -p herdcache-loadtest -- --cluster 3 --keys 1000 --duration 10s # herdcache on a 3-master cluster; keys and commands per master
//! ```
//!
//! The parent process starts a throwaway `redis-server` (unless `REDIS_URL`
//! is set), fills a SQLite file for the loader, then for each strategy
//! re-executes itself as `--processes` workers (`loadtest worker …`, hidden),
//! releases them at one instant through Redis, and reads back what they
//! measured. Layout:
//!
//! | file | what it is for |
//! |---|---|
//! | `main.rs` | options, and running the workers of each strategy |
//! | `worker.rs` | one worker process: tasks, key choice, latency recording |
//! | `strategies.rs` | none / naive-lock / local / herdcache, and the loader |
//! | `db.rs` | the SQLite file the loader queries |
//! | `report.rs` | merging the workers' results; table and JSON output |
//! | `chart.rs` | `--chart`: p99 latency over time as SVG |
//! | `info.rs` | reading a server's `INFO` (commands, CPU, bytes) and subtracting |
//! | `cluster.rs` | `--cluster N`: a throwaway Redis Cluster, and what each master did |
//! | `lock/` | `--scenario lock`: its strategies, worker, report (see `lock/mod.rs`) |
//! | `seckill/` | `--scenario seckill`: its strategies, worker, report, chart (see `seckill/mod.rs`) |
//! | `scaling/` | `--scenario scaling`: per-operation Redis costs, and the model of docs/SCALING.md checked against 1..16 worker processes (see `scaling/mod.rs`) |

// The test suite's throwaway Redis: one implementation of "start a
// redis-server on a free loopback port, kill it on drop" for the tests, the
// demo and this tool.
#[path = "../../../tests/support/mod.rs"]
mod support;

mod chart;
mod cluster;
mod db;
mod info;
mod lock;
mod report;
mod scaling;
mod scenario;
mod seckill;
mod strategies;
mod worker;

use clap::parser::ValueSource;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use lock::strategies::LockStrategy;
use report::{Report, Settings, StrategyResult};
use seckill::strategies::SeckillStrategy;
use strategies::{LoaderKind, Strategy};
use worker::{Dist, WorkerSpec, now_ms};

pub type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    version,
    about = "Compare herdcache with plain cache-aside, a naive Redis lock and per-process \
             coalescing, in real processes sharing one Redis (--scenario stampede, the default); \
             herdcache's lock with two common Redis locks (--scenario lock); or herdcache's \
             flash-sale stock with three common ways of selling it (--scenario seckill).",
    long_about = None,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// One worker process; started by the tool itself.
    #[command(hide = true)]
    Worker {
        #[arg(long)]
        spec: String,
        #[arg(long)]
        index: usize,
    },
    /// One worker process of `--scenario lock`; started by the tool itself.
    #[command(hide = true)]
    LockWorker {
        #[arg(long)]
        spec: String,
        #[arg(long)]
        index: usize,
    },
    /// One worker process of `--scenario seckill`; started by the tool itself.
    #[command(hide = true)]
    SeckillWorker {
        #[arg(long)]
        spec: String,
        #[arg(long)]
        index: usize,
    },
}

/// What a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Scenario {
    /// Reading through a cache: loader calls and latency (the default).
    Stampede,
    /// Distributed locks: critical sections per second, hand-off latency.
    Lock,
    /// A flash sale: units sold against the stock, orders persisted,
    /// accepted orders per second.
    Seckill,
    /// Redis cost per herdcache operation, and docs/SCALING.md's model of
    /// a fleet's Redis load checked against 1, 2, 4, 8, 16 processes.
    Scaling,
}

/// Options of one scenario only (clap ids): giving one to another
/// scenario is an error rather than silently ignored.
const STAMPEDE_ONLY: [&str; 10] = [
    "keys",
    "dist",
    "zipf_s",
    "hot_share",
    "loader",
    "loader_ms",
    "ttl_ms",
    "stale_ms",
    "early_refresh_beta",
    "cold",
];
const LOCK_ONLY: [&str; 4] = ["locks", "hold_ms", "think_ms", "count"];
const SECKILL_ONLY: [&str; 5] = ["stock", "buyers", "max_qty", "watch_retries", "naive_yield"];
const SCALING_ONLY: [&str; 4] = ["fleet", "runs", "rate", "costs_ops"];
/// `--cluster`: the stampede and scaling scenarios only.
const CLUSTER: [&str; 2] = ["cluster", "cluster_replicas"];
/// What `--scenario scaling` does not take: its workload is fixed but for
/// keys, rate, TTL, loader time, duration and tasks.
const NOT_SCALING: [&str; 10] = [
    "processes",
    "dist",
    "zipf_s",
    "hot_share",
    "loader",
    "stale_ms",
    "early_refresh_beta",
    "cold",
    "strategy",
    "chart",
];

/// The options (clap ids) `scenario` does not take.
fn foreign_options(scenario: Scenario) -> Vec<&'static str> {
    let (mut v, extra): (Vec<&str>, &[&str]) = match scenario {
        Scenario::Stampede => ([&LOCK_ONLY[..], &SECKILL_ONLY].concat(), &SCALING_ONLY),
        Scenario::Lock => (
            [&STAMPEDE_ONLY[..], &SECKILL_ONLY, &SCALING_ONLY, &CLUSTER].concat(),
            &["chart"],
        ),
        Scenario::Seckill => (
            [&STAMPEDE_ONLY[..], &LOCK_ONLY, &SCALING_ONLY, &CLUSTER].concat(),
            &["duration"],
        ),
        Scenario::Scaling => ([&LOCK_ONLY[..], &SECKILL_ONLY].concat(), &NOT_SCALING),
    };
    v.extend_from_slice(extra);
    v
}

/// The strategy names of each scenario.
fn scenario_strategies() -> [(&'static str, Vec<&'static str>); 3] {
    [
        ("stampede", Strategy::ALL.iter().map(|s| s.name()).collect()),
        ("lock", LockStrategy::ALL.iter().map(|s| s.name()).collect()),
        (
            "seckill",
            SeckillStrategy::ALL.iter().map(|s| s.name()).collect(),
        ),
    ]
}

/// Every strategy name of every scenario, for `--strategy`.
fn strategy_names() -> clap::builder::PossibleValuesParser {
    let mut names: Vec<&'static str> = Vec::new();
    for (_, of) in scenario_strategies() {
        for name in of {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    clap::builder::PossibleValuesParser::new(names)
}

/// The error for a `--strategy` that `scenario` does not have.
fn not_a_strategy_of(name: &str, scenario: &str) -> String {
    let of: Vec<&str> = scenario_strategies()
        .into_iter()
        .filter(|(_, names)| names.contains(&name))
        .map(|(s, _)| s)
        .collect();
    format!(
        "--strategy {name} is not a strategy of --scenario {scenario} (it is one of --scenario {})",
        of.join(", ")
    )
}

#[derive(Args, Debug)]
struct RunArgs {
    /// What to measure: reading through a cache (stampede), distributed
    /// locks (lock) or a flash sale (seckill).
    #[arg(long, value_enum, default_value_t = Scenario::Stampede)]
    scenario: Scenario,
    /// Worker processes per strategy (each with its own runtime, L1 and connections).
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    processes: u16,
    /// Concurrent tasks (callers) per process [default: 50; lock: 4;
    /// seckill: 50].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    tasks: Option<u32>,
    /// Distinct keys requested.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    keys: u32,
    /// How keys are drawn.
    #[arg(long, value_enum, default_value_t = Dist::Uniform)]
    dist: Dist,
    /// Exponent of the Zipf distribution (key 0 is the most popular).
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Fraction of requests sent to key 0 whatever --dist says (0..=1).
    #[arg(long)]
    hot_share: Option<f64>,
    /// What a miss costs: a SQLite query (default) or a plain sleep.
    #[arg(long, value_enum, default_value_t = LoaderKind::Sqlite)]
    loader: LoaderKind,
    /// Loader time in ms: the sleep, or the delay added to the SQLite query
    /// to stand in for a slow remote database.
    #[arg(long, default_value_t = 50)]
    loader_ms: u64,
    /// Value TTL in ms [default: 60000 cold, 1000 with --duration].
    #[arg(long)]
    ttl_ms: Option<u64>,
    /// herdcache's stale window in ms (`stale_for`): an expired value is
    /// served at once while one caller in the fleet refreshes it. The other
    /// strategies have no such thing and ignore it.
    #[arg(long, default_value_t = 0)]
    stale_ms: u64,
    /// herdcache's probabilistic early refresh (XFetch) factor; 0 turns it
    /// off [default: the library's]. The other strategies ignore it.
    #[arg(long)]
    early_refresh_beta: Option<f64>,
    /// Steady mode: tasks loop requests for this long (e.g. 10s), so keys
    /// expire and refresh under load. Lock: how long tasks loop per
    /// strategy [lock default: 4s; 60s with --count].
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "cold")]
    duration: Option<Duration>,
    /// Cold mode (the default): one request per task, all released at one
    /// instant against an empty cache.
    #[arg(long)]
    cold: bool,
    /// Strategies to compare, in order (repeat the flag or use a comma
    /// list). Stampede: none, naive-lock, local, herdcache. Lock:
    /// setnx-sleep, retry-jitter, herdcache. Seckill: naive, decr-undo,
    /// watch, herdcache. [default: all of the scenario's]
    #[arg(long, value_delimiter = ',', value_parser = strategy_names())]
    strategy: Vec<String>,
    /// Print one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Write an SVG chart: p99 latency over time per strategy (stampede);
    /// units sold over time with each sell-out marked (seckill).
    #[arg(long, value_name = "PATH.svg")]
    chart: Option<PathBuf>,
    /// Lock: distinct lock names; each acquisition picks one at random
    /// [default: 1, every task contends for it].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    locks: Option<u32>,
    /// Lock: length of the critical section in ms (a sleep between the
    /// exclusion check's INCR and DECR) [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    hold_ms: Option<u64>,
    /// Lock: mean pause of a task between its release and its next acquire
    /// (uniform in 0..2x this) [default: 5].
    #[arg(long, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    think_ms: Option<u64>,
    /// Lock: critical sections per task, at most (the run ends at this or
    /// at --duration, whichever comes first).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    count: Option<u64>,
    /// Seckill: units on sale, set on a fresh key for each strategy
    /// [default: 1000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=100_000_000))]
    stock: Option<u64>,
    /// Seckill: buyers, one attempt (one order) each, across all processes
    /// [default: 10000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    buyers: Option<u32>,
    /// Seckill: each buyer asks for 1 to this many units (the same buyer
    /// asks for the same number in every strategy's run) [default: 1].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    max_qty: Option<u32>,
    /// Seckill: how many times `watch` tries one buyer's transaction
    /// before refusing the buyer [default: 50].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=255))]
    watch_retries: Option<u32>,
    /// Seckill: `naive` yields to the scheduler between its GET check and
    /// its DECR (a wider race window; off by default).
    #[arg(long)]
    naive_yield: bool,
    /// Scaling: the fleet sizes (worker processes) to check the model at.
    #[arg(long, value_delimiter = ',', value_parser = clap::value_parser!(u16).range(1..=64))]
    fleet: Vec<u16>,
    /// Scaling: rounds over the fleet sizes (medians are reported)
    /// [default: 3].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: Option<u32>,
    /// Scaling: requests per second per worker process, spread over its
    /// tasks [default: 2000].
    #[arg(long)]
    rate: Option<f64>,
    /// Scaling: how many times each operation is run to cost it
    /// [default: 5000].
    #[arg(long, value_parser = clap::value_parser!(u64).range(100..=1_000_000))]
    costs_ops: Option<u64>,
    /// Stampede and scaling: run herdcache against a throwaway Redis
    /// Cluster of this many masters (3 or more: `redis-cli --cluster
    /// create` wants 3) on loopback ports, and report keys and commands per
    /// master. The tool's own keys go to a plain throwaway server beside
    /// it; the single-node baselines (none, naive-lock, local) are skipped.
    #[arg(long, value_parser = clap::value_parser!(u16).range(3..=16))]
    cluster: Option<u16>,
    /// With --cluster: replicas per master [default: 0].
    #[arg(long, requires = "cluster", value_parser = clap::value_parser!(u16).range(0..=2))]
    cluster_replicas: Option<u16>,
}

impl RunArgs {
    /// `--cluster`, `--cluster-replicas`.
    fn cluster(&self) -> Option<report::ClusterSetup> {
        self.cluster.map(|m| report::ClusterSetup {
            masters: usize::from(m),
            replicas: usize::from(self.cluster_replicas.unwrap_or(0)),
        })
    }
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let (what, result) = match cli.cmd {
        Some(Cmd::Worker { spec, index }) => (format!("worker {index}"), worker_main(&spec, index)),
        Some(Cmd::LockWorker { spec, index }) => (
            format!("lock worker {index}"),
            lock_worker_main(&spec, index),
        ),
        Some(Cmd::SeckillWorker { spec, index }) => (
            format!("seckill worker {index}"),
            seckill_worker_main(&spec, index),
        ),
        None => ("loadtest".to_owned(), run(cli.run, &matches)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{what}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn worker_main(spec: &str, index: usize) -> Res<()> {
    let spec: WorkerSpec = serde_json::from_str(spec)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(worker::run(spec, index))?;
    Ok(())
}

fn lock_worker_main(spec: &str, index: usize) -> Res<()> {
    let spec: lock::worker::Spec = serde_json::from_str(spec)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(lock::worker::run(spec, index))?;
    Ok(())
}

fn seckill_worker_main(spec: &str, index: usize) -> Res<()> {
    let spec: seckill::worker::Spec = serde_json::from_str(spec)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(seckill::worker::run(spec, index))?;
    Ok(())
}

fn run(a: RunArgs, matches: &ArgMatches) -> Res<()> {
    let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
    let scenario = match a.scenario {
        Scenario::Stampede => "stampede",
        Scenario::Lock => "lock",
        Scenario::Seckill => "seckill",
        Scenario::Scaling => "scaling",
    };
    if let Some(id) = foreign_options(a.scenario).iter().find(|id| given(id)) {
        return Err(format!(
            "--{} is not an option of --scenario {scenario}",
            id.replace('_', "-")
        )
        .into());
    }
    match a.scenario {
        Scenario::Stampede => run_stampede(a),
        Scenario::Lock => run_lock(a),
        Scenario::Seckill => run_seckill(a),
        Scenario::Scaling => run_scaling(a, &given),
    }
}

fn run_scaling(a: RunArgs, given: &dyn Fn(&str) -> bool) -> Res<()> {
    let rate = a.rate.unwrap_or(2000.0);
    if !(1.0..=1_000_000.0).contains(&rate) {
        return Err("--rate must be in 1..=1000000".into());
    }
    let duration_ms = a.duration.map_or(8_000, |d| d.as_millis() as u64);
    if duration_ms > 600_000 {
        return Err("--duration must be at most 10min".into());
    }
    let ttl_ms = a.ttl_ms.unwrap_or(1_000);
    if !(100..=60_000).contains(&ttl_ms) {
        return Err("--ttl-ms must be in 100..=60000 for --scenario scaling".into());
    }
    if a.loader_ms == 0 {
        return Err("--loader-ms must be at least 1 (it is XFetch's delta)".into());
    }
    let fleet: Vec<usize> = if a.fleet.is_empty() {
        vec![1, 2, 4, 8, 16]
    } else {
        a.fleet.iter().map(|&p| usize::from(p)).collect()
    };
    scaling::run(
        scaling::Options {
            fleet,
            runs: a.runs.unwrap_or(3) as usize,
            tasks: a.tasks.unwrap_or(20) as usize,
            keys: if given("keys") { a.keys } else { 100 },
            rate,
            ttl_ms,
            loader_ms: a.loader_ms,
            duration_ms,
            costs_ops: a.costs_ops.unwrap_or(5_000),
            json: a.json,
            cluster: a.cluster(),
        },
        &std::env::current_exe()?,
    )
}

fn run_seckill(a: RunArgs) -> Res<()> {
    let mut strategies = Vec::new();
    for name in &a.strategy {
        let s = <SeckillStrategy as clap::ValueEnum>::from_str(name, false)
            .map_err(|_| not_a_strategy_of(name, "seckill"))?;
        if !strategies.contains(&s) {
            strategies.push(s);
        }
    }
    if strategies.is_empty() {
        strategies = SeckillStrategy::ALL.to_vec();
    }
    seckill::run(
        seckill::Options {
            processes: usize::from(a.processes),
            tasks: a.tasks.unwrap_or(50) as usize,
            stock: a.stock.unwrap_or(1000),
            buyers: a.buyers.unwrap_or(10_000),
            max_qty: a.max_qty.unwrap_or(1),
            watch_retries: a.watch_retries.unwrap_or(50),
            naive_yield: a.naive_yield,
            strategies,
            json: a.json,
            chart: a.chart,
        },
        &std::env::current_exe()?,
    )
}

fn run_lock(a: RunArgs) -> Res<()> {
    let mut strategies = Vec::new();
    for name in &a.strategy {
        let s = <LockStrategy as clap::ValueEnum>::from_str(name, false)
            .map_err(|_| not_a_strategy_of(name, "lock"))?;
        if !strategies.contains(&s) {
            strategies.push(s);
        }
    }
    if strategies.is_empty() {
        strategies = LockStrategy::ALL.to_vec();
    }
    let duration_ms = match (a.duration, a.count) {
        (Some(d), _) => d.as_millis() as u64,
        (None, Some(_)) => 60_000,
        (None, None) => 4_000,
    };
    if !(100..=600_000).contains(&duration_ms) {
        return Err("--duration must be between 100ms and 10min".into());
    }
    lock::run(
        lock::Options {
            processes: usize::from(a.processes),
            tasks: a.tasks.unwrap_or(4) as usize,
            locks: a.locks.unwrap_or(1),
            hold_ms: a.hold_ms.unwrap_or(1),
            think_ms: a.think_ms.unwrap_or(5),
            duration_ms,
            count: a.count,
            strategies,
            json: a.json,
        },
        &std::env::current_exe()?,
    )
}

fn run_stampede(a: RunArgs) -> Res<()> {
    if !(a.zipf_s > 0.0 && a.zipf_s.is_finite()) {
        return Err("--zipf-s must be above 0".into());
    }
    let hot_share = a.hot_share.unwrap_or(0.0);
    if !(0.0..=1.0).contains(&hot_share) {
        return Err("--hot-share must be in 0..=1".into());
    }
    if a.loader_ms > 60_000 {
        return Err("--loader-ms must be at most 60000".into());
    }
    if let Some(b) = a.early_refresh_beta
        && !(0.0..=1000.0).contains(&b)
    {
        return Err("--early-refresh-beta must be in 0..=1000".into());
    }
    let duration_ms = a.duration.map(|d| d.as_millis() as u64);
    if let Some(d) = duration_ms
        && !(100..=600_000).contains(&d)
    {
        return Err("--duration must be between 100ms and 10min".into());
    }
    let ttl_ms = a
        .ttl_ms
        .unwrap_or(if duration_ms.is_some() { 1_000 } else { 60_000 });
    if ttl_ms == 0 {
        return Err("--ttl-ms must be at least 1".into());
    }
    let mut strategies = Vec::new();
    for name in &a.strategy {
        let s = <Strategy as clap::ValueEnum>::from_str(name, false)
            .map_err(|_| not_a_strategy_of(name, "stampede"))?;
        if !strategies.contains(&s) {
            strategies.push(s);
        }
    }
    if strategies.is_empty() {
        strategies = Strategy::ALL.to_vec();
    }
    let cluster_setup = a.cluster();
    if cluster_setup.is_some() {
        // The baselines are single-node code (one plain connection, keys
        // without a shared hash tag): rather than measure them against some
        // other server, they are left out of a cluster run.
        let (on, off): (Vec<Strategy>, Vec<Strategy>) = strategies
            .into_iter()
            .partition(|s| *s == Strategy::Herdcache);
        for s in off {
            eprintln!(
                "--cluster: skipping {}: a single-node baseline (one plain connection); only \
                 herdcache runs on the cluster",
                s.name()
            );
        }
        if on.is_empty() {
            return Err("--cluster runs herdcache only, and --strategy leaves it out".into());
        }
        strategies = on;
    }
    let settings = Settings {
        mode: if duration_ms.is_some() {
            "steady"
        } else {
            "cold"
        },
        processes: usize::from(a.processes),
        tasks: a.tasks.unwrap_or(50) as usize,
        keys: a.keys,
        dist: a.dist,
        zipf_s: a.zipf_s,
        hot_share,
        loader: a.loader,
        loader_ms: a.loader_ms,
        ttl_ms,
        stale_ms: a.stale_ms,
        early_refresh_beta: a.early_refresh_beta,
        duration_ms,
        // Cold runs last a few hundred ms; steady ones seconds to minutes.
        bucket_ms: match duration_ms {
            None => 10,
            Some(d) if d <= 60_000 => 100,
            Some(_) => 1_000,
        },
        expected_expiries: duration_ms.map(|d| f64::from(a.keys) * d as f64 / ttl_ms as f64),
        cluster: cluster_setup,
    };

    // Everything we print besides the result goes to stderr, so `--json`
    // output can be piped as is.
    let (_server, url, the_cluster) = match (cluster_setup, std::env::var("REDIS_URL")) {
        (Some(c), env) => {
            if env.is_ok() {
                eprintln!("--cluster: REDIS_URL is not used; the cluster is a throwaway one");
            }
            // The tool's own keys (ready/go, load counts, reports) on a
            // plain server beside the cluster: the masters' counters then
            // hold only the cache's commands.
            let book = support::RedisServer::start();
            let cluster = cluster::Cluster::start(c.masters, c.replicas)?;
            eprintln!(
                "started a throwaway Redis Cluster of {} masters ({} replicas each): {}; and a \
                 redis-server for the tool's bookkeeping on {}",
                c.masters,
                c.replicas,
                cluster.url(),
                book.url()
            );
            (Some(book), cluster.url(), Some(cluster))
        }
        (None, Ok(url)) => (None, url, None),
        (None, Err(_)) => {
            let server = support::RedisServer::start();
            let url = server.url();
            eprintln!("started a throwaway redis-server on {url}");
            (Some(server), url, None)
        }
    };
    // Where the tool's own keys go: the measured Redis unless it is a
    // cluster.
    let book_url = the_cluster.as_ref().and(_server.as_ref()).map(|s| s.url());
    let mut nodes = the_cluster
        .as_ref()
        .map(|c| cluster::Nodes::connect(&c.masters, &c.slots))
        .transpose()?;
    let db = match a.loader {
        LoaderKind::Sqlite => {
            let t = Instant::now();
            let path = db::create(a.keys)?;
            eprintln!(
                "filled a SQLite database ({} products) at {} in {:.0?}",
                a.keys,
                path.display(),
                t.elapsed()
            );
            Some(path)
        }
        LoaderKind::Sleep => None,
    };
    if !a.json && std::io::stderr().is_terminal() {
        // Context for the progress bars; the table repeats it on stdout.
        eprintln!("{}", report::headline(&settings));
    }

    let exe = std::env::current_exe()?;
    let mut con = scenario::connect(book_url.as_deref().unwrap_or(&url))?;
    // A unique prefix per run and strategy: each strategy starts from an
    // empty cache, and a shared Redis (REDIS_URL) is never flushed.
    let run_id = format!("lt{:08x}", fastrand::u32(..));
    let mut results: Vec<StrategyResult> = Vec::new();
    for strategy in strategies {
        let spec = WorkerSpec {
            redis_url: url.clone(),
            run: format!("{run_id}-{}", strategy.name()),
            strategy,
            tasks: settings.tasks,
            keys: settings.keys,
            dist: settings.dist,
            zipf_s: settings.zipf_s,
            hot_share,
            loader: settings.loader,
            loader_ms: settings.loader_ms,
            db_path: db.as_ref().map(|p| p.to_path_buf()),
            ttl_ms,
            stale_ms: settings.stale_ms,
            early_refresh_beta: settings.early_refresh_beta,
            duration_ms,
            bucket_ms: settings.bucket_ms,
            book_url: book_url.clone(),
            rate: None,
        };
        let launch = Launch {
            subcommand: "worker",
            spec_json: serde_json::to_string(&spec)?,
            run: &spec.run,
            label: strategy.name(),
            duration_ms: spec.duration_ms,
            counter_key: format!("{}:loads", spec.run),
            noun: "loader calls",
        };
        let before = nodes.as_mut().map(|n| n.snap()).transpose()?;
        run_workers(&exe, &mut con, &launch, settings.processes, &mut || Ok(()))?;
        let per_master = match (nodes.as_mut(), &before) {
            (Some(nodes), Some(before)) => Some(nodes.loads(before)?),
            _ => None,
        };
        let mut result =
            report::collect(&mut con, &spec.run, strategy, settings.processes, &settings)?;
        result.per_master = per_master;
        results.push(result);
    }

    let report = Report {
        settings,
        strategies: results,
    };
    if let Some(path) = &a.chart {
        chart::write_svg(path, &report)?;
        eprintln!("chart written to {}", path.display());
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        report::print_table(&report);
    }
    Ok(())
}

/// The worker processes of one strategy. Dropping it kills those still
/// running (only our own children, by handle), so an error path never
/// leaves workers behind.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            if let Ok(None) = child.try_wait() {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

impl Workers {
    /// Exit statuses of the workers that have exited, if they all have.
    fn all_exited(&mut self) -> Res<Option<Vec<ExitStatus>>> {
        let mut done = Vec::new();
        for child in &mut self.0 {
            match child.try_wait()? {
                Some(status) => done.push(status),
                None => return Ok(None),
            }
        }
        Ok(Some(done))
    }

    fn first_failure(&mut self) -> Res<Option<ExitStatus>> {
        for child in &mut self.0 {
            if let Some(status) = child.try_wait()?
                && !status.success()
            {
                return Ok(Some(status));
            }
        }
        Ok(None)
    }
}

fn get_u64(con: &mut redis::Connection, key: &str) -> Res<u64> {
    let v: Option<u64> = redis::cmd("GET").arg(key).query(con)?;
    Ok(v.unwrap_or(0))
}

/// What [`run_workers`] starts, and how it shows their progress.
struct Launch<'a> {
    /// The hidden subcommand the workers run (`worker`, `lock-worker`).
    subcommand: &'a str,
    /// Their spec, as the one JSON argument.
    spec_json: String,
    /// Prefix of the run's keys: `<run>:ready`, `<run>:go`.
    run: &'a str,
    /// The strategy's name, for the progress bar and errors.
    label: &'a str,
    /// Steady runs: how long the workers run after the release.
    duration_ms: Option<u64>,
    /// A counter the workers advance, shown as "<n> <noun>".
    counter_key: String,
    noun: &'a str,
}

/// Starts the workers, releases them at one instant, shows progress, and
/// waits until they have all exited. `on_ready` runs once every worker is
/// ready, just before the release. Returns the release instant (Unix ms).
fn run_workers(
    exe: &Path,
    con: &mut redis::Connection,
    launch: &Launch<'_>,
    procs: usize,
    on_ready: &mut dyn FnMut() -> Res<()>,
) -> Res<u64> {
    let run = launch.run;
    let label = launch.label;
    let mut workers = Workers(Vec::with_capacity(procs));
    for index in 0..procs {
        workers.0.push(
            Command::new(exe)
                .args([launch.subcommand, "--spec", &launch.spec_json])
                .args(["--index", &index.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()?,
        );
    }

    let bar = match launch.duration_ms {
        Some(d) => ProgressBar::new(d),
        None => ProgressBar::new(procs as u64),
    };
    bar.set_style(
        ProgressStyle::with_template("{prefix:<12} [{bar:30}] {elapsed:>4} {msg}")?
            .progress_chars("=> "),
    );
    bar.set_prefix(label.to_owned());
    bar.set_message("starting workers");
    bar.enable_steady_tick(Duration::from_millis(100));

    // Every worker has built its client and connected before any starts:
    // the release is one instant, not the spread of process start-up.
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_u64(con, &format!("{run}:ready"))? < procs as u64 {
        if let Some(status) = workers.first_failure()? {
            return Err(format!("a {label} worker failed before it was ready ({status})").into());
        }
        if Instant::now() > deadline {
            return Err("workers not ready after 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    on_ready()?;
    // 200 ms ahead: workers poll for it every 1 ms, then sleep until it.
    let go_ms = now_ms() + 200;
    let _: () = redis::cmd("SET")
        .arg(format!("{run}:go"))
        .arg(go_ms)
        .query(con)?;

    let limit = Duration::from_millis(launch.duration_ms.unwrap_or(0)) + Duration::from_secs(60);
    let started = Instant::now();
    let noun = launch.noun;
    let statuses = loop {
        if let Some(statuses) = workers.all_exited()? {
            break statuses;
        }
        if started.elapsed() > limit {
            return Err(format!("{label} workers still running after {limit:?}; killed").into());
        }
        let n = get_u64(con, &launch.counter_key)?;
        match launch.duration_ms {
            Some(d) => bar.set_position(now_ms().saturating_sub(go_ms).min(d)),
            None => bar.set_position(
                workers
                    .0
                    .iter_mut()
                    .filter_map(|c| c.try_wait().ok().flatten())
                    .count() as u64,
            ),
        }
        bar.set_message(format!("{n} {noun}"));
        std::thread::sleep(Duration::from_millis(50));
    };
    let n = get_u64(con, &launch.counter_key)?;
    bar.set_position(bar.length().unwrap_or(0));
    bar.finish_with_message(format!("done: {n} {noun}"));
    if let Some(status) = statuses.iter().find(|s| !s.success()) {
        return Err(format!("a {label} worker failed ({status})").into());
    }
    Ok(go_ms)
}
