//! The waiters of one lock name inside one process.
//!
//! They queue on a one-permit semaphore (Tokio's is FIFO), so acquirers in
//! one process are served in the order they asked, and only the one at the
//! head talks to Redis: a hundred local waiters are one contender, not a
//! hundred pollers. The head waits for the release notice of the lock's
//! channel on the client's shared connection ([`Wake`]); the channel is
//! subscribed while anyone in the process acquires or holds that name, and
//! left when the last one is done.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::error::Error;
use crate::lock::lease::Renewer;
use crate::shared::link::{Link, Listener, Listening};

/// The first and the longest interval of a waiter's fallback poll
/// (notices normally wake it long before).
const POLL_MIN: Duration = Duration::from_millis(20);
pub(crate) const POLL_MAX: Duration = Duration::from_millis(250);

/// This process's turn at a name: the head of its queue. A guard keeps it
/// until its lock is released in Redis, so the next local waiter starts
/// only then.
pub(crate) struct Turn {
    /// Holds the name's one permit (taken and forgotten; given back when
    /// the turn is dropped).
    queue: QueueRef,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.queue.queue.permit.add_permits(1);
    }
}

impl Turn {
    /// The renewer of the leases of this client (or Redlock).
    pub(crate) fn renewer(&self) -> &Arc<Renewer> {
        &self.queue.queues.renewer
    }
}

/// What one attempt at the lock in Redis found.
pub(crate) enum Attempt<T> {
    Taken(T),
    /// Held by another for `pttl` more (zero: nobody holds it, but it was
    /// not granted either: a Redlock vote that split).
    Held {
        pttl: Duration,
    },
}

/// How a waiter paces its attempts.
pub(crate) struct Pacing<'a> {
    /// The connections to hear the release notice on (one; a Redlock's
    /// every master).
    pub(crate) links: &'a [&'a Arc<Link>],
    pub(crate) channel: &'a str,
    /// Add a random 1-20 ms to each wait, so that competing Redlock
    /// clients do not keep splitting the vote.
    pub(crate) jitter: bool,
}

impl QueueRef {
    /// The turn, if nobody in this process holds or awaits the name.
    pub(crate) fn try_turn(self) -> Option<Turn> {
        self.queue.permit.try_acquire().ok()?.forget();
        Some(Turn { queue: self })
    }

    /// Waits for this process's turn (FIFO), then for the lock: `attempt`
    /// until it is taken. Between attempts the waiter sleeps until the
    /// release notice (subscribed, then re-checked, before the first sleep:
    /// no lost wake-up), the holder's lease running out (a crashed holder),
    /// or the fallback poll (20 ms doubling to 250 ms), whichever is first;
    /// past `deadline`, `timed_out()`.
    pub(crate) async fn take_in_turn<T, F, Fut>(
        self,
        deadline: Option<Instant>,
        pacing: Pacing<'_>,
        timed_out: impl Fn() -> Error,
        mut attempt: F,
    ) -> Result<(T, Turn), Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Attempt<T>, Error>>,
    {
        {
            let permit = self.queue.permit.acquire();
            match deadline {
                Some(d) => tokio::time::timeout_at(d, permit)
                    .await
                    .map_err(|_| timed_out())?,
                None => permit.await,
            }
            .expect("the queue's semaphore is never closed")
            .forget();
        }
        // From here on the permit is ours: a `Turn` gives it back, also
        // when this future is dropped or fails.
        let turn = Turn { queue: self };
        let queue = turn.queue.queue.clone();
        let mut poll = POLL_MIN;
        loop {
            let wake = queue.notify.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            let pttl = match attempt().await? {
                Attempt::Taken(taken) => return Ok((taken, turn)),
                Attempt::Held { pttl } => pttl,
            };
            // The waiting path is boxed: an uncontended acquisition never
            // takes it, and laid out inline its subscription and timers
            // made every acquisition's future (moved, and zeroed, on each
            // call) kilobytes larger.
            if Box::pin(queue.listen(pacing.links, pacing.channel)).await {
                continue;
            }
            let jitter = if pacing.jitter {
                Duration::from_millis(fastrand::u64(1..=20))
            } else {
                Duration::ZERO
            };
            // A split vote (pttl zero) is retried after the jitter alone.
            let wait = if pttl.is_zero() && pacing.jitter {
                jitter
            } else {
                (pttl + Duration::from_millis(1)).min(poll) + jitter
            };
            poll = (poll * 2).min(POLL_MAX);
            let deadline = deadline.unwrap_or(Instant::now() + Duration::from_secs(86_400 * 365));
            let late = Box::pin(async {
                tokio::select! {
                    _ = &mut wake => false,
                    _ = tokio::time::sleep(wait) => false,
                    _ = tokio::time::sleep_until(deadline) => true,
                }
            })
            .await;
            if late {
                return Err(timed_out());
            }
        }
    }
}

/// Every lock name some task of this process acquires or holds, and the
/// renewer of their leases.
#[derive(Default)]
pub(crate) struct Queues {
    /// foldhash (seeded per process), as the cache's L1: SipHash cost more
    /// than the rest of the map's work for a short name.
    map: Mutex<HashMap<Arc<str>, Arc<NameQueue>, foldhash::fast::RandomState>>,
    renewer: Arc<Renewer>,
}

impl Drop for Queues {
    fn drop(&mut self) {
        // Every guard keeps its client's queues: none is left to renew.
        self.renewer.close();
    }
}

pub(crate) struct NameQueue {
    /// One permit: the head of the local queue, or the local holder.
    permit: Semaphore,
    /// Wakes the head of the queue (see [`Wake`]).
    notify: Notify,
    /// Our place on the lock's channel, once the head has had to wait (an
    /// uncontended acquire subscribes to nothing). One per connection: a
    /// Redlock listens on every master.
    listening: tokio::sync::Mutex<Vec<Listening>>,
}

/// Wakes the head of the queue: on a release notice, and when a connection
/// is lost or replaced (a notice may have been lost with it). Made only
/// when the head first has to wait (an uncontended acquire allocates none),
/// and weak: the router keeps it while subscribed, and must not keep the
/// queue (whose drop is what unsubscribes).
struct Wake(Weak<NameQueue>);

impl Wake {
    fn wake(&self) {
        if let Some(queue) = self.0.upgrade() {
            queue.notify.notify_waiters();
        }
    }
}

impl Listener for Wake {
    fn message(&self, _payload: &[u8], _serial: u64) {
        self.wake();
    }

    fn lost(&self) {
        self.wake();
    }

    fn reconnected(&self) {
        self.wake();
    }
}

/// A task's interest in one name; the name's state lives while any exists.
pub(crate) struct QueueRef {
    queues: Arc<Queues>,
    name: Arc<str>,
    pub(crate) queue: Arc<NameQueue>,
}

impl Queues {
    /// `name` is the lock handle's own: entering clones it, no new string.
    pub(crate) fn enter(self: &Arc<Self>, name: &Arc<str>) -> QueueRef {
        let mut map = self.map.lock().expect("lock queues");
        let (name, queue) = match map.get_key_value(&**name) {
            Some((n, q)) => (n.clone(), q.clone()),
            None => {
                let name = name.clone();
                let queue = Arc::new(NameQueue {
                    permit: Semaphore::new(1),
                    notify: Notify::new(),
                    listening: tokio::sync::Mutex::new(Vec::new()),
                });
                map.insert(name.clone(), queue.clone());
                (name, queue)
            }
        };
        QueueRef {
            queues: self.clone(),
            name,
            queue,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().expect("lock queues").len()
    }
}

impl Drop for QueueRef {
    fn drop(&mut self) {
        let mut map = self.queues.map.lock().expect("lock queues");
        // The map holds one reference and we hold one: nobody else is here.
        if Arc::strong_count(&self.queue) == 2 {
            map.remove(&self.name);
        }
    }
}

impl NameQueue {
    /// Subscribes to `channel` on each of `links` unless already done; true
    /// if it was done now (the caller must then re-check the lock before
    /// waiting: a release between its last check and the subscription
    /// would otherwise be missed).
    pub(crate) async fn listen(self: &Arc<Self>, links: &[&Arc<Link>], channel: &str) -> bool {
        let mut listening = self.listening.lock().await;
        if !listening.is_empty() {
            return false;
        }
        let wake = Arc::new(Wake(Arc::downgrade(self)));
        for link in links {
            // An error (no connection) is fine: the next connection
            // subscribes, and the fallback poll covers the gap.
            let (place, _) = link.listen(channel, wake.clone()).await;
            listening.push(place);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_lives_while_someone_is_interested() {
        let queues = Arc::new(Queues::default());
        let x: Arc<str> = "x".into();
        let a = queues.enter(&x);
        let b = queues.enter(&x);
        assert!(Arc::ptr_eq(&a.queue, &b.queue));
        drop(a);
        assert_eq!(queues.len(), 1);
        drop(b);
        assert_eq!(queues.len(), 0);
    }
}
