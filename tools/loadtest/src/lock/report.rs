//! The `lock` scenario's results: merging the workers' records, finding
//! the hand-offs, and printing a table (or JSON with `--json`).
//!
//! # How the hand-off latency is measured
//!
//! Every acquisition is a [`Record`] of three wall-clock instants read in
//! the worker (µs since 1970): when the task began to wait, when its
//! acquire returned, and when it called release after its critical section.
//! After the run the records of all processes are merged and, per lock,
//! sorted by acquisition: holders of one lock follow each other, so the
//! hand-off from one holder to the next is `next.acquired -
//! prev.released`. It is counted only when some task was waiting at
//! `prev.released` (a wait interval spans that instant): it is the time the
//! lock sat free while it was wanted. A lock released with nobody waiting
//! is idle, not handed off.
//!
//! What it includes: the release call (one round trip), then whatever the
//! next holder needed to notice and take the lock (a notice, a poll's
//! sleep, its last attempt's round trip). What it adds: nothing on the
//! lock's path (no Redis command; the instants are kept in memory). Its
//! error: the processes share one kernel clock, so instants compare
//! directly; each read is a vDSO call (well under 1 µs), taken in the same
//! poll as the await it follows, so the error is the time a task may sit
//! preempted between the await's completion and the clock read: zero
//! usually, a scheduler tick (~ms) rarely on a loaded 2-core machine,
//! which shows in the max, not the p50. A clock step during the run (NTP)
//! would corrupt it; a slew would not measurably.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

use crate::Res;
use crate::lock::strategies::LockStrategy;
use crate::lock::worker::{
    Record, Spec, WorkerOut, counter_key, progress_key, records_key, report_key,
};
use crate::worker::new_histogram;

/// The settings of a run, echoed in the output.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub scenario: &'static str,
    pub processes: usize,
    pub tasks: usize,
    pub locks: u32,
    pub hold_ms: u64,
    pub think_ms: u64,
    pub duration_ms: u64,
    /// Critical sections per task, at most.
    pub count: Option<u64>,
    pub lease_ms: u64,
    /// Whether the lock's Redis served nothing but the locks, so that its
    /// command counts are the locks' own (not with `REDIS_URL`).
    pub commands_counted: bool,
}

/// A distribution of durations, in ms.
#[derive(Debug, Clone, Serialize)]
pub struct Dist {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Dist {
    pub fn of(h: &Histogram<u64>) -> Dist {
        let ms = |us: u64| us as f64 / 1000.0;
        Dist {
            samples: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            mean_ms: if h.is_empty() { 0.0 } else { h.mean() / 1000.0 },
        }
    }
}

/// How the critical sections were shared among the tasks.
#[derive(Debug, Clone, Serialize)]
pub struct Share {
    pub min: u64,
    pub median: u64,
    pub max: u64,
    /// Tasks that never held a lock.
    pub tasks_without: u64,
    /// The critical sections of the busiest process, as a fraction.
    pub busiest_process: f64,
}

/// Waits the end of the run cut short.
#[derive(Debug, Clone, Serialize)]
pub struct Unserved {
    pub waits: u64,
    pub longest_ms: f64,
}

/// What Redis executed for the locks: `INFO commandstats` of the lock's
/// Redis after the run minus before (workers connected, not yet started).
#[derive(Debug, Clone, Serialize)]
pub struct RedisCost {
    /// Requests clients sent per critical section (round trips): every
    /// command but those the strategy's scripts run inside.
    pub requests_per_section: f64,
    /// Every command executed per critical section; a Lua script counts
    /// as 1 (its EVALSHA) plus each command it runs.
    pub commands_per_section: f64,
    /// Calls per command name.
    pub commands: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StrategyResult {
    pub strategy: LockStrategy,
    /// Critical sections completed in all processes.
    pub sections: u64,
    /// From the release instant to the last release.
    pub elapsed_s: f64,
    pub sections_per_s: f64,
    /// Critical sections whose `INCR` found another holder inside: 0 means
    /// exclusion held.
    pub overlaps: u64,
    /// Pairs of holds whose intervals (acquire returned .. release called)
    /// overlap by the wall clock: a second exclusion check.
    pub interval_overlaps: u64,
    /// herdcache: acquisitions whose fencing token was not above the
    /// previous holder's.
    pub fence_regressions: Option<u64>,
    /// Releases that found the lock no longer theirs.
    pub lost_releases: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// From starting to wait to holding the lock.
    pub wait: Dist,
    /// From a release to the next acquisition of that lock, while wanted.
    pub handoff: Dist,
    pub unserved: Unserved,
    pub share: Share,
    pub redis: Option<RedisCost>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub strategies: Vec<StrategyResult>,
}

/// `INFO commandstats` as calls per command.
pub fn commandstats(con: &mut redis::Connection) -> Res<BTreeMap<String, u64>> {
    let info: String = redis::cmd("INFO").arg("commandstats").query(con)?;
    let mut out = BTreeMap::new();
    for line in info.lines() {
        let Some((name, rest)) = line
            .strip_prefix("cmdstat_")
            .and_then(|l| l.split_once(':'))
        else {
            continue;
        };
        let calls = rest
            .split(',')
            .find_map(|f| f.strip_prefix("calls="))
            .and_then(|c| c.parse::<u64>().ok())
            .ok_or_else(|| format!("bad commandstats line {line:?}"))?;
        out.insert(name.to_owned(), calls);
    }
    Ok(out)
}

/// Calls made between two snapshots, less the `INFO` that took the first.
pub fn command_delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, n)| {
            (
                name.clone(),
                n - before.get(name).copied().unwrap_or(0).min(*n),
            )
        })
        .filter(|(_, n)| *n > 0)
        .collect()
}

/// Reads what the `procs` workers of `spec.run` wrote, merges it, and
/// deletes the run's bookkeeping keys (the Redis may be a shared one).
pub fn collect(
    book: &mut redis::Connection,
    spec: &Spec,
    procs: usize,
    go_ms: u64,
    commands: Option<BTreeMap<String, u64>>,
) -> Res<StrategyResult> {
    let run = &spec.run;
    let mut out = WorkerOut::default();
    let mut records = Vec::new();
    let mut cleanup = vec![
        format!("{run}:ready"),
        format!("{run}:go"),
        progress_key(run),
    ];
    cleanup.extend((0..spec.locks).map(|l| counter_key(run, l)));
    for i in 0..procs {
        let bytes: Vec<u8> = redis::cmd("GET").arg(records_key(run, i)).query(book)?;
        records.extend(Record::decode(&bytes)?);
        let json: String = redis::cmd("GET").arg(report_key(run, i)).query(book)?;
        out.add(serde_json::from_str(&json)?);
        cleanup.extend([records_key(run, i), report_key(run, i)]);
    }
    let _: () = redis::cmd("DEL").arg(&cleanup).query(book)?;

    let mut a = analyse(&records, spec.strategy == LockStrategy::Herdcache);
    let all_tasks = procs * spec.tasks;
    a.per_task.resize(all_tasks.max(a.per_task.len()), 0);
    a.per_task.sort_unstable();
    let busiest = a.per_process.values().copied().max().unwrap_or(0);
    let elapsed_s = (a.last_release.saturating_sub(go_ms * 1000) as f64 / 1e6).max(1e-6);
    let sections = a.sections;
    Ok(StrategyResult {
        strategy: spec.strategy,
        sections,
        elapsed_s,
        sections_per_s: sections as f64 / elapsed_s,
        overlaps: out.overlaps,
        interval_overlaps: a.interval_overlaps,
        fence_regressions: a.fence_regressions,
        lost_releases: out.lost_releases,
        errors: out.errors,
        error_samples: out.error_samples,
        wait: Dist::of(&a.wait),
        handoff: Dist::of(&a.handoff),
        unserved: Unserved {
            waits: a.unserved,
            longest_ms: a.longest_unserved_us as f64 / 1000.0,
        },
        share: Share {
            min: a.per_task.first().copied().unwrap_or(0),
            median: a.per_task.get(a.per_task.len() / 2).copied().unwrap_or(0),
            max: a.per_task.last().copied().unwrap_or(0),
            tasks_without: a.per_task.iter().filter(|&&n| n == 0).count() as u64,
            busiest_process: busiest as f64 / sections.max(1) as f64,
        },
        redis: commands.map(|commands| {
            let per = |n: u64| n as f64 / sections.max(1) as f64;
            let inner = spec.strategy.script_only_commands();
            RedisCost {
                requests_per_section: per(commands
                    .iter()
                    .filter(|(name, _)| !inner.contains(&name.as_str()))
                    .map(|(_, n)| n)
                    .sum()),
                commands_per_section: per(commands.values().sum()),
                commands,
            }
        }),
    })
}

/// What the records say, before the per-run numbers are added.
struct Analysis {
    sections: u64,
    wait: Histogram<u64>,
    handoff: Histogram<u64>,
    interval_overlaps: u64,
    fence_regressions: Option<u64>,
    unserved: u64,
    longest_unserved_us: u64,
    last_release: u64,
    /// Critical sections per task that held at least once (unsorted).
    per_task: Vec<u64>,
    per_process: HashMap<u32, u64>,
}

fn analyse(records: &[Record], fenced: bool) -> Analysis {
    let mut a = Analysis {
        sections: 0,
        wait: new_histogram(),
        handoff: new_histogram(),
        interval_overlaps: 0,
        fence_regressions: fenced.then_some(0),
        unserved: 0,
        longest_unserved_us: 0,
        last_release: 0,
        per_task: Vec::new(),
        per_process: HashMap::new(),
    };
    let mut per_task: HashMap<u32, u64> = HashMap::new();
    let mut by_lock: BTreeMap<u32, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_lock.entry(r.lock).or_default().push(r);
        if r.acquired == 0 {
            a.unserved += 1;
            a.longest_unserved_us = a
                .longest_unserved_us
                .max(r.released.saturating_sub(r.wait_start));
            continue;
        }
        a.sections += 1;
        a.last_release = a.last_release.max(r.released);
        a.wait
            .saturating_record(r.acquired.saturating_sub(r.wait_start).max(1));
        *per_task.entry(r.task).or_default() += 1;
        *a.per_process.entry(r.task >> 16).or_default() += 1;
    }
    a.per_task = per_task.into_values().collect();

    for recs in by_lock.values() {
        // Every wait, served or not, as [start, end): sorted starts and
        // ends count the waiters at any instant with two binary searches.
        let mut starts: Vec<u64> = recs.iter().map(|r| r.wait_start).collect();
        let mut ends: Vec<u64> = recs
            .iter()
            .map(|r| {
                if r.acquired == 0 {
                    r.released
                } else {
                    r.acquired
                }
            })
            .collect();
        starts.sort_unstable();
        ends.sort_unstable();
        let waiting_at = |t: u64| {
            let started = starts.partition_point(|&s| s < t);
            let ended = ends.partition_point(|&e| e <= t);
            started.saturating_sub(ended)
        };

        let mut held: Vec<&Record> = recs.iter().copied().filter(|r| r.acquired != 0).collect();
        held.sort_unstable_by_key(|r| (r.acquired, r.released));
        let mut latest_release = 0;
        let mut last_fence = 0;
        for (i, r) in held.iter().enumerate() {
            if i > 0 {
                let prev = held[i - 1];
                if r.acquired < latest_release {
                    // Two holders at once by the clock: no hand-off here.
                    a.interval_overlaps += 1;
                } else if waiting_at(prev.released) > 0 {
                    a.handoff
                        .saturating_record(r.acquired.saturating_sub(prev.released).max(1));
                }
                if let Some(n) = &mut a.fence_regressions
                    && r.fence <= last_fence
                {
                    *n += 1;
                }
            }
            latest_release = latest_release.max(r.released);
            last_fence = last_fence.max(r.fence);
        }
    }
    a
}

/// A latency in ms, with as many decimals as it needs to be readable.
pub fn fmt_ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

/// One line saying what was run.
pub fn headline(s: &Settings) -> String {
    let locks = if s.locks == 1 {
        "1 lock name (all tasks contend for it)".to_owned()
    } else {
        format!(
            "{} lock names (each acquisition picks one at random)",
            s.locks
        )
    };
    let count = s
        .count
        .map_or(String::new(), |c| format!(", at most {c} per task"));
    format!(
        "lock scenario for {:.1} s: {} processes x {} tasks loop acquire, hold {} ms, release, \
         think 0-{} ms{count}; {locks}; lease {} s",
        s.duration_ms as f64 / 1000.0,
        s.processes,
        s.tasks,
        s.hold_ms,
        2 * s.think_ms,
        s.lease_ms / 1000,
    )
}

/// The comparison table and the notes under it.
pub fn print_table(report: &Report) {
    let s = &report.settings;
    println!("{}\n", headline(s));
    println!(
        "{:<12} {:>8} {:>7} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "strategy",
        "sections",
        "cs/s",
        "overlaps",
        "wait p50",
        "wait p99",
        "hand p50",
        "hand p99",
        "hand max",
        "reqs/cs",
        "cmds/cs",
    );
    for r in &report.strategies {
        let (reqs, cmds) = r.redis.as_ref().map_or(("-".into(), "-".into()), |c| {
            (
                format!("{:.1}", c.requests_per_section),
                format!("{:.1}", c.commands_per_section),
            )
        });
        println!(
            "{:<12} {:>8} {:>7.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
            r.strategy.name(),
            r.sections,
            r.sections_per_s,
            r.overlaps + r.interval_overlaps,
            fmt_ms(r.wait.p50_ms),
            fmt_ms(r.wait.p99_ms),
            fmt_ms(r.handoff.p50_ms),
            fmt_ms(r.handoff.p99_ms),
            fmt_ms(r.handoff.max_ms),
            reqs,
            cmds,
        );
    }
    println!();
    println!(
        "cs/s: critical sections completed per second, all processes. overlaps: sections that\n\
         \x20 found another holder inside (INCR > 1 on entry) or overlapped one by the clock;\n\
         \x20 anything above 0 is a broken lock. wait: from starting to wait to holding, in ms.\n\
         hand: hand-off, from a holder's release call to the next holder's acquire returning,\n\
         \x20 counted when some task was waiting at the release (ms; one machine clock, read in\n\
         \x20 the workers, no extra Redis command; see lock/report.rs for the error)."
    );
    if s.commands_counted {
        println!(
            "reqs/cs: requests clients sent to the lock's Redis per section (round trips);\n\
             cmds/cs: commands it executed per section, a Lua script counting as 1 plus each\n\
             \x20 command it runs (both from INFO commandstats; --json has them by command)."
        );
    } else {
        println!(
            "reqs/cs, cmds/cs: not counted with REDIS_URL (that Redis also serves the bookkeeping)."
        );
    }
    for r in &report.strategies {
        let name = r.strategy.name();
        println!(
            "{name}: per task {} / {} / {} sections (min / median / max), {} tasks never held it, \
             busiest process {:.0}%;\n\x20 {} waits cut short by the end of the run (longest {} ms)",
            r.share.min,
            r.share.median,
            r.share.max,
            r.share.tasks_without,
            r.share.busiest_process * 100.0,
            r.unserved.waits,
            fmt_ms(r.unserved.longest_ms),
        );
        if let Some(n) = r.fence_regressions
            && n > 0
        {
            println!("{name}: {n} fencing tokens not above the previous holder's");
        }
        if r.lost_releases > 0 {
            println!(
                "{name}: {} releases found the lock no longer theirs",
                r.lost_releases
            );
        }
        for e in &r.error_samples {
            println!("{name} error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(task: u32, wait_start: u64, acquired: u64, released: u64, fence: u64) -> Record {
        Record {
            task,
            lock: 0,
            wait_start,
            acquired,
            released,
            fence,
        }
    }

    #[test]
    fn handoffs_count_only_while_someone_waits() {
        let records = [
            // Task 1 holds 100..200 while task 2 waits from 150: hand-off
            // 200 -> 230 (30 µs).
            rec(1, 90, 100, 200, 10),
            rec(2, 150, 230, 300, 11),
            // Nobody waits at 300; task 3 arrives at 1000: idle, no sample.
            rec(3, 1000, 1010, 1100, 12),
            // Task 4 waits from 1050 and is cut short at 5000, so 1100 ->
            // 1500 is a hand-off (to task 5, which came later).
            rec(4, 1050, 0, 5000, 0),
            rec(5, 1400, 1500, 1600, 12),
        ];
        let a = analyse(&records, true);
        assert_eq!(a.sections, 4);
        assert_eq!(a.handoff.len(), 2, "200->230 and 1100->1500");
        assert_eq!(a.handoff.min(), 30);
        assert!(a.handoff.equivalent(a.handoff.max(), 400));
        assert_eq!(a.unserved, 1);
        assert_eq!(a.longest_unserved_us, 3950);
        assert_eq!(a.fence_regressions, Some(1), "12 after 12");
        assert_eq!(a.interval_overlaps, 0);
        assert_eq!(a.last_release, 1600);
    }

    #[test]
    fn overlapping_holds_are_caught_by_the_clock() {
        let records = [rec(1, 0, 10, 100, 0), rec(2, 0, 50, 120, 0)];
        let a = analyse(&records, false);
        assert_eq!(a.interval_overlaps, 1);
        assert_eq!(a.handoff.len(), 0);
        assert_eq!(a.fence_regressions, None);
    }

    #[test]
    fn records_round_trip_and_commandstats_parse() {
        let r = vec![rec(7 << 16 | 3, 1, 2, 3, u64::MAX)];
        assert_eq!(Record::decode(&Record::encode(&r)).unwrap(), r);
        assert!(Record::decode(&[0; 39]).is_err());

        let before = BTreeMap::from([("info".into(), 1), ("setnx".into(), 5)]);
        let after = BTreeMap::from([("info".into(), 2), ("setnx".into(), 9), ("del".into(), 2)]);
        let d = command_delta(&before, &after);
        assert_eq!(d, BTreeMap::from([("del".into(), 2), ("setnx".into(), 4)]));
    }
}
