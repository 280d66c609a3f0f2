//! [`Cache`]: the public handle and the read path of `get_or_compute`.
//!
//! ```text
//! get_or_compute(key)
//!   L1 fresh? ──yes──> return                     (no Redis, no lock, no await)
//!   join the key's flight in this process ──joined──> await its outcome
//!   leader: spawn the flight task, await its outcome
//!     loop:
//!       watch the key on the bus                  (before reading: no lost wake-up)
//!       GET_OR_LOCK ─ value fresh ──> fill L1, done
//!                   ─ acquired ─────> run loader (watchdog) ─> FILL (lease-checked,
//!                                      releases, publishes) ─> fill L1, done
//!                   ─ locked ───────> sleep until notice | poll | lock expiry | deadline
//!       Redis error ─> run the loader locally (still one per process)
//! ```

use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::builder::{CacheBuilder, Config};
use crate::codec::{Codec, DefaultCodec};
use crate::envelope::{HEADER_LEN, Header, now_ms};
use crate::error::{Error, ErrorKind};
use crate::keys::{RedisKeys, check_key};
use crate::local::{Flight, Flights, Local, Outcome};
use crate::lock::{new_token, run_loader};
use crate::notify::Waiters;
use crate::remote::{Probe, Remote};
use crate::stats::{Counters, Stats};

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
    pub(crate) stats: Arc<Counters>,
    pub(crate) config: Config,
    pub(crate) codec: C,
}

impl<V> Cache<V, DefaultCodec> {
    /// Starts building a cache whose keys live under `namespace` (1 to 256
    /// bytes, no `{` or `}`). Two caches with the same namespace on the same
    /// Redis share values, locks and invalidations.
    pub fn builder(namespace: impl Into<String>) -> CacheBuilder<V, DefaultCodec> {
        CacheBuilder::new(namespace.into())
    }
}

/// Why stored bytes were not used (decode errors are counted where found).
enum Unusable {
    Corrupt,
    Expired,
}

impl<V, C> Cache<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    pub(crate) fn from_inner(inner: Inner<V, C>) -> Self {
        Cache {
            inner: Arc::new(inner),
        }
    }

    /// Returns the value of `key`, computing it with `loader` if neither tier
    /// has a fresh one. Across every process sharing the namespace, one
    /// caller runs the loader; the rest wait for its result (woken by a
    /// notice, not by polling).
    ///
    /// The loader runs in its own Tokio task, hence `Send + 'static`: that is
    /// what lets it finish, and fill the cache for everyone, when the caller
    /// that started it is dropped, and what turns its panic into an error.
    ///
    /// # Errors
    /// - [`ErrorKind::Loader`], [`ErrorKind::LoaderPanicked`],
    ///   [`ErrorKind::LoadTimeout`]: the loader failed; every caller coalesced
    ///   onto that load gets the same error, and nothing is cached.
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
    pub async fn get_or_compute<F, Fut, E>(&self, key: &str, loader: F) -> Result<Arc<V>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        check_key(key)?;
        let inner = &self.inner;
        if let Some(value) = inner.fresh_local(key) {
            return Ok(value);
        }
        let (flight, leader) = inner.flights.join(key);
        if !leader {
            Counters::bump(&inner.stats.coalesced);
            return flight.wait().await;
        }
        // The leader first tries a plain GET inline: L2 hits are the common
        // case, and a GET is cheaper than the read-or-lock script and needs
        // no task. If this future is dropped before the flight is settled,
        // `Leader`'s drop hands the loader to a background load, so waiters
        // that joined are still served.
        let mut lead = Leader {
            start: Some(Box::new({
                let (inner, key, flight) = (inner.clone(), Arc::<str>::from(key), flight.clone());
                move |redis_failed| {
                    tokio::spawn(async move {
                        // Completes the flight even if this task unwinds, so
                        // no waiter is left hanging on a bug of ours.
                        let guard = FlightGuard {
                            flights: &inner.flights,
                            key: &key,
                            flight: &flight,
                        };
                        let outcome = if redis_failed {
                            inner.load_without_redis(&key, loader, &flight).await
                        } else {
                            inner.load(&key, loader, &flight).await
                        };
                        drop(guard);
                        flight.complete(outcome);
                    });
                }
            })),
            redis_failed: false,
        };
        let keys = inner.remote.keys(key);
        match inner.remote.get(&keys).await {
            Ok(Some(bytes)) => {
                if let Ok((header, value)) = inner.decode(&bytes) {
                    Counters::bump(&inner.stats.l2_hits);
                    let value = Arc::new(value);
                    flight.insert_unless_voided(&inner.local, key, value.clone(), &header);
                    lead.start = None;
                    inner.flights.finish(key, &flight);
                    flight.complete(Ok(value.clone()));
                    return Ok(value);
                }
            }
            Ok(None) => {}
            Err(e) => {
                let _ = inner.redis_error("GET", e);
                lead.redis_failed = true;
            }
        }
        drop(lead); // starts the load task
        flight.wait().await
    }

    /// Returns the fresh value of `key` if either tier has one. Never runs a
    /// loader and never takes a lock.
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] if L1 has no fresh value and Redis fails. Bytes
    /// that do not decode read as `None` (and are counted in
    /// [`Stats::decode_errors`]).
    pub async fn get(&self, key: &str) -> Result<Option<Arc<V>>, Error> {
        check_key(key)?;
        let inner = &self.inner;
        if let Some(value) = inner.fresh_local(key) {
            return Ok(Some(value));
        }
        let keys = inner.remote.keys(key);
        let bytes = inner
            .remote
            .get(&keys)
            .await
            .map_err(|e| inner.redis_error("GET", e))?;
        let Some(bytes) = bytes else {
            Counters::bump(&inner.stats.misses);
            return Ok(None);
        };
        match inner.decode(&bytes) {
            Ok((header, value)) => {
                Counters::bump(&inner.stats.l2_hits);
                let value = Arc::new(value);
                inner.local.insert(key, value.clone(), &header);
                Ok(Some(value))
            }
            Err(_) => {
                Counters::bump(&inner.stats.misses);
                Ok(None)
            }
        }
    }

    /// Writes `value` to Redis and L1 (write-through), voiding any load of
    /// the key in flight anywhere (its late fill is refused), and tells other
    /// processes to drop their L1 copy.
    ///
    /// # Errors
    /// [`ErrorKind::ValueTooLarge`] or [`ErrorKind::Encode`] before anything
    /// is written; [`ErrorKind::Redis`] if the write fails, in which case the
    /// key is also dropped from this process's L1 (it may now be out of date).
    pub async fn set(&self, key: &str, value: V) -> Result<(), Error> {
        check_key(key)?;
        let inner = &self.inner;
        let (header, envelope, px) = inner.encode(&value, Duration::ZERO)?;
        let keys = inner.remote.keys(key);
        let written = inner.remote.set(key, &keys, &envelope, px).await;
        // Void after the write: a local load that read Redis before it must
        // not put its older value into L1 afterwards.
        inner.flights.void(key);
        match written {
            Ok(()) => {
                inner.local.insert(key, Arc::new(value), &header);
                Ok(())
            }
            Err(e) => {
                inner.local.remove(key);
                Err(inner.redis_error("set", e))
            }
        }
    }

    /// Deletes `key` from both tiers, voids any load of it in flight anywhere
    /// (a loader that read the old row cannot write it back), and tells other
    /// processes to drop their L1 copy.
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] if Redis fails; the key is dropped from this
    /// process's L1 regardless.
    pub async fn invalidate(&self, key: &str) -> Result<(), Error> {
        check_key(key)?;
        let inner = &self.inner;
        let keys = inner.remote.keys(key);
        let done = inner.remote.invalidate(key, &keys).await;
        inner.flights.void(key);
        inner.local.remove(key);
        done.map_err(|e| inner.redis_error("invalidate", e))
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> Stats {
        self.inner.stats.snapshot()
    }
}

/// The leader's claim on a flight: dropping it while it still holds the
/// start of the load (with the loader inside) spawns the background load.
struct Leader {
    start: Option<Box<dyn FnOnce(bool) + Send>>,
    redis_failed: bool,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if let Some(start) = self.start.take() {
            start(self.redis_failed);
        }
    }
}

struct FlightGuard<'a, V> {
    flights: &'a Flights<V>,
    key: &'a str,
    flight: &'a Arc<Flight<V>>,
}

impl<V> Drop for FlightGuard<'_, V> {
    fn drop(&mut self) {
        self.flights.finish(self.key, self.flight);
        if !self.flight.is_complete() && std::thread::panicking() {
            self.flight.complete(Err(Error::new(
                ErrorKind::LoaderPanicked,
                "internal panic in the load task",
            )));
        }
    }
}

impl<V, C> Inner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// The L1 hit path: a map lookup, a clock read and an `Arc` clone.
    #[inline]
    fn fresh_local(&self, key: &str) -> Option<Arc<V>> {
        let entry = self.local.get(key)?;
        if Instant::now() < entry.fresh_until {
            Counters::bump(&self.stats.l1_hits);
            Some(entry.value)
        } else {
            None
        }
    }

    fn redis_error(&self, op: &str, e: redis::RedisError) -> Error {
        Counters::bump(&self.stats.redis_errors);
        Error::redis(op, e)
    }

    /// The flight of one key in this process: find a value in Redis, or take
    /// the lock and load, or wait for whoever holds it.
    async fn load<F, Fut, E>(&self, key: &str, loader: F, flight: &Flight<V>) -> Outcome<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let cfg = &self.config;
        let keys = self.remote.keys(key);
        let token = new_token();
        let deadline = Instant::now() + cfg.wait_timeout;
        let mut poll = cfg.poll_min;
        let mut waiting = false;
        loop {
            // Register for the fill notice *before* reading Redis: a fill that
            // lands between the read and the sleep below still wakes us.
            let watch = self.waiters.watch(key);
            let notified = watch.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let probe = match self.remote.get_or_lock(&keys, &token, cfg.lock_ttl).await {
                Ok(probe) => probe,
                Err(e) => {
                    let _ = self.redis_error("read-or-lock", e);
                    return self.load_without_redis(key, loader, flight).await;
                }
            };
            let lock_pttl = match probe {
                Probe::Value(bytes) => {
                    match self.decode(&bytes) {
                        Ok((header, value)) => {
                            Counters::bump(&self.stats.l2_hits);
                            let value = Arc::new(value);
                            flight.insert_unless_voided(&self.local, key, value.clone(), &header);
                            return Ok(value);
                        }
                        // Undecodable, or expired by our clock while Redis
                        // still holds it: rebuild it, under the same lock.
                        Err(_) => match self.remote.try_lock(&keys, &token, cfg.lock_ttl).await {
                            Ok(None) => {
                                if !waiting {
                                    Counters::bump(&self.stats.misses);
                                }
                                return self
                                    .load_as_holder(key, &keys, &token, loader, flight)
                                    .await;
                            }
                            Ok(Some(pttl)) => pttl,
                            Err(e) => {
                                let _ = self.redis_error("lock", e);
                                return self.load_without_redis(key, loader, flight).await;
                            }
                        },
                    }
                }
                Probe::Acquired => {
                    if !waiting {
                        Counters::bump(&self.stats.misses);
                    }
                    return self
                        .load_as_holder(key, &keys, &token, loader, flight)
                        .await;
                }
                Probe::Locked { pttl } => pttl,
            };
            if !waiting {
                waiting = true;
                Counters::bump(&self.stats.misses);
                Counters::bump(&self.stats.lock_waits);
            }
            let now = Instant::now();
            if now >= deadline {
                Counters::bump(&self.stats.wait_timeouts);
                return Err(Error::new(
                    ErrorKind::WaitTimeout,
                    format!(
                        "another process held the lock of {key:?} past wait_timeout ({:?})",
                        cfg.wait_timeout
                    ),
                ));
            }
            // Wake on the notice; else re-check at the poll interval, or just
            // after the holder's lock would expire (it may have died).
            let nap = poll
                .min(lock_pttl + Duration::from_millis(1))
                .min(deadline - now);
            tokio::select! {
                _ = &mut notified => Counters::bump(&self.stats.notified_wakeups),
                _ = tokio::time::sleep(nap) => poll = (poll * 2).min(cfg.poll_max),
            }
        }
    }

    /// We hold the lock: run the loader under the watchdog, then fill.
    async fn load_as_holder<F, Fut, E>(
        &self,
        key: &str,
        keys: &RedisKeys,
        token: &str,
        loader: F,
        flight: &Flight<V>,
    ) -> Outcome<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        Counters::bump(&self.stats.loads);
        let started = Instant::now();
        let lock = Some((&self.remote, keys, token, self.config.lock_ttl));
        let loaded = run_loader(loader, self.config.load_timeout, lock, &self.stats).await;
        let value = match loaded {
            Ok(value) => value,
            Err(e) => {
                Counters::bump(&self.stats.load_errors);
                self.release(key, keys, token).await;
                return Err(e);
            }
        };
        let (header, envelope, px) = match self.encode(&value, started.elapsed()) {
            Ok(encoded) => encoded,
            Err(e) => {
                self.release(key, keys, token).await;
                return Err(e);
            }
        };
        let value = Arc::new(value);
        match self.remote.fill(key, keys, token, &envelope, px).await {
            Ok(true) => flight.insert_unless_voided(&self.local, key, value.clone(), &header),
            // The lease was voided (set/invalidate) or expired: our value may
            // predate a write, so it is handed to our callers but cached
            // nowhere.
            Ok(false) => Counters::bump(&self.stats.lease_lost),
            // Redis failed at the last step; the lock expires on its own.
            Err(_) => {
                Counters::bump(&self.stats.redis_errors);
                flight.insert_unless_voided(&self.local, key, value.clone(), &header);
            }
        }
        Ok(value)
    }

    async fn release(&self, key: &str, keys: &RedisKeys, token: &str) {
        if self.remote.release(key, keys, token).await.is_err() {
            Counters::bump(&self.stats.redis_errors);
        }
    }

    /// Redis failed: serve the caller from the loader, once per process.
    async fn load_without_redis<F, Fut, E>(
        &self,
        key: &str,
        loader: F,
        flight: &Flight<V>,
    ) -> Outcome<V>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        Counters::bump(&self.stats.redis_fallback_loads);
        Counters::bump(&self.stats.loads);
        let started = Instant::now();
        match run_loader(loader, self.config.load_timeout, None, &self.stats).await {
            Ok(value) => {
                let value = Arc::new(value);
                let header = self.header(started.elapsed());
                flight.insert_unless_voided(&self.local, key, value.clone(), &header);
                Ok(value)
            }
            Err(e) => {
                Counters::bump(&self.stats.load_errors);
                Err(e)
            }
        }
    }

    fn header(&self, compute: Duration) -> Header {
        let now = now_ms();
        let ttl = self.config.ttl.as_millis() as u64;
        let cut = (ttl as f64 * self.config.jitter * fastrand::f64()) as u64;
        let fresh = (ttl - cut).max(1);
        Header {
            flags: 0,
            compute_ms: compute.as_millis().min(u32::MAX as u128) as u32,
            fresh_until_ms: now + fresh,
            stale_until_ms: now + fresh,
        }
    }

    /// Envelope bytes for `value`, and the Redis PX to store them with.
    fn encode(&self, value: &V, compute: Duration) -> Result<(Header, Vec<u8>, Duration), Error> {
        let header = self.header(compute);
        let mut buf = header.start_buffer(256);
        self.codec
            .encode(value, &mut buf)
            .map_err(|e| Error::new(ErrorKind::Encode, e.to_string()))?;
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
        let px = Duration::from_millis(header.stale_until_ms.saturating_sub(now_ms()).max(1));
        Ok((header, buf, px))
    }

    fn decode(&self, bytes: &[u8]) -> Result<(Header, V), Unusable> {
        let corrupt = || {
            Counters::bump(&self.stats.decode_errors);
            Unusable::Corrupt
        };
        if bytes.len() > HEADER_LEN + self.config.max_value_size {
            return Err(corrupt());
        }
        let (header, payload) = Header::parse(bytes).map_err(|_| corrupt())?;
        if header.fresh_until_ms <= now_ms() {
            return Err(Unusable::Expired);
        }
        let value = self.codec.decode(payload).map_err(|_| corrupt())?;
        Ok((header, value))
    }
}
