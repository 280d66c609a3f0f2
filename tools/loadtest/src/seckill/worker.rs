//! One worker process of the `seckill` scenario (`loadtest seckill-worker
//! --spec JSON --index N`): its share of the buyers, made by `tasks` tasks
//! that each take the next buyer of the process until none is left.
//!
//! Buyer `i` (0-based across the run) orders under order id `o<i>` as user
//! `u<i>`, and asks for a quantity drawn from `i` alone, so every strategy
//! sees the same buyers asking for the same quantities. Each attempt is
//! kept in memory as a [`Record`] of wall-clock instants (sent, answered)
//! and the answer; the parent merges every process's records after the run
//! (see `report.rs`). Nothing is added to the sale's Redis.

use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;
use tokio::time::Instant;

use crate::lock::worker::unix_us;
use crate::scenario;
use crate::seckill::strategies::{Outcome, SeckillStrategy, Seller, TaskSeller};
use crate::worker::ready_then_go;

/// Everything a seckill worker needs, passed as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The Redis the stock and the orders live on.
    pub stock_url: String,
    /// The Redis of the tool's bookkeeping (ready/go, progress, results);
    /// the same as `stock_url` with `REDIS_URL`.
    pub book_url: String,
    /// Prefix of the run's keys; herdcache's SKU.
    pub run: String,
    pub strategy: SeckillStrategy,
    pub processes: usize,
    pub tasks: usize,
    /// Attempts across all processes.
    pub buyers: u32,
    pub max_qty: u32,
    pub watch_retries: u32,
    pub naive_yield: bool,
    /// Attempts not started this long after the release are not made.
    pub time_limit_ms: u64,
}

/// The buyers of process `index`: a contiguous range of buyer numbers,
/// the remainder spread over the first processes.
pub fn buyers_of(buyers: u32, processes: usize, index: usize) -> std::ops::Range<u32> {
    let p = processes.max(1) as u32;
    let i = index as u32;
    let (per, rem) = (buyers / p, buyers % p);
    let start = i * per + i.min(rem);
    start..start + per + u32::from(i < rem)
}

/// The quantity buyer `i` asks for: 1 to `max_qty`, the same in every
/// strategy's run.
pub fn qty_of(buyer: u32, max_qty: u32) -> u32 {
    if max_qty <= 1 {
        return 1;
    }
    let mut rng = fastrand::Rng::with_seed(0x5ecc_1117 ^ u64::from(buyer));
    rng.u32(1..=max_qty)
}

pub fn order_id(buyer: u32) -> String {
    format!("o{buyer}")
}

pub fn records_key(run: &str, index: usize) -> String {
    format!("{run}:w{index}:records")
}
pub fn report_key(run: &str, index: usize) -> String {
    format!("{run}:w{index}:report")
}
pub fn progress_key(run: &str) -> String {
    format!("{run}:attempts")
}

/// One buyer's attempt, in Unix µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub buyer: u32,
    pub qty: u16,
    pub outcome: Outcome,
    /// `watch`: tries made (1 = no abort); 1 for the others.
    pub tries: u8,
    /// When the attempt was sent.
    pub start: u64,
    /// When its answer came back.
    pub end: u64,
}

impl Record {
    const BYTES: usize = 24;

    pub fn encode(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::with_capacity(records.len() * Self::BYTES);
        for r in records {
            out.extend_from_slice(&r.buyer.to_le_bytes());
            out.extend_from_slice(&r.qty.to_le_bytes());
            out.push(r.outcome as u8);
            out.push(r.tries);
            out.extend_from_slice(&r.start.to_le_bytes());
            out.extend_from_slice(&r.end.to_le_bytes());
        }
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Vec<Record>, String> {
        if !bytes.len().is_multiple_of(Self::BYTES) {
            return Err(format!(
                "records: {} bytes is not a whole number",
                bytes.len()
            ));
        }
        let u64_at =
            |c: &[u8], i: usize| u64::from_le_bytes(c[i..i + 8].try_into().expect("8 bytes"));
        bytes
            .chunks_exact(Self::BYTES)
            .map(|c| {
                Ok(Record {
                    buyer: u32::from_le_bytes(c[0..4].try_into().expect("4 bytes")),
                    qty: u16::from_le_bytes(c[4..6].try_into().expect("2 bytes")),
                    outcome: Outcome::from_u8(c[6])
                        .ok_or_else(|| format!("records: bad outcome {}", c[6]))?,
                    tries: c[7],
                    start: u64_at(c, 8),
                    end: u64_at(c, 16),
                })
            })
            .collect()
    }
}

/// What a worker reports besides its records.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerOut {
    pub errors: u64,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
    /// Buyers left when the time limit came.
    pub not_attempted: u64,
}

impl WorkerOut {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 && !self.error_samples.contains(&e) {
            self.error_samples.push(e);
        }
    }

    pub fn add(&mut self, o: WorkerOut) {
        self.errors += o.errors;
        self.not_attempted += o.not_attempted;
        for e in o.error_samples {
            if self.error_samples.len() < 5 && !self.error_samples.contains(&e) {
                self.error_samples.push(e);
            }
        }
    }
}

/// State shared by the tasks of this process.
struct Shared {
    spec: Spec,
    /// The next buyer of this process to serve.
    next: AtomicU32,
    end: u32,
    start: Instant,
    deadline: Instant,
    /// Attempts answered in this process, for the progress bar.
    done: AtomicU64,
}

pub async fn run(spec: Spec, index: usize) -> Result<(), String> {
    let mut book = redis::Client::open(spec.book_url.as_str())
        .map_err(|e| format!("redis url: {e}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("connect to redis: {e}"))?;
    let seller = Seller::connect(
        spec.strategy,
        &spec.stock_url,
        &spec.run,
        spec.watch_retries,
        spec.naive_yield,
    )
    .await?;
    // Every task's handle (for `watch`, its connection) before the
    // release: connecting is not part of the sale.
    let mut sellers = Vec::with_capacity(spec.tasks);
    for _ in 0..spec.tasks {
        sellers.push(seller.for_task().await?);
    }

    let run = spec.run.clone();
    let (_, start) = ready_then_go(&mut book, &run).await?;
    let range = buyers_of(spec.buyers, spec.processes, index);
    let shared = Arc::new(Shared {
        next: AtomicU32::new(range.start),
        end: range.end,
        start,
        deadline: start + Duration::from_millis(spec.time_limit_ms),
        spec,
        done: AtomicU64::new(0),
    });

    let finished = Arc::new(AtomicBool::new(false));
    let progress = {
        let (s, book, finished) = (shared.clone(), book.clone(), finished.clone());
        tokio::spawn(async move {
            let (key, run_ms) = (progress_key(&s.spec.run), s.spec.time_limit_ms);
            scenario::report_progress(book, key, &s.done, &finished, run_ms).await
        })
    };
    let handles: Vec<_> = sellers
        .into_iter()
        .map(|seller| tokio::spawn(task(shared.clone(), seller)))
        .collect();
    let mut out = WorkerOut::default();
    let mut records = Vec::new();
    for h in handles {
        let (o, r) = h.await.map_err(|e| format!("task panicked: {e}"))?;
        out.add(o);
        records.extend(r);
    }
    finished.store(true, Ordering::Relaxed);
    progress
        .await
        .map_err(|e| format!("progress task panicked: {e}"))?;
    drop(seller);

    let json = serde_json::to_string(&out).map_err(|e| e.to_string())?;
    redis::pipe()
        .set(records_key(&run, index), Record::encode(&records))
        .ignore()
        .set(report_key(&run, index), json)
        .ignore()
        .query_async::<()>(&mut book)
        .await
        .map_err(|e| format!("report to redis: {e}"))
}

async fn task(s: Arc<Shared>, mut seller: TaskSeller) -> (WorkerOut, Vec<Record>) {
    let mut out = WorkerOut::default();
    let mut records = Vec::new();
    tokio::time::sleep_until(s.start).await;
    // Bounded by the process's buyers: each pass takes one.
    for _ in 0..s.end.saturating_sub(s.next.load(Ordering::Relaxed)) {
        let buyer = s.next.fetch_add(1, Ordering::Relaxed);
        if buyer >= s.end {
            break;
        }
        if Instant::now() >= s.deadline {
            out.not_attempted += u64::from(s.end - buyer);
            // Nobody else takes the rest: they are counted here once.
            s.next.store(s.end, Ordering::Relaxed);
            break;
        }
        let qty = qty_of(buyer, s.spec.max_qty);
        let order = order_id(buyer);
        let user = format!("u{buyer}");
        let start = unix_us();
        let answer = seller.attempt(&order, &user, qty).await;
        let end = unix_us();
        let (outcome, tries) = match answer {
            Ok(a) => a,
            Err(e) => {
                out.error(e);
                (Outcome::Error, 1)
            }
        };
        s.done.fetch_add(1, Ordering::Relaxed);
        records.push(Record {
            buyer,
            qty: qty as u16,
            outcome,
            tries: tries.min(255) as u8,
            start,
            end,
        });
    }
    (out, records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buyers_are_split_without_gaps_and_quantities_repeat() {
        let ranges: Vec<_> = (0..3).map(|i| buyers_of(10, 3, i)).collect();
        assert_eq!(ranges, vec![0..4, 4..7, 7..10]);
        assert_eq!(buyers_of(2, 4, 3), 2..2);
        assert!((0..1000).all(|b| qty_of(b, 1) == 1));
        let qs: Vec<u32> = (0..1000).map(|b| qty_of(b, 3)).collect();
        assert!(qs.iter().all(|q| (1..=3).contains(q)));
        assert!((1..=3).all(|q| qs.contains(&q)));
        assert_eq!(qs, (0..1000).map(|b| qty_of(b, 3)).collect::<Vec<_>>());
    }

    #[test]
    fn records_round_trip() {
        let r = vec![Record {
            buyer: 7,
            qty: 3,
            outcome: Outcome::GaveUp,
            tries: 50,
            start: 1,
            end: u64::MAX,
        }];
        assert_eq!(Record::decode(&Record::encode(&r)).unwrap(), r);
        assert!(Record::decode(&[0; 23]).is_err());
        let mut bad = Record::encode(&r);
        bad[6] = 9;
        assert!(Record::decode(&bad).is_err());
    }
}
