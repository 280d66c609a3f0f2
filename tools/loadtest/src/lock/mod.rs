//! `--scenario lock`: herdcache's lock against the seed's `SETNX` + sleep
//! lock and a redsync-like lock that retries after a random 50-250 ms, in
//! real worker processes contending for the same lock names. Measures
//! critical sections per second, acquire wait, hand-off latency (release to
//! next acquisition), exclusion (it must never break), and the commands
//! the lock's Redis executed per critical section.
//!
//! | file | what it is for |
//! |---|---|
//! | `mod.rs` | options; the two Redis servers; running each strategy's workers |
//! | `strategies.rs` | setnx-sleep / retry-jitter / herdcache: acquire and release |
//! | `worker.rs` | one worker process: the acquire, hold, release, think loop, and its records |
//! | `report.rs` | merging the records, hand-offs, the table and JSON |
//!
//! Two Redis servers when the tool starts its own: the locks live on one,
//! and everything the tool itself needs (the ready/go handshake, the
//! exclusion counters, progress, results) on the other, so the lock's
//! Redis executes nothing but lock commands and its `INFO commandstats`
//! counts them exactly. With `REDIS_URL` both are that one Redis, and the
//! command counts are left out.

pub mod report;
pub mod strategies;
pub mod worker;

use std::path::Path;

use crate::{Launch, Res, run_workers, scenario};
use report::{Report, Settings, command_delta, commandstats};
use strategies::{LEASE, LockStrategy};
use worker::{MAX_SECTIONS_PER_TASK, Spec, progress_key};

/// The scenario's options, checked by `main.rs`.
#[derive(Debug, Clone)]
pub struct Options {
    pub processes: usize,
    pub tasks: usize,
    pub locks: u32,
    pub hold_ms: u64,
    pub think_ms: u64,
    pub duration_ms: u64,
    pub count: Option<u64>,
    pub strategies: Vec<LockStrategy>,
    pub json: bool,
}

/// Runs each strategy in turn and prints the comparison.
pub fn run(o: Options, exe: &Path) -> Res<()> {
    let settings = Settings {
        scenario: "lock",
        processes: o.processes,
        tasks: o.tasks,
        locks: o.locks,
        hold_ms: o.hold_ms,
        think_ms: o.think_ms,
        duration_ms: o.duration_ms,
        count: o.count,
        lease_ms: LEASE.as_millis() as u64,
        commands_counted: std::env::var_os("REDIS_URL").is_none(),
    };
    // Everything we print besides the result goes to stderr, so `--json`
    // output can be piped as is.
    let (_servers, lock_url, book_url) = scenario::two_servers("the locks");
    if !o.json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        eprintln!("{}", report::headline(&settings));
    }
    let mut book = scenario::connect(&book_url)?;
    let mut locks = scenario::connect(&lock_url)?;

    // A unique prefix per run and strategy: lock names and bookkeeping
    // keys never meet another run's on a shared Redis.
    let run_id = format!("lt{:08x}", fastrand::u32(..));
    let mut results = Vec::new();
    for strategy in o.strategies {
        let spec = Spec {
            lock_url: lock_url.clone(),
            book_url: book_url.clone(),
            run: format!("{run_id}-{}", strategy.name()),
            strategy,
            tasks: o.tasks,
            locks: o.locks,
            hold_ms: o.hold_ms,
            think_ms: o.think_ms,
            duration_ms: o.duration_ms,
            count: o.count.unwrap_or(MAX_SECTIONS_PER_TASK),
        };
        let launch = Launch {
            subcommand: "lock-worker",
            spec_json: serde_json::to_string(&spec)?,
            run: &spec.run,
            label: strategy.name(),
            duration_ms: Some(o.duration_ms),
            counter_key: progress_key(&spec.run),
            noun: "critical sections",
        };
        // Counted from when every worker is connected, so connection
        // set-up is left out.
        let mut before = None;
        let go_ms = run_workers(exe, &mut book, &launch, o.processes, &mut || {
            if settings.commands_counted {
                before = Some(commandstats(&mut locks)?);
            }
            Ok(())
        })?;
        let commands = match before {
            Some(before) => Some(command_delta(&before, &commandstats(&mut locks)?)),
            None => None,
        };
        results.push(report::collect(
            &mut book,
            &spec,
            o.processes,
            go_ms,
            commands,
        )?);
        // Whatever the locks left on a shared Redis: a lock key a worker
        // was killed holding, herdcache's fence counters (kept 24 h).
        let mut keys = Vec::new();
        for name in spec.names() {
            keys.push(format!("hc:lk:{{{name}}}:f"));
            keys.push(format!("hc:lk:{{{name}}}"));
            keys.push(name);
        }
        let _: () = redis::cmd("DEL").arg(&keys).query(&mut locks)?;
    }

    let report = Report {
        settings,
        strategies: results,
    };
    if o.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!();
        report::print_table(&report);
    }
    Ok(())
}
