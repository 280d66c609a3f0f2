//! The `seckill` scenario's results: merging the workers' records, checking
//! the orders persisted against the answers given, and printing a table
//! (or JSON with `--json`).
//!
//! # What is measured
//!
//! - **sold**: units the buyers were told are theirs (a `Sold` answer);
//!   **accepted**: those answers, counted as orders.
//! - **oversold**: sold minus the stock, when above 0; **final stock**: the
//!   counter read back from Redis after the run (below 0 after an oversell
//!   by `naive`).
//! - **persisted**: orders stored: the baselines' orders list (`LRANGE`
//!   after the run), herdcache's orders acknowledged by the parent's
//!   consumer-group reader. Each is compared with the accepted order ids
//!   (sold with no order; orders nobody was told about).
//! - **sold out at**: the last accepted answer, in ms since the release;
//!   **accepted/s**: accepted orders / that time. **attempts/s**: every
//!   answer / the time to the last answer.
//! - **reserve p50/p99**: from sending an attempt to its answer, over every
//!   attempt (retries included for `watch`), by the wall clock in the
//!   worker.
//! - **refused with stock left**: refusals (sold out, or `watch` giving up)
//!   while, provably, units remained: the stock minus every unit sold to an
//!   attempt *sent* before the refusal was answered is still at least what
//!   the refused buyer asked for. No restock happens during a run, so
//!   whatever was sold by that instant was sold to such an attempt: this is
//!   a lower bound, never a false alarm. Only given for a run that did not
//!   oversell (an oversold unit is not a unit that was in stock).

use serde::Serialize;
use std::collections::HashSet;

use crate::Res;
use crate::lock::report::{Dist, fmt_ms};
use crate::seckill::strategies::{Outcome, SeckillStrategy};
use crate::seckill::worker::{Record, WorkerOut, progress_key, records_key, report_key};
use crate::worker::new_histogram;

/// The settings of a run, echoed in the output.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub scenario: &'static str,
    pub processes: usize,
    pub tasks: usize,
    pub stock: u64,
    /// Attempts across all processes, one per buyer.
    pub buyers: u32,
    pub max_qty: u32,
    pub watch_retries: u32,
    pub naive_yield: bool,
    pub time_limit_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StrategyResult {
    pub strategy: SeckillStrategy,
    /// Attempts answered (errors included).
    pub attempts: u64,
    /// Buyers never tried: the time limit came first.
    pub not_attempted: u64,
    /// Orders told they were sold.
    pub accepted: u64,
    /// Units told they were sold.
    pub sold: u64,
    /// `sold - stock` when above 0.
    pub oversold: u64,
    /// The stock counter in Redis after the run.
    pub final_stock: i64,
    pub sold_out_answers: u64,
    /// `watch`: buyers refused because every retry was aborted.
    pub gave_up: u64,
    /// `watch`: `EXEC`s aborted by another buyer's write, all retries.
    pub aborts: u64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// Distinct accepted orders found persisted.
    pub persisted: u64,
    /// Accepted orders with no persisted order.
    pub accepted_not_persisted: u64,
    /// Persisted orders no buyer was told about.
    pub persisted_not_accepted: u64,
    /// Orders persisted (or delivered) more than once.
    pub persist_duplicates: u64,
    /// herdcache: when the consumer acknowledged the last order, in ms since
    /// the release (the baselines persist inside the buyer's request).
    pub last_persisted_ms: Option<f64>,
    /// The last accepted answer, in ms since the release.
    pub sold_out_ms: Option<f64>,
    /// The last answer of any kind, in ms since the release.
    pub last_answer_ms: f64,
    /// Accepted orders per second until the last one.
    pub accepted_per_s: f64,
    pub attempts_per_s: f64,
    /// Refusals while units provably remained; `None` for an oversold run.
    pub refused_with_stock: Option<u64>,
    /// Every attempt, from sending to its answer.
    pub latency: Dist,
    /// The accepted attempts only.
    pub latency_accepted: Dist,
    /// Attempts sent before the sell-out (the last accepted answer): the
    /// buyers who competed for units.
    pub latency_until_sold_out: Dist,
    /// `(ms since the release, units sold so far)`, one point per 0.1 ms
    /// in which a sale was answered.
    pub sold_timeline: Vec<(f64, u64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub strategies: Vec<StrategyResult>,
}

/// What the parent found persisted, and the stock counter after the run.
pub struct AfterRun {
    pub final_stock: i64,
    /// Order ids persisted, one entry per time stored (or delivered).
    pub persisted: Vec<String>,
    pub last_persisted_us: Option<u64>,
}

/// Reads what the `procs` workers of `run` wrote and deletes those keys
/// (the Redis may be a shared one).
pub fn read_workers(
    book: &mut redis::Connection,
    run: &str,
    procs: usize,
) -> Res<(Vec<Record>, WorkerOut)> {
    let mut out = WorkerOut::default();
    let mut records = Vec::new();
    let mut cleanup = vec![
        format!("{run}:ready"),
        format!("{run}:go"),
        progress_key(run),
    ];
    for i in 0..procs {
        let bytes: Vec<u8> = redis::cmd("GET").arg(records_key(run, i)).query(book)?;
        records.extend(Record::decode(&bytes)?);
        let json: String = redis::cmd("GET").arg(report_key(run, i)).query(book)?;
        out.add(serde_json::from_str(&json)?);
        cleanup.extend([records_key(run, i), report_key(run, i)]);
    }
    let _: () = redis::cmd("DEL").arg(&cleanup).query(book)?;
    Ok((records, out))
}

/// Everything the records and the check of the orders say.
pub fn analyse(
    strategy: SeckillStrategy,
    stock: u64,
    go_us: u64,
    records: &[Record],
    out: WorkerOut,
    after: &AfterRun,
) -> StrategyResult {
    let since = |t: u64| t.saturating_sub(go_us);
    let ms = |us: u64| us as f64 / 1000.0;
    let mut latency = new_histogram();
    let mut latency_accepted = new_histogram();
    let (mut accepted, mut sold, mut sold_out_answers, mut gave_up, mut aborts) = (0, 0, 0, 0, 0);
    let mut last_sale = None;
    let mut last_answer = 0;
    let mut sales: Vec<&Record> = Vec::new();
    for r in records {
        let us = r.end.saturating_sub(r.start).max(1);
        latency.saturating_record(us);
        last_answer = last_answer.max(r.end);
        aborts += u64::from(r.tries.saturating_sub(1));
        match r.outcome {
            Outcome::Sold => {
                accepted += 1;
                sold += u64::from(r.qty);
                latency_accepted.saturating_record(us);
                last_sale = Some(last_sale.unwrap_or(0).max(r.end));
                sales.push(r);
            }
            Outcome::SoldOut => sold_out_answers += 1,
            Outcome::GaveUp => gave_up += 1,
            Outcome::Error => {}
        }
    }
    let oversold = sold.saturating_sub(stock);
    let mut latency_until_sold_out = new_histogram();
    if let Some(t) = last_sale {
        for r in records.iter().filter(|r| r.start <= t) {
            latency_until_sold_out.saturating_record(r.end.saturating_sub(r.start).max(1));
        }
    }

    // Units sold over time, by answer.
    sales.sort_unstable_by_key(|r| r.end);
    let mut sold_timeline: Vec<(f64, u64)> = Vec::new();
    let mut so_far = 0;
    for r in &sales {
        so_far += u64::from(r.qty);
        let t = (since(r.end) / 100) as f64 / 10.0;
        match sold_timeline.last_mut() {
            Some(last) if last.0 == t => last.1 = so_far,
            _ => sold_timeline.push((t, so_far)),
        }
    }

    // Refusals while units remained (see the module docs).
    let refused_with_stock = (oversold == 0).then(|| {
        sales.sort_unstable_by_key(|r| r.start);
        let mut started_by: Vec<u64> = Vec::with_capacity(sales.len());
        let mut acc = 0;
        for r in &sales {
            acc += u64::from(r.qty);
            started_by.push(acc);
        }
        records
            .iter()
            .filter(|r| matches!(r.outcome, Outcome::SoldOut | Outcome::GaveUp))
            .filter(|r| {
                let n = sales.partition_point(|s| s.start <= r.end);
                let sold_by = if n == 0 { 0 } else { started_by[n - 1] };
                stock.saturating_sub(sold_by) >= u64::from(r.qty)
            })
            .count() as u64
    });

    // The orders persisted against the orders accepted.
    let told: HashSet<String> = sales
        .iter()
        .map(|r| crate::seckill::worker::order_id(r.buyer))
        .collect();
    let mut seen = HashSet::new();
    let mut persist_duplicates = 0;
    let mut persisted_not_accepted = 0;
    for id in &after.persisted {
        if !seen.insert(id.as_str()) {
            persist_duplicates += 1;
        } else if !told.contains(id) {
            persisted_not_accepted += 1;
        }
    }
    let persisted = told.iter().filter(|id| seen.contains(id.as_str())).count() as u64;

    let sold_out_us = last_sale.map(since);
    let per_s = |n: u64, us: u64| n as f64 / (us.max(1) as f64 / 1e6);
    StrategyResult {
        strategy,
        attempts: records.len() as u64,
        not_attempted: out.not_attempted,
        accepted,
        sold,
        oversold,
        final_stock: after.final_stock,
        sold_out_answers,
        gave_up,
        aborts,
        errors: out.errors,
        error_samples: out.error_samples,
        persisted,
        accepted_not_persisted: accepted - persisted.min(accepted),
        persisted_not_accepted,
        persist_duplicates,
        last_persisted_ms: after.last_persisted_us.map(|t| ms(since(t))),
        sold_out_ms: sold_out_us.map(ms),
        last_answer_ms: ms(since(last_answer)),
        accepted_per_s: sold_out_us.map_or(0.0, |us| per_s(accepted, us)),
        attempts_per_s: per_s(records.len() as u64, since(last_answer)),
        refused_with_stock,
        latency: Dist::of(&latency),
        latency_accepted: Dist::of(&latency_accepted),
        latency_until_sold_out: Dist::of(&latency_until_sold_out),
        sold_timeline,
    }
}

/// One line saying what was run.
pub fn headline(s: &Settings) -> String {
    let qty = if s.max_qty > 1 {
        format!("1-{} units each", s.max_qty)
    } else {
        "1 unit each".to_owned()
    };
    format!(
        "seckill scenario: stock {} on a fresh key per strategy; {} buyers ({qty}) sent by {} \
         processes x {} tasks as fast as answers come; watch retries {}{}",
        s.stock,
        s.buyers,
        s.processes,
        s.tasks,
        s.watch_retries,
        if s.naive_yield {
            "; naive yields between its check and its DECR"
        } else {
            ""
        },
    )
}

/// The comparison table and the notes under it.
pub fn print_table(report: &Report) {
    let s = &report.settings;
    println!("{}\n", headline(s));
    println!(
        "{:<10} {:>6} {:>8} {:>6} {:>6} {:>9} {:>10} {:>10} {:>9} {:>7} {:>7} {:>8} {:>6}",
        "strategy",
        "sold",
        "oversold",
        "final",
        "orders",
        "persisted",
        "accepted/s",
        "attempts/s",
        "sold out",
        "p50 ms",
        "p99 ms",
        "refused+",
        "aborts",
    );
    for r in &report.strategies {
        let sold_out = r
            .sold_out_ms
            .map_or("-".to_owned(), |t| format!("{} ms", fmt_ms(t)));
        let refused = r
            .refused_with_stock
            .map_or("-".to_owned(), |n| n.to_string());
        let aborts = if r.strategy == SeckillStrategy::Watch {
            r.aborts.to_string()
        } else {
            "-".to_owned()
        };
        println!(
            "{:<10} {:>6} {:>8} {:>6} {:>6} {:>9} {:>10.0} {:>10.0} {:>9} {:>7} {:>7} {:>8} {:>6}",
            r.strategy.name(),
            r.sold,
            r.oversold,
            r.final_stock,
            r.accepted,
            r.persisted,
            r.accepted_per_s,
            r.attempts_per_s,
            sold_out,
            fmt_ms(r.latency.p50_ms),
            fmt_ms(r.latency.p99_ms),
            refused,
            aborts,
        );
    }
    println!();
    println!(
        "sold: units buyers were told are theirs; oversold: sold - stock; final: the stock counter\n\
         \x20 in Redis after the run. orders: accepted orders (= sold with 1 unit each);\n\
         \x20 persisted: accepted orders found stored (baselines: the LPUSHed orders list;\n\
         \x20 herdcache: orders its consumer group acknowledged).\n\
         accepted/s: accepted orders / time from the release to the last one (sold out);\n\
         \x20 attempts/s: every answer / time to the last answer. p50, p99: one attempt, send to\n\
         \x20 answer (watch: all its tries). refused+: buyers refused while units provably\n\
         \x20 remained (not given for an oversold run). aborts: watch EXECs aborted."
    );
    for r in &report.strategies {
        let name = r.strategy.name();
        let mut notes = Vec::new();
        if r.accepted_not_persisted > 0 {
            notes.push(format!(
                "{} accepted orders not persisted",
                r.accepted_not_persisted
            ));
        }
        if r.persisted_not_accepted > 0 {
            notes.push(format!(
                "{} persisted orders nobody was told about",
                r.persisted_not_accepted
            ));
        }
        if r.persist_duplicates > 0 {
            notes.push(format!(
                "{} orders persisted or delivered twice",
                r.persist_duplicates
            ));
        }
        if r.gave_up > 0 {
            notes.push(format!(
                "{} buyers refused after every retry aborted",
                r.gave_up
            ));
        }
        if r.not_attempted > 0 {
            notes.push(format!("{} buyers not tried (time limit)", r.not_attempted));
        }
        if let Some(t) = r.last_persisted_ms {
            notes.push(format!("last order persisted at {} ms", fmt_ms(t)));
        }
        if !notes.is_empty() {
            println!("{name}: {}", notes.join("; "));
        }
        for e in &r.error_samples {
            println!("{name} error: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(buyer: u32, qty: u16, outcome: Outcome, start: u64, end: u64) -> Record {
        Record {
            buyer,
            qty,
            outcome,
            tries: 1,
            start,
            end,
        }
    }

    fn after(persisted: &[&str]) -> AfterRun {
        AfterRun {
            final_stock: 0,
            persisted: persisted.iter().map(|s| s.to_string()).collect(),
            last_persisted_us: None,
        }
    }

    #[test]
    fn refusals_while_stock_remained_are_found_and_orders_checked() {
        // Stock 3. Buyer 0 takes 2; buyer 1 (2 units) is refused at 1_250
        // although only 2 units had been sold to attempts sent by then (1
        // left: a right refusal); buyer 2 (1 unit) is refused at 1_300 with
        // 1 unit left: wrong; buyer 3 then takes the last unit.
        let records = [
            rec(0, 2, Outcome::Sold, 1_000, 1_100),
            rec(1, 2, Outcome::SoldOut, 1_050, 1_250),
            rec(2, 1, Outcome::SoldOut, 1_060, 1_300),
            rec(3, 1, Outcome::Sold, 1_400, 2_500),
        ];
        let r = analyse(
            SeckillStrategy::DecrUndo,
            3,
            1_000,
            &records,
            WorkerOut::default(),
            &after(&["o0", "o0", "o9"]),
        );
        assert_eq!((r.accepted, r.sold, r.oversold), (2, 3, 0));
        assert_eq!(r.refused_with_stock, Some(1));
        assert_eq!(r.sold_out_ms, Some(1.5));
        assert_eq!(r.sold_timeline, vec![(0.1, 2), (1.5, 3)]);
        assert_eq!(r.persisted, 1, "o0 only");
        assert_eq!(r.accepted_not_persisted, 1, "o3");
        assert_eq!(r.persisted_not_accepted, 1, "o9");
        assert_eq!(r.persist_duplicates, 1, "o0 twice");
        assert!((r.accepted_per_s - 2.0 / 0.0015).abs() < 1e-6);
    }

    #[test]
    fn an_oversold_run_gives_no_refusal_count() {
        let records = [
            rec(0, 1, Outcome::Sold, 0, 10),
            rec(1, 1, Outcome::Sold, 0, 20),
            rec(2, 1, Outcome::SoldOut, 0, 30),
        ];
        let r = analyse(
            SeckillStrategy::Naive,
            1,
            0,
            &records,
            WorkerOut::default(),
            &after(&["o0", "o1"]),
        );
        assert_eq!((r.sold, r.oversold), (2, 1));
        assert_eq!(r.refused_with_stock, None);
        assert_eq!(r.persisted, 2);
    }
}
