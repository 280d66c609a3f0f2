//! Reading the workers' results back from Redis, and printing them: a table,
//! or one JSON document with `--json`.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::Deserializer;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use crate::Res;
use crate::cluster::NodeLoad;
use crate::strategies::{LoaderKind, Strategy};
use crate::worker::{
    Dist, HcStats, WorkerReport, buckets_key, hist_key, new_histogram, report_key,
};

/// The settings of a run, echoed in the output.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    /// `cold` (one request per task, all released at one instant) or
    /// `steady` (tasks loop until `duration_ms` is up).
    pub mode: &'static str,
    pub processes: usize,
    pub tasks: usize,
    pub keys: u32,
    pub dist: Dist,
    pub zipf_s: f64,
    pub hot_share: f64,
    pub loader: LoaderKind,
    pub loader_ms: u64,
    pub ttl_ms: u64,
    pub stale_ms: u64,
    /// `None`: herdcache's default.
    pub early_refresh_beta: Option<f64>,
    pub duration_ms: Option<u64>,
    pub bucket_ms: u64,
    /// Steady mode: keys × duration / ttl, the number of times keys expire
    /// (and so must be reloaded) during the run, approximately.
    pub expected_expiries: Option<f64>,
    /// `--cluster`: the measured Redis is a throwaway cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSetup>,
}

/// The shape of a `--cluster` run's cluster.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ClusterSetup {
    pub masters: usize,
    pub replicas: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct HcSummary {
    /// Summed over all worker processes.
    pub stats: HcStats,
    /// Requests answered from the process's own memory.
    pub l1_hit_ratio: f64,
    /// Requests answered from Redis.
    pub l2_hit_ratio: f64,
}

/// One chart bucket.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    /// Start of the bucket, in ms since the release.
    pub t_ms: u64,
    pub requests: u64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StrategyResult {
    pub strategy: Strategy,
    /// Loader runs across all processes (counted with INCR in Redis).
    pub loader_calls: u64,
    /// Steady mode: loader_calls / expected_expiries; 1.0 is the ideal.
    pub loads_per_expiry: Option<f64>,
    pub requests: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// From the release to the last completed request.
    pub elapsed_s: f64,
    pub throughput_rps: f64,
    pub latency: Latency,
    pub herdcache: Option<HcSummary>,
    /// Latency over time, by request completion.
    pub timeline: Vec<Point>,
    /// When key 0 (the hottest) was loaded, in ms since the release: its
    /// expiries, as seen by the callers.
    pub hot_key_loads_ms: Vec<u64>,
    /// `--cluster`: what each master did over this strategy's run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub per_master: Option<Vec<NodeLoad>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub strategies: Vec<StrategyResult>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn deserialize(bytes: &[u8]) -> Res<Histogram<u64>> {
    Deserializer::new()
        .deserialize(&mut &bytes[..])
        .map_err(|e| format!("bad histogram from a worker: {e:?}").into())
}

/// Reads what the `procs` workers of `run` wrote, merges it, and deletes the
/// run's bookkeeping keys (the Redis may be a shared one).
pub fn collect(
    con: &mut redis::Connection,
    run: &str,
    strategy: Strategy,
    procs: usize,
    settings: &Settings,
) -> Res<StrategyResult> {
    let mut hist = new_histogram();
    let mut buckets: BTreeMap<u64, Histogram<u64>> = BTreeMap::new();
    let mut total = WorkerReport::default();
    let mut hc: Option<HcStats> = None;
    let mut cleanup = vec![
        format!("{run}:ready"),
        format!("{run}:go"),
        format!("{run}:loads"),
    ];
    for i in 0..procs {
        let bytes: Vec<u8> = redis::cmd("GET").arg(hist_key(run, i)).query(con)?;
        hist.add(deserialize(&bytes)?)?;
        let fields: HashMap<u64, Vec<u8>> =
            redis::cmd("HGETALL").arg(buckets_key(run, i)).query(con)?;
        for (b, bytes) in fields {
            let h = deserialize(&bytes)?;
            match buckets.get_mut(&b) {
                Some(all) => all.add(h)?,
                None => {
                    buckets.insert(b, h);
                }
            }
        }
        let json: String = redis::cmd("GET").arg(report_key(run, i)).query(con)?;
        let r: WorkerReport = serde_json::from_str(&json)?;
        total.requests += r.requests;
        total.errors += r.errors;
        for e in r.error_samples {
            if total.error_samples.len() < 5 && !total.error_samples.contains(&e) {
                total.error_samples.push(e);
            }
        }
        total.elapsed_us = total.elapsed_us.max(r.elapsed_us);
        total.hot_loads_ms.extend(r.hot_loads_ms);
        if let Some(s) = r.herdcache {
            hc.get_or_insert_with(HcStats::default).add(&s);
        }
        cleanup.extend([hist_key(run, i), buckets_key(run, i), report_key(run, i)]);
    }
    let loader_calls: Option<u64> = redis::cmd("GET").arg(format!("{run}:loads")).query(con)?;
    let loader_calls = loader_calls.unwrap_or(0);
    let _: () = redis::cmd("DEL").arg(&cleanup).query(con)?;

    total.hot_loads_ms.sort_unstable();
    let elapsed_s = (total.elapsed_us as f64 / 1e6).max(1e-6);
    let requests = hist.len();
    Ok(StrategyResult {
        strategy,
        loader_calls,
        loads_per_expiry: settings
            .expected_expiries
            .map(|e| loader_calls as f64 / e.max(1.0)),
        requests,
        errors: total.errors,
        error_samples: total.error_samples,
        elapsed_s,
        throughput_rps: requests as f64 / elapsed_s,
        latency: Latency {
            p50_ms: ms(hist.value_at_quantile(0.50)),
            p99_ms: ms(hist.value_at_quantile(0.99)),
            p999_ms: ms(hist.value_at_quantile(0.999)),
            max_ms: ms(hist.max()),
            mean_ms: hist.mean() / 1000.0,
        },
        herdcache: hc.map(|stats| {
            let of = |n: u64| n as f64 / requests.max(1) as f64;
            HcSummary {
                l1_hit_ratio: of(stats.l1_hits),
                l2_hit_ratio: of(stats.l2_hits),
                stats,
            }
        }),
        timeline: buckets
            .iter()
            .map(|(b, h)| Point {
                t_ms: b * settings.bucket_ms,
                requests: h.len(),
                p99_ms: ms(h.value_at_quantile(0.99)),
            })
            .collect(),
        hot_key_loads_ms: total.hot_loads_ms,
        per_master: None,
    })
}

/// A latency in ms, with as many decimals as it needs to be readable
/// (L1 hits are microseconds; a naive lock's waits are hundreds of ms).
fn fmt_ms(v: f64) -> String {
    if v < 1.0 {
        format!("{v:.3}")
    } else if v < 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    }
}

fn fmt_pct(v: f64) -> String {
    format!("{:.1}%", v * 100.0)
}

/// One line saying what was run.
pub fn headline(s: &Settings) -> String {
    let loader = match s.loader {
        LoaderKind::Sleep => format!("{} ms sleep loader", s.loader_ms),
        LoaderKind::Sqlite => format!("SQLite loader (+{} ms delay)", s.loader_ms),
    };
    let keys = if s.keys == 1 {
        "1 key".to_owned()
    } else {
        let dist = match s.dist {
            Dist::Uniform => "uniform".to_owned(),
            Dist::Zipf => format!("zipf s={}", s.zipf_s),
        };
        let hot = if s.hot_share > 0.0 {
            format!(", {}% to key 0", s.hot_share * 100.0)
        } else {
            String::new()
        };
        format!("{} keys ({dist}{hot})", s.keys)
    };
    let ttl = humantime::format_duration(Duration::from_millis(s.ttl_ms));
    let stale = if s.stale_ms > 0 {
        format!(
            ", stale window {} (herdcache only)",
            humantime::format_duration(Duration::from_millis(s.stale_ms))
        )
    } else {
        String::new()
    };
    let stale = match s.early_refresh_beta {
        Some(b) => format!("{stale}, early refresh beta {b} (herdcache only)"),
        None => stale,
    };
    let stale = match s.cluster {
        Some(c) => format!(
            "{stale}; Redis Cluster of {} masters, {} replicas each",
            c.masters, c.replicas
        ),
        None => stale,
    };
    match s.duration_ms {
        None => format!(
            "cold-key stampede: {} processes x {} tasks released at one instant, one request each; \
             {keys}, {loader}, ttl {ttl}{stale}",
            s.processes, s.tasks
        ),
        Some(d) => format!(
            "steady load for {:.1} s: {} processes x {} tasks in a request loop; \
             {keys}, {loader}, ttl {ttl}{stale}",
            d as f64 / 1000.0,
            s.processes,
            s.tasks,
        ),
    }
}

/// The comparison table and the notes under it.
pub fn print_table(report: &Report) {
    let s = &report.settings;
    let steady = s.expected_expiries.is_some();
    println!("{}\n", headline(s));
    let mut header = format!("{:<11} {:>12}", "strategy", "loader calls");
    if steady {
        header += &format!(" {:>10}", "per expiry");
    }
    header += &format!(
        " {:>9} {:>6} {:>10} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
        "requests", "errors", "req/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "L1 hit", "L2 hit"
    );
    println!("{header}");
    for r in &report.strategies {
        let mut line = format!("{:<11} {:>12}", r.strategy.name(), r.loader_calls);
        if steady {
            let per = r.loads_per_expiry.map_or("-".into(), |v| format!("{v:.2}"));
            line += &format!(" {per:>10}");
        }
        let (l1, l2) = r.herdcache.as_ref().map_or(("-".into(), "-".into()), |h| {
            (fmt_pct(h.l1_hit_ratio), fmt_pct(h.l2_hit_ratio))
        });
        line += &format!(
            " {:>9} {:>6} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>7} {:>7}",
            r.requests,
            r.errors,
            r.throughput_rps,
            fmt_ms(r.latency.p50_ms),
            fmt_ms(r.latency.p99_ms),
            fmt_ms(r.latency.p999_ms),
            fmt_ms(r.latency.max_ms),
            l1,
            l2,
        );
        println!("{line}");
    }
    println!();
    println!("loader calls: runs of the loader in all processes together, counted in Redis.");
    if let Some(e) = s.expected_expiries {
        println!(
            "per expiry: loader calls / {e:.0} expiries (keys x duration / ttl); 1.00 is one load\n\
             \x20 per key each time its TTL runs out. Approximate: herdcache takes up to 10% off\n\
             \x20 each TTL (jitter) and refreshes hot keys early (XFetch, --early-refresh-beta),\n\
             \x20 and a key requested less than once per TTL is not reloaded every time."
        );
    } else {
        println!(
            "ideal: 1 loader call per key ({} here). req/s: requests / time from the release to\n\
             \x20 the last answer.",
            s.keys
        );
    }
    println!("L1 hit, L2 hit: herdcache requests answered from process memory, from Redis.");
    for r in &report.strategies {
        if let Some(h) = &r.herdcache {
            let t = &h.stats;
            println!(
                "herdcache counters, all processes:\n\
                 \x20 l1_hits {} l2_hits {} misses {} coalesced {} loads {} lock_waits {}\n\
                 \x20 notified_wakeups {} wait_timeouts {} lease_lost {} redis_errors {}\n\
                 \x20 stale_served {} background_refreshes {} fail_safe_served {}",
                t.l1_hits,
                t.l2_hits,
                t.misses,
                t.coalesced,
                t.loads,
                t.lock_waits,
                t.notified_wakeups,
                t.wait_timeouts,
                t.lease_lost,
                t.redis_errors,
                t.stale_served,
                t.background_refreshes,
                t.fail_safe_served
            );
        }
        for e in &r.error_samples {
            println!("{} error: {e}", r.strategy.name());
        }
    }
    for r in &report.strategies {
        if let Some(rows) = &r.per_master {
            println!(
                "\n{} per master: keys by DBSIZE after the run; commands (INFO commandstats \
                 calls, all but INFO;\n  a script's inner commands count in it and on their own) \
                 from the workers' start to their exit",
                r.strategy.name()
            );
            crate::cluster::print_table(rows, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_keep_their_significant_digits() {
        assert_eq!(fmt_ms(0.0123), "0.012");
        assert_eq!(fmt_ms(52.34), "52.3");
        assert_eq!(fmt_ms(1234.5), "1234");
    }
}
