//! Where a SKU's stock lives in Redis. Every key of one SKU carries the
//! hash tag `{<sku>}`, so every script of the wing touches one Redis
//! Cluster slot:
//!
//! | key | type | what |
//! |---|---|---|
//! | `hc:st:{<sku>}:n` | string | units available |
//! | `hc:st:{<sku>}:a` | hash | order id -> the first answer given to it (idempotency) |
//! | `hc:st:{<sku>}:u` | hash | user id -> units held (the per-user limit) |
//! | `hc:st:{<sku>}:c` | hash | order id -> 1 once cancelled (cancel once) |
//! | `hc:st:{<sku>}:o` | stream | one entry per reservation and per cancellation |
//! | `hc:st:{<sku>}:d` | stream | dead letters of the order stream |
//!
//! The `hc:st:` prefix is the stock's own: no SKU can collide with a cache
//! key or a lock.

use crate::error::{Error, ErrorKind};
use crate::shared::stream::StreamKeys;

/// Longest accepted SKU, order id or user id, in bytes.
pub const MAX_ID_LEN: usize = 256;

#[derive(Debug, Clone)]
pub(crate) struct StockKeys {
    pub(crate) available: String,
    pub(crate) answers: String,
    pub(crate) users: String,
    pub(crate) cancelled: String,
    pub(crate) orders: StreamKeys,
}

impl StockKeys {
    pub(crate) fn new(sku: &str) -> Result<Self, Error> {
        check_id("SKU", sku)?;
        if sku.contains(['{', '}']) {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!(
                    "SKU {sku:?} contains `{{` or `}}`, which would move its Redis Cluster hash tag"
                ),
            ));
        }
        let key = |suffix: &str| format!("hc:st:{{{sku}}}:{suffix}");
        Ok(StockKeys {
            available: key("n"),
            answers: key("a"),
            users: key("u"),
            cancelled: key("c"),
            orders: StreamKeys {
                stream: key("o"),
                dead: key("d"),
            },
        })
    }
}

/// Order and user ids are hash fields, never part of a key: any bytes are
/// safe there (braces included), but an empty or huge id is a caller's bug.
pub(crate) fn check_id(what: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("{what} must be 1 to {MAX_ID_LEN} bytes, not {}", id.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skus_keys_share_one_tag() {
        let k = StockKeys::new("sku-1").unwrap();
        for key in [
            &k.available,
            &k.answers,
            &k.users,
            &k.cancelled,
            &k.orders.stream,
            &k.orders.dead,
        ] {
            assert!(key.starts_with("hc:st:{sku-1}:"), "{key}");
        }
        for bad in ["", "a{b", "a}", &"x".repeat(MAX_ID_LEN + 1)] {
            assert_eq!(
                StockKeys::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidKey
            );
        }
    }
}
