//! [`Cache`]: the public handle, the entry of `get_or_compute`, and the
//! write paths. The rebuild protocol itself lives in `load.rs`.
//!
//! ```text
//! get_or_compute(key)
//!   L1 fresh ─────────────> return            (no Redis, no lock, no .await)
//!   L1 stale ─────────────> return it; one background refresh per process
//!   join the key's flight ─ joined ─> await its outcome
//!   leader: GET inline ─ fresh ─> fill L1, return
//!                      ─ stale ─> return it; refresh in the background
//!                      ─ none ──> spawn the load task (load.rs), await it
//! ```

use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use crate::cache::builder::{CacheBuilder, Config, TtlFor};
use crate::cache::envelope::{Decoded, HEADER_LEN, Header, Unusable, now_ms, read_value};
use crate::cache::key::CacheKey;
use crate::cache::keys::check_key;
use crate::cache::load::LoadFn;
use crate::cache::local::{Entry, Flight, Flights, Local, Outcome, Ticket};
use crate::cache::notify::{Bus, BusEvent, Waiters};
use crate::cache::remote::Remote;
use crate::cache::starter::Starter;
use crate::cache::stats::{Counters, Stats};
use crate::codec::{Codec, DefaultCodec};
use crate::error::{Error, ErrorKind};
use crate::shared::link::Listening;
use crate::shared::telemetry::{CacheMetrics, CallSpan, Served, Stopwatch, log};

/// A two-tier cache of `V` values under one namespace.
///
/// Cheap to clone (an `Arc` inside): clone it into tasks rather than
/// wrapping it in a `Mutex` or `RwLock`, which would serialise every read.
pub struct Cache<V, C = DefaultCodec> {
    inner: Arc<Inner<V, C>>,
}

impl<V, C> Clone for Cache<V, C> {
    fn clone(&self) -> Self {
        Cache {
            inner: self.inner.clone(),
        }
    }
}

pub(crate) struct Inner<V, C> {
    pub(crate) remote: Remote,
    pub(crate) local: Local<V>,
    pub(crate) flights: Arc<Flights<V>>,
    pub(crate) waiters: Arc<Waiters>,
    pub(crate) bus: Arc<Bus>,
    pub(crate) stats: Arc<Counters>,
    pub(crate) config: Config,
    pub(crate) codec: C,
    pub(crate) ttl_for: Option<TtlFor<V>>,
    /// Spawns the refreshes that callers serving a value meanwhile start.
    pub(crate) starter: Starter,
    /// The bus's place on the client's connection: dropping the cache
    /// leaves the channel.
    pub(crate) _listening: Vec<Listening>,
    /// When (unix ms) a codec problem was last logged: see
    /// `Inner::warn_codec`.
    pub(crate) codec_warned_ms: AtomicU64,
    /// Metric handles (feature `metrics`; nothing without it).
    pub(crate) metrics: CacheMetrics,
}

/// What a caller that joined another caller's flight reports: the value
/// came from elsewhere (`Waited`), unless it was stale or an error.
fn joined(served: Served) -> Served {
    match served {
        Served::Stale | Served::Error => served,
        _ => Served::Waited,
    }
}

impl<V> Cache<V, DefaultCodec> {
    /// Starts building a cache whose keys live under `namespace` (1 to 256
    /// bytes, no `{` or `}`). Two caches with the same namespace on the same
    /// Redis share values, locks and invalidations.
    pub fn builder(namespace: impl Into<String>) -> CacheBuilder<V, DefaultCodec> {
        CacheBuilder::new(namespace.into())
    }
}

impl<V, C> Cache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    pub(crate) fn from_arc(inner: Arc<Inner<V, C>>) -> Self {
        Cache { inner }
    }

    /// Returns the value of `key`, computing it with `loader` if neither tier
    /// has a fresh one. Across every process sharing the namespace, one
    /// caller runs the loader; the rest wait for its result (woken by a
    /// notice, not by polling). With a stale window
    /// ([`stale_for`](CacheBuilder::stale_for)), a caller that finds a stale
    /// value gets it at once while one background refresh runs fleet-wide.
    ///
    /// The loader runs in its own Tokio task, hence `Send + 'static`: that is
    /// what lets it finish, and fill the cache for everyone, when the caller
    /// that started it is dropped, and what turns its panic into an error.
    ///
    /// # Errors
    /// Only when there is no stale value to fall back on:
    /// - [`ErrorKind::Loader`], [`ErrorKind::LoaderPanicked`],
    ///   [`ErrorKind::LoadTimeout`]: the loader failed; every caller coalesced
    ///   onto that load gets the same error, and nothing is cached. (With a
    ///   stale value, callers get it instead: fail-safe.)
    /// - [`ErrorKind::WaitTimeout`]: another process held the lock past
    ///   `wait_timeout`.
    /// - [`ErrorKind::InvalidKey`]: the key is longer than
    ///   [`MAX_KEY_LEN`](crate::MAX_KEY_LEN).
    ///
    /// A Redis outage is **not** an error here: the loader runs locally
    /// (still once per process), and its value is kept in L1.
    ///
    /// # Cancel safety
    /// Dropping the returned future abandons only the wait. The load goes on
    /// in the background, fills both tiers and releases the lock; other
    /// callers are served by it.
    ///
    /// # Keys and loader errors
    /// The key is anything [`CacheKey`]: `"42"`, `42u64`, `&id`, a
    /// `String`. The loader's error is anything that converts into
    /// `Box<dyn Error + Send + Sync>`: your own error type, `anyhow::Error`,
    /// a boxed error, a `String`; [`Error::loader_error`] gives it back.
    pub async fn get_or_compute<K, F, Fut, E>(&self, key: K, loader: F) -> Result<Arc<V>, Error>
    where
        K: CacheKey,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let inner = &self.inner;
        // The L1 hit works on a key string that is not kept across an
        // `.await`, so it is never stored in this future's state: with a
        // `&str` key the hit costs what it did before keys were generic
        // (storing the `Key` and reading it back cost 7 instructions a hit;
        // docs/BENCHMARKS.md). Past a miss the key is made again, for keeps.
        // The hit opens no span and reads no clock: only a call past L1 is
        // traced and timed (it costs the hit nothing; docs/BENCHMARKS.md).
        let stale = {
            let key = key.to_key();
            let key = key.as_str();
            if let Err(e) = check_key(key) {
                inner.metrics.request(Served::Error, Duration::ZERO);
                return Err(e);
            }
            match inner.local.get(key) {
                Some((entry, now)) if now < entry.fresh_until => {
                    Counters::bump(&inner.stats.l1_hits);
                    inner.metrics.l1_hit();
                    if entry.refresh_early(now) {
                        inner.refresh_early(key, &entry, loader);
                    }
                    return Ok(entry.value);
                }
                Some((entry, _)) => Some(entry.value),
                None => None,
            }
        };
        let key = key.to_key();
        let key: &str = key.as_str();
        let started = Stopwatch::start();
        let span = CallSpan::get_or_compute(inner.remote.namespace(), key);
        let (result, served) = span.instrument(self.past_l1(key, loader, stale)).await;
        span.outcome(served.as_str());
        inner.metrics.request(served, started.elapsed());
        result
    }

    /// `get_or_compute` past an L1 miss (or with a stale L1 value): the
    /// answer, and how it was come by.
    async fn past_l1<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        stale: Option<Arc<V>>,
    ) -> (Result<Arc<V>, Error>, Served)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let inner = &self.inner;
        // The L2 hit's fast path: a plain GET with no flight, if no other
        // plain read of this key's lane is under way (see `local::Lanes`).
        // What it cannot settle (a miss, a stale or unusable value) goes on
        // to a flight below; a miss or a failed Redis is not read again.
        let mut read_already = None;
        if stale.is_none()
            && let Some(solo) = inner.flights.solo_read(key)
        {
            match inner.remote.get(key).await {
                Ok(Some(bytes)) => {
                    if let Some(value) = inner.fresh_read(key, &bytes, &solo.ticket) {
                        return (Ok(value), Served::L2);
                    }
                }
                Ok(None) => read_already = Some(false),
                Err(e) => {
                    let _ = inner.redis_error("GET", e);
                    read_already = Some(true);
                }
            }
        }
        let (flight, leader) = inner.flights.join(key);
        if let Some(stale) = stale {
            if leader {
                Counters::bump(&inner.stats.background_refreshes);
                inner.clone().spawn_flight(
                    key,
                    flight.clone(),
                    loader,
                    Some(stale.clone()),
                    false,
                    None,
                );
            }
            let (value, served) = inner.serve_stale(stale, &flight, leader).await;
            return (Ok(value), served);
        }
        if !leader {
            Counters::bump(&inner.stats.coalesced);
            let (result, served) = flight.wait_served().await;
            return (result, joined(served));
        }
        // The leader first tries a plain GET inline: L2 hits are the common
        // case, and a GET is cheaper than the read-or-lock script and needs
        // no task. If this future is dropped before the flight is handed to
        // its task, `Leader`'s drop starts the task, so joined waiters are
        // still served.
        let mut lead = Leader {
            inner,
            key,
            flight: &flight,
            loader: Some(loader),
            stale: None,
            redis_failed: false,
        };
        if let Some(redis_failed) = read_already {
            lead.redis_failed = redis_failed;
            drop(lead); // starts the load task
            return flight.wait_served().await;
        }
        match inner.remote.get(key).await {
            Ok(Some(bytes)) => match inner.decode(&bytes) {
                Some(Decoded::Fresh(header, value)) => {
                    Counters::bump(&inner.stats.l2_hits);
                    let value = Arc::new(value);
                    flight.insert_unless_voided(&inner.local, key, value.clone(), &header);
                    lead.loader = None;
                    inner.flights.finish(key, &flight);
                    flight.complete_as(Ok(value.clone()), Served::L2);
                    return (Ok(value), Served::L2);
                }
                Some(Decoded::Stale(header, value)) => {
                    let value = Arc::new(value);
                    // Into L1 as a stale entry: this process's next callers
                    // take the stale path without touching Redis.
                    flight.insert_unless_voided(&inner.local, key, value.clone(), &header);
                    Counters::bump(&inner.stats.background_refreshes);
                    lead.stale = Some(value.clone());
                    drop(lead);
                    let (value, served) = inner.serve_stale(value, &flight, true).await;
                    return (Ok(value), served);
                }
                None => {}
            },
            Ok(None) => {}
            Err(e) => {
                let _ = inner.redis_error("GET", e);
                lead.redis_failed = true;
            }
        }
        drop(lead); // starts the load task
        flight.wait_served().await
    }

    /// Returns the fresh value of `key` if either tier has one. Never runs a
    /// loader, never takes a lock, and never returns a stale value.
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] if L1 has no fresh value and Redis fails or is
    /// marked down by the breaker. Bytes that do not decode read as `None`
    /// (counted in [`Stats::decode_errors`] and logged, at most once a
    /// minute per cache).
    pub async fn get<K: CacheKey>(&self, key: K) -> Result<Option<Arc<V>>, Error> {
        let key = key.to_key();
        let key: &str = key.as_str();
        check_key(key)?;
        let inner = &self.inner;
        if let Some(value) = inner.fresh_in_l1(key) {
            Counters::bump(&inner.stats.l1_hits);
            return Ok(Some(value));
        }
        // A write applied while the GET is out must not leave the older
        // value in L1 (see `local::Lanes`).
        let ticket = inner.flights.ticket(key);
        let bytes = inner
            .remote
            .get(key)
            .await
            .map_err(|e| inner.redis_error("GET", e))?;
        let value = bytes.and_then(|b| inner.fresh_read(key, &b, &ticket));
        if value.is_none() {
            Counters::bump(&inner.stats.misses);
        }
        Ok(value)
    }

    /// [`get`](Self::get) for many keys: L1 first, then **one** `MGET` round
    /// trip for the rest. Results are in the order of `keys`.
    ///
    /// Note: on Redis Cluster the keys of one `MGET` must share a slot; this
    /// crate's connection is to a standalone Redis.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] before anything is sent; [`ErrorKind::Redis`]
    /// if some key is not in L1 and Redis fails.
    pub async fn get_many<K: CacheKey>(&self, keys: &[K]) -> Result<Vec<Option<Arc<V>>>, Error> {
        let inner = &self.inner;
        let owned: Vec<_> = keys.iter().map(CacheKey::to_key).collect();
        let keys: Vec<&str> = owned.iter().map(|k| k.as_str()).collect();
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, &k) in keys.iter().enumerate() {
            check_key(k)?;
            match inner.fresh_in_l1(k) {
                Some(value) => {
                    Counters::bump(&inner.stats.l1_hits);
                    out.push(Some(value));
                }
                _ => {
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let tickets: Vec<_> = missing
            .iter()
            .map(|&i| inner.flights.ticket(keys[i]))
            .collect();
        let values = inner
            .remote
            .mget(missing.iter().map(|&i| keys[i]))
            .await
            .map_err(|e| inner.redis_error("MGET", e))?;
        for ((&i, bytes), ticket) in missing.iter().zip(values).zip(&tickets) {
            out[i] = bytes.and_then(|b| inner.fresh_read(keys[i], &b, ticket));
            if out[i].is_none() {
                Counters::bump(&inner.stats.misses);
            }
        }
        Ok(out)
    }

    /// [`get_or_compute`](Self::get_or_compute) for many keys: one `MGET`
    /// for what L1 lacks, then the usual one-rebuild-per-key protocol,
    /// concurrently, for each key still missing (`loader(key)` builds it).
    ///
    /// # Errors
    /// As [`get_or_compute`](Self::get_or_compute), the first error among
    /// the keys; a Redis failure of the `MGET` falls through to the per-key
    /// path (which falls back to the loader).
    pub async fn get_or_compute_many<K, F, Fut, E>(
        &self,
        keys: &[K],
        loader: F,
    ) -> Result<Vec<Arc<V>>, Error>
    where
        K: CacheKey,
        F: Fn(String) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let found = match self.get_many(keys).await {
            Ok(found) => found,
            Err(e) if e.kind() == ErrorKind::Redis => vec![None; keys.len()],
            Err(e) => return Err(e),
        };
        let loads = found.into_iter().zip(keys).map(|(hit, key)| {
            let loader = loader.clone();
            let key = key.to_key().as_str().to_owned();
            async move {
                match hit {
                    Some(value) => Ok(value),
                    None => {
                        let k = key.clone();
                        self.get_or_compute(key.as_str(), move || loader(k)).await
                    }
                }
            }
        });
        futures_util::future::join_all(loads)
            .await
            .into_iter()
            .collect()
    }

    /// Writes `value` to Redis and L1 (write-through), voiding any load of
    /// the key in flight anywhere (its late fill is refused), and tells other
    /// processes to drop their L1 copy. The value is fresh for `ttl` (or
    /// what [`ttl_for`](CacheBuilder::ttl_for) says for it), less jitter.
    ///
    /// # Cancel safety
    /// The key leaves this process's L1 before the write is sent, so a
    /// dropped call leaves either the old value in Redis or the new one, and
    /// L1 re-reads whichever it is.
    ///
    /// # Errors
    /// [`ErrorKind::ValueTooLarge`], [`ErrorKind::Encode`] or
    /// [`ErrorKind::Codec`] (the value does not decode back from its own
    /// bytes) before anything is written; [`ErrorKind::Redis`] if the write
    /// fails or Redis is marked down, in which case the key is also dropped
    /// from this process's L1 (it may now be out of date). A failed `set` is
    /// never reported as success.
    pub async fn set<K: CacheKey>(&self, key: K, value: V) -> Result<(), Error> {
        let header = self.inner.header(&value, Duration::ZERO);
        self.write(key.to_key().as_str(), value, header).await
    }

    /// [`set`](Self::set) with this value's own fresh TTL instead of `ttl`
    /// (jitter still applies; the stale window follows it as usual).
    ///
    /// # Errors
    /// As [`set`](Self::set).
    pub async fn set_with_ttl<K: CacheKey>(
        &self,
        key: K,
        value: V,
        ttl: Duration,
    ) -> Result<(), Error> {
        let header = self.inner.header_jittered(ttl, Duration::ZERO);
        self.write(key.to_key().as_str(), value, header).await
    }

    async fn write(&self, key: &str, value: V, header: Header) -> Result<(), Error> {
        check_key(key)?;
        let inner = &self.inner;
        let (envelope, px) = inner.encode(&value, &header)?;
        let keys = inner.remote.keys(key);
        // Drop our copy first: if this future is dropped mid-write, L1 must
        // not keep a value Redis may already have replaced.
        let own = inner.bus.own_write(Some(key));
        inner.flights.void(key);
        inner.local.remove(key);
        let ticket = inner.flights.ticket(key);
        let written = inner.remote.set(key, &keys, &envelope, px, own.id).await;
        match written {
            Ok(()) => {
                // Void after the write too (a local load that read Redis
                // before it must not put its older value into L1), and keep
                // our value in L1 only if no other write of the key was
                // applied here meanwhile: a concurrent `invalidate` in this
                // process may have run after ours in Redis but resumed
                // before us.
                inner.flights.void_then(key, &ticket, || {
                    inner.local.insert(key, Arc::new(value), &header);
                });
                Ok(())
            }
            Err(e) => {
                inner.flights.void(key);
                inner.local.remove(key);
                Err(inner.redis_error("set", e))
            }
        }
    }

    /// Deletes `key` from both tiers, voids any load of it in flight anywhere
    /// (a loader that read the old row cannot write it back), and tells other
    /// processes to drop their L1 copy.
    ///
    /// # Cancel safety
    /// As for [`set`](Self::set): the key leaves L1 before the delete is sent.
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] if Redis fails or is marked down; the key is
    /// dropped from this process's L1 regardless.
    ///
    /// # When it fails after your database commit
    /// The usual order is: commit the row, then `invalidate`. If Redis is
    /// down at that moment the commit stands and the cache still holds the
    /// old value: this process has dropped its own L1 copy, but Redis keeps
    /// the old value until its TTL (`ttl` + `stale_for`) ends, other
    /// processes serve their L1 copy until then or their `local_ttl` (and
    /// drop every L1 copy when their connection comes back, since notices
    /// may have been lost), and a load that read the old row before the
    /// commit may still fill it. Retrying is the fix, and
    /// [`invalidate_eventually`](Self::invalidate_eventually) does it for
    /// you in the background; returning the error to your caller is only
    /// right if that caller can retry the whole write.
    pub async fn invalidate<K: CacheKey>(&self, key: K) -> Result<(), Error> {
        self.invalidate_str(key.to_key().as_str()).await
    }

    async fn invalidate_str(&self, key: &str) -> Result<(), Error> {
        check_key(key)?;
        let inner = &self.inner;
        let keys = inner.remote.keys(key);
        let own = inner.bus.own_write(Some(key));
        inner.flights.void(key);
        inner.local.remove(key);
        let done = inner.remote.invalidate(key, &keys, own.id).await;
        inner.flights.void(key);
        inner.local.remove(key);
        done.map_err(|e| inner.redis_error("invalidate", e))
    }

    /// [`invalidate`](Self::invalidate) that keeps retrying in the
    /// background until it lands: the safe call after a database commit,
    /// when the commit must not be undone because Redis is down.
    ///
    /// This process drops its L1 copy (and voids its loads of the key)
    /// before returning. A task then invalidates, retrying on Redis errors
    /// with backoff (50 ms doubling to 1 s), until it lands or until
    /// `ttl + stale_for + load_timeout` has passed: by then every copy of
    /// the old value has expired on its own (Redis keeps a value for `ttl +
    /// stale_for`, and a load that read the old row before this call fills
    /// within `load_timeout`). A value given a longer TTL by
    /// [`set_with_ttl`](Self::set_with_ttl) or
    /// [`ttl_for`](CacheBuilder::ttl_for) can outlive that bound.
    ///
    /// What readers can see until the retry lands: this process, the new
    /// row or a miss, except that a read finding Redis up before the retry
    /// does may take the old value back into L1 (and keep it until the
    /// retry's change notice arrives); other processes, their L1 copy
    /// until their `local_ttl` ends or their connection comes back (a
    /// reconnect empties L1); Redis, the old value until the retry lands or
    /// its TTL ends.
    ///
    /// The returned handle resolves when the invalidation landed (`Ok`), or
    /// with the last error when it gave up; drop it to not wait (the task
    /// goes on). Must be called inside the Tokio runtime.
    pub fn invalidate_eventually<K: CacheKey>(
        &self,
        key: K,
    ) -> tokio::task::JoinHandle<Result<(), Error>> {
        let key: Box<str> = key.to_key().as_str().into();
        let inner = &self.inner;
        if check_key(&key).is_ok() {
            inner.flights.void(&key);
            inner.local.remove(&key);
        }
        let cfg = &inner.config;
        let give_up = Instant::now() + cfg.ttl + cfg.stale_for + cfg.load_timeout;
        let cache = self.clone();
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(50);
            loop {
                let e = match cache.invalidate_str(&key).await {
                    Ok(()) => return Ok(()),
                    Err(e) if e.kind() != ErrorKind::Redis => return Err(e),
                    Err(e) => e,
                };
                if Instant::now() + backoff >= give_up {
                    // The key only at DEBUG: keys may be personal data.
                    log!(
                        debug,
                        key = &*key,
                        "herdcache: invalidate_eventually gives up"
                    );
                    log!(
                        warn,
                        namespace = cache.inner.remote.namespace(),
                        error = %crate::error::Chain(&e),
                        "herdcache: gave up invalidating after every cached copy expired"
                    );
                    return Err(e);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        })
    }

    /// [`invalidate`](Self::invalidate) for many keys at once: the
    /// commands are sent together on the one connection (pipelined), so this
    /// costs about one round trip, not one per key.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] before anything is sent; else the first
    /// [`ErrorKind::Redis`] error, after every key was attempted (and dropped
    /// from this process's L1).
    pub async fn invalidate_many<K: CacheKey>(&self, keys: &[K]) -> Result<(), Error> {
        let owned: Vec<_> = keys.iter().map(CacheKey::to_key).collect();
        for k in &owned {
            check_key(k.as_str())?;
        }
        let results =
            futures_util::future::join_all(owned.iter().map(|k| self.invalidate_str(k.as_str())))
                .await;
        results.into_iter().collect()
    }

    /// Empties the whole namespace for every process, in O(1): the namespace
    /// moves to a new generation (one `INCR`), so no old key is read again;
    /// old keys expire with their TTL. No KEYS or SCAN. Loads in flight are
    /// voided; other processes drop their L1 when the notice reaches them.
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] if Redis fails; this process's L1 is emptied
    /// regardless.
    pub async fn clear(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let own = inner.bus.own_write(None);
        inner.flights.void_all();
        inner.local.clear();
        let done = inner.remote.clear(own.id).await;
        inner.flights.void_all();
        inner.local.clear();
        done.map(|_| ()).map_err(|e| inner.redis_error("clear", e))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }
}

/// Negative caching: a `Cache<Option<T>>` whose loader answers `Ok(None)`
/// for a row that does not exist, so that lookups of missing rows stop
/// reaching the database. See [`CacheBuilder::negative_ttl`] and the
/// README's "Negative caching" section.
impl<T, C> Cache<Option<T>, C>
where
    Option<T>: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// [`get_or_compute`](Self::get_or_compute) for a cache of `Option`s,
    /// answering `Some(found)` or `None` instead of an `Arc<Option<T>>`.
    ///
    /// [`Found`] derefs to `T` and shares the cached value (an `Arc` inside,
    /// no copy of `T`); serialize it as it is, or take an owned `T` with
    /// [`Found::into_inner`].
    ///
    /// # Errors
    /// As [`get_or_compute`](Self::get_or_compute).
    pub async fn get_or_compute_opt<K, F, Fut, E>(
        &self,
        key: K,
        loader: F,
    ) -> Result<Option<Found<T>>, Error>
    where
        K: CacheKey,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Option<T>, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        let value = self.get_or_compute(key, loader).await?;
        Ok(value.is_some().then_some(Found(value)))
    }
}

/// A value found by [`Cache::get_or_compute_opt`]: the cached
/// `Arc<Option<T>>`, known to be `Some`, seen as a `T`.
///
/// Why not `Arc<T>`: the cache holds the `Option` in its `Arc`, and an
/// `Arc<T>` could only be had by copying `T` out on every call. This
/// wrapper costs nothing and derefs to `T`; it serializes as `T`.
pub struct Found<T>(Arc<Option<T>>);

impl<T> Found<T> {
    /// The value, owned: moved out if this is the last handle on it (not
    /// the case while it is cached), else cloned.
    pub fn into_inner(self) -> T
    where
        T: Clone,
    {
        Arc::unwrap_or_clone(self.0).expect("Found holds Some")
    }

    /// The cached `Arc<Option<T>>` itself (always `Some`).
    pub fn as_arc(&self) -> &Arc<Option<T>> {
        &self.0
    }
}

impl<T> std::ops::Deref for Found<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // Built only from a `Some` (see `get_or_compute_opt`).
        self.0.as_ref().as_ref().expect("Found holds Some")
    }
}

impl<T> AsRef<T> for Found<T> {
    fn as_ref(&self) -> &T {
        self
    }
}

impl<T> Clone for Found<T> {
    fn clone(&self) -> Self {
        Found(self.0.clone())
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Found<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl<T: Serialize> Serialize for Found<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        T::serialize(self, serializer)
    }
}

/// The leader's claim on a flight: dropping it while it still holds the
/// loader spawns the load task. It borrows what it needs from the caller's
/// future, so an L2 hit (where the loader never runs) allocates nothing here.
struct Leader<'a, V, C, L>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
    L: LoadFn<V>,
{
    inner: &'a Arc<Inner<V, C>>,
    key: &'a str,
    flight: &'a Arc<Flight<V>>,
    loader: Option<L>,
    stale: Option<Arc<V>>,
    redis_failed: bool,
}

impl<V, C, L> Drop for Leader<'_, V, C, L>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
    L: LoadFn<V>,
{
    fn drop(&mut self) {
        if let Some(loader) = self.loader.take() {
            self.inner.clone().spawn_flight(
                self.key,
                self.flight.clone(),
                loader,
                self.stale.take(),
                self.redis_failed,
                None,
            );
        }
    }
}

impl<V, C> Inner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Starts an early (XFetch) refresh of `key`, whose L1 entry is
    /// `current`, unless one is running here. The flight is answered at
    /// once with the current value, good until it stops being fresh: a
    /// caller that joins it (its L1 lookup missed) gets that value rather
    /// than waiting for the refresh.
    fn refresh_early<L: LoadFn<V>>(self: &Arc<Self>, key: &str, current: &Entry<V>, loader: L) {
        let (flight, leader) = self.flights.join(key);
        if leader {
            Counters::bump(&self.stats.background_refreshes);
            flight.complete_until(current.value.clone(), current.fresh_until);
            self.clone().spawn_flight(
                key,
                flight,
                loader,
                Some(current.value.clone()),
                false,
                Some((current.fresh_until_ms, current.fresh_until)),
            );
        }
    }

    /// Spawns the load task of `flight`. `early` marks an XFetch refresh of
    /// a value that is still fresh, with that value's fresh-until (as stored
    /// in the envelope, and as this process's L1 holds it).
    ///
    /// A flight started with a value to serve meanwhile (`stale`: a stale
    /// value, or the current one of an early refresh) has a caller that is
    /// about to return that value without waiting, so its task is spawned
    /// by the starter, off that caller's path (see `starter.rs`). A caller
    /// with nothing to serve waits for the flight anyway: spawned here.
    pub(crate) fn spawn_flight<L: LoadFn<V>>(
        self: Arc<Self>,
        key: &str,
        flight: Arc<Flight<V>>,
        loader: L,
        stale: Option<Arc<V>>,
        redis_failed: bool,
        early: Option<(u64, Instant)>,
    ) {
        let background = stale.is_some().then(|| self.clone());
        // Settles the flight however the task ends: with its outcome, by
        // unwinding on a bug of ours, or dropped unpolled (a runtime
        // shutting down), so that no waiter is left hanging.
        let guard = FlightGuard {
            inner: self,
            key: key.into(),
            flight,
        };
        // The protocol's futures are boxed so that what is queued for the
        // starter is small (the guard and the arguments, not the whole
        // state machine).
        let span = CallSpan::load(guard.inner.remote.namespace(), key);
        let task = async move {
            let (inner, key, flight) = (&guard.inner, &guard.key, &guard.flight);
            let outcome = if let Some((fresh_until_ms, fresh_until)) = early {
                Box::pin(inner.run_early_refresh(
                    key,
                    loader,
                    flight,
                    stale,
                    fresh_until_ms,
                    fresh_until,
                ))
                .await
            } else {
                Box::pin(inner.run_flight(key, loader, flight, stale, redis_failed)).await
            };
            guard.finish(outcome);
        };
        let task = span.instrument(task);
        if let Some(inner) = background {
            inner.starter.start(task);
        } else {
            tokio::spawn(task);
        }
    }

    /// What a caller holding a stale value returns: the stale value at once
    /// (default), or the refreshed value if it comes within `soft_timeout`;
    /// and how it was come by (`leader`: this caller started the flight).
    async fn serve_stale(
        &self,
        stale: Arc<V>,
        flight: &Flight<V>,
        leader: bool,
    ) -> (Arc<V>, Served) {
        if let Some(soft) = self.config.soft_timeout
            && let Ok((Ok(fresh), served)) = tokio::time::timeout(soft, flight.wait_served()).await
        {
            return (fresh, if leader { served } else { joined(served) });
        }
        Counters::bump(&self.stats.stale_served);
        (stale, Served::Stale)
    }

    /// Applies what another process did to this process's L1.
    pub(crate) fn on_bus(self: &Arc<Self>, event: BusEvent<'_>) {
        match event {
            BusEvent::Filled {
                key,
                envelope,
                filled_in,
            } => {
                // A fill from before a `clear()` (on a Cluster the two
                // notices are not ordered: `Notice::filled`) is not taken.
                let envelope =
                    envelope.filter(|_| filled_in.is_none_or(|g| g >= self.remote.generation()));
                // A small value rides in the notice: take it straight into
                // L1, so neither callers nor woken waiters need another GET.
                match envelope.map(|bytes| self.decode(bytes)) {
                    Some(Some(Decoded::Fresh(header, value))) => {
                        Counters::bump(&self.stats.remote_fills);
                        let value = Arc::new(value);
                        self.local.insert(key, value.clone(), &header);
                        // A flight of this process waiting for another's
                        // lock gets the value now, not after its load task
                        // has woken, re-checked and settled it: one task hop
                        // less between the fill and the answer. Only such a
                        // flight: one that read Redis itself has a value at
                        // least as new. (A flight voided by our own write is
                        // no longer in the table.)
                        if let Some(flight) = self.flights.get(key)
                            && flight.is_waiting_for_fill()
                        {
                            flight.complete_as(Ok(value), Served::Waited);
                        }
                    }
                    _ => self.local.remove(key),
                }
            }
            BusEvent::Changed { key } => {
                Counters::bump(&self.stats.remote_changes);
                self.flights.void(key);
                self.local.remove(key);
            }
            BusEvent::Cleared { generation } => {
                self.remote.advance_generation(generation);
                self.flights.void_all();
                self.local.clear();
            }
            BusEvent::Reconnected => {
                // Loads and reads under way may have read Redis before a
                // change whose notice was lost: keep their values out of L1.
                self.flights.void_all();
                self.local.clear();
                // A `clear()` may have been missed too: re-read the generation.
                let inner = self.clone();
                tokio::spawn(async move {
                    if inner.remote.sync_generation().await.is_ok() {
                        inner.local.clear();
                    }
                });
            }
        }
    }

    /// The value in `bytes` (read from Redis under `ticket`) if it is
    /// fresh: counted as an L2 hit and kept in L1 unless a write of the key
    /// was applied meanwhile. Stale or undecodable bytes give `None`; the
    /// caller decides what a miss means.
    pub(crate) fn fresh_read(
        &self,
        key: &str,
        bytes: &[u8],
        ticket: &Ticket<'_>,
    ) -> Option<Arc<V>> {
        let Some(Decoded::Fresh(header, value)) = self.decode(bytes) else {
            return None;
        };
        Counters::bump(&self.stats.l2_hits);
        let value = Arc::new(value);
        self.local
            .insert_if_current(key, value.clone(), &header, ticket);
        Some(value)
    }

    /// A fresh L1 value (uncounted: callers count the hit as theirs).
    pub(crate) fn fresh_in_l1(&self, key: &str) -> Option<Arc<V>> {
        let (entry, now) = self.local.get(key)?;
        (now < entry.fresh_until).then_some(entry.value)
    }

    /// Stored bytes we cannot use: counted, and logged (rate-limited).
    #[cold]
    fn corrupt(&self, e: Error) {
        Counters::bump(&self.stats.decode_errors);
        self.warn_codec(&e);
    }

    pub(crate) fn redis_error(&self, op: &str, e: redis::RedisError) -> Error {
        Counters::bump(&self.stats.redis_errors);
        Error::redis(op, e)
    }

    /// A header for a value computed now: fresh for `ttl` (or the value's
    /// own TTL, e.g. `negative_ttl`) less up to `jitter` of it, then stale
    /// for `stale_for`.
    pub(crate) fn header(&self, value: &V, compute: Duration) -> Header {
        let ttl = self
            .ttl_for
            .as_ref()
            .and_then(|f| f(value))
            .unwrap_or(self.config.ttl);
        self.header_jittered(ttl, compute)
    }

    /// A header fresh for `ttl` less up to `jitter` of it.
    pub(crate) fn header_jittered(&self, ttl: Duration, compute: Duration) -> Header {
        let ttl = ttl.as_millis().min(u64::MAX as u128) as u64;
        let cut = (ttl as f64 * self.config.jitter * fastrand::f64()) as u64;
        self.header_for(Duration::from_millis((ttl - cut).max(1)), compute)
    }

    pub(crate) fn header_for(&self, fresh: Duration, compute: Duration) -> Header {
        let now = now_ms();
        // A `ttl_for` may answer anything: ten years at most (as the
        // builder's settings), so the instants below cannot overflow.
        let fresh = fresh.min(Duration::from_secs(10 * 365 * 24 * 3600));
        let fresh_until_ms = now + (fresh.as_millis() as u64).max(1);
        Header {
            flags: 0,
            compute_ms: compute.as_millis().min(u32::MAX as u128) as u32,
            fresh_until_ms,
            stale_until_ms: fresh_until_ms + self.config.stale_for.as_millis() as u64,
        }
    }

    /// Envelope bytes for `value` under `header`, and the Redis PX: the
    /// stale-until instant (the value must outlive its freshness).
    ///
    /// Every write is decoded back before it is sent. A non-self-describing
    /// codec (bincode, postcard) given a type with a serde attribute it
    /// cannot take (`skip_serializing_if`, `flatten`, `untagged`) encodes
    /// fine and fails only when read, in every process, as a counted miss:
    /// the cache would silently recompute forever. Whether it breaks often
    /// depends on the value (`skip_serializing_if` breaks only when the
    /// field is skipped), so checking one write per cache would let the
    /// next, differently shaped value through: every write is checked. It
    /// costs one decode per write (~800 instructions for the benchmarks'
    /// 200-byte value, next to a write's Redis round trip); reads, the hot
    /// path, are not touched.
    pub(crate) fn encode(&self, value: &V, header: &Header) -> Result<(Vec<u8>, Duration), Error> {
        let mut buf = header.start_buffer(256);
        self.codec.encode(value, &mut buf).map_err(|e| {
            Error::with_source(
                ErrorKind::Encode,
                format!(
                    "{} with the {} codec",
                    std::any::type_name::<V>(),
                    self.codec.name()
                ),
                e,
            )
        })?;
        let size = buf.len() - HEADER_LEN;
        if size > self.config.max_value_size {
            return Err(Error::new(
                ErrorKind::ValueTooLarge,
                format!(
                    "encoded value is {size} bytes; max_value_size is {}",
                    self.config.max_value_size
                ),
            ));
        }
        if let Err(e) = self.codec.decode::<V>(&buf[HEADER_LEN..]) {
            Counters::bump(&self.stats.codec_errors);
            let e = Error::with_source(ErrorKind::Codec, self.codec_hint(), e);
            // Also logged: a background refresh's error reaches no caller.
            self.warn_codec(&e);
            return Err(e);
        }
        let px = Duration::from_millis(header.stale_until_ms.saturating_sub(now_ms()).max(1));
        Ok((buf, px))
    }

    /// What a value that does not survive the round trip means, and the fix.
    fn codec_hint(&self) -> String {
        let (ty, codec) = (std::any::type_name::<V>(), self.codec.name());
        if self.codec.is_self_describing() {
            format!(
                "`{ty}` encoded with the {codec} codec does not decode back from its own bytes, \
                 so nothing was written; its Serialize and Deserialize disagree \
                 (JSON cannot hold NaN or infinite floats)"
            )
        } else {
            format!(
                "`{ty}` encoded with the {codec} codec does not decode back from its own bytes, \
                 so nothing was written. {codec} writes no field names or markers of absent \
                 fields, so it cannot take #[serde(skip_serializing_if)], #[serde(flatten)], \
                 #[serde(untagged)] or internally tagged enums, or deserialize_any types: \
                 remove the attribute, or use a self-describing codec, \
                 .codec(herdcache::Json) (feature `json`)"
            )
        }
    }

    /// Logs a codec problem (an undecodable value read, a write refused) at
    /// most once a minute per cache: a bad type makes every read fail, and
    /// one line per read would flood the log, while the count stays in
    /// [`Stats::decode_errors`] and [`Stats::codec_errors`].
    fn warn_codec(&self, e: &Error) {
        let now = now_ms();
        let last = self.codec_warned_ms.load(Relaxed);
        if (last != 0 && now < last + 60_000)
            || self
                .codec_warned_ms
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_err()
        {
            return;
        }
        let _ = e;
        log!(
            warn,
            namespace = self.remote.namespace(),
            decode_errors = self.stats.snapshot().decode_errors,
            codec_errors = self.stats.snapshot().codec_errors,
            error = %crate::error::Chain(e),
            "herdcache: codec problem (logged at most once a minute per cache)"
        );
    }

    /// The stored bytes as a fresh or stale value; `None` when they are
    /// expired by our clock, or do not decode (counted in `decode_errors`,
    /// and logged at most once a minute).
    ///
    /// The reading itself is `envelope::read_value`, a pure function (the
    /// decoder fuzz harness, `tests/fuzz_decoder.rs`, drives it with
    /// millions of bad inputs); every `Err` it gives is counted here.
    pub(crate) fn decode(&self, bytes: &[u8]) -> Option<Decoded<V>> {
        let unusable = match read_value(&self.codec, bytes, self.config.max_value_size, now_ms()) {
            Ok(decoded) => return decoded,
            Err(unusable) => unusable,
        };
        self.corrupt(match unusable {
            Unusable::TooLarge(len) => Error::new(
                ErrorKind::Codec,
                format!(
                    "{len} bytes in Redis, over max_value_size; read as a miss and overwritten"
                ),
            ),
            Unusable::Envelope(e) => Error::with_source(
                ErrorKind::Codec,
                "bytes in Redis that are not a herdcache value; read as a miss and overwritten",
                e,
            ),
            Unusable::Codec(e) => Error::with_source(
                ErrorKind::Codec,
                format!(
                    "a value in Redis does not decode as `{}` with the {} codec (written by \
                     another version of the type, another codec, or a version of herdcache \
                     that did not check its writes); read as a miss and overwritten",
                    std::any::type_name::<V>(),
                    self.codec.name()
                ),
                e,
            ),
        });
        None
    }
}

struct FlightGuard<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    inner: Arc<Inner<V, C>>,
    key: Arc<str>,
    flight: Arc<Flight<V>>,
}

impl<V, C> FlightGuard<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Leaves the table, then settles the flight (first outcome wins).
    fn finish(self, outcome: Outcome<V>) {
        self.inner.flights.finish(&self.key, &self.flight);
        self.flight.complete(outcome);
    }
}

impl<V, C> Drop for FlightGuard<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    fn drop(&mut self) {
        if !self.flight.is_complete() {
            self.inner.flights.finish(&self.key, &self.flight);
            self.flight.complete(Err(Error::new(
                ErrorKind::LoaderPanicked,
                "the load task ended without a result",
            )));
        }
    }
}
