//! Flash-sale stock ("seckill"): [`Stock`](crate::Stock) that never
//! oversells, idempotent reservations, and an order stream that loses
//! nothing. Uses the shared layer's connection and breaker, and its
//! consumer-group reader (`shared/stream.rs`); warming uses a
//! [`Lock`](crate::Lock).
//!
//! | file | what it is for |
//! |---|---|
//! | `inventory.rs` | [`Stock`](crate::Stock): set, add, reserve, cancel, warm |
//! | `batch.rs` | group commit: the concurrent reservations of one SKU in one process go to Redis as one script call, each order still one atomic step with its own answer |
//! | `orders.rs` | [`Orders`](crate::Orders): consumer groups over the SKU's order stream, [`Delivery`](crate::Delivery) |
//! | `scripts.rs` | the reserve (a batch of orders), add and cancel scripts: each order one atomic step |
//! | `keys.rs` | `hc:st:{<sku>}:…` keys, all in one Cluster slot |
//!
//! # What the patterns users copy get wrong, and the line that answers each
//!
//! | seed pattern | what goes wrong | here |
//! |---|---|---|
//! | `GET stock`, check, `DECR stock` | two buyers read 1, both decrement: oversold | check and decrement in one script (`RESERVE`): nothing runs between them |
//! | `DECR`, then `INCR` back when negative | the stock dips below zero for a moment, and a crash before the `INCR` loses a unit; readers see negatives | the script compares first and decrements only what is there |
//! | `if stock >= qty` … `DECRBY` written as `> 0` | oversells by one | `avail < qty` is sold out: checked on what is left after taking |
//! | decrement, then `LPUSH` the order | a crash between the two sells a unit with no order | the `XADD` of the order is in the same script as the decrement |
//! | `LPUSH` / `RPOP` as the order queue | an order popped by a consumer that then crashes is gone | a consumer group: the order stays pending until the consumer acknowledges it, and is taken over when its consumer stops |
//! | a retried request reserves again | a buyer who retried after a timeout buys twice | idempotent by order id: a retry returns the first answer |
//! | keys built inside the script | breaks on Redis Cluster (a script may only touch keys it is passed) | every key is passed in `KEYS`, and all share the SKU's hash tag |

pub(crate) mod batch;
pub(crate) mod inventory;
pub(crate) mod keys;
pub(crate) mod orders;
pub(crate) mod scripts;
