//! A held lease and its watchdog, shared by [`LockGuard`](crate::LockGuard)
//! and [`RedlockGuard`](crate::RedlockGuard).
//!
//! The watchdog renews the lease every `lease / 3` with a token-checked
//! script. The lease is known valid until the send time of the last
//! successful renewal (or of the acquisition) plus `lease`, less a clock
//! drift allowance; if no renewal succeeds by then, or one finds the token
//! gone, the lease is *lost*: [`Lease::lost`] completes, no later than the
//! end of the validity it last knew. Releasing stops the watchdog first,
//! and every renewal is token-checked, so a lease is never extended after
//! its release.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;
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

struct State {
    valid_until: Mutex<Instant>,
    lost: watch::Sender<bool>,
}

pub(crate) struct Lease<H: Holder> {
    holder: Arc<H>,
    state: Arc<State>,
    watchdog: JoinHandle<()>,
    /// Kept until the lease is released, then dropped: this process's turn
    /// at the name, so the next local waiter starts only once Redis is free.
    turn: Option<Turn>,
    runtime: tokio::runtime::Handle,
}

impl<H: Holder> Lease<H> {
    /// Starts the watchdog of a lease taken by a request sent at `sent`
    /// and valid for `validity` from then.
    pub(crate) fn start(
        holder: H,
        name: Arc<str>,
        lease: Duration,
        sent: Instant,
        validity: Duration,
        turn: Turn,
    ) -> Self {
        let holder = Arc::new(holder);
        let (lost, _) = watch::channel(false);
        let state = Arc::new(State {
            valid_until: Mutex::new(sent + validity),
            lost,
        });
        let watchdog = tokio::spawn(watchdog(holder.clone(), state.clone(), lease, name));
        Lease {
            holder,
            state,
            watchdog,
            turn: Some(turn),
            runtime: tokio::runtime::Handle::current(),
        }
    }

    pub(crate) fn lost(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut lost = self.state.lost.subscribe();
        async move {
            if lost.wait_for(|lost| *lost).await.is_err() {
                // Released: the lease was not lost, and never will be.
                std::future::pending::<()>().await;
            }
        }
    }

    pub(crate) fn is_held(&self) -> bool {
        !*self.state.lost.borrow()
            && Instant::now() < *self.state.valid_until.lock().expect("lease state")
    }

    /// How long the lease is known to be valid from now (zero if lost).
    pub(crate) fn remaining(&self) -> Duration {
        if *self.state.lost.borrow() {
            return Duration::ZERO;
        }
        self.state
            .valid_until
            .lock()
            .expect("lease state")
            .saturating_duration_since(Instant::now())
    }

    pub(crate) async fn release(mut self) -> Result<bool, Error> {
        self.watchdog.abort();
        let released = self.holder.release().await;
        // The permit goes only now: the next local waiter finds Redis free.
        drop(self.turn.take());
        released
    }
}

impl<H: Holder> Drop for Lease<H> {
    fn drop(&mut self) {
        self.watchdog.abort();
        // Dropped without `release`: release at once in the background
        // rather than leave the lock taken until the lease runs out.
        if let Some(turn) = self.turn.take() {
            let holder = self.holder.clone();
            self.runtime.spawn(async move {
                let _ = holder.release().await;
                drop(turn);
            });
        }
    }
}

async fn watchdog<H: Holder>(holder: Arc<H>, state: Arc<State>, lease: Duration, name: Arc<str>) {
    let period = lease / 3;
    let validity = lease.saturating_sub(drift(lease));
    let mut next = Instant::now() + period;
    loop {
        let valid_until = *state.valid_until.lock().expect("lease state");
        tokio::select! {
            _ = tokio::time::sleep_until(valid_until) => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        let sent = Instant::now();
        // An answer after the validity we know is no use: lost by then.
        let answer = tokio::time::timeout_at(valid_until, holder.renew()).await;
        match answer {
            Ok(Renewal::Renewed) => {
                *state.valid_until.lock().expect("lease state") = sent + validity;
                next = sent + period;
            }
            Ok(Renewal::NotHeld) => break,
            // Try again soon, while the lease still runs.
            Ok(Renewal::Unknown) | Err(_) => {
                next = Instant::now() + (period / 4).max(Duration::from_millis(5))
            }
        }
    }
    state.lost.send_replace(true);
    telemetry::lease_lost(&name);
}
