//! `--scenario seckill`: a flash sale. Every strategy sells the same stock,
//! on a fresh key, to the same buyers (`--buyers` attempts, one order each,
//! spread over `--processes` worker processes of `--tasks` tasks that send
//! as fast as answers come back), and every unit sold must also be
//! persisted as an order. Measures units sold against the stock (oversold),
//! orders persisted against orders accepted, accepted orders per second
//! until the sell-out, and the latency of one attempt.
//!
//! | file | what it is for |
//! |---|---|
//! | `mod.rs` | options; the two Redis servers; each strategy's run; herdcache's order consumer |
//! | `strategies.rs` | naive / decr-undo / watch / herdcache: one buyer's attempt |
//! | `worker.rs` | one worker process: its buyers, and the record of each attempt |
//! | `report.rs` | merging the records, the order check, the table and JSON |
//! | `chart.rs` | `--chart`: units sold over time, the sell-out marked |
//!
//! Persisting: the baselines `LPUSH` the order id to `<run>:orders` right
//! after their decrement succeeded (the tutorials' second command); the
//! parent reads the list back after the run. herdcache's reserve script
//! writes the order to the SKU's stream itself; a consumer-group reader in
//! this (parent) process takes each order, stores its id (in memory: the
//! stand-in for an `orders` table) and acknowledges it, during the sale and
//! until every accepted order is in, so "persisted" counts acknowledged
//! orders.
//!
//! Two Redis servers when the tool starts its own, as in the lock
//! scenario: the sale on one, the tool's bookkeeping (handshake, progress,
//! results) on the other.

pub mod chart;
pub mod report;
pub mod strategies;
pub mod worker;

use herdcache::{OrderConsumer, OrderEvent};
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::lock::worker::unix_us;
use crate::{Launch, Res, run_workers, scenario};
use report::{AfterRun, Report, Settings};
use strategies::{Keys, SeckillStrategy};
use worker::{Spec, progress_key};

/// Attempts not started this long after the release are not made: the run
/// is bounded in time whatever the options.
pub const TIME_LIMIT: Duration = Duration::from_secs(30);
/// herdcache's consumer: how long one wait for an order lasts.
const CONSUMER_POLL: Duration = Duration::from_millis(50);
/// herdcache's consumer gives up this long after the last order came, if
/// orders are still missing once the workers are done.
const CONSUMER_IDLE_LIMIT: Duration = Duration::from_secs(5);

/// The scenario's options, checked by `main.rs`.
#[derive(Debug, Clone)]
pub struct Options {
    pub processes: usize,
    pub tasks: usize,
    pub stock: u64,
    pub buyers: u32,
    pub max_qty: u32,
    pub watch_retries: u32,
    pub naive_yield: bool,
    pub strategies: Vec<SeckillStrategy>,
    pub json: bool,
    pub chart: Option<PathBuf>,
}

/// herdcache's keys for a SKU (`src/stock/keys.rs`), to read the stock
/// counter as it is in Redis and to clean up after the run.
fn herdcache_keys(sku: &str) -> Vec<String> {
    ["n", "a", "u", "c", "o", "d"]
        .iter()
        .map(|s| format!("hc:st:{{{sku}}}:{s}"))
        .collect()
}

/// Runs each strategy in turn and prints the comparison.
pub fn run(o: Options, exe: &Path) -> Res<()> {
    let settings = Settings {
        scenario: "seckill",
        processes: o.processes,
        tasks: o.tasks,
        stock: o.stock,
        buyers: o.buyers,
        max_qty: o.max_qty,
        watch_retries: o.watch_retries,
        naive_yield: o.naive_yield,
        time_limit_ms: TIME_LIMIT.as_millis() as u64,
    };
    // Everything we print besides the result goes to stderr, so `--json`
    // output can be piped as is.
    let (_servers, stock_url, book_url) = scenario::two_servers("the sale");
    if !o.json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("{}", report::headline(&settings));
    }
    let mut book = scenario::connect(&book_url)?;
    let mut sale = scenario::connect(&stock_url)?;
    // herdcache's side in this process (the stock's setting, the order
    // consumer): one runtime thread, so the consumer runs while this
    // thread watches the workers.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut hc: Option<herdcache::Client> = None;

    // A unique prefix per run and strategy: each strategy sells from a
    // fresh key, and a shared Redis never meets another run's keys.
    let run_id = format!("lt{:08x}", fastrand::u32(..));
    let mut results = Vec::new();
    for strategy in o.strategies {
        let run = format!("{run_id}-{}", strategy.name());
        let keys = Keys::new(&run);
        // herdcache: the consumer joins its group before the sale, and
        // persists orders while it goes on.
        let consumer = match strategy {
            SeckillStrategy::Herdcache => {
                let client = match &hc {
                    Some(c) => c.clone(),
                    None => {
                        let c = rt.block_on(herdcache::Client::connect(stock_url.as_str()))?;
                        hc = Some(c.clone());
                        c
                    }
                };
                let stock = client.stock(run.as_str());
                rt.block_on(stock.set_available(o.stock))?;
                let c = rt.block_on(
                    stock
                        .orders()
                        .block(CONSUMER_POLL)
                        .consumer("persist", "loadtest"),
                )?;
                let target = Arc::new(AtomicU64::new(u64::MAX));
                let handle = rt.spawn(persist(c, target.clone()));
                Some((handle, target))
            }
            _ => {
                let _: () = redis::pipe()
                    .set(&keys.stock, o.stock)
                    .ignore()
                    .del(&keys.orders)
                    .ignore()
                    .query(&mut sale)?;
                None
            }
        };
        let spec = Spec {
            stock_url: stock_url.clone(),
            book_url: book_url.clone(),
            run: run.clone(),
            strategy,
            processes: o.processes,
            tasks: o.tasks,
            buyers: o.buyers,
            max_qty: o.max_qty,
            watch_retries: o.watch_retries,
            naive_yield: o.naive_yield,
            time_limit_ms: settings.time_limit_ms,
        };
        let launch = Launch {
            subcommand: "seckill-worker",
            spec_json: serde_json::to_string(&spec)?,
            run: &run,
            label: strategy.name(),
            duration_ms: None,
            counter_key: progress_key(&run),
            noun: "attempts",
        };
        let ran = run_workers(exe, &mut book, &launch, o.processes, &mut || Ok(()));
        let go_ms = match ran {
            Ok(go) => go,
            Err(e) => {
                if let Some((handle, _)) = consumer {
                    handle.abort();
                }
                return Err(e);
            }
        };
        let (records, out) = report::read_workers(&mut book, &run, o.processes)?;

        let mut out = out;
        let after = match consumer {
            Some((handle, target)) => {
                let accepted = records
                    .iter()
                    .filter(|r| r.outcome == strategies::Outcome::Sold)
                    .count() as u64;
                target.store(accepted, Ordering::Relaxed);
                let p = rt.block_on(handle)?;
                out.errors += p.errors;
                out.error_samples
                    .extend(p.error_samples.iter().map(|e| format!("consumer: {e}")));
                let hk = herdcache_keys(&run);
                // The counter as Redis has it (Stock::available would clamp
                // a negative one to 0).
                let n: Option<i64> = redis::cmd("GET").arg(&hk[0]).query(&mut sale)?;
                let _: () = redis::cmd("DEL").arg(&hk).query(&mut sale)?;
                AfterRun {
                    final_stock: n.unwrap_or(0),
                    persisted: p.ids,
                    last_persisted_us: p.last_us,
                }
            }
            None => {
                let (n, ids): (Option<i64>, Vec<String>) = redis::pipe()
                    .get(&keys.stock)
                    .lrange(&keys.orders, 0, -1)
                    .query(&mut sale)?;
                let _: () = redis::cmd("DEL")
                    .arg(&keys.stock)
                    .arg(&keys.orders)
                    .query(&mut sale)?;
                AfterRun {
                    final_stock: n.unwrap_or(0),
                    persisted: ids,
                    last_persisted_us: None,
                }
            }
        };
        results.push(report::analyse(
            strategy,
            o.stock,
            go_ms * 1000,
            &records,
            out,
            &after,
        ));
    }

    let report = Report {
        settings,
        strategies: results,
    };
    if let Some(path) = &o.chart {
        chart::write_svg(path, &report)?;
        eprintln!("chart written to {}", path.display());
    }
    if o.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        report::print_table(&report);
    }
    Ok(())
}

/// What herdcache's consumer persisted.
struct Persisted {
    /// Order ids stored, once per delivery stored (a redelivery shows as a
    /// duplicate).
    ids: Vec<String>,
    /// When the last order was acknowledged (Unix µs).
    last_us: Option<u64>,
    errors: u64,
    error_samples: Vec<String>,
}

/// The order worker: takes each order from the SKU's stream, stores its id,
/// acknowledges it. Runs during the sale; once `target` (the accepted
/// orders, known when the workers are done) is set, it stops at the first
/// wait that finds no order with every accepted order stored, or
/// [`CONSUMER_IDLE_LIMIT`] after the last order if some never come.
async fn persist(mut c: OrderConsumer, target: Arc<AtomicU64>) -> Persisted {
    let mut p = Persisted {
        ids: Vec::new(),
        last_us: None,
        errors: 0,
        error_samples: Vec::new(),
    };
    let mut stored = HashSet::new();
    let hard = tokio::time::Instant::now() + TIME_LIMIT + Duration::from_secs(90);
    let mut last_order = tokio::time::Instant::now();
    // Bounded by the hard limit: every pass takes an order or waits.
    let max_passes = 100_000_000u64;
    for _ in 0..max_passes {
        if tokio::time::Instant::now() > hard {
            break;
        }
        match c.next_timeout(CONSUMER_POLL).await {
            Ok(Some(d)) => {
                last_order = tokio::time::Instant::now();
                if d.event() == OrderEvent::Reserved {
                    // Stored before the acknowledgement, as an order
                    // worker must.
                    stored.insert(d.order_id().to_owned());
                    p.ids.push(d.order_id().to_owned());
                }
                match d.ack().await {
                    Ok(_) => p.last_us = Some(unix_us()),
                    Err(e) => {
                        p.errors += 1;
                        if p.error_samples.len() < 3 {
                            p.error_samples.push(e.to_string());
                        }
                    }
                }
            }
            Ok(None) => {
                let t = target.load(Ordering::Relaxed);
                if t != u64::MAX
                    && (stored.len() as u64 >= t || last_order.elapsed() > CONSUMER_IDLE_LIMIT)
                {
                    break;
                }
            }
            Err(e) => {
                p.errors += 1;
                if p.error_samples.len() < 3 {
                    p.error_samples.push(e.to_string());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    p
}
