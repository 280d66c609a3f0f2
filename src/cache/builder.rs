//! [`CacheBuilder`]: every option, its default, and the trade-off it sets.

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::handle::{Cache, Inner};
use crate::cache::keys::{DEFAULT_CLUSTER_BUCKETS, Layout};
use crate::cache::local::{Flights, Local};
use crate::cache::notify::{Bus, Waiters};
use crate::cache::remote::Remote;
use crate::cache::starter::Starter;
use crate::cache::stats::Counters;
use crate::client::{Client, DEFAULT_BREAKER_COOLDOWN, DEFAULT_REDIS_TIMEOUT};
use crate::codec::{Codec, DefaultCodec};
use crate::error::{Error, ErrorKind};
use crate::shared::telemetry::CacheMetrics;

/// The settings a built cache runs with.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) ttl: Duration,
    pub(crate) jitter: f64,
    pub(crate) lock_ttl: Duration,
    pub(crate) wait_timeout: Duration,
    pub(crate) load_timeout: Duration,
    pub(crate) redis_timeout: Duration,
    pub(crate) max_value_size: usize,
    pub(crate) local_ttl: Option<Duration>,
    pub(crate) max_capacity: u64,
    pub(crate) poll_min: Duration,
    pub(crate) poll_max: Duration,
    pub(crate) stale_for: Duration,
    pub(crate) soft_timeout: Option<Duration>,
    pub(crate) fail_safe_throttle: Duration,
    pub(crate) breaker_cooldown: Duration,
    pub(crate) early_refresh_beta: f64,
    pub(crate) cluster_buckets: u16,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            ttl: Duration::from_secs(60),
            jitter: 0.1,
            lock_ttl: Duration::from_secs(3),
            wait_timeout: Duration::from_secs(10),
            load_timeout: Duration::from_secs(10),
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            max_value_size: 8 << 20,
            local_ttl: None,
            max_capacity: 10_000,
            poll_min: Duration::from_millis(20),
            poll_max: Duration::from_millis(250),
            stale_for: Duration::ZERO,
            soft_timeout: None,
            fail_safe_throttle: Duration::from_secs(30),
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            early_refresh_beta: 1.0,
            cluster_buckets: DEFAULT_CLUSTER_BUCKETS,
        }
    }
}

enum RedisSource {
    Url(String),
    Client(Box<redis::Client>),
    /// A [`Client`] the cache shares with other tools.
    Shared(Client),
}

/// Builds a [`Cache`]. Start with [`Cache::builder`].
#[must_use = "a builder does nothing until .build().await"]
pub struct CacheBuilder<V, C = DefaultCodec> {
    namespace: String,
    redis: Option<RedisSource>,
    config: Config,
    codec: C,
    ttl_for: Option<TtlFor<V>>,
    /// Connection settings given to this builder (they belong to the
    /// client when the cache shares one).
    connection_settings: bool,
    connect_lazy: bool,
    _value: PhantomData<fn() -> V>,
}

/// A per-value fresh TTL: `Some(d)` overrides `ttl` for that value.
pub(crate) type TtlFor<V> = Box<dyn Fn(&V) -> Option<Duration> + Send + Sync>;

impl<T, C: Codec> CacheBuilder<Option<T>, C> {
    /// Negative caching, for a `Cache<Option<T>>` whose loader returns
    /// `Ok(None)` for rows that do not exist: a `None` is cached for this
    /// (short) TTL instead of `ttl`, so lookups of missing rows stop reaching
    /// the database (cache penetration) without hiding a row created soon
    /// after for long. No default: without it, `None` lives for `ttl`.
    ///
    /// Shorthand for [`ttl_for`](CacheBuilder::ttl_for) (the later call of
    /// the two wins). Read values with
    /// [`Cache::get_or_compute_opt`](crate::Cache::get_or_compute_opt).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.ttl_for = Some(Box::new(move |v: &Option<T>| v.is_none().then_some(ttl)));
        self
    }
}

impl<V> CacheBuilder<V, DefaultCodec> {
    pub(crate) fn new(namespace: String) -> Self {
        CacheBuilder {
            namespace,
            redis: None,
            config: Config::default(),
            codec: DefaultCodec::default(),
            ttl_for: None,
            connection_settings: false,
            connect_lazy: false,
            _value: PhantomData,
        }
    }

    pub(crate) fn shared(mut self, client: Client) -> Self {
        self.redis = Some(RedisSource::Shared(client));
        self
    }
}

impl<V, C: Codec> CacheBuilder<V, C> {
    /// The Redis to use, as a URL (`redis://127.0.0.1:6379/0`). Required,
    /// unless [`client`](Self::client) is given or the builder came from
    /// [`Client::cache`]. The cache then makes a private [`Client`] (its
    /// own connection, with RESP3 for push notices whatever the URL says).
    /// Several caches and locks in one process should share one [`Client`]
    /// instead: one connection, one subscription.
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(RedisSource::Url(url.into()));
        self
    }

    /// The Redis to use, as a `redis::Client` (for TLS, ACL or other settings
    /// a URL cannot carry). The cache opens its own connection from it,
    /// because it needs a push channel and its own timeouts on it.
    pub fn client(mut self, client: redis::Client) -> Self {
        self.redis = Some(RedisSource::Client(Box::new(client)));
        self
    }

    /// How long a computed value is fresh. Default 60 s. Each write takes up
    /// to [`jitter`](Self::jitter) off it, so keys written together do not
    /// expire together.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// A fresh TTL chosen per value: `Some(d)` overrides `ttl` for that
    /// value, `None` keeps `ttl`. It applies to every write, from a loader
    /// or from [`set`](crate::Cache::set) ([`set_with_ttl`](crate::Cache::set_with_ttl)
    /// names its own), jitter included. For example, short for values that
    /// change often:
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[derive(serde::Serialize, serde::Deserialize)] struct Quote { live: bool }
    /// # async fn demo() -> Result<(), herdcache::Error> {
    /// let cache = herdcache::Cache::<Quote>::builder("quotes")
    ///     .redis_url("redis://127.0.0.1:6379/")
    ///     .ttl_for(|q: &Quote| q.live.then_some(Duration::from_secs(1)))
    ///     .build()
    ///     .await?;
    /// # let _ = cache; Ok(()) }
    /// ```
    ///
    /// Replaces an earlier `ttl_for` or
    /// [`negative_ttl`](CacheBuilder::negative_ttl).
    pub fn ttl_for(mut self, ttl: impl Fn(&V) -> Option<Duration> + Send + Sync + 'static) -> Self {
        self.ttl_for = Some(Box::new(ttl));
        self
    }

    /// The largest fraction taken at random off `ttl` on each write, in
    /// `0.0..1.0`. Default 0.1. It only shortens: `ttl` stays the bound on
    /// how old a value can be. 0 turns jitter off (and brings back
    /// synchronised expiry of keys filled together).
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.config.jitter = fraction;
        self
    }

    /// How long the rebuild lock lives without its watchdog. Default 3 s.
    /// The winner's watchdog re-arms it every `lock_ttl / 3` while the
    /// loader runs, so this is *not* a bound on the loader; it is how long a
    /// crashed holder keeps others waiting. Shorter recovers faster from
    /// crashes but needs Redis to answer the watchdog within `lock_ttl / 3`.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.config.lock_ttl = ttl;
        self
    }

    /// How long a caller waits for another process's load before giving up
    /// with [`ErrorKind::WaitTimeout`]. Default 10 s.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.config.wait_timeout = timeout;
        self
    }

    /// The hard timeout: how long the loader may run before it is given up
    /// (the loader task is aborted, the lock released; callers get the stale
    /// value if there is one, else [`ErrorKind::LoadTimeout`]). Default 10 s. Without such a bound a hung
    /// loader would keep the key locked for the whole fleet.
    pub fn load_timeout(mut self, timeout: Duration) -> Self {
        self.config.load_timeout = timeout;
        self
    }

    /// The longest any single Redis command (or connection attempt) may
    /// take. Default 500 ms. Past it the command counts as failed: reads
    /// fall back to the loader, writes return [`ErrorKind::Redis`].
    ///
    /// A connection setting: for a cache made with [`Client::cache`] it is
    /// the client's ([`ClientBuilder::redis_timeout`](crate::ClientBuilder::redis_timeout)),
    /// and setting it here is a [`ErrorKind::Config`] error at `build`.
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.connection_settings = true;
        self.config.redis_timeout = timeout;
        self
    }

    /// The largest encoded value, in bytes, that is written or decoded.
    /// Default 8 MiB. A larger value is refused with
    /// [`ErrorKind::ValueTooLarge`], from `set` and from `get_or_compute`
    /// alike (nothing is written); larger stored bytes read as a miss.
    pub fn max_value_size(mut self, bytes: usize) -> Self {
        self.config.max_value_size = bytes;
        self
    }

    /// Caps how long a value stays in this process's memory, whatever its
    /// TTL. Default: `ttl` + `stale_for`. L1 copies are the ones that must be
    /// reached by pub/sub to be invalidated, so a short cap bounds the damage
    /// of a lost notice at the price of more Redis reads. `Duration::ZERO`
    /// turns L1 off (every read goes to Redis; loads are still coalesced).
    pub fn local_ttl(mut self, ttl: Duration) -> Self {
        self.config.local_ttl = Some(ttl);
        self
    }

    /// On a Redis Cluster ([`Client::cluster`]): how many hash-tag buckets
    /// the namespace's keys and notice channels are split into. Default 64:
    /// enough to spread a namespace over dozens of masters, and 64
    /// `SSUBSCRIBE`s per cache at each (re)connection. Every process of the
    /// fleet must use the same count (it decides where a key lives).
    /// Ignored on one node and under Sentinel.
    pub fn cluster_buckets(mut self, buckets: u16) -> Self {
        self.config.cluster_buckets = buckets;
        self
    }

    /// How many entries L1 holds before moka evicts (TinyLFU). Default 10,000.
    pub fn max_capacity(mut self, entries: u64) -> Self {
        self.config.max_capacity = entries;
        self
    }

    /// The first and the longest interval at which a waiter re-checks Redis
    /// if no fill notice arrives. Defaults 20 ms and 250 ms, doubling in
    /// between. Notices normally wake waiters long before; this is the
    /// fallback for a lost notice. A waiter also wakes when the lock it waits
    /// on is due to expire, so a crashed holder is replaced promptly anyway.
    pub fn poll_interval(mut self, first: Duration, longest: Duration) -> Self {
        self.config.poll_min = first;
        self.config.poll_max = longest.max(first);
        self
    }

    /// The stale window: how long a value stays servable after its fresh
    /// TTL. Default zero (hard expiry: an expired key is rebuilt while its
    /// callers wait). With a window, a caller that finds a stale value gets
    /// it at once and one background refresh runs fleet-wide under the lock;
    /// processes that lose the lock do not load. The window is also what
    /// fail-safe serves when the loader fails, and what Redis keeps (the key's
    /// PX is fresh TTL + window).
    pub fn stale_for(mut self, window: Duration) -> Self {
        self.config.stale_for = window;
        self
    }

    /// With a stale value at hand, how long a caller waits for the refresh
    /// before taking the stale value. Default none: the stale value is
    /// returned at once (stale-while-revalidate). Set it to prefer fresh
    /// values when the loader is usually fast; the load always goes on in the
    /// background and fills when done.
    pub fn soft_timeout(mut self, timeout: Duration) -> Self {
        self.config.soft_timeout = Some(timeout);
        self
    }

    /// After a loader fails (or hits `load_timeout`) while a stale value
    /// exists, that value is served and kept fresh for this long, fleet-wide,
    /// so a failing database is not retried on every call. Default 30 s.
    pub fn fail_safe_throttle(mut self, throttle: Duration) -> Self {
        self.config.fail_safe_throttle = throttle;
        self
    }

    /// After Redis fails at the connection level, calls skip Redis for this
    /// long (the circuit breaker is open), then one call probes it. Default
    /// 250 ms: short enough that a Redis that comes back is used again
    /// within well under a second, long enough that an outage costs each
    /// miss no more than a failed-fast check.
    ///
    /// A connection setting, as [`redis_timeout`](Self::redis_timeout) is.
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.connection_settings = true;
        self.config.breaker_cooldown = cooldown;
        self
    }

    /// Build even while Redis is down: the connection is made in the
    /// background, and until it is up the cache serves as in an outage (L1,
    /// else the loader, once per process). Default off, so that a wrong URL
    /// or a missing Redis fails `build` where it is noticed; see
    /// [`ClientBuilder::connect_lazy`](crate::ClientBuilder::connect_lazy).
    /// A connection setting, as [`redis_timeout`](Self::redis_timeout) is.
    pub fn connect_lazy(mut self, lazy: bool) -> Self {
        self.connection_settings = true;
        self.connect_lazy = lazy;
        self
    }

    /// Probabilistic early refresh (XFetch, Vattani et al., VLDB 2015): on a
    /// fresh L1 hit, refresh in the background when
    /// `now - compute_time * beta * ln(rand()) >= expiry`. Default 1.0, the
    /// value the paper shows optimal for its cost model; larger refreshes
    /// earlier (fewer callers ever see the expiry, more loads), 0 turns it
    /// off. The draw is skipped entirely until expiry is within
    /// `10 * beta * compute_time`, so it costs the hit path one comparison.
    pub fn early_refresh_beta(mut self, beta: f64) -> Self {
        self.config.early_refresh_beta = beta;
        self
    }

    /// Replaces the codec (default [`DefaultCodec`]).
    pub fn codec<C2: Codec>(self, codec: C2) -> CacheBuilder<V, C2> {
        CacheBuilder {
            namespace: self.namespace,
            redis: self.redis,
            config: self.config,
            codec,
            ttl_for: self.ttl_for,
            connection_settings: self.connection_settings,
            connect_lazy: self.connect_lazy,
            _value: PhantomData,
        }
    }

    fn check(&self) -> Result<(), Error> {
        let c = &self.config;
        let bad = |m: &str| Err(Error::new(ErrorKind::Config, m.to_owned()));
        if c.ttl < Duration::from_millis(1) {
            return bad("ttl must be at least 1 ms");
        }
        if !(0.0..1.0).contains(&c.jitter) {
            return bad("jitter must be in 0.0..1.0");
        }
        if c.lock_ttl < Duration::from_millis(30) {
            return bad("lock_ttl must be at least 30 ms (the watchdog runs every lock_ttl/3)");
        }
        if !(0.0..=1000.0).contains(&c.early_refresh_beta) {
            return bad("early_refresh_beta must be in 0.0..=1000.0");
        }
        if c.redis_timeout.is_zero() || c.poll_min.is_zero() {
            return bad("redis_timeout and poll intervals must be above zero");
        }
        if c.max_value_size == 0 {
            return bad("max_value_size must be above zero (every write would be refused)");
        }
        // Times are stored as unix ms and sent as PX: a `Duration::MAX`
        // would overflow them. Ten years is far past any real setting.
        const LONGEST: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
        let times = [
            c.ttl,
            c.lock_ttl,
            c.stale_for,
            c.wait_timeout,
            c.load_timeout,
            c.redis_timeout,
            c.poll_min,
            c.poll_max,
            c.fail_safe_throttle,
            c.breaker_cooldown,
            c.local_ttl.unwrap_or_default(),
            c.soft_timeout.unwrap_or_default(),
        ];
        if times.iter().any(|&t| t > LONGEST) {
            return bad("durations must be at most ten years");
        }
        Ok(())
    }
}

impl<V, C> CacheBuilder<V, C>
where
    V: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    /// Connects to Redis, subscribes to the namespace's notice channel and
    /// returns the cache. Must run inside a Tokio runtime, and the cache's
    /// background tasks (the connection, its replacement, and the starter
    /// of background refreshes) live on that runtime: use the cache while
    /// that runtime runs.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for a bad namespace, URL or setting;
    /// [`ErrorKind::Redis`] if Redis cannot be reached within
    /// `redis_timeout` (the cache does not start without Redis).
    pub async fn build(self) -> Result<Cache<V, C>, Error> {
        self.check()?;
        // Checked before connecting; built again below for the client's
        // topology.
        Layout::new(&self.namespace, Some(self.config.cluster_buckets))?;
        let client = match self.redis {
            None => {
                return Err(Error::new(
                    ErrorKind::Config,
                    "no Redis given: call .redis_url(…) or .client(…), or use Client::cache",
                ));
            }
            Some(RedisSource::Shared(client)) => {
                if self.connection_settings {
                    return Err(Error::new(
                        ErrorKind::Config,
                        "redis_timeout, breaker_cooldown and connect_lazy belong to the shared \
                         Client: set them on Client::builder",
                    ));
                }
                client
            }
            Some(source) => {
                let builder = match source {
                    RedisSource::Url(url) => Client::builder(url),
                    RedisSource::Client(client) => Client::from_redis(*client),
                    RedisSource::Shared(_) => unreachable!("handled above"),
                };
                builder
                    .redis_timeout(self.config.redis_timeout)
                    .breaker_cooldown(self.config.breaker_cooldown)
                    .connect_lazy(self.connect_lazy)
                    .connect()
                    .await?
            }
        };
        let origin = fastrand::u64(..);
        let waiters = Arc::new(Waiters::default());
        let bus = Bus::new(waiters.clone(), origin);
        // Subscribed before the cache can send anything: a waiter must never
        // miss a notice. With no connection (a lazy client, or an outage of
        // a shared one) the next connection subscribes; a subscription that
        // fails on a live connection fails the build, as before.
        let link = &client.server.link;
        let layout = Layout::new(
            &self.namespace,
            link.sharded().then_some(self.config.cluster_buckets),
        )?;
        let subscriptions = layout
            .channels()
            .iter()
            .map(|channel| link.listen(channel, bus.clone()));
        let (listening, subscribed): (Vec<_>, Vec<_>) =
            futures_util::future::join_all(subscriptions)
                .await
                .into_iter()
                .unzip();
        let connected = link.get().is_ok();
        if connected {
            subscribed
                .into_iter()
                .collect::<Result<(), _>>()
                .map_err(|e| Error::redis("subscribe", e))?;
        }
        let stats = Arc::new(Counters::new(layout.namespace()));
        let metrics = CacheMetrics::new(layout.namespace());
        let local = Local::new(
            self.config.max_capacity,
            // By default an L1 copy lives as long as the Redis copy (fresh +
            // stale window): a stale hit then needs no Redis round trip.
            self.config
                .local_ttl
                .unwrap_or(self.config.ttl + self.config.stale_for),
            self.config.early_refresh_beta,
        );
        let flights = Arc::new(Flights::default());
        let inner = Arc::new(Inner {
            remote: Remote::new(client.server.clone(), layout, origin, stats.clone()),
            local,
            flights,
            waiters: waiters.clone(),
            bus: bus.clone(),
            stats,
            config: self.config,
            codec: self.codec,
            ttl_for: self.ttl_for,
            starter: Starter::spawn(),
            _listening: listening,
            codec_warned_ms: Default::default(),
            metrics,
        });
        // The bus holds the cache weakly: the cache owns its place on the
        // connection whose pushes feed the bus, so a strong reference would
        // be a cycle that outlives every `Cache` handle.
        let weak = Arc::downgrade(&inner);
        bus.attach(Box::new(move |event| {
            if let Some(inner) = weak.upgrade() {
                inner.on_bus(event);
            }
        }));
        // Without a connection the generation is read when it comes up
        // (every new connection makes each cache re-read it).
        let synced = inner.remote.sync_generation().await;
        if connected {
            synced.map_err(|e| Error::redis("read namespace generation", e))?;
        }
        Ok(Cache::from_arc(inner))
    }
}
