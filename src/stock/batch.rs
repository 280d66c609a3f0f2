//! Group commit for [`Stock::reserve`](crate::Stock::reserve): the
//! concurrent reservations of one SKU in one process go to Redis together,
//! as one call of the reserve script with every order in it.
//!
//! Why: in a flash sale thousands of buyers hit one SKU at once, and the
//! SKU's keys live on one Redis (one Cluster slot), whose single thread is
//! the limit. Per call, Redis pays to read, parse and answer the command
//! and to enter the script (~2.5 µs of the ~8 µs a reservation costs it);
//! in a batch that is paid once for all of its orders. Each order is still
//! one atomic step with its own answer, taken in the order the calls came:
//! the batch changes nothing a caller can see but the throughput.
//!
//! How: a caller queues its order and, if no flush is running for the SKU,
//! starts one (a task, so that no caller's cancellation can strand the
//! others' orders). The flush sends what is queued (at most [`MAX_BATCH`]),
//! hands each caller its answer, and goes on while orders keep coming; an
//! order that arrives while a batch is in flight waits for the next one.
//! Alone, a call is a batch of one: one task hand-off more, no waiting.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::error::{Error, ErrorKind};
use crate::shared::server::{Server, evalsha};
use crate::stock::keys::StockKeys;
use crate::stock::scripts::RESERVE;

/// The most orders in one script call: the script holds Redis for about
/// 5 µs per order, so a full batch is ~0.6 ms, and the argument list stays
/// small.
pub(crate) const MAX_BATCH: usize = 128;

/// Batches of one SKU in flight at once. One alone leaves Redis idle while
/// its answer travels back and the next batch is formed; two overlap those
/// (on one connection, so Redis still runs them in the order sent).
/// Measured with 64 tasks on one SKU: 2 beat 1, 4 and 8 (with batches of
/// 8 to 128).
const MAX_FLUSHERS: usize = 2;

/// SKUs whose batch a client remembers; a SKU evicted while in use gets a
/// second batch (still correct: each order is atomic on its own).
const REMEMBERED: u64 = 10_000;

/// One order waiting for its batch.
struct Pending {
    order: Box<str>,
    user: Box<str>,
    qty: u32,
    limit: u32,
    answer: oneshot::Sender<Result<String, Error>>,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    /// Flush tasks running (each takes whatever is queued).
    flushers: usize,
}

/// The reservations of one SKU waiting to go to Redis.
pub(crate) struct Batch {
    server: Arc<Server>,
    keys: Arc<StockKeys>,
    sku: Arc<str>,
    queue: Mutex<Queue>,
}

/// A client's batches, by SKU.
pub(crate) struct Batches {
    by_sku: moka::sync::Cache<Arc<str>, Arc<Batch>>,
}

impl Default for Batches {
    fn default() -> Self {
        Batches {
            by_sku: moka::sync::Cache::new(REMEMBERED),
        }
    }
}

impl Batches {
    /// The batch of `sku` on `server`.
    pub(crate) fn of(
        &self,
        server: &Arc<Server>,
        sku: &Arc<str>,
        keys: Arc<StockKeys>,
    ) -> Arc<Batch> {
        self.by_sku.get_with_by_ref(sku, || {
            Arc::new(Batch {
                server: server.clone(),
                keys,
                sku: sku.clone(),
                queue: Mutex::new(Queue::default()),
            })
        })
    }
}

/// A flush task that is dropped before it ends (its runtime shut down)
/// fails what is queued and lets the next call start a flush again.
struct Running {
    batch: Arc<Batch>,
    finished: bool,
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        let mut queue = self.batch.queue.lock().unwrap_or_else(|e| e.into_inner());
        queue.flushers -= 1;
        for p in queue.pending.drain(..) {
            let _ = p.answer.send(Err(Error::new(
                ErrorKind::Redis,
                "reserve: the batch was dropped (its runtime shut down)",
            )));
        }
    }
}

impl Batch {
    /// The SKU's keys.
    pub(crate) fn keys(&self) -> &StockKeys {
        &self.keys
    }

    /// Reserves through the SKU's next batch: the script's answer for this
    /// order (`R|…`, `S`, `U` or `N`).
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] when the batch's call failed (the same error
    /// for every order in it: each may or may not have been made, and a
    /// retry with the same order id tells which).
    pub(crate) async fn reserve(
        self: &Arc<Self>,
        order: &str,
        user: &str,
        qty: u32,
        limit: u32,
    ) -> Result<String, Error> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut queue = self.queue.lock().expect("stock batch lock");
            queue.pending.push_back(Pending {
                order: order.into(),
                user: user.into(),
                qty,
                limit,
                answer,
            });
            let start = queue.flushers < MAX_FLUSHERS;
            if start {
                queue.flushers += 1;
            }
            start
        };
        if start {
            tokio::spawn(self.clone().flush());
        }
        answered.await.unwrap_or_else(|_| {
            Err(Error::new(
                ErrorKind::Redis,
                "reserve: the batch was dropped (its runtime shut down)",
            ))
        })
    }

    /// Sends batches until none is queued.
    async fn flush(self: Arc<Self>) {
        let mut running = Running {
            batch: self.clone(),
            finished: false,
        };
        loop {
            let batch: Vec<Pending> = {
                let mut queue = self.queue.lock().expect("stock batch lock");
                if queue.pending.is_empty() {
                    queue.flushers -= 1;
                    running.finished = true;
                    return;
                }
                let n = queue.pending.len().min(MAX_BATCH);
                queue.pending.drain(..n).collect()
            };
            match self.send(&batch).await {
                Ok(answers) => {
                    for (p, a) in batch.into_iter().zip(answers) {
                        let _ = p.answer.send(Ok(a));
                    }
                }
                Err(e) => {
                    for p in batch {
                        let _ = p.answer.send(Err(e.clone()));
                    }
                }
            }
        }
    }

    async fn send(&self, batch: &[Pending]) -> Result<Vec<String>, Error> {
        let keys = &self.keys;
        let mut cmd = evalsha(&RESERVE, 4);
        cmd.arg(&keys.available)
            .arg(&keys.answers)
            .arg(&keys.users)
            .arg(&keys.orders.stream)
            .arg(&*self.sku);
        for p in batch {
            cmd.arg(&*p.order).arg(&*p.user).arg(p.qty).arg(p.limit);
        }
        let answers: Vec<String> = self
            .server
            .eval(&RESERVE, &cmd)
            .await
            .map_err(|e| Error::redis("reserve", e))?;
        if answers.len() != batch.len() {
            return Err(Error::new(
                ErrorKind::Redis,
                format!(
                    "the reserve script answered {} of {} orders",
                    answers.len(),
                    batch.len()
                ),
            ));
        }
        Ok(answers)
    }
}
