//! The value every benchmark caches, so all figures compare like with like.
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
