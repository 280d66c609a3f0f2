//! The four ways of reading through a cache that one run compares, and the
//! loader they all share.
//!
//! Every strategy stores the same value type with the same codec (herdcache's
//! default), so the differences measured are in who loads and who waits, not
//! in serialisation.

use herdcache::{Codec, DefaultCodec};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::db;
use crate::worker::now_ms;

/// How a caller gets a value that may not be cached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Plain cache-aside: GET; on a miss, load and SET PX ttl. No lock, so
    /// every caller that misses runs the loader.
    None,
    /// `SET lock NX EX`; the winner loads and SETs, losers sleep 100 ms and
    /// GET again: the pattern most tutorials show.
    NaiveLock,
    /// An in-process moka cache whose `try_get_with` coalesces the callers
    /// of one process onto one cache-aside read; no lock across processes.
    Local,
    /// `herdcache::Cache::get_or_compute`.
    Herdcache,
}

impl Strategy {
    /// In the order the report lists them: from no protection to herdcache.
    pub const ALL: [Strategy; 4] = [
        Strategy::None,
        Strategy::NaiveLock,
        Strategy::Local,
        Strategy::Herdcache,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Strategy::None => "none",
            Strategy::NaiveLock => "naive-lock",
            Strategy::Local => "local",
            Strategy::Herdcache => "herdcache",
        }
    }
}

/// What the loader reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LoaderKind {
    /// `tokio::time::sleep(loader-ms)` and a made-up row.
    Sleep,
    /// A real query (join + aggregate) against a SQLite file the tool fills
    /// at start, after `loader-ms` of added delay standing in for a slow,
    /// remote database.
    Sqlite,
}

/// The cached value: one product row with its review aggregate.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Product {
    pub id: i64,
    pub name: String,
    pub price_cents: i64,
    pub reviews: i64,
    pub avg_stars: f64,
    /// When the loader produced it (Unix ms): lets the `local` strategy
    /// expire its L1 copy when the Redis copy expires, as herdcache does.
    pub loaded_at_ms: u64,
}

/// A loader error; herdcache wants a real `std::error::Error`.
#[derive(Debug)]
pub struct LoadError(pub String);

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LoadError {}

/// A load count on its way to Redis.
pub type Counting = tokio::task::JoinHandle<Result<(), String>>;

/// The "database read" every strategy calls on a miss. Cheap to clone: one
/// clone per request, moved into the loader closure.
#[derive(Clone)]
pub struct Loader {
    pub kind: LoaderKind,
    pub delay: Duration,
    pub db: Option<Arc<PathBuf>>,
    /// Counts loader calls across the fleet (`INCR <run>:loads`): the one
    /// number the comparison is about, so it is counted where every process
    /// can add to it, not in memory.
    pub con: MultiplexedConnection,
    pub loads_key: Arc<str>,
    /// When each load of key 0 (the hottest key) started, in ms since the
    /// release instant: the chart marks them as that key's expiries.
    pub hot_loads: Arc<Mutex<Vec<u64>>>,
    pub go_ms: u64,
    /// The load counts still on their way to Redis.
    pub counting: Arc<Mutex<Vec<Counting>>>,
}

impl Loader {
    /// Waits until every load counted so far is in Redis.
    pub async fn counted(&self) -> Result<(), String> {
        let pending = std::mem::take(&mut *self.counting.lock().expect("counting lock"));
        for count in pending {
            count.await.map_err(|e| format!("count a load: {e}"))??;
        }
        Ok(())
    }

    pub async fn load(self, key: u32) -> Result<Product, LoadError> {
        if key == 0 {
            let at = now_ms().saturating_sub(self.go_ms);
            self.hot_loads.lock().expect("hot_loads lock").push(at);
        }
        // Counted from a task of its own: the load should take the
        // loader's time, not also the round trip that counts it (which
        // would add ~0.1-1 ms to every strategy's loads). The worker awaits
        // every count before it reports (`Loader::counted`).
        let (mut con, loads_key) = (self.con.clone(), self.loads_key.clone());
        let count = tokio::spawn(async move {
            con.incr::<_, _, u64>(&*loads_key, 1)
                .await
                .map(drop)
                .map_err(|e| format!("count a load: {e}"))
        });
        self.counting.lock().expect("counting lock").push(count);
        tokio::time::sleep(self.delay).await;
        let id = i64::from(key) + 1;
        let mut product = match (self.kind, &self.db) {
            (LoaderKind::Sqlite, Some(path)) => db::query(path.clone(), id).await?,
            (LoaderKind::Sqlite, None) => return Err(LoadError("no database path".into())),
            (LoaderKind::Sleep, _) => Product {
                id,
                name: format!("product {id}"),
                price_cents: 100 * id,
                reviews: 0,
                avg_stars: 0.0,
                loaded_at_ms: 0,
            },
        };
        product.loaded_at_ms = now_ms();
        Ok(product)
    }
}

/// Redis cache-aside shared by the three baselines.
#[derive(Clone)]
pub struct Aside {
    con: MultiplexedConnection,
    prefix: String,
    ttl: Duration,
}

impl Aside {
    fn value_key(&self, key: u32) -> String {
        format!("{}:v:{key}", self.prefix)
    }

    async fn read(&self, key: u32) -> Result<Option<Product>, String> {
        let bytes: Option<Vec<u8>> = self
            .con
            .clone()
            .get(self.value_key(key))
            .await
            .map_err(|e| format!("GET: {e}"))?;
        // Bytes that do not decode count as a miss, as in herdcache.
        Ok(bytes.and_then(|b| DefaultCodec::default().decode(&b).ok()))
    }

    async fn write(&self, key: u32, product: &Product) -> Result<(), String> {
        let mut bytes = Vec::with_capacity(128);
        DefaultCodec::default()
            .encode(product, &mut bytes)
            .map_err(|e| format!("encode: {e}"))?;
        let ttl_ms = self.ttl.as_millis().max(1) as u64;
        self.con
            .clone()
            .pset_ex::<_, _, ()>(self.value_key(key), bytes, ttl_ms)
            .await
            .map_err(|e| format!("SET: {e}"))
    }

    /// GET, and on a miss load and SET: every caller that misses loads.
    async fn get_or_load(&self, key: u32, loader: Loader) -> Result<Product, String> {
        if let Some(p) = self.read(key).await? {
            return Ok(p);
        }
        let p = loader.load(key).await.map_err(|e| e.0)?;
        self.write(key, &p).await?;
        Ok(p)
    }

    /// The tutorial lock: losers poll every 100 ms. Bounded: after 100 polls
    /// (10 s) the caller gives up with an error.
    async fn naive_lock(&self, key: u32, loader: Loader) -> Result<Product, String> {
        const POLL: Duration = Duration::from_millis(100);
        const MAX_POLLS: u32 = 100;
        let lock = format!("{}:lock:{key}", self.prefix);
        let mut con = self.con.clone();
        for _ in 0..MAX_POLLS {
            if let Some(p) = self.read(key).await? {
                return Ok(p);
            }
            // EX 10: long enough for any loader here; a crashed holder
            // blocks the key for up to 10 s, as in the tutorials.
            let won: Option<String> = redis::cmd("SET")
                .arg(&lock)
                .arg(std::process::id())
                .arg("NX")
                .arg("EX")
                .arg(10)
                .query_async(&mut con)
                .await
                .map_err(|e| format!("SET NX: {e}"))?;
            if won.is_some() {
                let loaded = loader.load(key).await.map_err(|e| e.0);
                if let Ok(p) = &loaded {
                    self.write(key, p).await?;
                }
                let _: () = con.del(&lock).await.map_err(|e| format!("DEL: {e}"))?;
                return loaded;
            }
            tokio::time::sleep(POLL).await;
        }
        Err(format!("naive-lock: gave up after {MAX_POLLS} polls"))
    }
}

/// Expires a `local` L1 entry when the value's TTL runs out, not `ttl` after
/// it was copied into L1 (which could be nearly `ttl` after Redis dropped it).
struct UntilRedisExpiry {
    ttl_ms: u64,
}

impl moka::Expiry<u32, Arc<Product>> for UntilRedisExpiry {
    fn expire_after_create(
        &self,
        _key: &u32,
        value: &Arc<Product>,
        _created_at: std::time::Instant,
    ) -> Option<Duration> {
        let until = value.loaded_at_ms + self.ttl_ms;
        Some(Duration::from_millis(until.saturating_sub(now_ms())))
    }
}

/// One process's handle on a strategy; cloned into every task.
#[derive(Clone)]
pub enum Client {
    None(Aside),
    NaiveLock(Aside),
    Local {
        aside: Aside,
        l1: moka::future::Cache<u32, Arc<Product>>,
    },
    Herdcache(herdcache::Cache<Product>),
}

/// What [`Client::connect`] needs.
pub struct ClientConfig<'a> {
    pub strategy: Strategy,
    pub redis_url: &'a str,
    /// The baselines' connection; herdcache connects by `redis_url`.
    pub con: Option<MultiplexedConnection>,
    /// Unique per run and strategy: every strategy starts from an empty
    /// cache without flushing a Redis that may be shared.
    pub prefix: &'a str,
    pub ttl: Duration,
    pub stale: Duration,
    pub early_refresh_beta: Option<f64>,
}

impl Client {
    pub async fn connect(c: ClientConfig<'_>) -> Result<Client, String> {
        let name = c.strategy.name();
        let aside = |con: Option<MultiplexedConnection>| {
            Ok::<_, String>(Aside {
                con: con.ok_or_else(|| format!("{name} needs a plain Redis connection"))?,
                prefix: c.prefix.to_owned(),
                ttl: c.ttl,
            })
        };
        Ok(match c.strategy {
            Strategy::None => Client::None(aside(c.con)?),
            Strategy::NaiveLock => Client::NaiveLock(aside(c.con)?),
            Strategy::Local => Client::Local {
                aside: aside(c.con)?,
                l1: moka::future::Cache::builder()
                    .max_capacity(10_000) // herdcache's default L1 size
                    .expire_after(UntilRedisExpiry {
                        ttl_ms: c.ttl.as_millis() as u64,
                    })
                    .build(),
            },
            Strategy::Herdcache => {
                let builder = herdcache::Cache::<Product>::builder(c.prefix)
                    .redis_url(c.redis_url)
                    .ttl(c.ttl);
                let builder = apply_stale(builder, c.stale);
                let builder = match c.early_refresh_beta {
                    Some(beta) => builder.early_refresh_beta(beta),
                    None => builder,
                };
                Client::Herdcache(builder.build().await.map_err(|e| e.to_string())?)
            }
        })
    }

    /// One request for `key`.
    pub async fn get(&self, key: u32, loader: Loader) -> Result<Arc<Product>, String> {
        match self {
            Client::None(aside) => aside.get_or_load(key, loader).await.map(Arc::new),
            Client::NaiveLock(aside) => aside.naive_lock(key, loader).await.map(Arc::new),
            Client::Local { aside, l1 } => l1
                .try_get_with(key, async {
                    aside.get_or_load(key, loader).await.map(Arc::new)
                })
                .await
                .map_err(|e| e.to_string()),
            Client::Herdcache(cache) => cache
                .get_or_compute(&format!("p{key}"), move || loader.load(key))
                .await
                .map_err(|e| e.to_string()),
        }
    }

    /// herdcache's counters, for the L1/L2 hit ratios.
    pub fn stats(&self) -> Option<herdcache::Stats> {
        match self {
            Client::Herdcache(cache) => Some(cache.stats()),
            _ => None,
        }
    }
}

/// `--stale-ms`: only herdcache has a stale window (`stale_for`): an expired
/// value is served at once while one caller in the fleet refreshes it. The
/// other strategies ignore it: they have no such thing.
pub fn apply_stale(
    builder: herdcache::CacheBuilder<Product>,
    stale: Duration,
) -> herdcache::CacheBuilder<Product> {
    if stale.is_zero() {
        builder
    } else {
        builder.stale_for(stale)
    }
}
