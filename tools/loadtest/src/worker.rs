//! One worker process (`loadtest worker --spec JSON --index N`): `tasks`
//! concurrent callers of one strategy, released at the instant the parent
//! writes under `<run>:go`, reporting back through Redis.
//!
//! Workers are separate processes, not threads, because the point is what
//! happens *across* processes: a per-process lock or coalescing table
//! cannot see the other processes, a fleet lock in Redis can.

use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

use crate::strategies::{Client, ClientConfig, Loader, LoaderKind, Strategy};

/// Everything a worker needs, passed as one JSON argument so the options are
/// defined once (in `main.rs`), not twice.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub redis_url: String,
    /// Prefix of every Redis key of this run and strategy.
    pub run: String,
    pub strategy: Strategy,
    pub tasks: usize,
    pub keys: u32,
    pub dist: Dist,
    pub zipf_s: f64,
    pub hot_share: f64,
    pub loader: LoaderKind,
    pub loader_ms: u64,
    pub db_path: Option<PathBuf>,
    pub ttl_ms: u64,
    pub stale_ms: u64,
    pub early_refresh_beta: Option<f64>,
    /// `None`: cold mode, one request per task. `Some`: steady mode, tasks
    /// loop until this long after the release.
    pub duration_ms: Option<u64>,
    /// Width of the time buckets of the latency-over-time chart.
    pub bucket_ms: u64,
    /// Where the tool's own keys go (ready/go, load counts, reports), when
    /// not `redis_url`: `--scenario scaling` keeps them off the measured
    /// Redis so its `INFO commandstats` counts only the cache's commands.
    #[serde(default)]
    pub book_url: Option<String>,
    /// Requests per second per process, spread evenly over its tasks
    /// (steady mode); `None`: each task sends its next request at once.
    #[serde(default)]
    pub rate: Option<f64>,
}

/// How keys are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Dist {
    Uniform,
    Zipf,
}

/// A steady-mode task stops after this many requests even if time is left:
/// every loop here is bounded in count as well as in time.
const MAX_REQUESTS_PER_TASK: u64 = 50_000_000;
/// How long a worker waits for the parent's go before giving up.
const GO_TIMEOUT: Duration = Duration::from_secs(60);
/// Latencies are recorded in µs up to this; longer ones saturate.
pub const MAX_LATENCY_US: u64 = 60_000_000;

/// Redis keys a worker writes and the parent reads.
pub fn hist_key(run: &str, index: usize) -> String {
    format!("{run}:w{index}:hist")
}
pub fn buckets_key(run: &str, index: usize) -> String {
    format!("{run}:w{index}:buckets")
}
pub fn report_key(run: &str, index: usize) -> String {
    format!("{run}:w{index}:report")
}

/// What a worker reports besides its histograms.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    pub requests: u64,
    pub errors: u64,
    /// The first few distinct error messages.
    pub error_samples: Vec<String>,
    /// From the release to this worker's last completed request.
    pub elapsed_us: u64,
    /// Loads of key 0 (the hottest), in ms since the release.
    pub hot_loads_ms: Vec<u64>,
    pub herdcache: Option<HcStats>,
}

/// The `herdcache::Stats` counters the report uses (`Stats` itself is not
/// `Serialize`, and it is `#[non_exhaustive]`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct HcStats {
    pub l1_hits: u64,
    pub l2_hits: u64,
    pub misses: u64,
    pub coalesced: u64,
    pub loads: u64,
    pub lock_waits: u64,
    pub notified_wakeups: u64,
    pub wait_timeouts: u64,
    /// Fills refused because the lock was lost or voided while loading.
    pub lease_lost: u64,
    pub redis_errors: u64,
    /// Expired values served inside the stale window (`--stale-ms`).
    pub stale_served: u64,
    pub background_refreshes: u64,
    pub fail_safe_served: u64,
}

impl From<herdcache::Stats> for HcStats {
    fn from(s: herdcache::Stats) -> Self {
        HcStats {
            l1_hits: s.l1_hits,
            l2_hits: s.l2_hits,
            misses: s.misses,
            coalesced: s.coalesced,
            loads: s.loads,
            lock_waits: s.lock_waits,
            notified_wakeups: s.notified_wakeups,
            wait_timeouts: s.wait_timeouts,
            lease_lost: s.lease_lost,
            redis_errors: s.redis_errors,
            stale_served: s.stale_served,
            background_refreshes: s.background_refreshes,
            fail_safe_served: s.fail_safe_served,
        }
    }
}

impl HcStats {
    pub fn add(&mut self, o: &HcStats) {
        self.l1_hits += o.l1_hits;
        self.l2_hits += o.l2_hits;
        self.misses += o.misses;
        self.coalesced += o.coalesced;
        self.loads += o.loads;
        self.lock_waits += o.lock_waits;
        self.notified_wakeups += o.notified_wakeups;
        self.wait_timeouts += o.wait_timeouts;
        self.lease_lost += o.lease_lost;
        self.redis_errors += o.redis_errors;
        self.stale_served += o.stale_served;
        self.background_refreshes += o.background_refreshes;
        self.fail_safe_served += o.fail_safe_served;
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Latency histogram of a whole run: 1 µs to 60 s at 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Histogram of one chart bucket: 2 digits are plenty for a line on a chart,
/// and keep hundreds of buckets small.
fn new_bucket_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid histogram bounds")
}

/// Draws the key of each request.
pub struct KeyPicker {
    keys: u32,
    hot_share: f64,
    /// Cumulative Zipf weights of keys 0..keys (key 0 is the most popular).
    zipf_cdf: Option<Vec<f64>>,
}

impl KeyPicker {
    pub fn new(keys: u32, dist: Dist, zipf_s: f64, hot_share: f64) -> KeyPicker {
        let zipf_cdf = (dist == Dist::Zipf && keys > 1).then(|| {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (0..keys)
                .map(|k| {
                    acc += 1.0 / f64::from(k + 1).powf(zipf_s);
                    acc
                })
                .collect();
            cdf.iter_mut().for_each(|c| *c /= acc);
            cdf
        });
        KeyPicker {
            keys,
            hot_share,
            zipf_cdf,
        }
    }

    /// `--hot-share` of the requests go to key 0; the rest follow `--dist`
    /// over all keys (key 0 included).
    pub fn pick(&self, rng: &mut fastrand::Rng) -> u32 {
        if self.keys <= 1 || (self.hot_share > 0.0 && rng.f64() < self.hot_share) {
            return 0;
        }
        match &self.zipf_cdf {
            None => rng.u32(..self.keys),
            Some(cdf) => {
                let u = rng.f64();
                (cdf.partition_point(|&c| c < u) as u32).min(self.keys - 1)
            }
        }
    }
}

/// What one task measured.
struct TaskOut {
    hist: Histogram<u64>,
    requests: u64,
    errors: u64,
    error_samples: Vec<String>,
    last_done: Duration,
}

/// State shared by the tasks of this process.
struct Shared {
    client: Client,
    loader: Loader,
    picker: KeyPicker,
    start: Instant,
    deadline: Option<Instant>,
    bucket: Duration,
    /// Per chart bucket, the merged latencies of this process. A task merges
    /// its own bucket histogram in when it moves to the next bucket: one
    /// short lock per task per bucket, not one per request.
    buckets: Mutex<BTreeMap<u64, Histogram<u64>>>,
    /// `rate`: the interval between one task's requests.
    pace: Option<Duration>,
}

pub async fn run(spec: WorkerSpec, index: usize) -> Result<(), String> {
    // The baselines' plain connection to the measured Redis. herdcache
    // makes its own from the URL (which may be a `redis-cluster://` one,
    // which this plain client cannot open), so it needs none when the
    // bookkeeping has a Redis of its own.
    let measured = if spec.strategy == Strategy::Herdcache && spec.book_url.is_some() {
        None
    } else {
        let client_redis =
            redis::Client::open(spec.redis_url.as_str()).map_err(|e| format!("redis url: {e}"))?;
        Some(
            client_redis
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| format!("connect to redis: {e}"))?,
        )
    };
    // The bookkeeping connection: the measured one unless a second Redis
    // was given for it.
    let mut con = match (&spec.book_url, &measured) {
        (Some(url), _) => redis::Client::open(url.as_str())
            .map_err(|e| format!("bookkeeping redis url: {e}"))?
            .get_multiplexed_async_connection()
            .await
            .map_err(|e| format!("connect to the bookkeeping redis: {e}"))?,
        (None, Some(measured)) => measured.clone(),
        (None, None) => return Err("no Redis for the bookkeeping".into()),
    };
    let client = Client::connect(ClientConfig {
        strategy: spec.strategy,
        redis_url: &spec.redis_url,
        con: measured,
        prefix: &spec.run,
        ttl: Duration::from_millis(spec.ttl_ms),
        stale: Duration::from_millis(spec.stale_ms),
        early_refresh_beta: spec.early_refresh_beta,
    })
    .await?;

    let run = &spec.run;
    let (go_ms, start) = ready_then_go(&mut con, run).await?;

    let hot_loads = Arc::new(Mutex::new(Vec::new()));
    let shared = Arc::new(Shared {
        loader: Loader {
            kind: spec.loader,
            delay: Duration::from_millis(spec.loader_ms),
            db: spec.db_path.clone().map(Arc::new),
            con: con.clone(),
            loads_key: format!("{run}:loads").into(),
            hot_loads: hot_loads.clone(),
            go_ms,
            counting: Default::default(),
        },
        client,
        picker: KeyPicker::new(spec.keys, spec.dist, spec.zipf_s, spec.hot_share),
        start,
        deadline: spec.duration_ms.map(|ms| start + Duration::from_millis(ms)),
        bucket: Duration::from_millis(spec.bucket_ms.max(1)),
        buckets: Mutex::new(BTreeMap::new()),
        // Each task sends one request every `tasks / rate` seconds.
        pace: spec
            .rate
            .filter(|r| *r > 0.0)
            .map(|r| Duration::from_secs_f64(spec.tasks as f64 / r)),
    });
    let handles: Vec<_> = (0..spec.tasks)
        .map(|t| {
            let shared = shared.clone();
            let seed = fastrand::u64(..) ^ ((index as u64) << 32 | t as u64);
            tokio::spawn(task(shared, seed))
        })
        .collect();

    let mut hist = new_histogram();
    let mut report = WorkerReport::default();
    for h in handles {
        let out = h.await.map_err(|e| format!("task panicked: {e}"))?;
        hist.add(&out.hist).map_err(|e| e.to_string())?;
        report.requests += out.requests;
        report.errors += out.errors;
        for e in out.error_samples {
            if report.error_samples.len() < 5 && !report.error_samples.contains(&e) {
                report.error_samples.push(e);
            }
        }
        report.elapsed_us = report.elapsed_us.max(out.last_done.as_micros() as u64);
    }
    shared.loader.counted().await?;
    report.hot_loads_ms = std::mem::take(&mut *hot_loads.lock().expect("hot_loads lock"));
    report.herdcache = shared.client.stats().map(HcStats::from);

    // Hand everything back in one pipeline.
    let mut serializer = V2Serializer::new();
    let mut bytes = Vec::new();
    serializer
        .serialize(&hist, &mut bytes)
        .map_err(|e| format!("serialize histogram: {e:?}"))?;
    let mut pipe = redis::pipe();
    pipe.set(hist_key(run, index), bytes).ignore();
    let buckets = std::mem::take(&mut *shared.buckets.lock().expect("buckets lock"));
    let mut fields = Vec::with_capacity(buckets.len());
    for (b, h) in &buckets {
        let mut bytes = Vec::new();
        serializer
            .serialize(h, &mut bytes)
            .map_err(|e| format!("serialize histogram: {e:?}"))?;
        fields.push((*b, bytes));
    }
    if !fields.is_empty() {
        pipe.hset_multiple(buckets_key(run, index), &fields)
            .ignore();
    }
    let json = serde_json::to_string(&report).map_err(|e| e.to_string())?;
    pipe.set(report_key(run, index), json).ignore();
    pipe.query_async::<()>(&mut con)
        .await
        .map_err(|e| format!("report to redis: {e}"))?;
    Ok(())
}

/// Tells the parent this worker is ready (`INCR <run>:ready`), then waits
/// for the one release instant it writes under `<run>:go` (Unix ms), shared
/// by all workers. Returns that instant, as Unix ms and as an `Instant`.
pub async fn ready_then_go(
    con: &mut redis::aio::MultiplexedConnection,
    run: &str,
) -> Result<(u64, Instant), String> {
    let _: u64 = con
        .incr(format!("{run}:ready"), 1)
        .await
        .map_err(|e| e.to_string())?;
    let waited = Instant::now();
    let go_ms: u64 = loop {
        let go: Option<u64> = con
            .get(format!("{run}:go"))
            .await
            .map_err(|e| e.to_string())?;
        if let Some(go) = go {
            break go;
        }
        if waited.elapsed() > GO_TIMEOUT {
            return Err(format!("no go signal after {GO_TIMEOUT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    let start = Instant::now() + Duration::from_millis(go_ms.saturating_sub(now_ms()));
    Ok((go_ms, start))
}

async fn task(s: Arc<Shared>, seed: u64) -> TaskOut {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = TaskOut {
        hist: new_histogram(),
        requests: 0,
        errors: 0,
        error_samples: Vec::new(),
        last_done: Duration::ZERO,
    };
    let mut bucket = new_bucket_histogram();
    let mut bucket_index = 0u64;
    // Paced tasks start spread over one interval, not all at the release.
    let mut next = s.start + s.pace.map_or(Duration::ZERO, |p| p.mul_f64(rng.f64()));
    tokio::time::sleep_until(next).await;
    loop {
        let key = s.picker.pick(&mut rng);
        let t0 = std::time::Instant::now();
        let got = s.client.get(key, s.loader.clone()).await;
        let us = t0.elapsed().as_micros() as u64;
        let done = Instant::now();
        out.hist.saturating_record(us.max(1));
        out.requests += 1;
        if let Err(e) = got {
            out.errors += 1;
            if out.error_samples.len() < 5 {
                out.error_samples.push(e);
            }
        }
        out.last_done = done - s.start;
        // Requests are charted by when they completed.
        let index = (out.last_done.as_micros() / s.bucket.as_micros()) as u64;
        if index != bucket_index {
            merge_bucket(&s, bucket_index, &mut bucket);
            bucket_index = index;
        }
        bucket.saturating_record(us.max(1));
        let more = match s.deadline {
            None => false, // cold mode: one request per task
            Some(deadline) => done < deadline && out.requests < MAX_REQUESTS_PER_TASK,
        };
        if !more {
            break;
        }
        match s.pace {
            // On schedule; a task that fell behind does not burst to catch up.
            Some(pace) => {
                next = (next + pace).max(Instant::now());
                tokio::time::sleep_until(next).await;
            }
            // An L1 hit completes without ever yielding to Tokio; without this
            // a task hitting L1 would hold its worker thread until the
            // deadline and starve the other tasks. A real server awaits its
            // socket here.
            None => tokio::task::yield_now().await,
        }
    }
    merge_bucket(&s, bucket_index, &mut bucket);
    out
}

fn merge_bucket(s: &Shared, index: u64, bucket: &mut Histogram<u64>) {
    if bucket.is_empty() {
        return;
    }
    let mut all = s.buckets.lock().expect("buckets lock");
    all.entry(index)
        .or_insert_with(new_bucket_histogram)
        .add(&*bucket)
        .expect("same histogram bounds");
    bucket.reset();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipf_prefers_low_keys_and_hot_share_goes_to_key_zero() {
        let mut rng = fastrand::Rng::with_seed(7);
        let zipf = KeyPicker::new(100, Dist::Zipf, 1.0, 0.0);
        let mut counts = [0u32; 100];
        for _ in 0..100_000 {
            counts[zipf.pick(&mut rng) as usize] += 1;
        }
        // With s = 1 and 100 keys, key 0 gets 1/H(100) ≈ 19% of requests.
        assert!((17_000..21_000).contains(&counts[0]), "{}", counts[0]);
        assert!(counts[0] > counts[1] && counts[1] > counts[9] && counts[9] > counts[99]);

        let hot = KeyPicker::new(100, Dist::Uniform, 1.0, 0.5);
        let zeros = (0..100_000).filter(|_| hot.pick(&mut rng) == 0).count();
        // 50% hot share + 1% of the uniform rest.
        assert!((49_000..52_500).contains(&zeros), "{zeros}");

        let one = KeyPicker::new(1, Dist::Zipf, 1.0, 0.0);
        assert!((0..1000).all(|_| one.pick(&mut rng) == 0));
    }
}
