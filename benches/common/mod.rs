//! The value every benchmark caches, so all figures compare like with like,
//! the raw connections the Redis baselines use, and criterion's settings.
#![allow(dead_code, unreachable_pub)]

use serde::{Deserialize, Serialize};

/// A small struct, shared as `Arc<Item>` by every tier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Item {
    pub id: u64,
    pub stock: u32,
    pub name: String,
}

pub fn item() -> Item {
    Item {
        id: 42,
        stock: 7,
        name: "widget".to_owned(),
    }
}

/// The raw baselines' connections to `url`: a plain `MultiplexedConnection`
/// (RESP2, the baseline) and one set up as herdcache sets up its own
/// in `src/link.rs` (RESP3), less the push channel, which a `GET` never
/// touches. `timeout` is every response (and connection) timeout.
pub async fn raw_connections(
    url: &str,
    timeout: std::time::Duration,
) -> (
    redis::aio::MultiplexedConnection,
    redis::aio::MultiplexedConnection,
) {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(timeout))
        .set_connection_timeout(Some(timeout));
    let client = redis::Client::open(url).expect("client");
    let resp2 = client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("multiplexed connection");
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    let resp3 = redis::Client::open(info.set_redis_settings(settings))
        .expect("client")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("RESP3 multiplexed connection");
    (resp2, resp3)
}

/// Every bench's criterion settings: 1 s of warm-up, 3 s of measurement,
/// `samples` samples (more for the ~200 ns L1 hit).
pub fn criterion_config(samples: usize) -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3))
        .sample_size(samples)
}
