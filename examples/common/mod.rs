//! What the worker examples (`demo`, `checker`) share: `--name value`
//! options and wall-clock timestamps (every worker runs on one machine, so
//! their clocks agree and cross-process timelines can be compared).
#![allow(dead_code, unreachable_pub)]

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Worker options, as `--name value` pairs.
pub struct Opts(HashMap<String, String>);

impl Opts {
    pub fn parse(args: &[String]) -> Opts {
        let mut map = HashMap::new();
        for pair in args.chunks(2) {
            let name = pair[0]
                .strip_prefix("--")
                .unwrap_or_else(|| panic!("expected --option, got {}", pair[0]));
            let value = pair
                .get(1)
                .unwrap_or_else(|| panic!("--{name} needs a value"));
            map.insert(name.to_owned(), value.clone());
        }
        Opts(map)
    }

    pub fn str(&self, name: &str, default: &str) -> String {
        self.0
            .get(name)
            .cloned()
            .unwrap_or_else(|| default.to_owned())
    }

    pub fn num(&self, name: &str, default: u64) -> u64 {
        self.0.get(name).map_or(default, |v| {
            v.parse()
                .unwrap_or_else(|_| panic!("--{name}: not a number"))
        })
    }
}
