//! The rebuild protocol: what one process's load task (a "flight") does for
//! one key, across the fleet.
//!
//! ```text
//! loop:
//!   watch the key on the bus                  (before reading: no lost wake-up)
//!   GET_OR_LOCK ─ fresh value ─> fill L1, done
//!               ─ stale value ─> remember it (callers may be served it), SET NX
//!               ─ acquired ────> run loader under the watchdog ─> FILL, done
//!               ─ locked ──────> sleep until notice | poll | lock expiry | deadline
//!   Redis error or breaker open ─> run the loader locally (still one per process)
//! loader failed or timed out, stale value known ─> serve it, keep it for
//!   `fail_safe_throttle` (fleet-wide, through the lease) so the database rests
//! ```
//!
//! A flight that knows a stale value settles its callers with it early
//! (unless `soft_timeout` asks them to wait a little for the fresh one) and
//! goes on in the background: losing the lock then costs nobody a wait, and
//! the process that lost it does not load.

use serde::{Serialize, de::DeserializeOwned};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cache::envelope::{Decoded, Header};
use crate::cache::handle::Inner;
use crate::cache::keys::RedisKeys;
use crate::cache::local::{Flight, Outcome};
use crate::cache::rebuild::run_loader;
use crate::cache::remote::Probe;
use crate::cache::stats::Counters;
use crate::codec::Codec;
use crate::error::{Error, ErrorKind};
use crate::shared::new_token;
use crate::shared::telemetry::{self, LOAD_OUTCOMES, Served};

/// What a loader may fail with: anything that converts into a boxed
/// error, the bound `?` itself uses for `Box<dyn Error + Send + Sync>`. So
/// your own error types, `anyhow::Error`, boxed errors, `String` and `&str`
/// all work, where `E: std::error::Error` refused anyhow (which does not
/// implement the trait) and boxed errors (`Box<dyn Error>` does not either).
///
/// Implemented for every such type (public signatures spell the bound out).
pub(crate) trait LoaderError:
    Into<Box<dyn std::error::Error + Send + Sync + 'static>>
{
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>> LoaderError for E {}

/// A loader: `FnOnce() -> impl Future<Output = Result<V, E>>`, runnable in
/// its own task. One name for the bounds every load function repeats.
pub(crate) trait LoadFn<V>: FnOnce() -> Self::Fut + Send + 'static {
    type Fut: Future<Output = Result<V, Self::Err>> + Send + 'static;
    type Err: LoaderError;
}

impl<V, F, Fut, E> LoadFn<V> for F
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    E: LoaderError,
{
    type Fut = Fut;
    type Err = E;
}

impl<V, C> Inner<V, C>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Settles callers early with a stale value, unless they asked (by
    /// `soft_timeout`) to wait a little for the fresh one.
    fn offer_stale(&self, flight: &Flight<V>, stale: &Option<Arc<V>>) {
        if let Some(value) = stale
            && self.config.soft_timeout.is_none()
        {
            flight.complete_as(Ok(value.clone()), Served::Stale);
        }
    }

    /// Keeps the stale value the probe returned (if it decodes and we have
    /// none yet), and offers it to the callers.
    fn remember_stale(
        &self,
        bytes: Option<Vec<u8>>,
        stale: &mut Option<Arc<V>>,
        flight: &Flight<V>,
    ) {
        if stale.is_some() {
            return;
        }
        if let Some(Some(Decoded::Stale(_, value) | Decoded::Fresh(_, value))) =
            bytes.map(|b| self.decode(&b))
        {
            *stale = Some(Arc::new(value));
            self.offer_stale(flight, stale);
        }
    }

    /// Reports a finished load: an event, and the load histogram.
    fn load_finished(&self, took: Duration, loaded: &Result<V, Error>) {
        let outcome = match loaded {
            Ok(_) => 0,
            Err(e) if e.kind() == ErrorKind::LoadTimeout => 2,
            Err(e) if e.kind() == ErrorKind::LoaderPanicked => 3,
            Err(_) => 1,
        };
        telemetry::load_finished(self.remote.namespace(), took, LOAD_OUTCOMES[outcome]);
        self.metrics.load(outcome, took);
    }

    /// The flight of one key in this process.
    pub(crate) async fn run_flight<L: LoadFn<V>>(
        &self,
        key: &str,
        loader: L,
        flight: &Flight<V>,
        mut stale: Option<Arc<V>>,
        redis_failed: bool,
    ) -> Outcome<V> {
        self.offer_stale(flight, &stale);
        if redis_failed {
            return self.load_without_redis(key, loader, flight, stale).await;
        }
        let cfg = &self.config;
        let keys = self.remote.keys(key);
        let token = new_token();
        let deadline = Instant::now() + cfg.wait_timeout;
        let mut poll = cfg.poll_min;
        let mut waiting = false;
        let mut wait_started = Instant::now();
        loop {
            // Woken by a fill notice that carried the value: it is in L1.
            if waiting && let Some(value) = self.fresh_in_l1(key) {
                telemetry::fill_waited(self.remote.namespace(), wait_started.elapsed());
                flight.note(Served::Waited);
                return Ok(value);
            }
            // Register for the fill notice *before* reading Redis: a fill that
            // lands between the read and the sleep below still wakes us.
            let watch = self.waiters.watch(key);
            let notified = watch.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();

            let probe = match self
                .remote
                .get_or_lock(
                    &keys,
                    &token,
                    cfg.lock_ttl,
                    crate::cache::envelope::now_ms(),
                )
                .await
            {
                Ok(probe) => probe,
                Err(e) => {
                    let _ = self.redis_error("read-or-lock", e);
                    return self.load_without_redis(key, loader, flight, stale).await;
                }
            };
            let lock_pttl = match probe {
                Probe::Acquired { stale: old } => {
                    self.remember_stale(old, &mut stale, flight);
                    if !waiting {
                        Counters::bump(&self.stats.misses);
                    }
                    return self
                        .load_as_holder(key, &keys, &token, loader, flight, stale)
                        .await;
                }
                Probe::Locked { pttl, stale: old } => {
                    self.remember_stale(old, &mut stale, flight);
                    pttl
                }
                Probe::Value(bytes) => {
                    match self.decode(&bytes) {
                        Some(Decoded::Fresh(header, value)) => {
                            Counters::bump(&self.stats.l2_hits);
                            let value = Arc::new(value);
                            flight.insert_unless_voided(&self.local, key, value.clone(), &header);
                            if waiting {
                                telemetry::fill_waited(
                                    self.remote.namespace(),
                                    wait_started.elapsed(),
                                );
                            }
                            flight.note(if waiting { Served::Waited } else { Served::L2 });
                            return Ok(value);
                        }
                        Some(Decoded::Stale(_, value)) if stale.is_none() => {
                            stale = Some(Arc::new(value));
                            self.offer_stale(flight, &stale);
                        }
                        // Undecodable, or expired by our clock while Redis
                        // still holds it: rebuild it.
                        _ => {}
                    }
                    // Bytes the script could not judge (not our header) or
                    // that our clock calls expired: take the lock now.
                    match self.remote.try_lock(&keys, &token, cfg.lock_ttl).await {
                        Ok(None) => {
                            if !waiting {
                                Counters::bump(&self.stats.misses);
                            }
                            return self
                                .load_as_holder(key, &keys, &token, loader, flight, stale)
                                .await;
                        }
                        Ok(Some(pttl)) => pttl,
                        Err(e) => {
                            let _ = self.redis_error("lock", e);
                            return self.load_without_redis(key, loader, flight, stale).await;
                        }
                    }
                }
            };
            if !waiting {
                waiting = true;
                wait_started = Instant::now();
                flight.mark_waiting_for_fill();
                Counters::bump(&self.stats.misses);
                Counters::bump(&self.stats.lock_waits);
            }
            let now = Instant::now();
            if now >= deadline {
                Counters::bump(&self.stats.wait_timeouts);
                telemetry::fill_waited(self.remote.namespace(), wait_started.elapsed());
                if let Some(value) = stale {
                    flight.note(Served::Stale);
                    return Ok(value);
                }
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

    /// An early (XFetch) refresh: the value is still fresh everywhere, so the
    /// read-or-lock probe would just return it. Take the lock directly; if
    /// someone else holds it, they are refreshing already and we are done.
    /// Callers keep getting the current value throughout.
    pub(crate) async fn run_early_refresh<L: LoadFn<V>>(
        &self,
        key: &str,
        loader: L,
        flight: &Flight<V>,
        current: Option<Arc<V>>,
        our_fresh_until_ms: u64,
        our_fresh_until: Instant,
    ) -> Outcome<V> {
        // Callers were answered with it already (`Inner::refresh_early`).
        let current = current.expect("an early refresh has a current value");
        let keys = self.remote.keys(key);
        let token = new_token();
        // Registered before the probe, as in `run_flight`: a fill that lands
        // between the probe and the wait below still ends the wait.
        let watch = self.waiters.watch(key);
        let notified = watch.notify().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        // Locks only if Redis still holds our copy (or an older one): if the
        // fill notice of someone else's refresh has not reached us yet, the
        // newer value comes back instead and nothing is loaded.
        let probe = self
            .remote
            .get_or_lock(&keys, &token, self.config.lock_ttl, our_fresh_until_ms)
            .await;
        match probe {
            Ok(Probe::Acquired { .. }) => {
                self.load_as_holder(key, &keys, &token, loader, flight, Some(current))
                    .await
            }
            Ok(Probe::Value(bytes)) => match self.decode(&bytes) {
                Some(Decoded::Fresh(header, value)) => {
                    let value = Arc::new(value);
                    flight.insert_unless_voided(&self.local, key, value.clone(), &header);
                    Ok(value)
                }
                _ => Ok(current),
            },
            Ok(Probe::Locked { pttl, .. }) => {
                // Another process is refreshing. This flight stays in the
                // table (its callers already have the current value) until
                // that refresh's fill notice, the end of its lock, or the end
                // of our copy's freshness, whichever comes first, so this
                // process's next early-refresh draws join it instead of
                // probing Redis again every few requests. (Past our copy's
                // freshness a caller would not join it anyway: see
                // `Flights::join`.) Capped by our own lock TTL, so another
                // process's long lock cannot keep this task (and the cache)
                // alive for long.
                let linger = pttl
                    .min(self.config.lock_ttl)
                    .min(our_fresh_until.saturating_duration_since(Instant::now()));
                let _ = tokio::time::timeout(linger, notified).await;
                Ok(current)
            }
            Err(_) => Ok(current),
        }
    }

    /// We hold the lock: run the loader under the watchdog, then fill.
    async fn load_as_holder<L: LoadFn<V>>(
        &self,
        key: &str,
        keys: &RedisKeys,
        token: &str,
        loader: L,
        flight: &Flight<V>,
        stale: Option<Arc<V>>,
    ) -> Outcome<V> {
        Counters::bump(&self.stats.loads);
        let started = Instant::now();
        let lock = Some((&self.remote, keys, token, self.config.lock_ttl));
        let loaded = run_loader(key, loader, self.config.load_timeout, lock, &self.stats).await;
        self.load_finished(started.elapsed(), &loaded);
        let value = match loaded {
            Ok(value) => value,
            Err(e) => {
                Counters::bump(&self.stats.load_errors);
                return match stale {
                    Some(stale) => Ok(self
                        .fail_safe(key, Some((keys, token)), stale, flight)
                        .await),
                    None => {
                        self.release(key, keys, token).await;
                        Err(e)
                    }
                };
            }
        };
        let header = self.header(&value, started.elapsed());
        let (envelope, px) = match self.encode(&value, &header) {
            Ok(encoded) => encoded,
            Err(e) => {
                self.release(key, keys, token).await;
                return Err(e);
            }
        };
        let value = Arc::new(value);
        flight.note(Served::Loaded);
        match self.remote.fill(key, keys, token, &envelope, px).await {
            Ok(true) => flight.insert_unless_voided(&self.local, key, value.clone(), &header),
            // The lease was voided (set/invalidate) or expired: our value may
            // predate a write, so it is handed to our callers but cached
            // nowhere.
            Ok(false) => Counters::bump(&self.stats.lease_lost),
            // Redis failed at the last step; the lock expires on its own.
            Err(e) => {
                let _ = self.redis_error("fill", e);
                flight.insert_unless_voided(&self.local, key, value.clone(), &header);
            }
        }
        Ok(value)
    }

    /// The loader failed with a stale value at hand: serve it, and keep it
    /// fresh for `fail_safe_throttle` so that neither this process nor (when
    /// we hold the lock) the rest of the fleet retries the failing loader on
    /// every call.
    async fn fail_safe(
        &self,
        key: &str,
        lock: Option<(&RedisKeys, &str)>,
        stale: Arc<V>,
        flight: &Flight<V>,
    ) -> Arc<V> {
        Counters::bump(&self.stats.fail_safe_served);
        flight.note(Served::Stale);
        let header: Header = self.header_for(self.config.fail_safe_throttle, Duration::ZERO);
        if let Some((keys, token)) = lock {
            let written = match self.encode(&stale, &header) {
                Ok((envelope, px)) => self.remote.fill(key, keys, token, &envelope, px).await,
                Err(_) => Ok(false),
            };
            if !matches!(written, Ok(true)) {
                self.release(key, keys, token).await;
            }
        }
        flight.insert_unless_voided(&self.local, key, stale.clone(), &header);
        stale
    }

    async fn release(&self, key: &str, keys: &RedisKeys, token: &str) {
        if let Err(e) = self.remote.release(key, keys, token).await {
            let _ = self.redis_error("release", e);
        }
    }

    /// Redis failed or is marked down: serve callers from the loader, once
    /// per process, and keep the value in L1.
    async fn load_without_redis<L: LoadFn<V>>(
        &self,
        key: &str,
        loader: L,
        flight: &Flight<V>,
        stale: Option<Arc<V>>,
    ) -> Outcome<V> {
        Counters::bump(&self.stats.redis_fallback_loads);
        Counters::bump(&self.stats.loads);
        let started = Instant::now();
        let loaded = run_loader(key, loader, self.config.load_timeout, None, &self.stats).await;
        self.load_finished(started.elapsed(), &loaded);
        match loaded {
            Ok(value) => {
                flight.note(Served::Loaded);
                let header = self.header(&value, started.elapsed());
                let value = Arc::new(value);
                flight.insert_unless_voided(&self.local, key, value.clone(), &header);
                Ok(value)
            }
            Err(e) => {
                Counters::bump(&self.stats.load_errors);
                match stale {
                    Some(stale) => Ok(self.fail_safe(key, None, stale, flight).await),
                    None => Err(e),
                }
            }
        }
    }
}
