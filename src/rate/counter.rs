//! [`Counter`]: a fleet-wide integer on the client's Redis, plain or per
//! fixed window of time.

use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::rate::keys::counter_key;
use crate::rate::scripts::{WINDOW_GET, WINDOW_INCR};

/// The longest window a [`Counter::window`] takes: 2^40 ms, about 34
/// years (window ends stay exact in Lua's doubles).
const MAX_WINDOW_MS: u64 = 1 << 40;

/// A counter shared by every process of the fleet, named by a string; make
/// it with [`Client::counter`](crate::Client::counter). Cheap to clone;
/// nothing is sent until it is used. A bad name (empty, over
/// [`MAX_COUNTER_NAME_LEN`](crate::MAX_COUNTER_NAME_LEN) bytes, or holding
/// `{` or `}`) is reported by [`incr`](Self::incr) and [`get`](Self::get),
/// not here.
///
/// # Plain or windowed
///
/// A plain counter (`client.counter("sold")`) is one integer that lives
/// until deleted: units sold, stock taken. A windowed counter
/// (`client.counter("orders").window(Duration::from_secs(1))`) counts per
/// **fixed window**: time is cut into windows of that length aligned to
/// the Unix epoch (a 1 s window runs from one whole second to the next, a
/// 1 min window from one whole minute to the next, UTC), by the Redis
/// server's clock. [`incr`](Self::incr) adds to the current window's
/// count, [`get`](Self::get) reads it, and a new window starts from 0. The
/// key expires when its window ends, so a counter nobody touches leaves
/// nothing behind.
///
/// The add and the expiry are one script on Redis. The tutorial pattern,
/// `INCR k` then `EXPIRE k 60` as two calls, is replaced because the second
/// call can be lost (a crash, a timeout or a dropped connection between
/// the two): the counter then never expires, and a per-minute limit built
/// on it becomes a lifetime one (see the wing's docs, `rate/mod.rs`).
///
/// The edge of fixed windows: a limit of `n` per window checked with a
/// windowed counter admits `n` at the very end of one window and `n` more
/// at the start of the next, so a burst across a boundary can reach 2x the
/// limit within one window's length. To hold a rate in every interval, use
/// a [`RateLimiter`](crate::RateLimiter).
///
/// A plain and a windowed counter of one name are different counters, and
/// so are windowed counters of one name with different windows.
#[derive(Clone, Debug)]
pub struct Counter {
    client: Client,
    name: Arc<str>,
    window: Option<Duration>,
}

impl Counter {
    pub(crate) fn new(client: Client, name: String) -> Self {
        Counter {
            client,
            name: name.into(),
            window: None,
        }
    }

    /// Makes this a windowed counter: [`incr`](Self::incr) and
    /// [`get`](Self::get) apply to the current fixed window of this length
    /// (aligned to the Unix epoch, by Redis's clock; see the type's docs).
    /// A whole number of milliseconds, from 1 ms to 2^40 ms (about 34
    /// years); anything else is an [`ErrorKind::Config`] error from `incr`
    /// and `get`.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// The counter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Adds `n` (which may be negative) and returns the count after it: of
    /// the current window for a windowed counter (a new window starts from
    /// 0, so the first `incr(n)` of a window returns `n`). Atomic across
    /// the fleet: concurrent adds are all counted.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for a bad name, [`ErrorKind::Config`] for
    /// a bad window (nothing is sent); [`ErrorKind::Redis`] if Redis fails,
    /// is down (the call is bounded by the client's `redis_timeout`) or
    /// refuses the add because the count would overflow an `i64`. When the
    /// call timed out, the add may or may not have been applied.
    pub async fn incr(&self, n: i64) -> Result<i64, Error> {
        let server = &self.client.server;
        match self.window_ms()? {
            None => {
                let key = counter_key(&self.name, None)?;
                server
                    .call(server.raw_command(redis::cmd("INCRBY").arg(&key).arg(n)))
                    .await
                    .map_err(|e| Error::redis("counter incr", e))
            }
            Some(ms) => {
                let key = counter_key(&self.name, Some(ms))?;
                let mut inv = WINDOW_INCR.prepare_invoke();
                inv.key(&key).arg(ms).arg(n);
                server
                    .script(&inv)
                    .await
                    .map_err(|e| Error::redis("counter incr", e))
            }
        }
    }

    /// The count: 0 if the counter was never added to (or, windowed,
    /// nothing was added in the current window). Writes nothing.
    ///
    /// # Errors
    /// As [`incr`](Self::incr), less the overflow.
    pub async fn get(&self) -> Result<i64, Error> {
        let server = &self.client.server;
        match self.window_ms()? {
            None => {
                let key = counter_key(&self.name, None)?;
                let n: Option<i64> = server
                    .call(server.raw_command(redis::cmd("GET").arg(&key)))
                    .await
                    .map_err(|e| Error::redis("counter get", e))?;
                Ok(n.unwrap_or(0))
            }
            Some(ms) => {
                let key = counter_key(&self.name, Some(ms))?;
                let mut inv = WINDOW_GET.prepare_invoke();
                inv.key(&key).arg(ms);
                server
                    .script(&inv)
                    .await
                    .map_err(|e| Error::redis("counter get", e))
            }
        }
    }

    /// The window in whole ms, checked; `None` for a plain counter.
    fn window_ms(&self) -> Result<Option<u64>, Error> {
        let Some(window) = self.window else {
            return Ok(None);
        };
        let ms = window.as_millis();
        if ms == 0 || ms > u128::from(MAX_WINDOW_MS) || window.subsec_nanos() % 1_000_000 != 0 {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "counter window is {window:?}; it must be a whole number of milliseconds \
                     from 1 ms to {MAX_WINDOW_MS} ms"
                ),
            ));
        }
        Ok(Some(ms as u64))
    }
}
