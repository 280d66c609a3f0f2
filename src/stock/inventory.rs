//! [`Stock`]: one SKU's units, reserved by idempotent orders that never take
//! it below zero.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::shared::server::evalsha;
use crate::shared::telemetry::{self, CallSpan};
use crate::stock::batch::Batch;
use crate::stock::keys::{StockKeys, check_id};
use crate::stock::orders::Orders;
use crate::stock::scripts::{ADD, CANCEL};

/// The stock of one SKU, shared by the whole fleet. Cheap to clone; made
/// with [`Client::stock`].
#[derive(Clone)]
pub struct Stock {
    pub(crate) client: Client,
    pub(crate) sku: Arc<str>,
    /// Built once: the SKU's keys and its group commit in this client
    /// (`batch.rs`), so a reserve writes no key names of its own. A bad
    /// SKU is kept as its error, reported by every call.
    batch: Result<Arc<Batch>, Error>,
    per_user_limit: u32,
}

/// What [`Stock::reserve`] answered. A retry of the same order id gets the
/// same answer.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reservation {
    /// The units are the order's; `remaining` is what was left right after.
    Reserved {
        /// Units left after this reservation.
        remaining: u64,
    },
    /// Not enough units left for this order.
    SoldOut,
    /// The user would hold more than the per-user limit.
    UserLimit,
}

/// What [`Stock::cancel`] did.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancellation {
    /// The units went back; `available` is the stock right after.
    Cancelled {
        /// Units available after the cancellation.
        available: u64,
    },
    /// The order was cancelled before: nothing given back twice.
    AlreadyCancelled,
    /// The order was answered, but not with a reservation: nothing to give.
    NotReserved,
    /// No reservation was ever asked under this order id.
    UnknownOrder,
}

/// The largest quantity one order may ask for: far above any real order,
/// and exact in Lua's numbers.
pub const MAX_QTY: u32 = 1_000_000;

/// The most units one SKU may hold: 2^53 - 1. The scripts compare and
/// report stock as Lua numbers (doubles), exact up to here; above it a
/// count would be rounded.
pub const MAX_AVAILABLE: u64 = (1 << 53) - 1;

fn too_much(what: &str, n: u64) -> Error {
    Error::new(
        ErrorKind::Config,
        format!("{what} {n} units: a SKU holds at most {MAX_AVAILABLE} (MAX_AVAILABLE)"),
    )
}

impl std::fmt::Debug for Stock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stock")
            .field("sku", &self.sku)
            .field("per_user_limit", &self.per_user_limit)
            .finish()
    }
}

impl Stock {
    pub(crate) fn new(client: Client, sku: String) -> Self {
        let sku: Arc<str> = sku.into();
        let batch = StockKeys::new(&sku).map(|keys| {
            client
                .stock_batches
                .of(&client.server, &sku, Arc::new(keys))
        });
        Stock {
            client,
            sku,
            batch,
            per_user_limit: 0,
        }
    }

    /// At most `n` units per user id across all their orders (cancelled
    /// ones given back). Default: no limit. Enforced in the reserve script,
    /// so it holds under any concurrency; 0 means no limit.
    pub fn per_user_limit(mut self, n: u32) -> Self {
        self.per_user_limit = n;
        self
    }

    /// The SKU.
    pub fn sku(&self) -> &str {
        &self.sku
    }

    pub(crate) fn keys(&self) -> Result<&StockKeys, Error> {
        self.batch.as_ref().map(|b| b.keys()).map_err(Clone::clone)
    }

    /// Sets the units available (a new sale, or a correction). Answers
    /// already given stay: an order id reserved before keeps its answer.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for a bad SKU; [`ErrorKind::Config`] for
    /// `n` above [`MAX_AVAILABLE`] (nothing sent); [`ErrorKind::Redis`] if
    /// Redis fails (the stock is then unchanged or set: retry).
    pub async fn set_available(&self, n: u64) -> Result<(), Error> {
        let keys = self.keys()?;
        if n > MAX_AVAILABLE {
            return Err(too_much("setting", n));
        }
        let server = &self.client.server;
        let () = server
            .call(server.raw_command(redis::cmd("SET").arg(&keys.available).arg(n)))
            .await
            .map_err(|e| Error::redis("SET stock", e))?;
        Ok(())
    }

    /// Adds `n` units (a restock); returns the units now available. A SKU
    /// never set starts from 0.
    ///
    /// # Errors
    /// As [`set_available`](Self::set_available), and
    /// [`ErrorKind::Config`] if the stock would go above
    /// [`MAX_AVAILABLE`] (nothing added). Not idempotent: a retry after a
    /// failure whose outcome is unknown may add twice.
    pub async fn add(&self, n: u64) -> Result<u64, Error> {
        let keys = self.keys()?;
        if n > MAX_AVAILABLE {
            return Err(too_much("adding", n));
        }
        let mut cmd = evalsha(&ADD, 1);
        cmd.arg(&keys.available).arg(n).arg(MAX_AVAILABLE);
        let v: i64 = self
            .client
            .server
            .eval(&ADD, &cmd)
            .await
            .map_err(|e| Error::redis("add stock", e))?;
        if v < 0 {
            return Err(too_much("adding", n));
        }
        Ok(v as u64)
    }

    /// The units available now.
    ///
    /// # Errors
    /// [`ErrorKind::NotFound`] if the SKU's stock was never set;
    /// [`ErrorKind::Redis`] if Redis fails.
    pub async fn available(&self) -> Result<u64, Error> {
        let keys = self.keys()?;
        let server = &self.client.server;
        let v: Option<i64> = server
            .call(server.raw_command(redis::cmd("GET").arg(&keys.available)))
            .await
            .map_err(|e| Error::redis("GET stock", e))?;
        v.map(|v| v.max(0) as u64).ok_or_else(|| self.not_found())
    }

    fn not_found(&self) -> Error {
        Error::new(
            ErrorKind::NotFound,
            format!("the stock of SKU {:?} was never set", self.sku),
        )
    }

    /// Reserves `qty` units for order `order_id` of user `user_id`, in one
    /// atomic step that also writes the order to the SKU's order stream
    /// ([`orders`](Self::orders)). Idempotent by `order_id`: a retry (after
    /// a timeout, say) returns the first answer, whatever happened since.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for an empty or oversized id or SKU, and
    /// [`ErrorKind::Config`] for a quantity of 0, below 0 or above [`MAX_QTY`]:
    /// nothing is sent. [`ErrorKind::NotFound`] if the SKU's stock was
    /// never set (nothing is taken or recorded). [`ErrorKind::Redis`] if
    /// Redis fails or does not answer in time: the reservation may or may
    /// not have been made, so retry with the **same** order id, which is
    /// safe.
    ///
    /// # Cancel safety
    /// Dropping the future leaves the reservation made or not, as Redis
    /// got it; a retry with the same order id tells which.
    pub async fn reserve(
        &self,
        order_id: &str,
        user_id: &str,
        qty: impl TryInto<u32>,
    ) -> Result<Reservation, Error> {
        let span = CallSpan::reserve(&self.sku);
        let started = std::time::Instant::now();
        let result = span
            .instrument(self.reserve_inner(order_id, user_id, qty))
            .await;
        let outcome = match &result {
            Ok(Reservation::Reserved { .. }) => "reserved",
            Ok(Reservation::SoldOut) => "sold_out",
            Ok(Reservation::UserLimit) => "user_limit",
            Err(_) => "error",
        };
        telemetry::reserve(&span, outcome, started.elapsed());
        result
    }

    async fn reserve_inner(
        &self,
        order_id: &str,
        user_id: &str,
        qty: impl TryInto<u32>,
    ) -> Result<Reservation, Error> {
        // A bad SKU is its error, before the ids are looked at.
        let batch = self.batch.as_ref().map_err(Clone::clone)?;
        check_id("order id", order_id)?;
        check_id("user id", user_id)?;
        // Any integer type is taken, so that a negative or huge quantity
        // from a request is this typed error rather than a cast gone wrong.
        let qty = match qty.try_into() {
            Ok(q) if (1..=MAX_QTY).contains(&q) => q,
            _ => {
                return Err(Error::new(
                    ErrorKind::Config,
                    format!("quantity must be 1 to {MAX_QTY}"),
                ));
            }
        };
        let answer = batch
            .reserve(order_id, user_id, qty, self.per_user_limit)
            .await?;
        parse_reservation(&answer).ok_or_else(|| {
            if answer == "N" {
                self.not_found()
            } else {
                Error::new(
                    ErrorKind::Redis,
                    format!("unexpected answer from the reserve script: {answer:?}"),
                )
            }
        })
    }

    /// Cancels a reserved order: its units go back to the stock once (a
    /// second cancel gives nothing back), its user's count drops, and a
    /// cancellation is written to the order stream.
    ///
    /// # Errors
    /// As [`reserve`](Self::reserve); a retry is safe.
    pub async fn cancel(&self, order_id: &str) -> Result<Cancellation, Error> {
        let keys = self.keys()?;
        check_id("order id", order_id)?;
        let mut cmd = evalsha(&CANCEL, 5);
        cmd.arg(&keys.available)
            .arg(&keys.answers)
            .arg(&keys.users)
            .arg(&keys.cancelled)
            .arg(&keys.orders.stream)
            .arg(order_id)
            .arg(&*self.sku);
        let answer: String = self
            .client
            .server
            .eval(&CANCEL, &cmd)
            .await
            .map_err(|e| Error::redis("cancel", e))?;
        match answer.as_str() {
            "A" => Ok(Cancellation::AlreadyCancelled),
            "X" => Ok(Cancellation::NotReserved),
            "N" => Ok(Cancellation::UnknownOrder),
            other => other
                .strip_prefix("C|")
                .and_then(|n| n.parse::<i64>().ok())
                .map(|n| Cancellation::Cancelled {
                    available: n.max(0) as u64,
                })
                .ok_or_else(|| {
                    Error::new(
                        ErrorKind::Redis,
                        format!("unexpected answer from the cancel script: {answer:?}"),
                    )
                }),
        }
    }

    /// Warms the stock from the database once for the whole fleet, at the
    /// start of a sale: the first caller takes the lock
    /// `stock-warm:<sku>` (a [`Lock`](crate::Lock), so the rest wait by
    /// notice, not by polling), runs `loader` and sets the stock with
    /// `SET NX`; every other caller, in any process, waits for it and reads
    /// the result. Stock already set is left alone (the loader does not
    /// run). This is the rebuild-lock pattern of the cache, for a value
    /// that must not be recomputed once a sale has started taking from it.
    ///
    /// # Errors
    /// [`ErrorKind::Loader`] with the loader's error (nothing set; another
    /// caller may try again); [`ErrorKind::LockTimeout`] if the warm-up
    /// holder takes longer than `wait`; [`ErrorKind::Redis`].
    pub async fn warm<F, Fut, E>(&self, wait: Duration, loader: F) -> Result<u64, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<u64, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        if let Ok(n) = self.available().await {
            return Ok(n);
        }
        let guard = self
            .client
            .lock(format!("stock-warm:{}", self.sku))
            .acquire_timeout(wait)
            .await?;
        // Somebody may have warmed it while we waited.
        if let Ok(n) = self.available().await {
            guard.release().await?;
            return Ok(n);
        }
        let n = loader()
            .await
            .map_err(|e| Error::with_source(ErrorKind::Loader, "stock warm-up loader failed", e))?;
        if n > MAX_AVAILABLE {
            guard.release().await?;
            return Err(too_much("warming with", n));
        }
        let keys = self.keys()?;
        let server = &self.client.server;
        let _: Option<String> = server
            .call(server.raw_command(redis::cmd("SET").arg(&keys.available).arg(n).arg("NX")))
            .await
            .map_err(|e| Error::redis("SET NX stock", e))?;
        let n = self.available().await?;
        guard.release().await?;
        Ok(n)
    }

    /// The SKU's order stream: one entry per reservation and cancellation,
    /// read by consumer groups that acknowledge what they have stored.
    pub fn orders(&self) -> Orders {
        Orders::new(self.clone())
    }
}

fn parse_reservation(answer: &str) -> Option<Reservation> {
    match answer {
        "S" => Some(Reservation::SoldOut),
        "U" => Some(Reservation::UserLimit),
        other => {
            let rest = other.strip_prefix("R|")?;
            let remaining = rest.split('|').next()?.parse::<i64>().ok()?;
            Some(Reservation::Reserved {
                remaining: remaining.max(0) as u64,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse() {
        assert_eq!(
            parse_reservation("R|7|1|user|with|bars"),
            Some(Reservation::Reserved { remaining: 7 })
        );
        assert_eq!(parse_reservation("S"), Some(Reservation::SoldOut));
        assert_eq!(parse_reservation("U"), Some(Reservation::UserLimit));
        assert_eq!(parse_reservation("N"), None);
        assert_eq!(parse_reservation("R|x"), None);
    }
}
