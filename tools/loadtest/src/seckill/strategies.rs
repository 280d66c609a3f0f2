//! The four ways of selling flash-sale stock that `--scenario seckill`
//! compares. Each attempt is one buyer asking for `qty` units under its own
//! order id; what counts is the answer the buyer gets (sold or not) and,
//! for a sale, that the order is persisted.
//!
//! The three baselines persist a sale the way the tutorials do: `LPUSH` of
//! the order id to a list after the decrement succeeded, a second command.
//! herdcache's `Stock::reserve` writes the order to the SKU's stream in the
//! same script as the decrement; the parent process's consumer-group reader
//! persists it (see `mod.rs`).

use herdcache::Reservation;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

/// A way of selling stock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SeckillStrategy {
    /// The tutorial pattern: `GET stock`; if it is at least `qty`, `DECRBY
    /// stock qty` as a second command, then `LPUSH` the order. Two buyers
    /// that read the last unit both decrement: oversold.
    Naive,
    /// `DECRBY stock qty`; if the answer is below 0, `INCRBY` it back and
    /// answer sold out; else `LPUSH` the order. Never oversells in the
    /// final count, but the stock dips below zero meanwhile, and a buyer
    /// can be refused while units remain.
    DecrUndo,
    /// Optimistic: `WATCH stock`, `GET`, then `MULTI` `DECRBY` `LPUSH`
    /// `EXEC`, retried from `WATCH` when `EXEC` aborts (another buyer
    /// changed the stock), up to `--watch-retries` times. Needs a
    /// connection of its own per task (`WATCH` is per connection).
    Watch,
    /// `herdcache::Stock::reserve`: check, decrement and the order's
    /// `XADD` in one script.
    Herdcache,
}

impl SeckillStrategy {
    /// In the order the report lists them: the tutorial first, herdcache
    /// last.
    pub const ALL: [SeckillStrategy; 4] = [
        SeckillStrategy::Naive,
        SeckillStrategy::DecrUndo,
        SeckillStrategy::Watch,
        SeckillStrategy::Herdcache,
    ];

    pub fn name(self) -> &'static str {
        match self {
            SeckillStrategy::Naive => "naive",
            SeckillStrategy::DecrUndo => "decr-undo",
            SeckillStrategy::Watch => "watch",
            SeckillStrategy::Herdcache => "herdcache",
        }
    }
}

/// What one attempt was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Outcome {
    /// The buyer was told the units are theirs.
    Sold = 0,
    /// The buyer was told the stock is gone.
    SoldOut = 1,
    /// `watch` only: every retry was aborted by another buyer's write; the
    /// buyer is refused without an answer about the stock.
    GaveUp = 2,
    /// A Redis error (or an answer no strategy here should give).
    Error = 3,
}

impl Outcome {
    pub fn from_u8(b: u8) -> Option<Outcome> {
        Some(match b {
            0 => Outcome::Sold,
            1 => Outcome::SoldOut,
            2 => Outcome::GaveUp,
            3 => Outcome::Error,
            _ => return None,
        })
    }
}

/// The Redis keys of one baseline run: the stock counter and the orders
/// list (`orders:<run>` in the tutorials' spelling, with the run as prefix).
#[derive(Debug, Clone)]
pub struct Keys {
    pub stock: String,
    pub orders: String,
}

impl Keys {
    pub fn new(run: &str) -> Keys {
        Keys {
            stock: format!("{run}:stock"),
            orders: format!("{run}:orders"),
        }
    }
}

/// One process's handle on a strategy, shared by its tasks.
pub enum Seller {
    /// One multiplexed connection per process, as a redis-rs service has.
    Naive {
        con: MultiplexedConnection,
        keys: Keys,
        /// `--naive-yield`: a `yield_now` between the check and the
        /// decrement.
        yield_between: bool,
    },
    DecrUndo {
        con: MultiplexedConnection,
        keys: Keys,
    },
    /// Each task opens its own connection from this client.
    Watch {
        client: redis::Client,
        keys: Keys,
        retries: u32,
    },
    /// One `herdcache::Client` per process; the SKU's stock handle.
    Herdcache(herdcache::Stock),
}

/// A task's own handle: clones of the process's connection and keys, or
/// for `watch` a connection of its own.
pub enum TaskSeller {
    Naive {
        con: MultiplexedConnection,
        keys: Keys,
        yield_between: bool,
    },
    DecrUndo {
        con: MultiplexedConnection,
        keys: Keys,
    },
    Watch {
        con: MultiplexedConnection,
        keys: Keys,
        retries: u32,
    },
    Herdcache(herdcache::Stock),
}

fn err(what: &str) -> impl Fn(redis::RedisError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Seller {
    /// Connects the way each strategy would in a service. `run` names the
    /// baselines' keys and is herdcache's SKU.
    pub async fn connect(
        strategy: SeckillStrategy,
        url: &str,
        run: &str,
        retries: u32,
        yield_between: bool,
    ) -> Result<Seller, String> {
        let client = redis::Client::open(url).map_err(err("redis url"))?;
        let keys = Keys::new(run);
        Ok(match strategy {
            SeckillStrategy::Naive => Seller::Naive {
                con: client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(err("connect to redis"))?,
                keys,
                yield_between,
            },
            SeckillStrategy::DecrUndo => Seller::DecrUndo {
                con: client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(err("connect to redis"))?,
                keys,
            },
            SeckillStrategy::Watch => Seller::Watch {
                client,
                keys,
                retries,
            },
            SeckillStrategy::Herdcache => {
                let client = herdcache::Client::connect(url)
                    .await
                    .map_err(|e| format!("herdcache client: {e}"))?;
                Seller::Herdcache(client.stock(run))
            }
        })
    }

    /// A task's handle; for `watch`, its own connection, opened now (the
    /// worker opens them before the release, so connecting is not timed).
    pub async fn for_task(&self) -> Result<TaskSeller, String> {
        Ok(match self {
            Seller::Naive {
                con,
                keys,
                yield_between,
            } => TaskSeller::Naive {
                con: con.clone(),
                keys: keys.clone(),
                yield_between: *yield_between,
            },
            Seller::DecrUndo { con, keys } => TaskSeller::DecrUndo {
                con: con.clone(),
                keys: keys.clone(),
            },
            Seller::Watch {
                client,
                keys,
                retries,
            } => TaskSeller::Watch {
                con: client
                    .get_multiplexed_async_connection()
                    .await
                    .map_err(err("connect to redis"))?,
                keys: keys.clone(),
                retries: *retries,
            },
            Seller::Herdcache(stock) => TaskSeller::Herdcache(stock.clone()),
        })
    }
}

impl TaskSeller {
    /// One buyer's attempt. Returns the answer and how many tries it took
    /// (1 but for `watch`); `Err` for a Redis error.
    pub async fn attempt(
        &mut self,
        order: &str,
        user: &str,
        qty: u32,
    ) -> Result<(Outcome, u32), String> {
        let q = i64::from(qty);
        match self {
            TaskSeller::Naive {
                con,
                keys,
                yield_between,
            } => {
                let n: Option<i64> = con.get(&keys.stock).await.map_err(err("GET"))?;
                if n.unwrap_or(0) < q {
                    return Ok((Outcome::SoldOut, 1));
                }
                if *yield_between {
                    tokio::task::yield_now().await;
                }
                let _: i64 = con.decr(&keys.stock, q).await.map_err(err("DECRBY"))?;
                let _: i64 = con.lpush(&keys.orders, order).await.map_err(err("LPUSH"))?;
                Ok((Outcome::Sold, 1))
            }
            TaskSeller::DecrUndo { con, keys } => {
                let n: i64 = con.decr(&keys.stock, q).await.map_err(err("DECRBY"))?;
                if n < 0 {
                    let _: i64 = con.incr(&keys.stock, q).await.map_err(err("INCRBY"))?;
                    return Ok((Outcome::SoldOut, 1));
                }
                let _: i64 = con.lpush(&keys.orders, order).await.map_err(err("LPUSH"))?;
                Ok((Outcome::Sold, 1))
            }
            TaskSeller::Watch { con, keys, retries } => {
                for tries in 1..=*retries {
                    let () = redis::cmd("WATCH")
                        .arg(&keys.stock)
                        .query_async(con)
                        .await
                        .map_err(err("WATCH"))?;
                    let n: Option<i64> = con.get(&keys.stock).await.map_err(err("GET"))?;
                    if n.unwrap_or(0) < q {
                        let () = redis::cmd("UNWATCH")
                            .query_async(con)
                            .await
                            .map_err(err("UNWATCH"))?;
                        return Ok((Outcome::SoldOut, tries));
                    }
                    // `None`: EXEC answered nil, the stock changed since
                    // WATCH and nothing was written.
                    let done: Option<(i64, i64)> = redis::pipe()
                        .atomic()
                        .decr(&keys.stock, q)
                        .lpush(&keys.orders, order)
                        .query_async(con)
                        .await
                        .map_err(err("MULTI/EXEC"))?;
                    if done.is_some() {
                        return Ok((Outcome::Sold, tries));
                    }
                }
                Ok((Outcome::GaveUp, *retries))
            }
            TaskSeller::Herdcache(stock) => match stock.reserve(order, user, qty).await {
                Ok(Reservation::Reserved { .. }) => Ok((Outcome::Sold, 1)),
                Ok(Reservation::SoldOut) => Ok((Outcome::SoldOut, 1)),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(format!("reserve: {e}")),
            },
        }
    }
}
