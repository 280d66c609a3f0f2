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
use std::time::{Duration, Instant};

use crate::cache::builder::{CacheBuilder, Config, TtlFor};
use crate::cache::envelope::{HEADER_LEN, Header, now_ms};
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
    pub(crate) _listening: Listening,
}

impl<V> Cache<V, DefaultCodec> {
    /// Starts building a cache whose keys live under `namespace` (1 to 256
    /// bytes, no `{` or `}`). Two caches with the same namespace on the same
    /// Redis share values, locks and invalidations.
    pub fn builder(namespace: impl Into<String>) -> CacheBuilder<V, DefaultCodec> {
        CacheBuilder::new(namespace.into())
    }
}

/// A value read from Redis that is not fresh any more.
pub(crate) enum Decoded<V> {
    Fresh(Header, V),
    /// Past fresh-until but inside the stale window.
    Stale(Header, V),
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
    pub async fn get_or_compute<F, Fut, E>(&self, key: &str, loader: F) -> Result<Arc<V>, Error>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        check_key(key)?;
        let inner = &self.inner;
        let stale = match inner.local.get(key) {
            Some((entry, now)) if now < entry.fresh_until => {
                Counters::bump(&inner.stats.l1_hits);
                if entry.refresh_early(now) {
                    inner.refresh_early(key, &entry, loader);
                }
                return Ok(entry.value);
            }
            Some((entry, _)) => Some(entry.value),
            None => None,
        };
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
                        return Ok(value);
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
            return Ok(inner.serve_stale(stale, &flight).await);
        }
        if !leader {
            Counters::bump(&inner.stats.coalesced);
            return flight.wait().await;
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
            return flight.wait().await;
        }
        match inner.remote.get(key).await {
            Ok(Some(bytes)) => match inner.decode(&bytes) {
                Some(Decoded::Fresh(header, value)) => {
                    Counters::bump(&inner.stats.l2_hits);
                    let value = Arc::new(value);
                    flight.insert_unless_voided(&inner.local, key, value.clone(), &header);
                    lead.loader = None;
                    inner.flights.finish(key, &flight);
                    flight.complete(Ok(value.clone()));
                    return Ok(value);
                }
                Some(Decoded::Stale(header, value)) => {
                    let value = Arc::new(value);
                    // Into L1 as a stale entry: this process's next callers
                    // take the stale path without touching Redis.
                    flight.insert_unless_voided(&inner.local, key, value.clone(), &header);
                    Counters::bump(&inner.stats.background_refreshes);
                    lead.stale = Some(value.clone());
                    drop(lead);
                    return Ok(inner.serve_stale(value, &flight).await);
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
        flight.wait().await
    }

    /// Returns the fresh value of `key` if either tier has one. Never runs a
    /// loader, never takes a lock, and never returns a stale value.
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] if L1 has no fresh value and Redis fails or is
    /// marked down by the breaker. Bytes that do not decode read as `None`
    /// (and are counted in [`Stats::decode_errors`]).
    pub async fn get(&self, key: &str) -> Result<Option<Arc<V>>, Error> {
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
    pub async fn get_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<Vec<Option<Arc<V>>>, Error> {
        let inner = &self.inner;
        let mut out = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let k = k.as_ref();
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
            .map(|&i| inner.flights.ticket(keys[i].as_ref()))
            .collect();
        let values = inner
            .remote
            .mget(missing.iter().map(|&i| keys[i].as_ref()))
            .await
            .map_err(|e| inner.redis_error("MGET", e))?;
        for ((&i, bytes), ticket) in missing.iter().zip(values).zip(&tickets) {
            out[i] = bytes.and_then(|b| inner.fresh_read(keys[i].as_ref(), &b, ticket));
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
        K: AsRef<str>,
        F: Fn(String) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let found = match self.get_many(keys).await {
            Ok(found) => found,
            Err(e) if e.kind() == ErrorKind::Redis => vec![None; keys.len()],
            Err(e) => return Err(e),
        };
        let loads = found.into_iter().zip(keys).map(|(hit, key)| {
            let loader = loader.clone();
            let key = key.as_ref().to_owned();
            async move {
                match hit {
                    Some(value) => Ok(value),
                    None => {
                        let k = key.clone();
                        self.get_or_compute(&key, move || loader(k)).await
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
    /// processes to drop their L1 copy.
    ///
    /// # Cancel safety
    /// The key leaves this process's L1 before the write is sent, so a
    /// dropped call leaves either the old value in Redis or the new one, and
    /// L1 re-reads whichever it is.
    ///
    /// # Errors
    /// [`ErrorKind::ValueTooLarge`] or [`ErrorKind::Encode`] before anything
    /// is written; [`ErrorKind::Redis`] if the write fails or Redis is marked
    /// down, in which case the key is also dropped from this process's L1 (it
    /// may now be out of date). A failed `set` is never reported as success.
    pub async fn set(&self, key: &str, value: V) -> Result<(), Error> {
        check_key(key)?;
        let inner = &self.inner;
        let header = inner.header(&value, Duration::ZERO);
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
    pub async fn invalidate(&self, key: &str) -> Result<(), Error> {
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

    /// [`invalidate`](Self::invalidate) for many keys at once: the
    /// commands are sent together on the one connection (pipelined), so this
    /// costs about one round trip, not one per key.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] before anything is sent; else the first
    /// [`ErrorKind::Redis`] error, after every key was attempted (and dropped
    /// from this process's L1).
    pub async fn invalidate_many<K: AsRef<str>>(&self, keys: &[K]) -> Result<(), Error> {
        for k in keys {
            check_key(k.as_ref())?;
        }
        let results =
            futures_util::future::join_all(keys.iter().map(|k| self.invalidate(k.as_ref()))).await;
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
        if let Some(inner) = background {
            inner.starter.start(task);
        } else {
            tokio::spawn(task);
        }
    }

    /// What a caller holding a stale value returns: the stale value at once
    /// (default), or the refreshed value if it comes within `soft_timeout`.
    async fn serve_stale(&self, stale: Arc<V>, flight: &Flight<V>) -> Arc<V> {
        if let Some(soft) = self.config.soft_timeout
            && let Ok(Ok(fresh)) = tokio::time::timeout(soft, flight.wait()).await
        {
            return fresh;
        }
        Counters::bump(&self.stats.stale_served);
        stale
    }

    /// Applies what another process did to this process's L1.
    pub(crate) fn on_bus(self: &Arc<Self>, event: BusEvent<'_>) {
        match event {
            BusEvent::Filled { key, envelope } => {
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
                            flight.complete(Ok(value));
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
            .unwrap_or(self.config.ttl)
            .as_millis() as u64;
        let cut = (ttl as f64 * self.config.jitter * fastrand::f64()) as u64;
        self.header_for(Duration::from_millis((ttl - cut).max(1)), compute)
    }

    pub(crate) fn header_for(&self, fresh: Duration, compute: Duration) -> Header {
        let now = now_ms();
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
    pub(crate) fn encode(&self, value: &V, header: &Header) -> Result<(Vec<u8>, Duration), Error> {
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
        Ok((buf, px))
    }

    /// The stored bytes as a fresh or stale value; `None` when they are
    /// expired by our clock, or do not decode (counted in `decode_errors`).
    pub(crate) fn decode(&self, bytes: &[u8]) -> Option<Decoded<V>> {
        let corrupt = || Counters::bump(&self.stats.decode_errors);
        if bytes.len() > HEADER_LEN + self.config.max_value_size {
            corrupt();
            return None;
        }
        let Ok((header, payload)) = Header::parse(bytes) else {
            corrupt();
            return None;
        };
        let now = now_ms();
        if header.stale_until_ms <= now {
            return None;
        }
        let Ok(value) = self.codec.decode(payload) else {
            corrupt();
            return None;
        };
        Some(if now < header.fresh_until_ms {
            Decoded::Fresh(header, value)
        } else {
            Decoded::Stale(header, value)
        })
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
