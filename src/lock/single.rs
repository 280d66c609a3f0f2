//! [`Lock`] and [`LockGuard`]: a fenced lock on one Redis (or one master
//! with its replicas), renewed by a watchdog and woken by notification.

use redis::aio::ConnectionLike;
use redis::{Cmd, RedisResult, Script, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::lock::keys::{LockKeys, Token, WAITER_TTL};
use crate::lock::lease::{Holder, Lease, Renewal, drift};
use crate::lock::queue::{Attempt, Pacing, Turn};
use crate::lock::scripts::{ACQUIRE, CLOCK_STARTED, FENCE_START, MARK_WAITER, RELEASE};
use crate::shared::link::RedisConn;
use crate::shared::scripts::EXTEND;
use crate::shared::server::Server;
use crate::shared::telemetry::{self, CallSpan};

/// The lease of a lock taken with no [`Lock::lease`]: 10 s. A holder that
/// crashes blocks the name for at most this long; a live holder keeps it
/// for as long as it needs, because the watchdog renews it every lease/3.
/// Shorter recovers from crashes sooner, but a Redis that stalls for more
/// than about two thirds of it makes the holder's lease lost.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(10);

/// The shortest lease accepted: the watchdog must get a renewal through in
/// a third of it.
pub const MIN_LEASE: Duration = Duration::from_millis(30);

/// The longest lease accepted: a year. A crashed holder would block the
/// name that long; longer is surely a mistake (and would overflow the
/// milliseconds Redis takes).
pub const MAX_LEASE: Duration = Duration::from_secs(365 * 24 * 3600);

/// The lease check shared by [`Lock`] and [`Redlock`](crate::Redlock).
pub(crate) fn check_lease(lease: Duration) -> Result<(), Error> {
    if lease < MIN_LEASE || lease > MAX_LEASE {
        return Err(Error::new(
            ErrorKind::Config,
            format!("lease is {lease:?}; it must be {MIN_LEASE:?} to {MAX_LEASE:?}"),
        ));
    }
    Ok(())
}

/// A distributed lock named by a string, on a [`Client`]'s Redis.
///
/// Cheap to clone; nothing is sent until it is acquired. Every acquisition
/// returns a [`LockGuard`] with a **fencing token** that increases strictly
/// for the name across the fleet, a watchdog that renews the lease while
/// the guard lives, and a [`lost`](LockGuard::lost) signal.
///
/// Fairness: inside one process, acquirers of one name are served in the
/// order they called (a FIFO queue; only its head talks to Redis). Across
/// processes there is no order: when the lock is released, the heads of
/// every process's queue are woken by the release notice and race for it,
/// and a process whose own task released it may win again. No process
/// starves for long in practice (the race is decided by who is woken
/// first), but nothing bounds it.
#[derive(Clone, Debug)]
pub struct Lock {
    client: Client,
    name: Arc<str>,
    /// Built once per handle, so reusing a `Lock` builds no key names; a
    /// bad name is kept as its error, reported by each acquire.
    keys: Result<Arc<LockKeys>, Error>,
    lease: Duration,
    /// Whether acquisitions take a fencing token (the default).
    fenced: bool,
}

/// A held [`Lock`]. Release it with [`release`](Self::release); a guard
/// dropped without it is released in the background at once.
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    lease: Lease<Single>,
    fence: u64,
    name: Arc<str>,
}

impl std::fmt::Debug for LockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockGuard")
            .field("name", &self.name)
            .field("fencing_token", &self.fence)
            .field("held", &self.is_held())
            .finish()
    }
}

/// One Redis's part of a lease: what the watchdog and release need.
struct Single {
    server: Arc<Server>,
    keys: Arc<LockKeys>,
    token: Token,
    lease: Duration,
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

/// What one acquisition attempt found: the fence, or the holder's
/// remaining ms (0 if unknown or free by now).
enum Tried {
    Taken(u64),
    Held(i64),
}

fn unexpected(what: &str, reply: &Value) -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::Client,
        "unexpected reply",
        format!("from {what}: {reply:?}"),
    ))
}

/// `EVALSHA <sha> <nkeys>`, its buffers sized for `args` more arguments of
/// about `bytes` in all, so that adding them does not grow them.
pub(crate) fn script_cmd(script: &Script, nkeys: usize, args: usize, bytes: usize) -> Cmd {
    let mut cmd = Cmd::with_capacity(3 + args, 64 + bytes);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(nkeys);
    cmd
}

/// The lock's release: compare-and-delete, and the notice only if a
/// waiter marked the name (`scripts.rs`).
pub(crate) fn release_cmd(server: &Server, keys: &LockKeys, token: &Token) -> Cmd {
    let mut cmd = script_cmd(&RELEASE, 2, 6, 2 * keys.lock.len() + 64);
    cmd.arg(&keys.lock)
        .arg(&keys.waiters)
        .arg(token.as_bytes())
        .arg(&keys.channel)
        .arg("r")
        .arg(server.publish_verb());
    cmd
}

/// How long a fence counter lives after it was started. Past it the
/// counter starts again at the server's clock, far above its old values
/// (see `scripts.rs`), so a name used once does not stay in Redis forever.
const FENCE_TTL: Duration = Duration::from_secs(24 * 3600);

impl Holder for Single {
    async fn renew(&self) -> Renewal {
        let mut cmd = script_cmd(&EXTEND, 1, 3, self.keys.lock.len() + 48);
        cmd.arg(&self.keys.lock)
            .arg(self.token.as_bytes())
            .arg(ms(self.lease));
        match self.server.eval::<i64>(&EXTEND, &cmd).await {
            Ok(1) => Renewal::Renewed,
            Ok(_) => Renewal::NotHeld,
            Err(_) => Renewal::Unknown,
        }
    }

    async fn release(&self) -> Result<bool, Error> {
        let cmd = release_cmd(&self.server, &self.keys, &self.token);
        let n: i64 = self
            .server
            .eval(&RELEASE, &cmd)
            .await
            .map_err(|e| Error::redis("release lock", e))?;
        Ok(n == 1)
    }
}

/// Releases a lock whose acquisition was sent but whose answer was never
/// read: the caller's future was dropped mid-call, or the call failed
/// without an answer (a Redis that stalled past `redis_timeout` still runs
/// the queued `SET` when it resumes). If the acquisition did take it,
/// nobody would hold a guard, and the name would stay locked for a whole
/// lease. Disarmed once an answer is in hand.
struct InFlight<'a> {
    single: Option<(&'a Arc<Server>, &'a Arc<LockKeys>, Token)>,
    lease: Duration,
    /// The call failed: Redis may run the acquisition later, so releasing
    /// goes on until it frees the lock or the lease is over (a compare-and-
    /// delete of our own token: it never touches another holder's lock).
    /// A dropped future's acquisition reached a working connection; one
    /// answer to the release tells.
    uncertain: bool,
}

impl InFlight<'_> {
    /// The attempt is over: answered (nothing to release: a lock taken is
    /// the guard's now), or failed (release in the background, see above).
    fn settle<T>(&mut self, result: &RedisResult<T>) {
        match result {
            // A timeout, or a connection lost mid-call: the acquisition
            // may have reached Redis, and may yet run.
            Err(e) if e.is_timeout() || e.is_connection_dropped() => self.uncertain = true,
            // Answered; or refused before anything was sent (the breaker,
            // a connection refused), or an error reply: nothing taken.
            _ => self.single = None,
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let Some((server, keys, token)) = self.single.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let single = Single {
            server: server.clone(),
            keys: keys.clone(),
            token,
            lease: MIN_LEASE,
        };
        let (until, uncertain) = (Instant::now() + self.lease, self.uncertain);
        runtime.spawn(async move {
            let mut pause = Duration::from_millis(50);
            loop {
                match single.release().await {
                    Ok(true) => return,
                    Ok(false) if !uncertain => return,
                    _ => {}
                }
                if Instant::now() + pause >= until {
                    return;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        });
    }
}

impl Lock {
    pub(crate) fn new(client: Client, name: String) -> Self {
        Lock {
            client,
            keys: LockKeys::new(&name).map(Arc::new),
            name: name.into(),
            lease: DEFAULT_LEASE,
            fenced: true,
        }
    }

    /// Whether each acquisition takes a fencing token (default `true`).
    ///
    /// `fenced(false)` is the lock the tutorials write by hand (`SET lock
    /// token NX PX lease`, compare-and-delete release) with everything
    /// else of this one: the watchdog, [`LockGuard::lost`], release on
    /// drop, waiters woken by notice and queued in order. It takes one
    /// command where the fenced lock takes a transaction that also counts
    /// the token (`MULTI; SET NX PX; INCR; EXEC`), which under many
    /// concurrent acquisitions costs Redis about a third more per lock
    /// (`docs/BENCHMARKS.md`). Its guards' [`fencing_token`](LockGuard::fencing_token)
    /// is `0`.
    ///
    /// Without a token a holder that was paused past its lease (a GC
    /// pause, a stalled VM, a slow network) cannot be refused by the
    /// resource it writes to, and may write after another took the lock.
    /// Choose it only where the lock is an optimisation (avoiding duplicate
    /// work) rather than what keeps the data right, or where the resource
    /// cannot check a token anyway. Fenced and unfenced handles of one name
    /// exclude each other as usual; the fenced ones' tokens keep increasing.
    pub fn fenced(mut self, fenced: bool) -> Self {
        self.fenced = fenced;
        self
    }

    /// How long the lock is held without renewal. Default
    /// [`DEFAULT_LEASE`] (10 s): this bounds how long a crashed holder
    /// blocks the name, not how long a live holder may keep it (the
    /// watchdog renews it every lease/3). From [`MIN_LEASE`] to
    /// [`MAX_LEASE`]; outside it is an [`ErrorKind::Config`] error when
    /// acquiring.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits until the lock is free and takes it. Waiting costs no polling
    /// of Redis: the waiter is woken by the release notice (registered
    /// before it re-checks, so none is missed), by the holder's lease
    /// running out, and by a slow fallback poll (20 ms doubling to 250 ms).
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for a bad name, [`ErrorKind::Config`] for
    /// a lease under [`MIN_LEASE`] (nothing is sent); [`ErrorKind::Redis`]
    /// if Redis fails or is down: a lock that cannot be checked is not
    /// waited for.
    ///
    /// # Cancel safety
    /// Dropping the future gives up the wait. If it is dropped while its
    /// acquisition is in flight, the lock (if that took it) is released in
    /// the background.
    pub async fn acquire(&self) -> Result<LockGuard, Error> {
        self.acquire_until(None).await
    }

    /// [`acquire`](Self::acquire), giving up after `timeout`.
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), and [`ErrorKind::LockTimeout`] when the
    /// lock is still held by another after `timeout`.
    ///
    /// # Cancel safety
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<LockGuard, Error> {
        // A timeout past the end of the clock: no deadline.
        self.acquire_until(Instant::now().checked_add(timeout))
            .await
    }

    /// Takes the lock if it is free now, without waiting: `Ok(None)` if
    /// another holds it (in this process or another).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// As [`acquire`](Self::acquire).
    pub async fn try_acquire(&self) -> Result<Option<LockGuard>, Error> {
        let span = CallSpan::lock(&self.name);
        let started = Instant::now();
        let result = span.instrument(self.try_acquire_inner()).await;
        let outcome = match &result {
            Ok(Some(guard)) => {
                span.fencing_token(guard.fence);
                "acquired"
            }
            Ok(None) => "busy",
            Err(_) => "error",
        };
        telemetry::lock_acquire(&span, &self.name, outcome, started.elapsed());
        result
    }

    async fn try_acquire_inner(&self) -> Result<Option<LockGuard>, Error> {
        let keys = self.check()?;
        let Some(turn) = self.client.locks.enter(&self.name).try_turn() else {
            return Ok(None);
        };
        let token = Token::new();
        match self.attempt(&keys, token, false).await? {
            Attempt::Taken((fence, sent)) => Ok(Some(self.guard(keys, token, fence, sent, turn))),
            Attempt::Held { .. } => Ok(None),
        }
    }

    fn check(&self) -> Result<Arc<LockKeys>, Error> {
        let keys = self.keys.clone()?;
        check_lease(self.lease)?;
        Ok(keys)
    }

    /// An acquisition in its span, reported when it ends.
    async fn acquire_until(&self, deadline: Option<Instant>) -> Result<LockGuard, Error> {
        let span = CallSpan::lock(&self.name);
        let started = Instant::now();
        let result = span.instrument(self.acquire_until_inner(deadline)).await;
        let outcome = match &result {
            Ok(guard) => {
                span.fencing_token(guard.fence);
                "acquired"
            }
            Err(e) if e.kind() == ErrorKind::LockTimeout => "timeout",
            Err(_) => "error",
        };
        telemetry::lock_acquire(&span, &self.name, outcome, started.elapsed());
        result
    }

    async fn acquire_until_inner(&self, deadline: Option<Instant>) -> Result<LockGuard, Error> {
        let keys = self.check()?;
        let token = Token::new();
        let pacing = Pacing {
            links: &[&self.client.server.link],
            channel: &keys.channel,
            jitter: false,
        };
        let timed_out = || {
            Error::new(
                ErrorKind::LockTimeout,
                format!("lock {:?} still held by another", self.name),
            )
        };
        let ((fence, sent), turn) = self
            .client
            .locks
            .enter(&self.name)
            .take_in_turn(deadline, pacing, timed_out, || {
                self.attempt(&keys, token, true)
            })
            .await?;
        Ok(self.guard(keys, token, fence, sent, turn))
    }

    /// One try: take the lock and its fencing token, or learn how long the
    /// holder's lease still runs (and, if this caller will wait, mark the
    /// name as waited for, so the release publishes its notice).
    ///
    /// On one node (or under Sentinel) the lock and its fence are taken by
    /// `MULTI; SET lock token NX PX lease; INCR fence; EXEC`: atomic like
    /// a script, and it costs Redis ~2.5 µs less per acquisition than the
    /// same two writes inside `EVALSHA` (the script machinery, not the
    /// writes, is what costs). A failed `SET` still counts the fence up,
    /// which skips a number and breaks no order: a holder's token is
    /// counted in the same atomic step that took the lock. The two things
    /// a transaction cannot branch on take a second round trip where they
    /// happen: a new counter (`FENCE_START`, about once a day per name) and
    /// the waiter's mark when the lock is taken (`MARK_WAITER`, only on
    /// the waiting path). On a Cluster, the `ACQUIRE` script does it all.
    async fn attempt(
        &self,
        keys: &Arc<LockKeys>,
        token: Token,
        waits: bool,
    ) -> Result<Attempt<(u64, Instant)>, Error> {
        let server = &self.client.server;
        let sent = Instant::now();
        let mut in_flight = InFlight {
            single: Some((server, keys, token)),
            lease: self.lease,
            uncertain: false,
        };
        let tried = if self.fenced {
            self.acquire_fenced(keys, token, waits).await
        } else {
            self.acquire_unfenced(keys, token, waits).await
        };
        in_flight.settle(&tried);
        match tried.map_err(|e| Error::redis("acquire lock", e))? {
            Tried::Taken(fence) => Ok(Attempt::Taken((fence, sent))),
            Tried::Held(pttl) => Ok(Attempt::Held {
                pttl: Duration::from_millis(pttl.max(0) as u64),
            }),
        }
    }

    /// The lock and its fencing token: the transaction on one node, the
    /// `ACQUIRE` script on a Cluster. The first acquisition of this name
    /// on this connection floors the fence counter at the server clock
    /// (`lock/floor.rs`).
    async fn acquire_fenced(
        &self,
        keys: &Arc<LockKeys>,
        token: Token,
        waits: bool,
    ) -> RedisResult<Tried> {
        let server = &self.client.server;
        let serial = server.link.serial().unwrap_or(crate::lock::floor::NEVER);
        let floors = &self.client.fence_floors;
        let floor = floors.needed(&self.name, &keys.floored, serial);
        let tried = if server.link.sharded() {
            // Boxed, as the cold paths below: the hot path's future stays
            // small.
            Box::pin(self.acquire_script(keys, token, waits, floor)).await
        } else {
            self.acquire_multi(keys, token, waits, floor).await
        };
        if floor && matches!(tried, Ok(Tried::Taken(_))) {
            floors.done(&self.name, &keys.floored, serial);
        }
        tried
    }

    /// [`Lock::fenced`]`(false)`: `SET lock token NX PX lease` (one key: on
    /// a Cluster too), then `MARK_WAITER` for a waiter that found the lock
    /// taken, as the fenced path does.
    async fn acquire_unfenced(
        &self,
        keys: &LockKeys,
        token: Token,
        waits: bool,
    ) -> RedisResult<Tried> {
        let server = &self.client.server;
        let mut cmd = Cmd::with_capacity(6, keys.lock.len() + 48);
        cmd.arg("SET")
            .arg(&keys.lock)
            .arg(token.as_bytes())
            .arg("NX")
            .arg("PX")
            .arg(ms(self.lease));
        let reply: Value = server.call(server.raw_command(&cmd)).await?;
        match reply {
            Value::Okay => return Ok(Tried::Taken(0)),
            Value::Nil => {}
            other => return Err(unexpected("SET NX PX", &other)),
        }
        if !waits {
            return Ok(Tried::Held(0));
        }
        Box::pin(self.mark_waiter(keys)).await
    }

    /// Marks the name as waited for (so the holder's release publishes its
    /// notice) and reads how long the holder's lease still runs.
    async fn mark_waiter(&self, keys: &LockKeys) -> RedisResult<Tried> {
        let mut cmd = script_cmd(&MARK_WAITER, 2, 3, 2 * keys.lock.len() + 24);
        cmd.arg(&keys.lock).arg(&keys.waiters).arg(ms(WAITER_TTL));
        Ok(Tried::Held(
            self.client.server.eval(&MARK_WAITER, &cmd).await?,
        ))
    }

    /// The `ACQUIRE` script (on a Cluster, where a transaction would need
    /// the cluster client's routing of `MULTI`).
    async fn acquire_script(
        &self,
        keys: &LockKeys,
        token: Token,
        waits: bool,
        floor: bool,
    ) -> RedisResult<Tried> {
        let mut cmd = script_cmd(&ACQUIRE, 3, 8, 3 * keys.lock.len() + 80);
        cmd.arg(&keys.lock)
            .arg(&keys.fence)
            .arg(&keys.waiters)
            .arg(token.as_bytes())
            .arg(ms(self.lease))
            .arg(ms(FENCE_TTL.max(self.lease)))
            .arg(if waits { ms(WAITER_TTL) } else { 0 })
            .arg(if floor { "1" } else { "0" });
        let reply = self.client.server.eval::<Value>(&ACQUIRE, &cmd).await?;
        if let Value::Array(items) = &reply {
            match items.as_slice() {
                [Value::Int(1), Value::Int(fence)] => return Ok(Tried::Taken(*fence as u64)),
                [Value::Int(0), Value::Int(pttl)] => return Ok(Tried::Held(*pttl)),
                _ => {}
            }
        }
        Err(unexpected("the lock script", &reply))
    }

    /// `MULTI; SET NX PX; INCR; EXEC`, then `FENCE_START` for a new counter
    /// or `MARK_WAITER` for a waiter that found the lock taken.
    async fn acquire_multi(
        &self,
        keys: &LockKeys,
        token: Token,
        waits: bool,
        floor: bool,
    ) -> RedisResult<Tried> {
        let server = &self.client.server;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&keys.lock)
            .arg(token.as_bytes())
            .arg("NX")
            .arg("PX")
            .arg(ms(self.lease))
            .cmd("INCR")
            .arg(&keys.fence);
        let (taken, count) = server
            .call(async {
                let mut conn = server.link.get()?;
                // The EXEC reply alone: after MULTI's OK and two QUEUED.
                let result = match &mut conn.conn {
                    RedisConn::Single(c) => c.send_packed_commands(&pipe, 3, 1).await,
                    RedisConn::Cluster(c) => c.req_packed_commands(&pipe, 3, 1).await,
                };
                server.link.check(&conn, &result);
                let reply = result?.pop().unwrap_or(Value::Nil);
                if let Value::Array(items) = &reply
                    && let [set, Value::Int(count)] = items.as_slice()
                    && matches!(set, Value::Okay | Value::Nil)
                {
                    return Ok((matches!(set, Value::Okay), *count));
                }
                Err(unexpected("MULTI SET INCR EXEC", &reply))
            })
            .await?;
        if taken {
            if count as u64 >= CLOCK_STARTED && !floor {
                return Ok(Tried::Taken(count as u64));
            }
            let mut cmd = script_cmd(&FENCE_START, 2, 5, 2 * keys.lock.len() + 48);
            cmd.arg(&keys.lock)
                .arg(&keys.fence)
                .arg(token.as_bytes())
                .arg(ms(FENCE_TTL.max(self.lease)))
                .arg(if floor { "1" } else { "0" });
            let fence: i64 = Box::pin(server.eval(&FENCE_START, &cmd)).await?;
            // 0: the lease ran out between the two (a stall of a whole
            // lease): not ours, try again.
            return Ok(if fence > 0 {
                Tried::Taken(fence as u64)
            } else {
                Tried::Held(0)
            });
        }
        if !waits {
            return Ok(Tried::Held(0));
        }
        Box::pin(self.mark_waiter(keys)).await
    }

    fn guard(
        &self,
        keys: Arc<LockKeys>,
        token: Token,
        fence: u64,
        sent: Instant,
        turn: Turn,
    ) -> LockGuard {
        let single = Single {
            server: self.client.server.clone(),
            keys,
            token,
            lease: self.lease,
        };
        let validity = self.lease.saturating_sub(drift(self.lease));
        LockGuard {
            lease: Lease::start(single, self.name.clone(), self.lease, sent, validity, turn),
            fence,
            name: self.name.clone(),
        }
    }
}

impl LockGuard {
    /// The fencing token of this hold: strictly greater than every token
    /// issued before for this name, across the fleet. Pass it with every
    /// write to the resource the lock protects, and have the resource
    /// refuse a write whose token is below the highest it has seen: a
    /// holder that was paused past its lease (and so lost the lock
    /// unknowingly) is then refused. Tokens count up from the Redis
    /// server's clock in microseconds at the time the name's counter
    /// started, and a counter lost to a Redis restart without persistence
    /// (or a failover to a replica that missed it) starts again at the
    /// clock: that is what keeps them increasing across such a loss, as
    /// long as the server clock does not step back (with AOF
    /// `appendfsync always` the counter itself survives).
    ///
    /// `0` for a lock taken with [`Lock::fenced`]`(false)`: no token was
    /// taken (every real token is far above 0).
    pub fn fencing_token(&self) -> u64 {
        self.fence
    }

    /// Completes when the lease could not be renewed and may have run out
    /// (Redis unreachable or stalled past the lease, or the key found gone),
    /// no later than the end of the lease last confirmed. `select!` the
    /// work against it and stop when it fires: another may hold the lock
    /// from then on. Never completes after a release.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.lease.lost()
    }

    /// Whether the lease is still known to be held: false once it is lost
    /// or past the validity last confirmed.
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// How long the lease is known to run from now (zero once lost).
    pub fn remaining(&self) -> Duration {
        self.lease.remaining()
    }

    /// The lock's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stops the watchdog and releases the lock (compare-token-and-delete,
    /// then a release notice that wakes the next waiter). `Ok(true)` if it
    /// was still ours; `Ok(false)` if the lease had already run out (and
    /// maybe another took it: nothing of theirs is touched).
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] if Redis fails: the lock then runs out with its
    /// lease (the watchdog is stopped either way).
    pub async fn release(self) -> Result<bool, Error> {
        self.lease.release().await
    }
}
