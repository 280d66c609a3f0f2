//! `--scenario scaling`: the figures behind docs/SCALING.md.
//!
//! 1. **Per-operation costs** (`costs.rs`): on a throwaway `redis-server`
//!    nothing else uses, each kind of herdcache operation run a few
//!    thousand times, and what `INFO` says the server did divided by that.
//! 2. **The fleet check**: for each fleet size in `--fleet`, that many
//!    herdcache worker processes (the stampede scenario's worker, paced at
//!    `--rate` requests/s each, uniform over `--keys`, short `--ttl-ms` so
//!    keys are rebuilt during the run) against one more throwaway server;
//!    the tool's own keys go to a second one, so the first one's counters
//!    hold only the cache's traffic. After a warm-up, the server's
//!    counters are read at the start and the end of a window, and set
//!    beside what the model (`model.rs`) predicts from the costs of step 1
//!    and the workload. `--runs` rounds, fleet sizes interleaved; the
//!    table gives medians.
//! 3. With `--cluster N`, the fleet's Redis is a throwaway cluster of N
//!    masters instead (`crate::cluster`): the counters are the masters'
//!    added up, set beside the same model (the costs are still one plain
//!    node's), and each master's share is printed under the table.
//!
//! | file | what it is for |
//! |---|---|
//! | `mod.rs` | the run, and the table |
//! | `costs.rs` | per-operation costs |
//! | `model.rs` | the model's predictions |

mod costs;
mod model;

use serde::Serialize;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::cluster::{self, NodeLoad, Nodes};
use crate::report::ClusterSetup;
use crate::strategies::{LoaderKind, Strategy};
use crate::worker::{Dist, WorkerReport, WorkerSpec, report_key};
use crate::{Launch, Res, info, run_workers, scenario, support};
use costs::Costs;
use model::{Load, Workload};

pub struct Options {
    pub fleet: Vec<usize>,
    pub runs: usize,
    pub tasks: usize,
    pub keys: u32,
    pub rate: f64,
    pub ttl_ms: u64,
    pub loader_ms: u64,
    pub duration_ms: u64,
    pub costs_ops: u64,
    pub json: bool,
    pub cluster: Option<ClusterSetup>,
}

/// One fleet run, measured at the server over the window.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub processes: usize,
    pub secs: f64,
    pub requests: f64,
    pub fills: f64,
    pub probes: f64,
    pub gets: f64,
    pub pings: f64,
    pub commands: f64,
    pub cpu: f64,
    /// The same server's CPU in the second before the run, no workers.
    pub quiet_cpu: f64,
    pub out_bytes: f64,
    /// From the workers' counters over the whole run (warm-up included).
    pub l1_hit_ratio: f64,
    pub loads: u64,
    pub errors: u64,
    /// `--cluster`: each master over the window (keys: `DBSIZE` just after
    /// the run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub masters: Vec<NodeLoad>,
}

#[derive(Serialize)]
struct Row {
    processes: usize,
    predicted: Load,
    /// Medians over the runs.
    measured: Measured,
    runs: Vec<Measured>,
}

#[derive(Serialize)]
struct Output<'a> {
    costs: &'a Costs,
    workload: Workload,
    window_s: f64,
    rows: Vec<Row>,
}

pub fn run(o: Options, exe: &Path) -> Res<()> {
    let costs_server = support::RedisServer::start();
    let book_server = support::RedisServer::start();
    // The fleet's Redis: one plain server, or a cluster.
    let (_fleet_server, fleet_cluster, fleet_url, fleet_nodes, fleet_slots) = match o.cluster {
        None => {
            let server = support::RedisServer::start();
            let url = server.url();
            (Some(server), None, url.clone(), vec![url], vec![16384])
        }
        Some(c) => {
            let cl = cluster::Cluster::start(c.masters, c.replicas)?;
            let (url, nodes, slots) = (cl.url(), cl.masters.clone(), cl.slots.clone());
            (None, Some(cl), url, nodes, slots)
        }
    };
    eprintln!(
        "started throwaway servers: {} for the per-operation costs, {} for the fleet, {} for \
         the tool's bookkeeping",
        costs_server.url(),
        fleet_url,
        book_server.url()
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    eprintln!("measuring per-operation costs ({} ops each)", o.costs_ops);
    let costs = rt.block_on(costs::measure(&costs_server.url(), o.costs_ops, 16))?;
    drop(rt);
    drop(costs_server);

    let workload = Workload {
        processes: 0.0,
        keys: f64::from(o.keys),
        rate: o.rate,
        ttl: o.ttl_ms as f64 / 1e3,
        load: o.loader_ms as f64 / 1e3,
        beta: 1.0,
        pings: 1.0, // herdcache's heartbeat (shared/link.rs)
    };
    // The window: past the first fills and one whole TTL, to the end less
    // a margin for the workers' last requests.
    let warmup_ms = (1_500).max(o.ttl_ms * 3 / 2);
    if o.duration_ms < warmup_ms + 2_000 {
        return Err(format!(
            "--duration must be at least {} ms here (warm-up {warmup_ms} ms + a 2 s window)",
            warmup_ms + 2_000
        )
        .into());
    }
    let window_ms = o.duration_ms - warmup_ms - 300;

    let mut book = scenario::connect(&book_server.url())?;
    let run_id = format!("sc{:08x}", fastrand::u32(..));
    let mut all: Vec<Vec<Measured>> = vec![Vec::new(); o.fleet.len()];
    for round in 0..o.runs {
        for (i, &procs) in o.fleet.iter().enumerate() {
            let run = format!("{run_id}-{round}-{procs}");
            let spec = WorkerSpec {
                redis_url: fleet_url.clone(),
                run: run.clone(),
                strategy: Strategy::Herdcache,
                tasks: o.tasks,
                keys: o.keys,
                dist: Dist::Uniform,
                zipf_s: 1.0,
                hot_share: 0.0,
                loader: LoaderKind::Sleep,
                loader_ms: o.loader_ms,
                db_path: None,
                ttl_ms: o.ttl_ms,
                stale_ms: 0,
                early_refresh_beta: None,
                duration_ms: Some(o.duration_ms),
                bucket_ms: 1_000,
                book_url: Some(book_server.url()),
                rate: Some(o.rate),
            };
            let launch = Launch {
                subcommand: "worker",
                spec_json: serde_json::to_string(&spec)?,
                run: &run,
                label: &format!("{procs} procs"),
                duration_ms: Some(o.duration_ms),
                counter_key: format!("{run}:loads"),
                noun: "loads",
            };
            // The fleet server's own CPU with no worker running (cron, the
            // keys of earlier runs expiring), for the record.
            let mut nodes = Nodes::connect(&fleet_nodes, &fleet_slots)?;
            let quiet = {
                let a = nodes.snap()?;
                std::thread::sleep(Duration::from_millis(1_000));
                let b = nodes.snap()?;
                let d = sum_deltas(&a, &b);
                d.cpu_s / d.secs
            };
            // The window is read by a thread of its own, timed from the
            // release (`run_workers` sets it 200 ms after `on_ready`).
            let mut reader = None;
            run_workers(exe, &mut book, &launch, procs, &mut || {
                let go = Instant::now() + Duration::from_millis(200);
                let (urls, slots) = (fleet_nodes.clone(), fleet_slots.clone());
                reader = Some(std::thread::spawn(
                    move || -> Result<Vec<info::Delta>, String> {
                        let mut nodes = Nodes::connect(&urls, &slots).map_err(|e| e.to_string())?;
                        std::thread::sleep(
                            (go + Duration::from_millis(warmup_ms))
                                .saturating_duration_since(Instant::now()),
                        );
                        let a = nodes.snap().map_err(|e| e.to_string())?;
                        std::thread::sleep(Duration::from_millis(window_ms));
                        let b = nodes.snap().map_err(|e| e.to_string())?;
                        Ok(a.iter().zip(&b).map(|(a, b)| info::delta(a, b)).collect())
                    },
                ));
                Ok(())
            })?;
            let deltas = reader
                .ok_or("the window was not read")?
                .join()
                .map_err(|_| "the window reader panicked")??;
            let keys = nodes.keys()?;
            let d = info::sum(&deltas);
            let mut total = WorkerReport::default();
            let mut hc = crate::worker::HcStats::default();
            for w in 0..procs {
                let json: String = redis::cmd("GET")
                    .arg(report_key(&run, w))
                    .query(&mut book)?;
                let r: WorkerReport = serde_json::from_str(&json)?;
                total.requests += r.requests;
                total.errors += r.errors;
                if let Some(s) = r.herdcache {
                    hc.add(&s);
                }
            }
            let s = d.secs;
            let evalsha = d.calls("evalsha") as f64;
            // A fill's notice: `PUBLISH` on one node, `SPUBLISH` on a cluster.
            let publish = (d.calls("publish") + d.calls("spublish")) as f64;
            let m = Measured {
                processes: procs,
                secs: s,
                requests: total.requests as f64 / (o.duration_ms as f64 / 1e3),
                fills: publish / s,
                probes: (evalsha - publish) / s,
                // Each script reads one key with GET inside.
                gets: (d.calls("get") as f64 - evalsha) / s,
                // herdcache's heartbeat: `PING` on one node, `CLUSTER
                // SLOTS` on a cluster (it compares the slot map).
                pings: (d.calls("ping") + d.calls("cluster|slots")) as f64 / s,
                commands: d.cmds.values().map(|c| c.0).sum::<u64>() as f64 / s,
                cpu: d.cpu_s / s,
                quiet_cpu: quiet,
                out_bytes: d.net_out as f64 / s,
                l1_hit_ratio: hc.l1_hits as f64 / (total.requests.max(1)) as f64,
                loads: hc.loads,
                errors: total.errors,
                masters: if fleet_cluster.is_some() {
                    nodes.node_loads(&deltas, &keys)
                } else {
                    Vec::new()
                },
            };
            if m.errors > 0 {
                eprintln!("warning: {} failed requests at {procs} processes", m.errors);
            }
            all[i].push(m);
        }
    }

    let mut rows = Vec::new();
    for (i, &procs) in o.fleet.iter().enumerate() {
        let predicted = model::predict(
            &Workload {
                processes: procs as f64,
                ..workload
            },
            &costs,
        );
        rows.push(Row {
            processes: procs,
            predicted,
            measured: median(&all[i]),
            runs: all[i].clone(),
        });
    }
    let out = Output {
        costs: &costs,
        workload,
        window_s: window_ms as f64 / 1e3,
        rows,
    };
    if o.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_tables(&out, &o);
    }
    Ok(())
}

fn med(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn median(runs: &[Measured]) -> Measured {
    let f = |g: fn(&Measured) -> f64| med(runs.iter().map(g).collect());
    Measured {
        processes: runs.first().map_or(0, |m| m.processes),
        secs: f(|m| m.secs),
        requests: f(|m| m.requests),
        fills: f(|m| m.fills),
        probes: f(|m| m.probes),
        gets: f(|m| m.gets),
        pings: f(|m| m.pings),
        commands: f(|m| m.commands),
        cpu: f(|m| m.cpu),
        quiet_cpu: f(|m| m.quiet_cpu),
        out_bytes: f(|m| m.out_bytes),
        l1_hit_ratio: f(|m| m.l1_hit_ratio),
        loads: f(|m| m.loads as f64) as u64,
        errors: runs.iter().map(|m| m.errors).sum(),
        masters: cluster::median(&runs.iter().map(|m| m.masters.clone()).collect::<Vec<_>>()),
    }
}

/// Every node's counters between two readings, added up.
fn sum_deltas(a: &[info::Snap], b: &[info::Snap]) -> info::Delta {
    let deltas: Vec<info::Delta> = a.iter().zip(b).map(|(a, b)| info::delta(a, b)).collect();
    info::sum(&deltas)
}

fn print_tables(out: &Output<'_>, o: &Options) {
    let c = out.costs;
    println!(
        "Per-operation costs at the server ({} ops each, one at a time unless said):",
        o.costs_ops
    );
    println!(
        "{:<12} {:>9} {:>9} {:>9}  {:<40} what",
        "operation", "CPU us", "in B", "out B", "commands per op"
    );
    for r in &c.rows {
        let cmds: Vec<String> = r
            .calls
            .iter()
            .filter(|(_, n)| **n >= 0.005)
            .map(|(k, n)| format!("{k} {n:.2}"))
            .collect();
        println!(
            "{:<12} {:>9.2} {:>9.1} {:>9.1}  {:<40} {}",
            r.name,
            r.cpu_us,
            r.in_bytes,
            r.out_bytes,
            cmds.join(", "),
            r.what
        );
    }
    println!(
        "model inputs: GET {:.2} us, probe {:.2} us, fill {:.2} us, delivery {:.2} us and {:.1} B \
         per subscriber (notice {} B), PING {:.2} us; idle {:.0} us/s with {} connections \
         ({:.2} PING/s)",
        c.get_us,
        c.probe_us,
        c.fill_us,
        c.delivery_us,
        c.delivery_bytes,
        c.notice_bytes,
        c.ping_us,
        c.idle_us_per_s,
        c.idle_clients,
        c.idle_pings_per_s
    );
    println!(
        "busy (64 in flight): GET {:.2} us, probe {:.2} us, fill {:.2} us, delivery {:.2} us",
        c.busy.get_us, c.busy.probe_us, c.busy.fill_us, c.busy.delivery_us
    );
    println!();
    let on = match o.cluster {
        Some(c) => format!(
            "on a Redis Cluster of {} masters ({} replicas each; measured: the masters added \
             up, fills by SPUBLISH, the heartbeat's CLUSTER SLOTS as PING/s)",
            c.masters, c.replicas
        ),
        None => "on one redis-server".to_owned(),
    };
    println!(
        "Fleet check {on}: {} keys uniform, {} req/s per process ({} tasks), TTL {} ms, loader \
         {} ms (sleep), window {:.1} s after a warm-up; medians of {} runs; predicted / measured",
        o.keys, o.rate, o.tasks, o.ttl_ms, o.loader_ms, out.window_s, o.runs
    );
    println!(
        "{:>5} {:>9} {:>7} {:>15} {:>15} {:>15} {:>15} {:>17} {:>15} {:>17}",
        "procs",
        "req/s",
        "L1 hit",
        "fills/s",
        "probes/s",
        "GET/s",
        "PING/s",
        "commands/s",
        "CPU %",
        "out KB/s"
    );
    for r in &out.rows {
        let (p, m) = (&r.predicted, &r.measured);
        println!(
            "{:>5} {:>9.0} {:>6.2}% {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>7.1} {:>8.0} {:>8.0} {:>7.2} {:>7.2} {:>8.1} {:>8.1}",
            r.processes,
            m.requests,
            100.0 * m.l1_hit_ratio,
            p.fills,
            m.fills,
            p.probes,
            m.probes,
            p.gets,
            m.gets,
            p.pings,
            m.pings,
            p.commands,
            m.commands,
            100.0 * p.cpu,
            100.0 * m.cpu,
            p.out_bytes / 1e3,
            m.out_bytes / 1e3
        );
    }
    for r in &out.rows {
        if !r.measured.masters.is_empty() {
            println!(
                "\n{} processes, per master over the window (medians; keys: DBSIZE just after \
                 the run):",
                r.processes
            );
            cluster::print_table(&r.measured.masters, true);
        }
    }
}
