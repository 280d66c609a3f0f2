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
//! Each connection gets a serial number. Its `Disconnection` push, or a call
//! that finds it dropped, reports that serial; the task retires the
//! connection only if it is still the current one, so a late report about
//! an old connection does not tear down its replacement.

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, PushInfo, PushKind, RedisResult};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

use crate::notify::Bus;
use crate::scripts;

/// How long the reconnect task waits between two failed attempts. Each
/// attempt is itself bounded by `redis_timeout`; a Redis that is back is
/// used again within about this long.
const RETRY_EVERY: Duration = Duration::from_millis(50);

/// How often the reconnect task checks an idle connection with a `PING`.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Timeouts in a row (spanning at least twice `redis_timeout`) after which
/// the connection is replaced (see `Link::check`).
const GIVE_UP_AFTER: u32 = 3;

pub(crate) struct Link {
    client: Client,
    /// Timeouts only; each connection adds its own push sender.
    config: AsyncConnectionConfig,
    channel: String,
    bus: Arc<Bus>,
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
}

#[derive(Default)]
struct Streak {
    serial: u64,
    count: u32,
    since: Option<Instant>,
}

struct Live {
    serial: u64,
    conn: MultiplexedConnection,
}

/// The current connection, cloned for one call.
pub(crate) struct Conn {
    serial: u64,
    pub(crate) conn: MultiplexedConnection,
}

fn not_connected() -> redis::RedisError {
    std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "no connection to Redis (reconnecting)",
    )
    .into()
}

impl Link {
    /// Connects, subscribes to `channel`, and starts the reconnect task.
    /// Fails if Redis cannot be reached within the config's timeouts.
    pub(crate) async fn open(
        client: Client,
        timeout: Duration,
        channel: String,
        bus: Arc<Bus>,
    ) -> RedisResult<Arc<Link>> {
        let (lost, lost_rx) = mpsc::unbounded_channel();
        let link = Arc::new(Link {
            client,
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(timeout))
                .set_response_timeout(Some(timeout)),
            channel,
            bus: bus.clone(),
            current: ArcSwapOption::empty(),
            next_serial: AtomicU64::new(0),
            lost,
            timeout,
            streak: Mutex::default(),
            timing_out: AtomicBool::new(false),
        });
        link.connect().await?;
        // The task holds the link weakly: it ends once the last cache handle
        // (and so every sender of `lost`) is gone.
        tokio::spawn(reconnect_task(Arc::downgrade(&link), lost_rx, bus));
        Ok(link)
    }

    /// One attempt: a new connection whose pushes feed the bus, subscribed
    /// before any call can use it (so no notice sent after a call's write
    /// can be missed), with every script loaded, then made current.
    async fn connect(&self) -> RedisResult<()> {
        let serial = self.next_serial.fetch_add(1, Relaxed);
        let to_bus = self.bus.sender(serial);
        let lost = self.lost.clone();
        let on_push = move |push: PushInfo| {
            if push.kind == PushKind::Disconnection {
                let _ = lost.send(serial);
            }
            to_bus(push);
            Ok::<(), std::convert::Infallible>(())
        };
        let config = self.config.clone().set_push_sender(on_push);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        self.bus.accept(serial);
        conn.subscribe(&self.channel).await?;
        let loads = scripts::all().map(|script| {
            let mut conn = conn.clone();
            async move { script.load_async(&mut conn).await }
        });
        futures_util::future::try_join_all(loads).await?;
        self.current.store(Some(Arc::new(Live { serial, conn })));
        Ok(())
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
            Err(e) if e.is_connection_dropped() => {
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

    fn is_current(&self, serial: u64) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|live| live.serial == serial)
    }

    /// One command on the current connection.
    pub(crate) async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        let mut conn = self.get()?;
        // The connection's own method rather than `cmd.query_async`, which
        // goes through `ConnectionLike::req_packed_command` and boxes the
        // future: one allocation and one indirect call less per command.
        let result = conn.conn.send_packed_command(cmd).await;
        self.check(&conn, &result);
        Ok(redis::from_redis_value(result?.extract_error()?)?)
    }

    /// Drops the connection `serial` if it is still the current one, and
    /// stops taking its notices (calls still running may keep it open for
    /// up to `redis_timeout`).
    fn retire(&self, serial: u64) -> bool {
        if self.is_current(serial) {
            self.current.store(None);
            self.bus.retire(serial);
            true
        } else {
            false
        }
    }
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
async fn reconnect_task(link: Weak<Link>, mut lost: mpsc::UnboundedReceiver<u64>, bus: Arc<Bus>) {
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
                        let _: RedisResult<String> = l.query(&redis::cmd("PING")).await;
                    }
                });
                continue;
            }
        };
        match link.upgrade() {
            Some(l) if l.retire(serial) => {}
            Some(_) => continue,
            None => return,
        }
        bus.wake_all();
        loop {
            let Some(l) = link.upgrade() else { return };
            if l.connect().await.is_ok() {
                break;
            }
            drop(l);
            tokio::time::sleep(RETRY_EVERY).await;
        }
        bus.reconnected();
    }
}
