//! Starting background work off the caller's path: one long-lived task per
//! cache spawns the refreshes that callers hand it.
//!
//! A caller that finds a value stale (or due for an early refresh) returns
//! that value at once and leaves one refresh running. Spawning that task
//! itself was the most expensive thing such a call did: in the expiry test
//! (4 processes x 8 tasks on 2 cores) `tokio::spawn` took 4–22 µs of the
//! caller's time, against 0.4–1.4 µs to send the same work to a task that
//! already exists. (A spawn allocates and registers a task, and that code
//! runs once per expiry, so it is always cold; a send and a wake are the
//! same few instructions every request path already runs.) That one caller
//! per expiry and process was the slowest request of its expiry: with the
//! starter it is as fast as the steady requests (see `tests/stampede.rs`,
//! `expiry_under_load…`).
//!
//! Nothing handed over is lost. If the starter is gone (its runtime shut
//! down), the work is spawned directly; work dropped unpolled settles its
//! flight (`FlightGuard` in `cache.rs`), so no waiter hangs.

use std::future::Future;
use std::pin::Pin;
use tokio::sync::mpsc;

/// Work handed to the starter: a flight's task, boxed.
type Job = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The sending side, held by the cache. Unbounded on purpose: one job per
/// flight start, and a key has at most one flight per process, so the
/// queue is bounded by the keys being refreshed at once.
pub(crate) struct Starter {
    jobs: mpsc::UnboundedSender<Job>,
}

impl Starter {
    /// Spawns the starter task on the current runtime. It ends when the
    /// cache (the only sender) is dropped.
    pub(crate) fn spawn() -> Self {
        let (jobs, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(async move {
            while let Some(job) = rx.recv().await {
                tokio::spawn(job);
            }
        });
        Starter { jobs }
    }

    /// Runs `job` in a task of its own, spawned by the starter rather than
    /// by the caller.
    pub(crate) fn start(&self, job: impl Future<Output = ()> + Send + 'static) {
        if let Err(mpsc::error::SendError(job)) = self.jobs.send(Box::pin(job)) {
            tokio::spawn(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn runs_every_job_and_falls_back_to_spawning_when_the_starter_is_gone() {
        let starter = Starter::spawn();
        let done = Arc::new(AtomicU32::new(0));
        let (tx, mut rx) = mpsc::unbounded_channel();
        for _ in 0..3 {
            let (done, tx) = (done.clone(), tx.clone());
            starter.start(async move {
                done.fetch_add(1, Ordering::Relaxed);
                tx.send(()).unwrap();
            });
        }
        for _ in 0..3 {
            rx.recv().await.unwrap();
        }
        assert_eq!(done.load(Ordering::Relaxed), 3);

        // A starter whose task is gone: the job still runs.
        let (jobs, closed) = mpsc::unbounded_channel::<Job>();
        drop(closed);
        let orphan = Starter { jobs };
        let tx2 = tx.clone();
        orphan.start(async move { tx2.send(()).unwrap() });
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("the job ran")
            .unwrap();
    }
}
