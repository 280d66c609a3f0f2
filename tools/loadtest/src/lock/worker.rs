//! One worker process of the `lock` scenario (`loadtest lock-worker --spec
//! JSON --index N`): `tasks` tasks that loop acquire, critical section,
//! release, think, until the deadline.
//!
//! The critical section checks exclusion: `INCR` of a per-lock counter on
//! entry (an answer above 1 is an overlap: two holders at once) and `DECR`
//! on exit, with `--hold-ms` of sleep between them. The counter lives on
//! the bookkeeping Redis, so the lock's Redis sees only lock traffic.
//!
//! Timing adds no Redis command to the lock's path: each acquisition is
//! kept in memory as a [`Record`] of wall-clock instants (when the task
//! started waiting, when its acquire returned, when it called release), and
//! the parent merges every process's records after the run to find the
//! hand-offs (see `report.rs`).

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

use crate::lock::strategies::{LockStrategy, Locker};
use crate::scenario;
use crate::worker::ready_then_go;

/// Everything a lock worker needs, passed as one JSON argument.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// The Redis the locks live on.
    pub lock_url: String,
    /// The Redis of the tool's own bookkeeping: ready/go, the exclusion
    /// counters, progress, results. The same as `lock_url` with `REDIS_URL`.
    pub book_url: String,
    /// Prefix of every key of this run and strategy, lock names included.
    pub run: String,
    pub strategy: LockStrategy,
    pub tasks: usize,
    pub locks: u32,
    pub hold_ms: u64,
    pub think_ms: u64,
    pub duration_ms: u64,
    /// Critical sections per task, at most.
    pub count: u64,
}

impl Spec {
    /// The lock names: `<run>:lock0`, `<run>:lock1`, …
    pub fn names(&self) -> Vec<String> {
        (0..self.locks)
            .map(|i| format!("{}:lock{i}", self.run))
            .collect()
    }
}

/// Hard cap on a task's critical sections, whatever `--count` says: every
/// loop is bounded in count as well as in time.
pub const MAX_SECTIONS_PER_TASK: u64 = 1_000_000;
/// After a Redis error, a task pauses this long before trying again.
const ERROR_PAUSE: Duration = Duration::from_millis(10);

pub fn records_key(run: &str, index: usize) -> String {
    format!("{run}:w{index}:records")
}
pub fn report_key(run: &str, index: usize) -> String {
    format!("{run}:w{index}:report")
}
pub fn counter_key(run: &str, lock: u32) -> String {
    format!("{run}:in{lock}")
}
pub fn progress_key(run: &str) -> String {
    format!("{run}:sections")
}

/// Microseconds since 1970 by the machine's wall clock, which every worker
/// process reads alike: instants from different processes compare.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
}

/// One acquisition (or one wait that the deadline ended), in Unix µs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    /// `index << 16 | task`: unique across the run's processes.
    pub task: u32,
    pub lock: u32,
    /// When the task began to wait for the lock.
    pub wait_start: u64,
    /// When its acquire returned the lock; 0 if it never did (the run
    /// ended first: the wait ended at `released`).
    pub acquired: u64,
    /// When it called release, after the critical section; for a wait
    /// the deadline ended, when it gave up.
    pub released: u64,
    /// herdcache's fencing token; 0 for the baselines.
    pub fence: u64,
}

impl Record {
    const BYTES: usize = 40;

    pub fn encode(records: &[Record]) -> Vec<u8> {
        let mut out = Vec::with_capacity(records.len() * Self::BYTES);
        for r in records {
            out.extend_from_slice(&r.task.to_le_bytes());
            out.extend_from_slice(&r.lock.to_le_bytes());
            for v in [r.wait_start, r.acquired, r.released, r.fence] {
                out.extend_from_slice(&v.to_le_bytes());
            }
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
        let u32_at =
            |c: &[u8], i: usize| u32::from_le_bytes(c[i..i + 4].try_into().expect("4 bytes"));
        let u64_at =
            |c: &[u8], i: usize| u64::from_le_bytes(c[i..i + 8].try_into().expect("8 bytes"));
        Ok(bytes
            .chunks_exact(Self::BYTES)
            .map(|c| Record {
                task: u32_at(c, 0),
                lock: u32_at(c, 4),
                wait_start: u64_at(c, 8),
                acquired: u64_at(c, 16),
                released: u64_at(c, 24),
                fence: u64_at(c, 32),
            })
            .collect())
    }
}

/// What a worker reports besides its records.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerOut {
    pub sections: u64,
    /// Entries whose `INCR` answered more than 1.
    pub overlaps: u64,
    /// Releases that found the lock no longer ours.
    pub lost_releases: u64,
    pub errors: u64,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
}

impl WorkerOut {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.error_samples.len() < 5 && !self.error_samples.contains(&e) {
            self.error_samples.push(e);
        }
    }

    pub fn add(&mut self, o: WorkerOut) {
        self.sections += o.sections;
        self.overlaps += o.overlaps;
        self.lost_releases += o.lost_releases;
        for e in o.error_samples {
            if self.error_samples.len() < 5 && !self.error_samples.contains(&e) {
                self.error_samples.push(e);
            }
        }
        self.errors += o.errors;
    }
}

/// State shared by the tasks of this process.
struct Shared {
    spec: Spec,
    names: Vec<String>,
    locker: Locker,
    /// Bookkeeping connection: exclusion counters and progress.
    book: MultiplexedConnection,
    start: Instant,
    deadline: Instant,
    /// Critical sections done in this process, for the progress bar.
    done: AtomicU64,
}

pub async fn run(spec: Spec, index: usize) -> Result<(), String> {
    let mut book = redis::Client::open(spec.book_url.as_str())
        .map_err(|e| format!("redis url: {e}"))?
        .get_multiplexed_async_connection()
        .await
        .map_err(|e| format!("connect to redis: {e}"))?;
    let names = spec.names();
    let locker = Locker::connect(spec.strategy, &spec.lock_url, &names).await?;

    let run = spec.run.clone();
    let (_, start) = ready_then_go(&mut book, &run).await?;
    let shared = Arc::new(Shared {
        deadline: start + Duration::from_millis(spec.duration_ms),
        spec,
        names,
        locker,
        book: book.clone(),
        start,
        done: AtomicU64::new(0),
    });

    let finished = Arc::new(AtomicBool::new(false));
    let progress = {
        let (s, finished) = (shared.clone(), finished.clone());
        tokio::spawn(async move {
            let (key, run_ms) = (progress_key(&s.spec.run), s.spec.duration_ms);
            scenario::report_progress(s.book.clone(), key, &s.done, &finished, run_ms).await
        })
    };
    let handles: Vec<_> = (0..shared.spec.tasks)
        .map(|t| {
            let id = (index as u32) << 16 | t as u32;
            let seed = fastrand::u64(..) ^ u64::from(id);
            tokio::spawn(task(shared.clone(), id, seed))
        })
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

async fn task(s: Arc<Shared>, id: u32, seed: u64) -> (WorkerOut, Vec<Record>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = WorkerOut::default();
    let mut records = Vec::new();
    let count = s.spec.count.min(MAX_SECTIONS_PER_TASK);
    let hold = Duration::from_millis(s.spec.hold_ms);
    let mut book = s.book.clone();
    tokio::time::sleep_until(s.start).await;
    // Bounded by the deadline (every pass waits, holds or pauses) and by
    // the count, including passes that end in an error.
    for _ in 0..count.saturating_mul(2) {
        if out.sections >= count || Instant::now() >= s.deadline {
            break;
        }
        let lock = if s.spec.locks > 1 {
            rng.u32(..s.spec.locks)
        } else {
            0
        };
        let wait_start = unix_us();
        let held = match s
            .locker
            .acquire(&s.names, lock as usize, s.deadline, &mut rng)
            .await
        {
            Ok(Some(held)) => held,
            Ok(None) => {
                // The run ended while this task waited.
                records.push(Record {
                    task: id,
                    lock,
                    wait_start,
                    acquired: 0,
                    released: unix_us(),
                    fence: 0,
                });
                break;
            }
            Err(e) => {
                out.error(e);
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        let acquired = unix_us();
        let fence = held.fence();

        // The critical section: enter, hold, leave.
        let counter = counter_key(&s.spec.run, lock);
        match book.incr::<_, _, i64>(&counter, 1).await {
            Ok(n) if n > 1 => out.overlaps += 1,
            Ok(_) => {}
            Err(e) => out.error(format!("INCR: {e}")),
        }
        if !hold.is_zero() {
            tokio::time::sleep(hold).await;
        }
        if let Err(e) = book.decr::<_, _, i64>(&counter, 1).await {
            out.error(format!("DECR: {e}"));
        }

        let released = unix_us();
        match s.locker.release(held).await {
            Ok(true) => {}
            Ok(false) => out.lost_releases += 1,
            Err(e) => out.error(e),
        }
        out.sections += 1;
        s.done.fetch_add(1, Ordering::Relaxed);
        records.push(Record {
            task: id,
            lock,
            wait_start,
            acquired,
            released,
            fence,
        });
        // The work a task does between critical sections.
        if s.spec.think_ms > 0 {
            let think = Duration::from_micros(rng.u64(0..=2 * s.spec.think_ms * 1000));
            tokio::time::sleep(think).await;
        }
    }
    (out, records)
}
