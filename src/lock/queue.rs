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
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, Semaphore};

use crate::shared::link::{Link, Listener, Listening};

/// Every lock name some task of this process acquires or holds.
#[derive(Default)]
pub(crate) struct Queues {
    map: Mutex<HashMap<Arc<str>, Arc<NameQueue>>>,
}

pub(crate) struct NameQueue {
    /// One permit: the head of the local queue, or the local holder.
    pub(crate) permit: Arc<Semaphore>,
    pub(crate) wake: Arc<Wake>,
    /// Our place on the lock's channel, once the head has had to wait (an
    /// uncontended acquire subscribes to nothing). One per connection: a
    /// Redlock listens on every master.
    listening: tokio::sync::Mutex<Vec<Listening>>,
}

/// Wakes the head of the queue: on a release notice, and when a connection
/// is lost or replaced (a notice may have been lost with it).
#[derive(Default)]
pub(crate) struct Wake {
    pub(crate) notify: Notify,
}

impl Listener for Wake {
    fn message(&self, _payload: &[u8], _serial: u64) {
        self.notify.notify_waiters();
    }

    fn lost(&self) {
        self.notify.notify_waiters();
    }

    fn reconnected(&self) {
        self.notify.notify_waiters();
    }
}

/// A task's interest in one name; the name's state lives while any exists.
pub(crate) struct QueueRef {
    queues: Arc<Queues>,
    name: Arc<str>,
    pub(crate) queue: Arc<NameQueue>,
}

impl Queues {
    pub(crate) fn enter(self: &Arc<Self>, name: &str) -> QueueRef {
        let mut map = self.map.lock().expect("lock queues");
        let (name, queue) = match map.get_key_value(name) {
            Some((n, q)) => (n.clone(), q.clone()),
            None => {
                let name: Arc<str> = name.into();
                let queue = Arc::new(NameQueue {
                    permit: Arc::new(Semaphore::new(1)),
                    wake: Arc::default(),
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
    pub(crate) async fn listen(&self, links: &[&Arc<Link>], channel: &str) -> bool {
        let mut listening = self.listening.lock().await;
        if !listening.is_empty() {
            return false;
        }
        for link in links {
            // An error (no connection) is fine: the next connection
            // subscribes, and the fallback poll covers the gap.
            let (place, _) = link.listen(channel, self.wake.clone()).await;
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
        let a = queues.enter("x");
        let b = queues.enter("x");
        assert!(Arc::ptr_eq(&a.queue, &b.queue));
        drop(a);
        assert_eq!(queues.len(), 1);
        drop(b);
        assert_eq!(queues.len(), 0);
    }
}
