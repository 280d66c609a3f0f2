//! The Redis connection: one multiplexed RESP3 connection, subscribed to the
//! namespace bus, replaced by a fresh one when it is lost.
//!
//! Why not redis-rs's `ConnectionManager`: a command sent while the manager
//! reconnects waits for that reconnect (its retries and backoff: seconds
//! while Redis is down). Bounding that wait took a timer of our own around
//! every call, on top of the connection's response timeout: about 900 of
//! the ~15,900 instructions of an L2 hit, plus ~400 for the manager's boxed
//! future and shared reconnect future. Here a call never waits for a
//! connection: there is one, or the call fails at once with a `NotConnected`
//! I/O error (the breaker and the fail-safe paths take it from there), and
//! one task reconnects. A single command is then bounded by the connection's
//! own response timeout, with no timer of ours.
//!
//! One `Link` serves a whole [`Client`](crate::Client): every cache and every
//! lock waiter of the process listens on it. Pub/sub messages are handed out
//! by channel through the [`Router`]: a cache listens on its namespace's
//! channel, a lock waiter on its lock's release channel. A channel is
//! subscribed when its first listener arrives and unsubscribed when its last
//! one leaves; every new connection subscribes to all channels that have a
//! listener before any call can use it.
//!
//! Each connection gets a serial number. Its `Disconnection` push, or a call
//! that finds it dropped, reports that serial; the task retires the
//! connection only if it is still the current one, so a late report about
//! an old connection does not tear down its replacement.

use arc_swap::ArcSwapOption;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, FromRedisValue, Pipeline, PushInfo, PushKind, RedisFuture,
    RedisResult, Script, Value,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::shared::server::bounded;
use crate::shared::telemetry;

/// How long the reconnect task waits between two failed attempts. Each
/// attempt is itself bounded by `redis_timeout`; a Redis that is back is
/// used again within about this long.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// How often the reconnect task checks an idle connection with a `PING`.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Timeouts in a row (spanning at least twice `redis_timeout`) after which
/// the connection is replaced (see `Link::check`).
const GIVE_UP_AFTER: u32 = 3;

/// What listens on a pub/sub channel: a cache's namespace bus, or the
/// waiters of one lock name. Every method runs in the connection's push
/// callback or the reconnect task and must not block.
pub(crate) trait Listener: Send + Sync {
    /// A message published on the channel, received on connection `serial`.
    fn message(&self, payload: &[u8], serial: u64);
    /// From now on only connection `serial` counts (called before it
    /// subscribes, and when the listener joins a live connection).
    fn accept(&self, _serial: u64) {}
    /// Connection `serial` was given up: its messages no longer count.
    fn retire(&self, _serial: u64) {}
    /// The connection was lost: messages may be lost with it, so waiters
    /// should re-check.
    fn lost(&self) {}
    /// A new connection is up and subscribed to every channel.
    fn reconnected(&self) {}
}

type Listeners = Arc<[(u64, Arc<dyn Listener>)]>;

/// What a push callback returns (it cannot fail).
type PushResult = Result<(), std::convert::Infallible>;

/// Channel -> its listeners. Read on every push; written when a listener
/// joins or leaves (copy-on-write, so a push clones one `Arc`).
#[derive(Default)]
pub(crate) struct Router {
    channels: RwLock<HashMap<Box<[u8]>, Listeners>>,
}

impl Router {
    fn get(&self, channel: &[u8]) -> Option<Listeners> {
        self.channels
            .read()
            .expect("router lock")
            .get(channel)
            .cloned()
    }

    /// Adds a listener; true if it is the channel's first.
    fn add(&self, channel: &[u8], id: u64, listener: Arc<dyn Listener>) -> bool {
        let mut map = self.channels.write().expect("router lock");
        let entry = map
            .entry(channel.into())
            .or_insert_with(|| Arc::from(vec![]));
        let first = entry.is_empty();
        let mut all = entry.to_vec();
        all.push((id, listener));
        *entry = all.into();
        first
    }

    /// Removes a listener; true if the channel has none left.
    fn remove(&self, channel: &[u8], id: u64) -> bool {
        let mut map = self.channels.write().expect("router lock");
        let Some(entry) = map.get_mut(channel) else {
            return true;
        };
        let rest: Vec<_> = entry.iter().filter(|(i, _)| *i != id).cloned().collect();
        if rest.is_empty() {
            map.remove(channel);
            true
        } else {
            *entry = rest.into();
            false
        }
    }

    fn channels(&self) -> Vec<Box<[u8]>> {
        self.channels
            .read()
            .expect("router lock")
            .keys()
            .cloned()
            .collect()
    }

    fn each(&self, f: impl Fn(&dyn Listener)) {
        let all: Vec<Listeners> = self
            .channels
            .read()
            .expect("router lock")
            .values()
            .cloned()
            .collect();
        for listeners in all {
            for (_, l) in listeners.iter() {
                f(l.as_ref());
            }
        }
    }

    fn dispatch(&self, push: &PushInfo, serial: u64) {
        if let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
            (push.data.first(), push.data.get(1))
            && let Some(listeners) = self.get(channel)
        {
            for (_, l) in listeners.iter() {
                l.message(payload, serial);
            }
        }
    }
}

/// A listener's place on a channel; leaving drops it, and the channel is
/// unsubscribed once no listener is left.
pub(crate) struct Listening {
    link: Arc<Link>,
    channel: Box<[u8]>,
    id: u64,
}

impl Drop for Listening {
    fn drop(&mut self) {
        if !self.link.router.remove(&self.channel, self.id) {
            return;
        }
        // Without a runtime (it is shutting down) the connection goes with
        // it: nothing to unsubscribe.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (link, channel) = (self.link.clone(), self.channel.clone());
        runtime.spawn(async move {
            let _order = link.subscriptions.lock().await;
            // Someone may have joined again meanwhile.
            if link.router.get(&channel).is_none()
                && let Ok(mut conn) = link.get()
            {
                // Bounded: the subscriptions lock is held, and on a Cluster
                // a command for a dead master's slot can hang in redis-rs.
                let _ = bounded(link.timeout, conn.conn.unsubscribe(&channel)).await;
            }
        });
    }
}

/// Where the connection goes: one Redis, or the master that Redis
/// Sentinel names at the time of each (re)connection.
pub(crate) enum Target {
    Direct(Client),
    /// Asked anew on every connection attempt, so a failover is followed
    /// by the reconnect that the old master's loss (or its demotion, seen
    /// as `READONLY`) starts. The sentinel client checks with `ROLE` that
    /// the address it was given is a master.
    Sentinel(tokio::sync::Mutex<redis::sentinel::SentinelClient>),
    /// A Redis Cluster: one `ClusterConnection` (a multiplexed connection
    /// per node, routed by slot, following `MOVED`/`ASK`) is the unit that
    /// is made, subscribed and replaced. Channels are sharded
    /// (`SSUBSCRIBE`): each is served by its slot's shard only.
    Cluster(ClusterClient),
}

/// One connection of the link: to one Redis, or to a whole Cluster.
#[derive(Clone)]
pub(crate) enum RedisConn {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl RedisConn {
    /// One command. On one node, the connection's own method rather than
    /// `ConnectionLike::req_packed_command`, which boxes the future: one
    /// allocation and one indirect call less per command.
    async fn send(&mut self, cmd: &Cmd) -> RedisResult<Value> {
        match self {
            // The inherent `send_packed_command`, not the boxed
            // `ConnectionLike` one: that boxes a ~1.2 KB future per call,
            // which glibc serves from its slow path (docs/BENCHMARKS.md).
            // The price is copying it at each `.await` level that moves it,
            // so the futures around it are kept from growing further (see
            // `Server::call`).
            RedisConn::Single(c) => c.send_packed_command(cmd).await,
            RedisConn::Cluster(c) => c.req_packed_command(cmd).await,
        }
    }

    /// Subscribes to `channels`: `SUBSCRIBE` on one node, `SSUBSCRIBE` on
    /// a Cluster, one channel per command there (a command's channels must
    /// share a slot), all sent at once.
    async fn subscribe(&mut self, channels: &[&[u8]]) -> RedisResult<()> {
        match self {
            RedisConn::Single(c) => c.subscribe(channels).await,
            RedisConn::Cluster(c) => {
                let each = channels.iter().map(|ch| {
                    let mut c = c.clone();
                    async move { c.ssubscribe(*ch).await }
                });
                futures_util::future::try_join_all(each).await.map(drop)
            }
        }
    }

    async fn unsubscribe(&mut self, channel: &[u8]) -> RedisResult<()> {
        match self {
            RedisConn::Single(c) => c.unsubscribe(channel).await,
            RedisConn::Cluster(c) => c.sunsubscribe(channel).await,
        }
    }
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            RedisConn::Single(c) => c.req_packed_command(cmd),
            RedisConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            RedisConn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            RedisConn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            RedisConn::Single(c) => c.get_db(),
            RedisConn::Cluster(c) => c.get_db(),
        }
    }
}

pub(crate) struct Link {
    target: Target,
    /// Timeouts only; each connection adds its own push sender.
    config: AsyncConnectionConfig,
    router: Arc<Router>,
    /// Orders SUBSCRIBE and UNSUBSCRIBE commands and connection set-up, so
    /// a channel's subscribe and unsubscribe cannot overtake each other and
    /// a channel added during a reconnect is subscribed on the new
    /// connection. Held across a round trip, so it is a Tokio mutex.
    subscriptions: tokio::sync::Mutex<()>,
    next_listener: AtomicU64,
    /// Scripts loaded into every new connection's Redis.
    scripts: Vec<&'static Script>,
    current: ArcSwapOption<Live>,
    next_serial: AtomicU64,
    /// Serials of connections found lost, for the reconnect task.
    lost: mpsc::UnboundedSender<u64>,
    /// `redis_timeout`: a streak of timeouts must span twice this.
    timeout: Duration,
    /// The current connection's calls timing out with no success between
    /// (see `check`), and a flag that lets a success skip the lock.
    streak: Mutex<Streak>,
    timing_out: AtomicBool,
    /// Called when a new connection is up after a loss (it closes the
    /// client's breaker: see `Client::connect`).
    on_reconnect: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
}

#[derive(Default)]
struct Streak {
    serial: u64,
    count: u32,
    since: Option<Instant>,
}

struct Live {
    serial: u64,
    conn: RedisConn,
    /// On a Cluster, the slot map (`topology_of`) read before subscribing.
    topology: Option<u64>,
}

/// The current connection, cloned for one call.
pub(crate) struct Conn {
    serial: u64,
    pub(crate) conn: RedisConn,
}

fn not_connected() -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "no connection to Redis (reconnecting)",
    )
    .into()
}

impl Link {
    /// Connects and starts the reconnect task. Fails if Redis cannot be
    /// reached within the config's timeouts, unless `lazy`: then the first
    /// connection is made by the reconnect task, and calls fail at once
    /// (as in an outage) until it is up.
    pub(crate) async fn open(
        target: Target,
        timeout: Duration,
        scripts: Vec<&'static Script>,
        lazy: bool,
    ) -> RedisResult<Arc<Link>> {
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            target,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
            router: Arc::default(),
            subscriptions: tokio::sync::Mutex::new(()),
            next_listener: AtomicU64::new(0),
            scripts,
            current: ArcSwapOption::empty(),
            next_serial: AtomicU64::new(0),
            lost,
            timeout,
            streak: Mutex::default(),
            timing_out: AtomicBool::new(false),
            on_reconnect: std::sync::OnceLock::new(),
        });
        if lazy {
            // The reconnect task makes the first connection, as it would
            // after a loss (no connection is current yet: serial 0 is not).
            let _ = link.lost.send(u64::MAX);
        } else {
            link.connect(1).await?;
        }
        // The task holds the link weakly: it ends once the last handle (and
        // so every sender of `lost`) is gone.
        tokio::spawn(reconnect_task(Arc::downgrade(&link), lost_rx));
        Ok(link)
    }

    /// Adds `listener` to `channel`, subscribing to the channel if it is the
    /// first. On return, a message published from now on reaches the
    /// listener (unless the connection is lost meanwhile: then the
    /// listener's `lost` and `reconnected` are called). With no connection,
    /// the next one subscribes; the error is that of the SUBSCRIBE (the
    /// listener stays registered until the guard is dropped).
    pub(crate) async fn listen(
        self: &Arc<Self>,
        channel: &str,
        listener: Arc<dyn Listener>,
    ) -> (Listening, RedisResult<()>) {
        let _order = self.subscriptions.lock().await;
        let id = self.next_listener.fetch_add(1, Relaxed);
        let first = self.router.add(channel.as_bytes(), id, listener.clone());
        let guard = Listening {
            link: self.clone(),
            channel: channel.as_bytes().into(),
            id,
        };
        let result = match self.get() {
            Ok(mut conn) => {
                listener.accept(conn.serial);
                if first {
                    // Bounded: the subscriptions lock is held (see Drop).
                    let r = bounded(self.timeout, conn.conn.subscribe(&[channel.as_bytes()])).await;
                    self.check(&conn, &r);
                    r
                } else {
                    Ok(())
                }
            }
            Err(e) => Err(e),
        };
        (guard, result)
    }

    /// One attempt: a new connection whose pushes feed the bus, subscribed
    /// before any call can use it (so no notice sent after a call's write
    /// can be missed), with every script loaded, then made current.
    async fn connect(&self, attempt: u32) -> RedisResult<()> {
        let serial = self.next_serial.fetch_add(1, Relaxed);
        let router = self.router.clone();
        let lost = self.lost.clone();
        let on_push = move |push: PushInfo| -> PushResult {
            match push.kind {
                PushKind::Disconnection => {
                    let _ = lost.send(serial);
                }
                PushKind::Message | PushKind::SMessage => router.dispatch(&push, serial),
                // The server dropped a sharded subscription we still want:
                // its slot moved to another shard (a migration). Notices on
                // it would be lost from now on.
                PushKind::SUnsubscribe if matches!(push.data.first(), Some(Value::BulkString(ch)) if router.get(ch).is_some()) =>
                {
                    let _ = lost.send(serial);
                }
                _ => {}
            }
            Ok(())
        };
        let opening = Instant::now();
        let mut conn = bounded(self.timeout, self.open_conn(self.timeout, Some(on_push))).await?;
        // Read before subscribing: a change during the subscriptions shows
        // as a difference at the next heartbeat.
        let topology = match conn {
            RedisConn::Cluster(_) => Some(topology_of(
                bounded(self.timeout, conn.send(&slots_cmd())).await?,
            )),
            RedisConn::Single(_) => None,
        };
        let _order = self.subscriptions.lock().await;
        self.router.each(|l| l.accept(serial));
        let channels = self.router.channels();
        if !channels.is_empty() {
            let channels: Vec<&[u8]> = channels.iter().map(|c| &**c).collect();
            // On a Cluster during a failover, a sharded subscription whose
            // slot still names the dead master hangs in redis-rs until our
            // bound. Every other attempt bounds it by what the whole
            // connection took (4x, at least 50 ms), so an attempt soon
            // after the replica's promotion comes within ~100 ms of it
            // rather than up to a `redis_timeout` later; the attempts in
            // between get the whole `redis_timeout`, so that a busy machine
            // whose subscriptions take longer than the short bound still
            // gets connected (with the short bound alone, a process under
            // load was seen never to reconnect).
            let limit = match conn {
                RedisConn::Cluster(_) if attempt.is_multiple_of(2) => {
                    (opening.elapsed() * 4).clamp(Duration::from_millis(50), self.timeout)
                }
                _ => self.timeout,
            };
            bounded(limit, conn.subscribe(&channels)).await?;
        }
        let loads = self.scripts.iter().map(|script| {
            let mut conn = conn.clone();
            async move { script.load_async(&mut conn).await }
        });
        // Bounded like every step here: on a Cluster `SCRIPT LOAD` goes to
        // every node, and one that is dead can hang it in redis-rs; an
        // unbounded step would stop the reconnect task for good.
        bounded(self.timeout, futures_util::future::try_join_all(loads)).await?;
        self.current.store(Some(Arc::new(Live {
            serial,
            conn,
            topology,
        })));
        Ok(())
    }

    /// The current connection's serial, if there is one.
    pub(crate) fn serial(&self) -> Option<u64> {
        self.current.load().as_ref().map(|live| live.serial)
    }

    /// The current connection, or a `NotConnected` error at once.
    pub(crate) fn get(&self) -> RedisResult<Conn> {
        match &*self.current.load() {
            Some(live) => Ok(Conn {
                serial: live.serial,
                conn: live.conn.clone(),
            }),
            None => Err(not_connected()),
        }
    }

    /// Reports `conn` lost if `result` says its connection was dropped, or
    /// after a streak of timeouts: at least `GIVE_UP_AFTER` of them with no
    /// success between, spanning at least twice `redis_timeout` (so one
    /// stall seen by many concurrent calls is not a streak). A connection
    /// whose peer vanished without a reset (a failover, a NAT or firewall
    /// that forgot the flow) never reports an error by itself: every call
    /// just times out, for as long as TCP keeps retransmitting (~15 minutes
    /// on Linux). A fresh connection either works or fails fast. Against a
    /// Redis that is merely slow for that long, it costs one reconnect.
    pub(crate) fn check<T>(&self, conn: &Conn, result: &RedisResult<T>) {
        match result {
            // `READONLY`: the server was demoted to a replica (a failover
            // moved the master): reconnect, which asks the sentinels anew.
            // On a Cluster a dropped connection is one node's: its
            // `Disconnection` push has replaced the cluster connection
            // already, and the calls that reach a dead master until its
            // replica is promoted would replace it again and again (each
            // time flushing L1); the slot-map heartbeat follows the
            // promotion.
            Err(e)
                if (e.is_connection_dropped() && !self.sharded())
                    || e.code() == Some("READONLY") =>
            {
                let _ = self.lost.send(conn.serial);
            }
            Err(e) if e.is_timeout() => {
                // Calls still running on a retired connection do not count.
                if !self.is_current(conn.serial) {
                    return;
                }
                let mut streak = self.streak.lock().expect("streak lock");
                if streak.serial != conn.serial || streak.count == 0 {
                    *streak = Streak {
                        serial: conn.serial,
                        count: 0,
                        since: Some(Instant::now()),
                    };
                }
                streak.count += 1;
                self.timing_out.store(true, Relaxed);
                if streak.count >= GIVE_UP_AFTER
                    && streak
                        .since
                        .is_some_and(|t| t.elapsed() >= 2 * self.timeout)
                {
                    *streak = Streak::default();
                    let _ = self.lost.send(conn.serial);
                }
            }
            // Read the flag first: taking the lock on every call would
            // bounce its cache line between the runtime's threads.
            _ => {
                if self.timing_out.load(Relaxed) {
                    let mut streak = self.streak.lock().expect("streak lock");
                    // A late success on a retired connection says nothing
                    // about the current one, whose streak stays armed.
                    if streak.serial == conn.serial || !self.is_current(streak.serial) {
                        streak.count = 0;
                        self.timing_out.store(false, Relaxed);
                    }
                }
            }
        }
    }

    /// Sets what runs each time a new connection is up after a loss.
    pub(crate) fn on_reconnect(&self, hook: impl Fn() + Send + Sync + 'static) {
        let _ = self.on_reconnect.set(Box::new(hook));
    }

    /// Whether channels are sharded (`SSUBSCRIBE`/`SPUBLISH`): on a Cluster.
    pub(crate) fn sharded(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    fn is_current(&self, serial: u64) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|live| live.serial == serial)
    }

    /// A connection of its own, for a command that blocks its connection
    /// (`XREADGROUP … BLOCK`): on the shared one it would hold up every
    /// call queued behind it. `response_timeout` must exceed the block.
    pub(crate) async fn dedicated(&self, response_timeout: Duration) -> RedisResult<RedisConn> {
        // Boxed: the cluster's connect future is deep enough to exceed the
        // compiler's layout depth inside the callers' futures.
        let open = Box::pin(self.open_conn(response_timeout, None::<fn(PushInfo) -> PushResult>));
        bounded(self.timeout, open).await
    }

    /// A new connection to the target, its pushes (if any) to `on_push`.
    async fn open_conn<P>(
        &self,
        response_timeout: Duration,
        on_push: Option<P>,
    ) -> RedisResult<RedisConn>
    where
        P: Fn(PushInfo) -> PushResult + Send + Sync + 'static,
    {
        let client = match &self.target {
            Target::Direct(client) => client.clone(),
            // Asking the sentinels is bounded like the connection itself.
            Target::Sentinel(sentinel) => {
                bounded(self.timeout, async {
                    sentinel.lock().await.async_get_client().await
                })
                .await?
            }
            Target::Cluster(cluster) => {
                // A quarter of the bound on the whole: redis-rs dials every
                // seed and waits for all of them, then dials the nodes of
                // the slot map it read (a replica among them), and a node
                // that accepts but never answers (a frozen or partitioned
                // host) would take the whole bound in either step, failing
                // every attempt while the other nodes are fine. At a
                // quarter, it fails alone in both and the rest go on.
                let mut config = ClusterConfig::new()
                    .set_connection_timeout((self.timeout / 4).max(Duration::from_millis(10)))
                    .set_response_timeout(response_timeout);
                if let Some(on_push) = on_push {
                    config = config.set_push_sender(on_push);
                }
                let conn = cluster.get_async_connection_with_config(config).await?;
                return Ok(RedisConn::Cluster(conn));
            }
        };
        let mut config = self
            .config
            .clone()
            .set_response_timeout(Some(response_timeout));
        if let Some(on_push) = on_push {
            config = config.set_push_sender(on_push);
        }
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        Ok(RedisConn::Single(conn))
    }

    /// The heartbeat: a `PING`, or under Sentinel a `ROLE`, so that a
    /// process that only reads notices when its server stops being the
    /// master (a failover that demoted it without closing connections).
    async fn heartbeat(&self) {
        match self.target {
            Target::Direct(_) => {
                let _: RedisResult<String> = self.query(&redis::cmd("PING")).await;
            }
            // The slot map, compared with the one the connection subscribed
            // by. A failover or a slot migration changes it; the connection
            // is then replaced (resubscribed by the new map, L1 flushed),
            // whether or not a push told us: notices published on a shard
            // we are no longer subscribed to would be lost silently.
            Target::Cluster(_) => {
                let slots: RedisResult<Value> = self.query(&slots_cmd()).await;
                if let (Ok(slots), Some(live)) = (slots, &*self.current.load())
                    && live.topology != Some(topology_of(slots))
                {
                    let _ = self.lost.send(live.serial);
                }
            }
            Target::Sentinel(_) => {
                let role: RedisResult<Vec<redis::Value>> = self.query(&redis::cmd("ROLE")).await;
                if let (Ok(role), Ok(conn)) = (role, self.get())
                    && !matches!(role.first(), Some(redis::Value::BulkString(r)) if r == b"master")
                {
                    let _ = self.lost.send(conn.serial);
                }
            }
        }
    }

    /// One command on the current connection.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.get()?;
        let result = match conn.conn {
            // One node: bounded by the connection's response timeout, no
            // timer of ours (see the module docs).
            RedisConn::Single(_) => conn.conn.send(cmd).await,
            // A Cluster call may be retried and redirected, each attempt
            // bounded by the response timeout: bound the whole.
            // Boxed: a cluster call allocates its future anyway, and the
            // timer inline would grow every one-node call's future too.
            RedisConn::Cluster(_) => Box::pin(bounded(self.timeout, conn.conn.send(cmd))).await,
        };
        self.check(&conn, &result);
        Ok(redis::from_redis_value(result?.extract_error()?)?)
    }

    /// Drops the connection `serial` if it is still the current one, and
    /// stops taking its notices (calls still running may keep it open for
    /// up to `redis_timeout`).
    fn retire(&self, serial: u64) -> bool {
        if self.is_current(serial) {
            self.current.store(None);
            self.router.each(|l| l.retire(serial));
            true
        } else {
            // The lazy start's first request (`u64::MAX`): nothing is
            // current yet, and a connection must be made.
            serial == u64::MAX && self.current.load().is_none()
        }
    }
}

fn slots_cmd() -> Cmd {
    let mut cmd = redis::cmd("CLUSTER");
    cmd.arg("SLOTS");
    cmd
}

/// A fingerprint of a `CLUSTER SLOTS` reply: each slot range and the
/// address of its master, in order (replicas and node ids left out).
fn topology_of(slots: Value) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut ranges: Vec<(i64, i64, Vec<u8>, i64)> = Vec::new();
    if let Value::Array(all) = slots {
        for range in all {
            if let Value::Array(r) = range
                && let (Some(Value::Int(lo)), Some(Value::Int(hi)), Some(Value::Array(m))) =
                    (r.first(), r.get(1), r.get(2))
            {
                let host = match m.first() {
                    Some(Value::BulkString(h)) => h.clone(),
                    _ => Vec::new(),
                };
                let port = match m.get(1) {
                    Some(Value::Int(p)) => *p,
                    _ => 0,
                };
                ranges.push((*lo, *hi, host, port));
            }
        }
    }
    ranges.sort();
    let mut h = std::collections::hash_map::DefaultHasher::new();
    ranges.hash(&mut h);
    h.finish()
}

/// Waits for lost connections and replaces them: wakes every waiter at the
/// loss (notices may be lost with the connection), retries every
/// `RETRY_EVERY` until a connection and its subscription are up, then
/// reports `Reconnected` so L1 is flushed of what may have changed meanwhile.
///
/// Between losses it sends a `PING` every `HEARTBEAT`. A process that
/// serves everything from L1 sends no commands, so without it a connection
/// whose peer vanished without a reset would go unnoticed, and with it every
/// change notice, until the L1 copies expire. The `PING`s go through
/// `Link::check` like any call: a streak of timeouts replaces the connection.
async fn reconnect_task(link: Weak<Link>, mut lost: mpsc::UnboundedReceiver<u64>) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let serial = tokio::select! {
            serial = lost.recv() => match serial {
                Some(serial) => serial,
                None => return,
            },
            _ = heartbeat.tick() => {
                if link.strong_count() == 0 {
                    return;
                }
                // In a task of its own, so that a PING waiting out its
                // timeout does not hold up the handling of a loss.
                let link = link.clone();
                tokio::spawn(async move {
                    if let Some(l) = link.upgrade() {
                        l.heartbeat().await;
                    }
                });
                continue;
            }
        };
        match link.upgrade() {
            Some(l) if l.retire(serial) => {
                // (A lazy start's first connection is not a loss.)
                if serial != u64::MAX {
                    telemetry::connection_lost(serial);
                }
                l.router.each(|l| l.lost())
            }
            Some(_) => continue,
            None => return,
        }
        let lost_at = Instant::now();
        for attempt in 0u32.. {
            let Some(l) = link.upgrade() else { return };
            let r = l.connect(attempt).await;
            if std::env::var_os("HC_DEBUG_LINK").is_some() {
                eprintln!(
                    "DEBUG pid {} attempt {attempt} at {:?}: {:?}",
                    std::process::id(),
                    lost_at.elapsed(),
                    r.as_ref().err()
                );
            }
            if r.is_ok() {
                if serial != u64::MAX {
                    telemetry::reconnected(lost_at.elapsed());
                }
                if let Some(hook) = l.on_reconnect.get() {
                    hook();
                }
                l.router.each(|l| l.reconnected());
                break;
            }
            drop(l);
            tokio::time::sleep(RETRY_EVERY).await;
        }
    }
}
