//! A held lease and its renewal, shared by [`LockGuard`](crate::LockGuard)
//! and [`RedlockGuard`](crate::RedlockGuard).
//!
//! A lease is renewed every `lease / 3` with a token-checked script. It is
//! known valid until the send time of the last successful renewal (or of
//! the acquisition) plus `lease`, less a clock drift allowance; if no
//! renewal succeeds by then, or one finds the token gone, the lease is
//! *lost*: [`Lease::lost`] completes, no later than the end of the validity
//! it last knew. Releasing marks the lease released first, and every
//! renewal is token-checked, so a lease is never extended after its
//! release.
//!
//! **One renewer per client, not a task per lease.** Every lease of a
//! [`Client`](crate::Client) (or of a [`Redlock`](crate::Redlock)) waits in
//! one timer queue ([`Renewer`]: a binary heap under a mutex, driven by one
//! task that sleeps until the earliest due time). Acquiring pushes the
//! lease (the task is woken only when the new lease is due before its
//! current wake-up, which for leases of one length is never); releasing
//! marks it released, and the heap drops released leases when they come
//! due or when they outnumber the live ones (so a lock taken and released a
//! million times leaves no million entries behind). Spawning a watchdog
//! task per lease cost ~1-1.7 µs of client CPU per acquisition on a
//! `current_thread` runtime and ~8.5 µs on `multi_thread` (the spawn woke
//! the idle worker): more than the rest of the client's work. A renewal
//! that is due runs in a task of its own, so one slow Redis answer delays
//! no other lease. The renewer's task runs on the runtime of the client's
//! first lease (as the connection's own tasks run on the runtime that made
//! the client); if that runtime shuts down, the next lease starts a new
//! one on its own runtime.

use std::collections::BinaryHeap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Error;
use crate::lock::queue::Turn;
use crate::shared::telemetry;

/// What one renewal attempt found.
pub(crate) enum Renewal {
    /// Renewed for a whole lease from the attempt's send time.
    Renewed,
    /// The lease is gone (expired, or taken by another).
    NotHeld,
    /// No answer good enough to tell (Redis down, slow, no quorum yet).
    Unknown,
}

/// How a lease is renewed and released: one Redis, or a Redlock's masters.
pub(crate) trait Holder: Send + Sync + 'static {
    fn renew(&self) -> impl Future<Output = Renewal> + Send;
    /// Token-checked release; `Ok(true)` if the lease was still held.
    fn release(&self) -> impl Future<Output = Result<bool, Error>> + Send;
}

/// The clock drift allowance of a lease (the Redlock paper's): 1% of the
/// lease plus 2 ms.
pub(crate) fn drift(lease: Duration) -> Duration {
    lease / 100 + Duration::from_millis(2)
}

/// Where a lease is in its life. It leaves `Held` once, for good.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Held,
    Lost,
    Released,
}

struct Status {
    phase: Phase,
    valid_until: Instant,
}

/// One lease: what its guard and the renewer share.
struct Shared<H> {
    holder: H,
    status: Mutex<Status>,
    /// Wakes the `lost()` futures when the lease is lost.
    changed: Notify,
    lease: Duration,
    name: Arc<str>,
}

impl<H> Shared<H> {
    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().expect("lease state")
    }

    fn phase(&self) -> Phase {
        self.status().phase
    }

    /// Held → lost (once; never after a release).
    fn lose(&self) {
        {
            let mut status = self.status();
            if status.phase != Phase::Held {
                return;
            }
            status.phase = Phase::Lost;
        }
        self.changed.notify_waiters();
        telemetry::lease_lost(&self.name);
    }
}

/// A lease as the renewer sees it, whatever its holder.
trait Due: Send + Sync {
    /// Its renewal (or the end of its validity) is due: renew it in a task
    /// of its own, or declare it lost.
    fn fire(self: Arc<Self>, renewer: &Arc<Renewer>);
    /// Released or lost: nothing more to do for it.
    fn done(&self) -> bool;
}

impl<H: Holder> Due for Shared<H> {
    fn fire(self: Arc<Self>, renewer: &Arc<Renewer>) {
        let valid_until = {
            let status = self.status();
            if status.phase != Phase::Held {
                return;
            }
            status.valid_until
        };
        if Instant::now() >= valid_until {
            self.lose();
            return;
        }
        let renewer = renewer.clone();
        tokio::spawn(self.renew_once(renewer, valid_until));
    }

    fn done(&self) -> bool {
        self.phase() != Phase::Held
    }
}

impl<H: Holder> Shared<H> {
    /// One renewal, then the lease back in the queue (or lost).
    async fn renew_once(self: Arc<Self>, renewer: Arc<Renewer>, valid_until: Instant) {
        let period = self.lease / 3;
        let sent = Instant::now();
        // An answer after the validity we know is no use: lost by then.
        match tokio::time::timeout_at(valid_until, self.holder.renew()).await {
            Ok(Renewal::Renewed) => {
                {
                    let mut status = self.status();
                    if status.phase != Phase::Held {
                        return;
                    }
                    status.valid_until = sent + self.lease.saturating_sub(drift(self.lease));
                }
                renewer.schedule(self, sent + period);
            }
            Ok(Renewal::NotHeld) | Err(_) => self.lose(),
            // Try again soon, while the lease still runs (the renewer
            // declares it lost if `valid_until` comes first).
            Ok(Renewal::Unknown) => {
                if self.phase() == Phase::Held {
                    let retry = Instant::now() + (period / 4).max(Duration::from_millis(5));
                    renewer.schedule(self, retry.min(valid_until));
                }
            }
        }
    }
}

/// A lease waiting in the renewer's heap until `at`.
struct Entry {
    at: Instant,
    lease: Arc<dyn Due>,
}

// Reversed: `BinaryHeap` is a max-heap, the renewer wants the earliest.
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.at.cmp(&self.at)
    }
}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at
    }
}
impl Eq for Entry {}

#[derive(Default)]
struct Timers {
    heap: BinaryHeap<Entry>,
    /// When the task wakes up on its own next (`None`: only when told).
    until: Option<Instant>,
    /// Whether the task is running (it is started by the first lease, and
    /// again if its runtime went away).
    running: bool,
    closed: bool,
}

/// The timer queue of every lease of one client (or one Redlock), and the
/// one task that renews them.
#[derive(Default)]
pub(crate) struct Renewer {
    timers: Mutex<Timers>,
    wake: Notify,
    /// Leases started and not yet released: the heap is compacted when it
    /// holds more than twice as many entries.
    live: AtomicUsize,
}

/// Clears `running` when the task ends, also when its runtime drops it, so
/// the next lease starts a new one.
struct Running(Arc<Renewer>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.timers().running = false;
    }
}

impl Renewer {
    fn timers(&self) -> std::sync::MutexGuard<'_, Timers> {
        self.timers.lock().expect("renewer timers")
    }

    /// Puts `lease` in the queue, due at `at`.
    fn schedule(self: &Arc<Self>, lease: Arc<dyn Due>, at: Instant) {
        let mut timers = self.timers();
        if timers.closed {
            return;
        }
        // Released leases stay in the heap until they come due; past twice
        // the live ones (and a floor, so a handful of leases never pay for
        // it), drop them all at once: amortised O(1) per lease.
        if timers.heap.len() >= 2 * self.live.load(Relaxed) + 64 {
            timers.heap.retain(|e| !e.lease.done());
        }
        timers.heap.push(Entry { at, lease });
        if !timers.running {
            timers.running = true;
            timers.until = None;
            drop(timers);
            // Spawned with the mutex released: a runtime that is shutting
            // down drops the task at once, and `Running` takes the mutex.
            tokio::spawn(run(Running(self.clone())));
        } else if timers.until.is_none_or(|until| at < until) {
            // Due before the task's wake-up: tell it (a permit is kept if
            // it is not waiting yet, so the notice is not lost).
            timers.until = Some(at);
            self.wake.notify_one();
        }
    }

    /// Stops the task (the client and every guard are gone).
    pub(crate) fn close(&self) {
        let mut timers = self.timers();
        timers.closed = true;
        timers.heap.clear();
        self.wake.notify_one();
    }
}

async fn run(running: Running) {
    let renewer = &running.0;
    let mut due = Vec::new();
    loop {
        let until = {
            let mut timers = renewer.timers();
            if timers.closed {
                return;
            }
            let now = Instant::now();
            while timers.heap.peek().is_some_and(|e| e.at <= now) {
                let entry = timers.heap.pop().expect("peeked");
                if !entry.lease.done() {
                    due.push(entry.lease);
                }
            }
            timers.until = timers.heap.peek().map(|e| e.at);
            timers.until
        };
        for lease in due.drain(..) {
            lease.fire(renewer);
        }
        match until {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = renewer.wake.notified() => {}
                }
            }
            None => renewer.wake.notified().await,
        }
    }
}

pub(crate) struct Lease<H: Holder> {
    shared: Arc<Shared<H>>,
    /// Kept until the lease is released, then dropped: this process's turn
    /// at the name, so the next local waiter starts only once Redis is free.
    /// It also leads to the renewer.
    turn: Option<Turn>,
    /// Whether the guard is done with the lease (released, or releasing).
    retired: bool,
    runtime: tokio::runtime::Handle,
}

impl<H: Holder> Lease<H> {
    /// Queues the renewal of a lease taken by a request sent at `sent` and
    /// valid for `validity` from then.
    pub(crate) fn start(
        holder: H,
        name: Arc<str>,
        lease: Duration,
        sent: Instant,
        validity: Duration,
        turn: Turn,
    ) -> Self {
        let valid_until = sent + validity;
        let shared = Arc::new(Shared {
            holder,
            status: Mutex::new(Status {
                phase: Phase::Held,
                valid_until,
            }),
            changed: Notify::new(),
            lease,
            name,
        });
        let renewer = turn.renewer();
        renewer.live.fetch_add(1, Relaxed);
        renewer.schedule(shared.clone(), (sent + lease / 3).min(valid_until));
        Lease {
            shared,
            turn: Some(turn),
            retired: false,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    pub(crate) fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let shared = self.shared.clone();
        async move {
            loop {
                let changed = shared.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                match shared.phase() {
                    Phase::Lost => return,
                    // Released: the lease was not lost, and never will be.
                    Phase::Released => std::future::pending::<()>().await,
                    Phase::Held => changed.await,
                }
            }
        }
    }

    pub(crate) fn is_held(&self) -> bool {
        let status = self.shared.status();
        status.phase == Phase::Held && Instant::now() < status.valid_until
    }

    /// How long the lease is known to be valid from now (zero if lost).
    pub(crate) fn remaining(&self) -> Duration {
        let status = self.shared.status();
        if status.phase != Phase::Held {
            return Duration::ZERO;
        }
        status.valid_until.saturating_duration_since(Instant::now())
    }

    /// Marks the lease released (no renewal starts from now on; one in
    /// flight is token-checked and finds it gone or ignores its answer)
    /// and no longer live.
    fn retire(&mut self) {
        if std::mem::replace(&mut self.retired, true) {
            return;
        }
        {
            let mut status = self.shared.status();
            if status.phase == Phase::Held {
                status.phase = Phase::Released;
            }
        }
        if let Some(turn) = &self.turn {
            turn.renewer().live.fetch_sub(1, Relaxed);
        }
    }

    pub(crate) async fn release(mut self) -> Result<bool, Error> {
        self.retire();
        let released = self.shared.holder.release().await;
        // The permit goes only now: the next local waiter finds Redis free.
        drop(self.turn.take());
        released
    }
}

impl<H: Holder> Drop for Lease<H> {
    fn drop(&mut self) {
        self.retire();
        // Dropped without `release` (or while releasing): release at once
        // in the background rather than leave the lock taken until the
        // lease runs out.
        if let Some(turn) = self.turn.take() {
            let shared = self.shared.clone();
            self.runtime.spawn(async move {
                let _ = shared.holder.release().await;
                drop(turn);
            });
        }
    }
}
