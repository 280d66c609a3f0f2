//! [`Redlock`]: one lock over N independent Redis masters, held while a
//! majority of them hold it.
//!
//! Acquisition sends `SET NX PX` to every master at once (one round trip,
//! not N), each bounded by a short per-node timeout, and succeeds only with
//! a majority and a positive validity: `lease - elapsed - drift`, with
//! `drift = lease/100 + 2 ms`. Otherwise it releases what it took
//! everywhere and tries again after a random pause (so competing clients
//! do not keep splitting the votes) or the release notice of any master,
//! until the deadline. The watchdog renews on every master and keeps the
//! lease only while a majority confirms it.
//!
//! **No fencing token.** A counter on N independent masters has no single
//! order: two masters may issue the same number, and a majority's numbers
//! need not increase across holders. Kleppmann ("How to do distributed
//! locking", 2016) argues that without fencing a paused holder can still
//! corrupt the resource, and that Redlock's safety rests on bounded clock
//! drift and pauses; antirez's reply ("Is Redlock safe?") answers that the
//! drift bound is explicit and that a resource able to check tokens can
//! usually check a unique random token instead. Both agree on the
//! practical rule: where correctness depends on the lock (money, stock,
//! writes that must not interleave), use the single-instance
//! [`Lock`](crate::Lock) with its [`fencing_token`](crate::LockGuard::fencing_token)
//! and have the resource refuse stale tokens; use `Redlock` where the lock
//! is an efficiency measure that must survive the loss of a minority of
//! masters.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::lock::keys::{LockKeys, Token, WAITER_TTL};
use crate::lock::lease::{Holder, Lease, Renewal, drift};
use crate::lock::queue::{Attempt, Pacing, Queues, Turn};
use crate::lock::scripts::{MARK_WAITER, RELEASE};
use crate::lock::single::{DEFAULT_LEASE, check_lease, release_cmd, script_cmd};
use crate::shared::scripts::EXTEND;
use crate::shared::telemetry::{self, CallSpan};

/// The default bound on each master's answer: a master slower than this
/// counts as a "no" for that attempt.
pub const DEFAULT_NODE_TIMEOUT: Duration = Duration::from_millis(100);

/// Locks held on a majority of independent Redis masters.
#[derive(Clone)]
pub struct Redlock {
    inner: Arc<RedlockInner>,
}

struct RedlockInner {
    /// Shared with every lease: an acquisition clones one `Arc`, not N
    /// clients.
    masters: Arc<[Client]>,
    quorum: usize,
    queues: Arc<Queues>,
}

impl std::fmt::Debug for Redlock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redlock")
            .field("masters", &self.inner.masters.len())
            .field("quorum", &self.inner.quorum)
            .finish()
    }
}

/// Builds a [`Redlock`]; start with [`Redlock::builder`].
#[must_use = "a builder does nothing until .connect().await"]
pub struct RedlockBuilder {
    urls: Vec<String>,
    node_timeout: Duration,
    lazy: bool,
}

/// One lock name over a [`Redlock`]'s masters; the same surface as
/// [`Lock`](crate::Lock), less the fencing token.
#[derive(Clone, Debug)]
pub struct RedlockLock {
    redlock: Redlock,
    name: Arc<str>,
    /// Built once per handle, as [`Lock`](crate::Lock)'s.
    keys: Result<Arc<LockKeys>, Error>,
    lease: Duration,
}

/// A [`RedlockLock`] held on a majority of masters.
#[must_use = "the lock is released when the guard is dropped"]
pub struct RedlockGuard {
    lease: Lease<Majority>,
    name: Arc<str>,
}

impl std::fmt::Debug for RedlockGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedlockGuard")
            .field("name", &self.name)
            .field("held", &self.is_held())
            .finish()
    }
}

struct Majority {
    masters: Arc<[Client]>,
    quorum: usize,
    keys: Arc<LockKeys>,
    token: Token,
    lease: Duration,
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl Majority {
    /// `SET lock token NX PX lease` on every master at once (a plain
    /// command, not a script: Redis pays ~2.4 µs more per `EVALSHA`, times
    /// five); where it is refused and the caller will wait, `MARK_WAITER`
    /// (the holder's remaining time, and the mark that makes its release
    /// publish). (taken, answered, longest pttl among holders, and the
    /// masters whose answer was lost to a timeout or a dropped connection:
    /// they may yet run the `SET`.)
    async fn take(&self, waits: bool) -> (usize, usize, Duration, Vec<usize>) {
        let mut set = redis::Cmd::with_capacity(6, self.keys.lock.len() + 96);
        set.arg("SET")
            .arg(&self.keys.lock)
            .arg(self.token.as_bytes())
            .arg("NX")
            .arg("PX")
            .arg(ms(self.lease));
        let mut mark = script_cmd(&MARK_WAITER, 2, 3, 2 * self.keys.lock.len() + 24);
        mark.arg(&self.keys.lock)
            .arg(&self.keys.waiters)
            .arg(ms(WAITER_TTL));
        let (set, mark) = (&set, &mark);
        // One command serves every master (they differ in connection).
        let calls = self.masters.iter().map(|m| async move {
            let server = &m.server;
            match server.call(server.raw_command::<redis::Value>(set)).await? {
                redis::Value::Okay => Ok(-1),
                _ if waits => server.eval::<i64>(&MARK_WAITER, mark).await,
                _ => Ok(0),
            }
        });
        let answers: Vec<redis::RedisResult<i64>> = futures_util::future::join_all(calls).await;
        let mut taken = 0;
        let mut answered = 0;
        let mut pttl = Duration::ZERO;
        let mut unsure = Vec::new();
        for (i, a) in answers.into_iter().enumerate() {
            match a {
                Ok(a) if a < 0 => {
                    answered += 1;
                    taken += 1;
                }
                Ok(a) => {
                    answered += 1;
                    pttl = pttl.max(Duration::from_millis(a as u64));
                }
                Err(e) if e.is_timeout() || e.is_connection_dropped() => unsure.push(i),
                Err(_) => {}
            }
        }
        (taken, answered, pttl, unsure)
    }
}

impl Holder for Majority {
    async fn renew(&self) -> Renewal {
        let mut cmd = script_cmd(&EXTEND, 1, 3, self.keys.lock.len() + 48);
        cmd.arg(&self.keys.lock)
            .arg(self.token.as_bytes())
            .arg(ms(self.lease));
        let cmd = &cmd;
        let calls = self
            .masters
            .iter()
            .map(|m| async move { m.server.eval::<i64>(&EXTEND, cmd).await });
        let answers = futures_util::future::join_all(calls).await;
        let renewed = answers.iter().filter(|a| matches!(a, Ok(1))).count();
        let unknown = answers.iter().filter(|a| a.is_err()).count();
        if renewed >= self.quorum {
            Renewal::Renewed
        } else if renewed + unknown < self.quorum {
            // Too many masters answered that the key is not ours any more.
            Renewal::NotHeld
        } else {
            Renewal::Unknown
        }
    }

    async fn release(&self) -> Result<bool, Error> {
        // One command for every master that publishes with the first's
        // verb (all of them, unless Cluster and single nodes are mixed).
        let first = &self.masters[0].server;
        let shared = release_cmd(first, &self.keys, &self.token);
        let shared = &shared;
        let calls = self.masters.iter().map(|m| async move {
            let server = &m.server;
            if server.publish_verb() == first.publish_verb() {
                server.eval::<i64>(&RELEASE, shared).await
            } else {
                let own = release_cmd(server, &self.keys, &self.token);
                server.eval::<i64>(&RELEASE, &own).await
            }
        });
        let answers = futures_util::future::join_all(calls).await;
        let released = answers.iter().filter(|a| matches!(a, Ok(1))).count();
        let answered = answers.iter().filter(|a| a.is_ok()).count();
        if answered < self.quorum {
            return Err(Error::new(
                ErrorKind::NoQuorum,
                format!(
                    "release: {answered} of {} masters answered; {} needed",
                    self.masters.len(),
                    self.quorum
                ),
            ));
        }
        Ok(released >= self.quorum)
    }
}

impl Redlock {
    /// Connects to every master (`redis://` URLs of independent Redis
    /// servers: not replicas of each other) with the default settings.
    ///
    /// # Errors
    /// [`ErrorKind::Config`] for no URL or a bad one; [`ErrorKind::NoQuorum`]
    /// if fewer than a majority can be reached within the node timeout.
    pub async fn connect<S: AsRef<str>>(urls: &[S]) -> Result<Redlock, Error> {
        Redlock::builder(urls).connect().await
    }

    /// A builder over these masters.
    pub fn builder<S: AsRef<str>>(urls: &[S]) -> RedlockBuilder {
        RedlockBuilder {
            urls: urls.iter().map(|u| u.as_ref().to_owned()).collect(),
            node_timeout: DEFAULT_NODE_TIMEOUT,
            lazy: false,
        }
    }

    /// A lock named `name` over the masters. Nothing is sent until it is
    /// acquired; a bad name is reported by `acquire`.
    pub fn lock(&self, name: impl Into<String>) -> RedlockLock {
        let name: String = name.into();
        RedlockLock {
            redlock: self.clone(),
            keys: LockKeys::new(&name).map(Arc::new),
            name: name.into(),
            lease: DEFAULT_LEASE,
        }
    }

    /// How many masters must agree: a strict majority.
    pub fn quorum(&self) -> usize {
        self.inner.quorum
    }
}

impl RedlockBuilder {
    /// The bound on each master's answer (and each connection attempt).
    /// Default 100 ms: far below a lease, so one slow master costs an
    /// attempt little of its validity; above a loopback or LAN round trip.
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// Return even if fewer than a majority of masters are up; they are
    /// connected in the background. Default off.
    pub fn connect_lazy(mut self, lazy: bool) -> Self {
        self.lazy = lazy;
        self
    }

    /// Connects to every master.
    ///
    /// # Errors
    /// As [`Redlock::connect`].
    pub async fn connect(self) -> Result<Redlock, Error> {
        if self.urls.is_empty() {
            return Err(Error::new(
                ErrorKind::Config,
                "Redlock needs at least one master",
            ));
        }
        // Each master is connected lazily: a minority that is down must not
        // stop the others, and comes into use when it is back.
        let connects = self.urls.iter().map(|url| {
            Client::builder(url.clone())
                .redis_timeout(self.node_timeout)
                .connect_lazy(true)
                .connect()
        });
        let masters: Arc<[Client]> = futures_util::future::try_join_all(connects).await?.into();
        let quorum = masters.len() / 2 + 1;
        if !self.lazy {
            let deadline = Instant::now() + self.node_timeout.max(Duration::from_millis(200));
            loop {
                let up = masters
                    .iter()
                    .filter(|m| m.server.link.get().is_ok())
                    .count();
                if up >= quorum {
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(Error::new(
                        ErrorKind::NoQuorum,
                        format!(
                            "{up} of {} masters reachable; {quorum} needed",
                            masters.len()
                        ),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(Redlock {
            inner: Arc::new(RedlockInner {
                masters,
                quorum,
                queues: Arc::default(),
            }),
        })
    }
}

impl RedlockLock {
    /// As [`Lock::lease`](crate::Lock::lease). Default 10 s.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// Waits until a majority of masters grant the lock.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] / [`ErrorKind::Config`] for a bad name or
    /// lease; [`ErrorKind::NoQuorum`] at once when fewer than a majority of
    /// masters answer.
    ///
    /// # Cancel safety
    /// Dropping the future gives up the wait; what an attempt in flight
    /// took on some masters runs out with its lease.
    pub async fn acquire(&self) -> Result<RedlockGuard, Error> {
        self.acquire_until(None).await
    }

    /// [`acquire`](Self::acquire), giving up after `timeout` with
    /// [`ErrorKind::LockTimeout`].
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire), and [`ErrorKind::LockTimeout`].
    ///
    /// # Cancel safety
    /// As [`acquire`](Self::acquire).
    pub async fn acquire_timeout(&self, timeout: Duration) -> Result<RedlockGuard, Error> {
        // A timeout past the end of the clock: no deadline.
        self.acquire_until(Instant::now().checked_add(timeout))
            .await
    }

    /// One attempt: `Ok(None)` if it is held by another (or the vote split).
    ///
    /// # Errors
    /// As [`acquire`](Self::acquire).
    ///
    /// # Cancel safety
    /// As [`acquire`](Self::acquire).
    pub async fn try_acquire(&self) -> Result<Option<RedlockGuard>, Error> {
        let span = CallSpan::lock(&self.name);
        let started = Instant::now();
        let result = span.instrument(self.try_acquire_inner()).await;
        let outcome = match &result {
            Ok(Some(_)) => "acquired",
            Ok(None) => "busy",
            Err(_) => "error",
        };
        telemetry::lock_acquire(&span, &self.name, outcome, started.elapsed());
        result
    }

    async fn try_acquire_inner(&self) -> Result<Option<RedlockGuard>, Error> {
        let majority = self.majority()?;
        let Some(turn) = self.redlock.inner.queues.enter(&self.name).try_turn() else {
            return Ok(None);
        };
        match self.attempt(&majority, false).await? {
            Attempt::Taken(validity_from) => Ok(Some(self.guard(majority, validity_from, turn))),
            Attempt::Held { .. } => Ok(None),
        }
    }

    fn majority(&self) -> Result<Majority, Error> {
        let keys = self.keys.clone()?;
        check_lease(self.lease)?;
        let inner = &self.redlock.inner;
        Ok(Majority {
            masters: inner.masters.clone(),
            quorum: inner.quorum,
            keys,
            token: Token::new(),
            lease: self.lease,
        })
    }

    /// One round: taken, with when it was sent and its validity, if a
    /// majority granted it in time; else held (what was taken is released
    /// again), for the longest pttl a master reported (zero: a split vote).
    async fn attempt(
        &self,
        majority: &Majority,
        waits: bool,
    ) -> Result<Attempt<(Instant, Duration)>, Error> {
        let sent = Instant::now();
        let (taken, answered, pttl, unsure) = majority.take(waits).await;
        let validity = self
            .lease
            .checked_sub(sent.elapsed() + drift(self.lease))
            .unwrap_or_default();
        if taken >= majority.quorum && !validity.is_zero() {
            return Ok(Attempt::Taken((sent, validity)));
        }
        if taken > 0 {
            // Taken on a minority (or too late): give those back at once.
            let _ = majority.release().await;
        }
        if !unsure.is_empty() {
            // A master whose answer was lost (a stalled one resumes) may
            // still run the `SET`: release there too, as the Redlock
            // algorithm says, without waiting for its answer. Only there:
            // the masters that answered did not take it (or were released
            // above). The release is queued behind the `SET` on the same
            // connection.
            let late = Majority {
                masters: unsure
                    .iter()
                    .map(|&i| majority.masters[i].clone())
                    .collect(),
                quorum: 1,
                keys: majority.keys.clone(),
                token: majority.token,
                lease: majority.lease,
            };
            // Polled once here, so the release is on each connection
            // before any retry's `SET` (a retry reuses the token), and
            // left to finish in the background.
            let mut release = Box::pin(async move { late.release().await });
            tokio::select! {
                biased;
                _ = &mut release => {}
                () = std::future::ready(()) => {
                    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                        runtime.spawn(release);
                    }
                }
            }
        }
        if answered < majority.quorum {
            return Err(Error::new(
                ErrorKind::NoQuorum,
                format!(
                    "lock {:?}: {answered} of {} masters answered; {} needed",
                    self.name,
                    majority.masters.len(),
                    majority.quorum
                ),
            ));
        }
        Ok(Attempt::Held { pttl })
    }

    /// An acquisition in its span, reported when it ends.
    async fn acquire_until(&self, deadline: Option<Instant>) -> Result<RedlockGuard, Error> {
        let span = CallSpan::lock(&self.name);
        let started = Instant::now();
        let result = span.instrument(self.acquire_until_inner(deadline)).await;
        let outcome = match &result {
            Ok(_) => "acquired",
            Err(e) if e.kind() == ErrorKind::LockTimeout => "timeout",
            Err(_) => "error",
        };
        telemetry::lock_acquire(&span, &self.name, outcome, started.elapsed());
        result
    }

    async fn acquire_until_inner(&self, deadline: Option<Instant>) -> Result<RedlockGuard, Error> {
        let majority = self.majority()?;
        let links: Vec<_> = majority.masters.iter().map(|m| &m.server.link).collect();
        let pacing = Pacing {
            links: &links,
            channel: &majority.keys.channel,
            jitter: true,
        };
        let timed_out = || {
            Error::new(
                ErrorKind::LockTimeout,
                format!("lock {:?} not granted by a majority in time", self.name),
            )
        };
        let (validity_from, turn) = self
            .redlock
            .inner
            .queues
            .enter(&self.name)
            .take_in_turn(deadline, pacing, timed_out, || {
                self.attempt(&majority, true)
            })
            .await?;
        Ok(self.guard(majority, validity_from, turn))
    }

    fn guard(
        &self,
        majority: Majority,
        (sent, validity): (Instant, Duration),
        turn: Turn,
    ) -> RedlockGuard {
        RedlockGuard {
            lease: Lease::start(
                majority,
                self.name.clone(),
                self.lease,
                sent,
                validity,
                turn,
            ),
            name: self.name.clone(),
        }
    }
}

impl RedlockGuard {
    /// As [`LockGuard::lost`](crate::LockGuard::lost): completes when a
    /// majority could not confirm the lease before its validity ran out.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.lease.lost()
    }

    /// Whether the lease is still known to be held by a majority.
    pub fn is_held(&self) -> bool {
        self.lease.is_held()
    }

    /// How long the lease is known to run from now (zero once lost).
    pub fn remaining(&self) -> Duration {
        self.lease.remaining()
    }

    /// Releases on every master; `Ok(true)` if a majority still held it.
    ///
    /// # Errors
    /// [`ErrorKind::NoQuorum`] if fewer than a majority answered (the rest
    /// runs out with the lease).
    pub async fn release(self) -> Result<bool, Error> {
        self.lease.release().await
    }
}
