//! [`Client`]: one per process. It owns the one Redis connection (with its
//! heartbeat and reconnect task), the circuit breaker, and the pub/sub
//! subscription every tool listens on; caches and locks are made from it.

use redis::ProtocolVersion;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::builder::CacheBuilder;
use crate::codec::DefaultCodec;
use crate::error::{Error, ErrorKind};
use crate::lock::Lock;
use crate::lock::queue::Queues;
use crate::queue::Queue;
use crate::rate::counter::Counter;
use crate::rate::limiter::RateLimiter;
use crate::shared::breaker::Breaker;
use crate::shared::link::{Link, Target as LinkTarget};
use crate::shared::server::Server;
use crate::stock::inventory::Stock;

/// The shared handle to one Redis: make one per process with
/// [`Client::connect`], then make caches ([`cache`](Self::cache)) and locks
/// ([`lock`](Self::lock)) from it. However many of them there are, the
/// process holds one multiplexed connection to Redis.
///
/// Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Client {
    pub(crate) server: Arc<Server>,
    /// The lock names some task of this process acquires or holds.
    pub(crate) locks: Arc<Queues>,
    /// Which lock names' fence counters were floored on which connection.
    pub(crate) fence_floors: Arc<crate::lock::floor::Floors>,
    /// Each SKU's reservations waiting to go to Redis together.
    pub(crate) stock_batches: Arc<crate::stock::batch::Batches>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("redis_timeout", &self.server.timeout)
            .finish_non_exhaustive()
    }
}

enum Target {
    Url(String),
    Redis(redis::Client),
    Sentinel {
        sentinels: Vec<String>,
        master: String,
        /// Username (optional) and password for the master and replicas.
        auth: Option<(Option<String>, String)>,
    },
    Cluster(Vec<String>),
}

/// Builds a [`Client`]; start with [`Client::builder`] or
/// [`Client::from_redis`].
#[must_use = "a builder does nothing until .connect().await"]
pub struct ClientBuilder {
    target: Target,
    /// PEM of the CA that signed the server's certificate (`rediss://`).
    #[cfg(feature = "tls")]
    root_cert: Option<Vec<u8>>,
    redis_timeout: Duration,
    breaker_cooldown: Duration,
    lazy: bool,
}

/// Defaults shared with [`CacheBuilder`]'s private client.
pub(crate) const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_millis(500);
pub(crate) const DEFAULT_BREAKER_COOLDOWN: Duration = Duration::from_millis(250);

impl Client {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port/db`)
    /// with the default settings. Redis 6 or newer (RESP3). A node of a
    /// Redis Cluster is found out (`CLUSTER SLOTS`) and used as the seed of a
    /// Cluster client, as [`Client::cluster`] would; a
    /// `redis-cluster://h:p,h:p` URL names the seeds at once.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for a URL that does not parse;
    /// [`ErrorKind::Redis`] if Redis cannot be reached (or refuses the
    /// credentials) within `redis_timeout` (500 ms). To start while Redis is
    /// down, use [`ClientBuilder::connect_lazy`].
    pub async fn connect(url: &str) -> Result<Client, Error> {
        Client::builder(url).connect().await
    }

    /// A builder for a client of the Redis at `url`. A Redis Cluster can be
    /// given as one URL too (see [`Client::cluster`]):
    /// `redis-cluster://[user:password@]host:port,host:port,…` (or
    /// `rediss-cluster://` for TLS), every listed node a seed.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        let url = url.into();
        match cluster_seeds(&url) {
            Some(seeds) => ClientBuilder::new(Target::Cluster(seeds)),
            None => ClientBuilder::new(Target::Url(url)),
        }
    }

    /// Connects to the master that Redis Sentinel names `master_name`,
    /// asking the sentinels at `sentinel_urls` (`redis://host:26379`). The
    /// sentinels are asked again on every reconnection, so a failover is
    /// followed without a restart: the old master's loss, its `READONLY`
    /// answers once demoted, or (for a process that only reads) a heartbeat
    /// `ROLE` that no longer says `master` starts a reconnection to the new
    /// one. Every tool made from the client works unchanged.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for no sentinel or a bad URL;
    /// [`ErrorKind::Redis`] if no sentinel answers with a reachable master
    /// within `redis_timeout`.
    pub async fn sentinel<S: AsRef<str>>(
        sentinel_urls: &[S],
        master_name: &str,
    ) -> Result<Client, Error> {
        Client::sentinel_builder(sentinel_urls, master_name)
            .connect()
            .await
    }

    /// Connects to a Redis Cluster (Redis 7 or newer) through any of its
    /// nodes (`redis://[user:password@]host:port`; `rediss://` with feature
    /// `tls`). Commands go to the master of their key's slot (`MOVED` and
    /// `ASK` followed); every tool keeps the keys of one name, and every
    /// key of a script, in one slot, so nothing needs a cross-slot command.
    /// Notices use sharded pub/sub (`SSUBSCRIBE`/`SPUBLISH`): a notice
    /// travels only within its slot's shard, where classic `PUBLISH` is
    /// broadcast to every node of the cluster. A cache spreads its keys
    /// and its notice channels over [`CacheBuilder::cluster_buckets`]
    /// hash-tag buckets, so one namespace is neither funnelled through one
    /// master nor broadcast to all.
    ///
    /// The whole cluster connection is the unit that is replaced when a
    /// node's connection is lost (a failover): until the new one is up and
    /// subscribed to every channel, calls fail fast as in an outage (caches
    /// serve L1), and L1 is flushed once it is, as on one node.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for no URL or a bad one; [`ErrorKind::Redis`]
    /// if no node answers with the slot map within `redis_timeout`.
    ///
    /// [`CacheBuilder::cluster_buckets`]: crate::CacheBuilder::cluster_buckets
    pub async fn cluster<S: AsRef<str>>(node_urls: &[S]) -> Result<Client, Error> {
        Client::cluster_builder(node_urls).connect().await
    }

    /// A builder for [`Client::cluster`], for its settings.
    pub fn cluster_builder<S: AsRef<str>>(node_urls: &[S]) -> ClientBuilder {
        ClientBuilder::new(Target::Cluster(
            node_urls.iter().map(|u| u.as_ref().to_owned()).collect(),
        ))
    }

    /// A builder for [`Client::sentinel`], for its settings (and
    /// [`ClientBuilder::master_auth`]).
    pub fn sentinel_builder<S: AsRef<str>>(
        sentinel_urls: &[S],
        master_name: &str,
    ) -> ClientBuilder {
        ClientBuilder::new(Target::Sentinel {
            sentinels: sentinel_urls
                .iter()
                .map(|u| u.as_ref().to_owned())
                .collect(),
            master: master_name.to_owned(),
            auth: None,
        })
    }

    /// A builder from a `redis::Client`, for settings a URL cannot carry.
    /// The connection uses RESP3 whatever the client says (push messages
    /// need it).
    pub fn from_redis(client: redis::Client) -> ClientBuilder {
        ClientBuilder::new(Target::Redis(client))
    }

    /// A builder for a [`Cache`](crate::Cache) of `V` under `namespace`, on
    /// this client's connection. The same builder as
    /// [`Cache::builder`](crate::Cache::builder), less the connection
    /// settings, which are the client's.
    pub fn cache<V>(&self, namespace: impl Into<String>) -> CacheBuilder<V, DefaultCodec> {
        CacheBuilder::new(namespace.into()).shared(self.clone())
    }

    /// A distributed lock named `name`, fenced, renewed and woken by
    /// notification (see [`Lock`]). Cheap: nothing is sent until it is
    /// acquired. A bad name is reported by `acquire`, not here.
    pub fn lock(&self, name: impl Into<String>) -> Lock {
        Lock::new(self.clone(), name.into())
    }

    /// The flash-sale stock of `sku` (see [`Stock`]). Cheap: nothing is
    /// sent until it is used; a bad SKU is reported by each call.
    pub fn stock(&self, sku: impl Into<String>) -> Stock {
        Stock::new(self.clone(), sku.into())
    }

    /// A typed message queue named `name` (see [`Queue`]): a Redis stream
    /// read by consumer groups, so that no message is lost.
    pub fn queue<T>(&self, name: impl Into<String>) -> Queue<T> {
        Queue::new(self.clone(), name.into())
    }

    /// A counter named `name`, shared by the fleet (see [`Counter`]):
    /// `incr`, `get`, and per fixed window with
    /// [`window`](Counter::window). Cheap: nothing is sent until it is
    /// used. A bad name is reported by `incr` and `get`, not here.
    pub fn counter(&self, name: impl Into<String>) -> Counter {
        Counter::new(self.clone(), name.into())
    }

    /// A rate limiter named `name` (GCRA on Redis's clock; see
    /// [`RateLimiter`]): set its [`rate`](RateLimiter::rate) and
    /// [`burst`](RateLimiter::burst), then [`check`](RateLimiter::check)
    /// each request's key. Cheap: nothing is sent until `check`, which
    /// also reports a bad name or setting.
    pub fn rate_limiter(&self, name: impl Into<String>) -> RateLimiter {
        RateLimiter::new(self.clone(), name.into())
    }

    /// The bound on every Redis call made through this client.
    pub fn redis_timeout(&self) -> Duration {
        self.server.timeout
    }
}

impl ClientBuilder {
    fn new(target: Target) -> Self {
        ClientBuilder {
            target,
            #[cfg(feature = "tls")]
            root_cert: None,
            redis_timeout: DEFAULT_REDIS_TIMEOUT,
            breaker_cooldown: DEFAULT_BREAKER_COOLDOWN,
            lazy: false,
        }
    }

    /// The longest any single Redis command (or connection attempt) may
    /// take. Default 500 ms. Past it the call counts as failed: cache reads
    /// fall back to the loader, writes and lock calls return
    /// [`ErrorKind::Redis`].
    pub fn redis_timeout(mut self, timeout: Duration) -> Self {
        self.redis_timeout = timeout;
        self
    }

    /// After Redis fails at the connection level, calls skip Redis for this
    /// long (the circuit breaker is open), then one call probes it. Default
    /// 250 ms: a Redis that comes back is used again within well under a
    /// second, and an outage costs each call no more than a failed-fast
    /// check.
    pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
        self.breaker_cooldown = cooldown;
        self
    }

    /// Start even if Redis is down: `connect` returns at once and the
    /// connection is made in the background (retried every 50 ms). Until it
    /// is up every tool behaves as in an outage: caches serve from L1 and
    /// the loader, locks and writes fail with [`ErrorKind::Redis`]. Default
    /// off: a mistyped URL or a missing Redis is then an error at start-up,
    /// where it is noticed, rather than a service that silently runs
    /// uncached. Turn it on where start-up order is not guaranteed
    /// (compose, Kubernetes). The URL is still checked at once.
    pub fn connect_lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// Trust the server's certificate if it is signed by this CA (PEM),
    /// instead of the system's trust store: for a `rediss://` URL with a
    /// private CA. Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_root_cert(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.root_cert = Some(pem.into());
        self
    }

    /// Under Sentinel: the ACL user (or `None` for `default`) and password
    /// of the master and replicas (the sentinels' own credentials go in
    /// their URLs). Ignored for other targets.
    pub fn master_auth(mut self, username: Option<&str>, password: &str) -> Self {
        if let Target::Sentinel { auth, .. } = &mut self.target {
            *auth = Some((username.map(str::to_owned), password.to_owned()));
        }
        self
    }

    /// Connects (or, with [`connect_lazy`](Self::connect_lazy), starts
    /// connecting). Must run inside a Tokio runtime; the connection's task
    /// lives on that runtime.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for a bad URL or setting; [`ErrorKind::Redis`]
    /// if Redis cannot be reached or refuses the credentials within
    /// `redis_timeout` (not with `connect_lazy`).
    pub async fn connect(self) -> Result<Client, Error> {
        if self.redis_timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                "redis_timeout must be above zero",
            ));
        }
        let force_resp3 = |client: redis::Client| {
            // Push messages need RESP3; force it rather than make users
            // remember.
            let info = client.get_connection_info().clone();
            let settings = info
                .redis_settings()
                .clone()
                .set_protocol(ProtocolVersion::RESP3);
            redis::Client::open(info.set_redis_settings(settings))
                .map_err(|e| Error::with_source(ErrorKind::Config, "Redis client", e))
        };
        // A plain URL that turns out to name a Cluster node is connected
        // again as a Cluster seed (below), with the same settings.
        let as_cluster = match &self.target {
            Target::Url(url) if !self.lazy => Some(ClientBuilder {
                target: Target::Cluster(vec![url.clone()]),
                #[cfg(feature = "tls")]
                root_cert: self.root_cert.clone(),
                redis_timeout: self.redis_timeout,
                breaker_cooldown: self.breaker_cooldown,
                lazy: false,
            }),
            _ => None,
        };
        let target = match self.target {
            Target::Url(url) => {
                #[cfg(feature = "tls")]
                let client = match self.root_cert {
                    Some(pem) => redis::Client::build_with_tls(
                        url.as_str(),
                        redis::TlsCertificates {
                            client_tls: None,
                            root_cert: Some(pem),
                        },
                    ),
                    None => redis::Client::open(url.as_str()),
                };
                #[cfg(not(feature = "tls"))]
                let client = redis::Client::open(url.as_str());
                let client = client.map_err(|e| {
                    Error::with_source(
                        ErrorKind::Config,
                        format!("bad Redis URL {}", redact(&url)),
                        e,
                    )
                })?;
                LinkTarget::Direct(force_resp3(client)?)
            }
            Target::Redis(client) => LinkTarget::Direct(force_resp3(client)?),
            Target::Sentinel {
                sentinels,
                master,
                auth,
            } => {
                if sentinels.is_empty() {
                    return Err(Error::new(ErrorKind::Config, "no sentinel URL given"));
                }
                let mut info =
                    redis::RedisConnectionInfo::default().set_protocol(ProtocolVersion::RESP3);
                if let Some((user, password)) = auth {
                    if let Some(user) = user {
                        info = info.set_username(user);
                    }
                    info = info.set_password(password);
                }
                let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(info);
                let sentinel = redis::sentinel::SentinelClient::build(
                    sentinels.iter().map(String::as_str).collect(),
                    master,
                    Some(node),
                    redis::sentinel::SentinelServerType::Master,
                )
                .map_err(|e| Error::with_source(ErrorKind::Config, "bad sentinel URL", e))?;
                LinkTarget::Sentinel(tokio::sync::Mutex::new(sentinel))
            }
            Target::Cluster(urls) => {
                if urls.is_empty() {
                    return Err(Error::new(ErrorKind::Config, "no cluster node URL given"));
                }
                let bad = |e| Error::with_source(ErrorKind::Config, "bad cluster node URL", e);
                let infos = urls
                    .iter()
                    .map(|u| redis::IntoConnectionInfo::into_connection_info(u.as_str()))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(bad)?;
                let builder = redis::cluster::ClusterClientBuilder::new(infos)
                    .use_protocol(ProtocolVersion::RESP3)
                    // Our own bound (`Link::query`) covers a call with its
                    // retries and redirections; the builder's would stay
                    // at its default for the blocking reads' connections.
                    .overall_response_timeout(None)
                    // A few quick retries (a MOVED or ASK redirection, a
                    // node that just went away) rather than redis-rs's 16
                    // with waits from 1.28 s: past them a call fails like
                    // any outage (L1 keeps serving), and a reconnect
                    // attempt during a failover fails fast and is tried
                    // again 50 ms later.
                    .retries(3)
                    .min_retry_wait(5)
                    .max_retry_wait(50);
                #[cfg(feature = "tls")]
                let builder = match self.root_cert {
                    Some(pem) => builder.certs(redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem),
                    }),
                    None => builder,
                };
                LinkTarget::Cluster(builder.build().map_err(bad)?)
            }
        };
        let link = Link::open(target, self.redis_timeout, all_scripts(), self.lazy)
            .await
            .map_err(|e| Error::redis("connect", e))?;
        // One node of a Cluster, given as a plain URL: a single-node client
        // would get `MOVED` for most keys and miss the sharded notices, so
        // it becomes a Cluster client with that node as its seed.
        // `CLUSTER SLOTS` answers only there (elsewhere, or for a user who
        // may not send it, an error: one node).
        if let Some(as_cluster) = as_cluster {
            let slots: redis::RedisResult<Vec<redis::Value>> =
                link.query(redis::cmd("CLUSTER").arg("SLOTS")).await;
            if slots.is_ok_and(|s| !s.is_empty()) {
                drop(link);
                return Box::pin(as_cluster.connect()).await;
            }
        }
        #[cfg(feature = "metrics")]
        crate::shared::telemetry::describe();
        let server = Arc::new(Server {
            link,
            breaker: Breaker::new(self.breaker_cooldown),
            timeout: self.redis_timeout,
        });
        // A connection made anew proves Redis is back: calls need not wait
        // out the breaker's cooldown (after a failover, up to 250 ms more).
        let weak = Arc::downgrade(&server);
        server.link.on_reconnect(move || {
            if let Some(server) = weak.upgrade() {
                server.breaker.close();
            }
        });
        tokio::spawn(warn_if_evicting(Arc::downgrade(&server)));
        Ok(Client {
            server,
            locks: Arc::default(),
            fence_floors: Arc::default(),
            stock_batches: Arc::default(),
        })
    }
}

/// The seed URLs of a `redis-cluster://` (or `rediss-cluster://`) URL:
/// `redis-cluster://u:p@h1:1,h2:2/` gives `redis://u:p@h1:1/` and
/// `redis://u:p@h2:2/`. `None` for any other URL.
fn cluster_seeds(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("redis-cluster://") {
        ("redis", rest)
    } else {
        ("rediss", url.strip_prefix("rediss-cluster://")?)
    };
    let (userinfo, hosts) = match rest.rfind('@') {
        Some(at) => (&rest[..=at], &rest[at + 1..]),
        None => ("", rest),
    };
    let (hosts, tail) = match hosts.find(['/', '?']) {
        Some(i) => hosts.split_at(i),
        None => (hosts, ""),
    };
    Some(
        hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{scheme}://{userinfo}{h}{tail}"))
            .collect(),
    )
}

/// The URL without its password, for error messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Every script of every tool, loaded into each new connection's Redis so
/// the first call of each does not pay a `NOSCRIPT` round trip.
fn all_scripts() -> Vec<&'static redis::Script> {
    let shared = crate::shared::scripts::all();
    let cache = crate::cache::scripts::all();
    let lock = crate::lock::scripts::all();
    let rate = crate::rate::scripts::all();
    let stream = crate::shared::stream::scripts();
    let stock = crate::stock::scripts::all();
    shared
        .into_iter()
        .chain(cache)
        .chain(lock)
        .chain(rate)
        .chain(stream)
        .chain(stock)
        .collect()
}

/// Locks (and, later, stock and queues) are state, not cache: a Redis that
/// evicts keys may drop a lock key, and a dropped lock key is two holders.
/// Warns once, when the first connection is up, if Redis says it may evict.
/// Says nothing when `CONFIG GET` is refused (a narrow ACL user).
async fn warn_if_evicting(server: std::sync::Weak<Server>) {
    for _ in 0..600 {
        let Some(server) = server.upgrade() else {
            return;
        };
        let reply: redis::RedisResult<HashMap<String, String>> = server
            .raw_command(redis::cmd("CONFIG").arg("GET").arg("maxmemory*"))
            .await;
        match reply {
            Ok(config) => {
                if let Some(policy) = eviction_risk(&config) {
                    let _ = policy;
                    crate::shared::telemetry::log!(
                        warn,
                        policy,
                        "Redis may evict keys (maxmemory is set and maxmemory-policy is {policy}): \
                         herdcache's locks are state, and an evicted lock key lets two holders in. \
                         Use `noeviction`, or a separate Redis for locks"
                    );
                }
                return;
            }
            // Not connected yet (a lazy start, or an outage): ask later.
            Err(e) if crate::shared::breaker::is_outage(&e) => {}
            // Refused (ACL) or not understood: say nothing.
            Err(_) => return,
        }
        drop(server);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The evicting policy named in a `CONFIG GET maxmemory*` reply, if keys
/// with a TTL (lock keys have one) may be evicted.
fn eviction_risk(config: &HashMap<String, String>) -> Option<&str> {
    let limited = config.get("maxmemory").is_some_and(|m| m != "0");
    let policy = config.get("maxmemory-policy")?;
    (limited && policy != "noeviction").then_some(policy.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(maxmemory: &str, policy: &str) -> HashMap<String, String> {
        [("maxmemory", maxmemory), ("maxmemory-policy", policy)]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    #[test]
    fn a_cluster_url_lists_its_seeds() {
        assert_eq!(
            cluster_seeds("redis-cluster://u:p@127.0.0.1:7000,127.0.0.1:7001/"),
            Some(vec![
                "redis://u:p@127.0.0.1:7000/".to_owned(),
                "redis://u:p@127.0.0.1:7001/".to_owned()
            ])
        );
        assert_eq!(
            cluster_seeds("rediss-cluster://h:1"),
            Some(vec!["rediss://h:1".to_owned()])
        );
        assert_eq!(cluster_seeds("redis://h:1"), None);
        assert_eq!(cluster_seeds("redis-cluster://"), Some(vec![]));
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("rediss://app:secret@h:1/"), "rediss://app:***@h:1/");
        assert_eq!(redact("redis://:pw@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1/"), "redis://h:1/");
    }

    #[test]
    fn only_a_limited_evicting_redis_is_a_risk() {
        assert_eq!(eviction_risk(&pairs("0", "allkeys-lru")), None);
        assert_eq!(eviction_risk(&pairs("100mb", "noeviction")), None);
        assert_eq!(
            eviction_risk(&pairs("100mb", "volatile-lru")),
            Some("volatile-lru")
        );
        assert_eq!(eviction_risk(&HashMap::new()), None);
    }
}
