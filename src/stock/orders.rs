//! A SKU's order stream, read by consumer groups (`shared/stream.rs`): an
//! order is acknowledged only after the consumer has stored it, so a
//! consumer that crashes loses nothing.

use std::time::Duration;

use crate::error::Error;
#[cfg(doc)]
use crate::error::ErrorKind;
use crate::shared::stream::{self, Acker, Entry, GroupReader, ReadOptions};
use crate::stock::inventory::Stock;
use crate::stock::keys::StockKeys;

/// The order stream of one SKU; made with [`Stock::orders`]. Options are
/// set here, then [`consumer`](Self::consumer) joins a group.
#[derive(Clone, Debug)]
pub struct Orders {
    stock: Stock,
    options: ReadOptions,
}

/// One consumer of a group on an order stream. Not `Clone`: each task that
/// consumes should be its own consumer (its own name).
pub struct OrderConsumer {
    reader: GroupReader,
    acker: Acker,
}

impl std::fmt::Debug for OrderConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderConsumer").finish_non_exhaustive()
    }
}

/// What an order-stream entry records.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrderEvent {
    /// Units were reserved for the order.
    Reserved,
    /// The order was cancelled and its units given back.
    Cancelled,
}

/// One order handed to a consumer. Store it, then [`ack`](Self::ack) it; an
/// order not acknowledged is delivered again (to this consumer after a
/// restart, or to another once it has been idle for `claim_after`), so
/// storing must be idempotent (a `UNIQUE` order id).
#[derive(Debug)]
#[must_use = "an order not acknowledged is delivered again"]
pub struct Delivery {
    id: String,
    event: OrderEvent,
    order_id: String,
    user_id: String,
    qty: u32,
    sku: String,
    deliveries: u32,
    acker: Acker,
}

impl Orders {
    pub(crate) fn new(stock: Stock) -> Self {
        Orders {
            stock,
            options: ReadOptions::default(),
        }
    }

    /// How long an order handed to a consumer may stay unacknowledged
    /// before another consumer of the group takes it over. Default 30 s:
    /// longer than storing an order ever takes, so a slow consumer is not
    /// raced by a second one; a crashed consumer's orders wait that long.
    pub fn claim_after(mut self, idle: Duration) -> Self {
        self.options.claim_after = idle;
        self
    }

    /// After this many deliveries without an acknowledgement, an order is
    /// moved to the dead-letter stream (`hc:st:{<sku>}:d`) with the reason,
    /// rather than crash consumers forever. Default 5.
    pub fn max_deliveries(mut self, n: u32) -> Self {
        self.options.max_deliveries = n;
        self
    }

    /// How long one wait for new orders lasts before the consumer checks
    /// for orders to take over. Default 1 s.
    pub fn block(mut self, block: Duration) -> Self {
        self.options.block = block.max(Duration::from_millis(1));
        self
    }

    fn keys(&self) -> Result<&StockKeys, Error> {
        self.stock.keys()
    }

    /// Joins consumer group `group` as `name` (creating the group, from the
    /// stream's first entry, if it does not exist). Consumers of one group
    /// share the orders; each group gets every order.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for an empty or oversized name or SKU;
    /// [`ErrorKind::Redis`] if Redis fails.
    pub async fn consumer(&self, group: &str, name: &str) -> Result<OrderConsumer, Error> {
        let keys = self.keys()?;
        let reader = GroupReader::join(
            self.stock.client.server.clone(),
            keys.orders.clone(),
            group,
            name,
            self.options,
        )
        .await?;
        let acker = reader.acker();
        Ok(OrderConsumer { reader, acker })
    }

    /// Removes every order that every group has acknowledged; never one
    /// some group still needs. Returns how many were removed.
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] if Redis fails.
    pub async fn trim(&self) -> Result<u64, Error> {
        let keys = self.keys()?;
        stream::trim(&self.stock.client.server, &keys.orders.stream).await
    }
}

impl OrderConsumer {
    /// The next order: one of ours not yet acknowledged (after a restart),
    /// one taken over from a consumer that stopped, or a new one (waiting
    /// for it as long as it takes; Redis wakes the wait when one comes).
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] if Redis fails: call again; nothing is lost.
    ///
    /// # Cancel safety
    /// Orders fetched but not yet returned are delivered again after
    /// `claim_after` (or at once by a consumer of the same name).
    pub async fn next(&mut self) -> Result<Delivery, Error> {
        loop {
            let entry = self.reader.next().await?;
            if let Some(d) = self.delivery(entry).await? {
                return Ok(d);
            }
        }
    }

    /// [`next`](Self::next), or `Ok(None)` if no order comes within
    /// `timeout`.
    ///
    /// # Errors
    /// As [`next`](Self::next).
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Delivery>, Error> {
        let Some(deadline) = tokio::time::Instant::now().checked_add(timeout) else {
            // Past the end of the clock: no deadline.
            return self.next().await.map(Some);
        };
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(entry) = self.reader.next_timeout(left).await? else {
                return Ok(None);
            };
            if let Some(d) = self.delivery(entry).await? {
                return Ok(Some(d));
            }
        }
    }

    /// An entry as a delivery; one that is not an order (written by hand,
    /// or corrupt) goes to the dead letters at once.
    async fn delivery(&self, entry: Entry) -> Result<Option<Delivery>, Error> {
        let event = match entry.text("kind").as_deref() {
            Some("reserved") => Some(OrderEvent::Reserved),
            Some("cancelled") => Some(OrderEvent::Cancelled),
            _ => None,
        };
        let parsed = event.and_then(|event| {
            Some(Delivery {
                event,
                order_id: entry.text("order")?,
                user_id: entry.text("user")?,
                qty: entry.text("qty")?.parse().ok()?,
                sku: entry.text("sku")?,
                deliveries: entry.deliveries,
                id: entry.id.clone(),
                acker: self.acker.clone(),
            })
        });
        if parsed.is_none() {
            self.reader
                .dead_letter_now(&entry.id, "not an order entry")
                .await?;
        }
        Ok(parsed)
    }
}

impl Delivery {
    /// Whether the order was reserved or cancelled.
    pub fn event(&self) -> OrderEvent {
        self.event
    }

    /// The order id given to [`Stock::reserve`].
    pub fn order_id(&self) -> &str {
        &self.order_id
    }

    /// The user id given to [`Stock::reserve`].
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// Units reserved (or given back).
    pub fn qty(&self) -> u32 {
        self.qty
    }

    /// The SKU.
    pub fn sku(&self) -> &str {
        &self.sku
    }

    /// How many times this entry has been delivered, this time included:
    /// above 1, an earlier consumer may already have stored it.
    pub fn deliveries(&self) -> u32 {
        self.deliveries
    }

    /// The entry's id in the stream.
    pub fn stream_id(&self) -> &str {
        &self.id
    }

    /// Acknowledges the order: it is stored, and will not be delivered
    /// again. `Ok(false)` if it was no longer pending (taken over and
    /// acknowledged by another consumer, or dead-lettered).
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] if Redis fails: the order will be delivered
    /// again, so storing must be idempotent.
    pub async fn ack(self) -> Result<bool, Error> {
        self.acker.ack(&self.id).await
    }
}
