//! `--cluster N`: the measured Redis as a throwaway Redis Cluster of N
//! masters (the test suite's `RedisCluster`, so the tool and the tests
//! start a cluster the same way), and what each master did over a run:
//! keys (`DBSIZE` after it) and commands (`INFO commandstats`, calls
//! before and after), with `SPUBLISH` and `PUBLISH` apart.
//!
//! The point of the per-master figures: herdcache splits a namespace into
//! hash-tag buckets, so one namespace's keys, requests and fill notices
//! should land on every master, none taking the whole load, and notices
//! should go out with `SPUBLISH` on the bucket's master only (a `PUBLISH`
//! would be relayed to every node).

use serde::Serialize;
use std::collections::BTreeMap;

use crate::info::{self, Delta, Snap};
use crate::{Res, scenario, support};

/// A running throwaway cluster; dropping it kills its nodes (our own
/// children, by handle) and removes their files.
pub struct Cluster {
    inner: support::RedisCluster,
    /// The masters, as `redis://` URLs of the nodes themselves.
    pub masters: Vec<String>,
    /// Slots served by each master, in `masters` order.
    pub slots: Vec<u64>,
}

impl Cluster {
    /// Starts `masters` masters with `replicas` replicas each on free
    /// loopback ports, creates the cluster with `redis-cli --cluster
    /// create`, and waits until every node says it is ok (bounded: 30 s).
    /// `redis-cli` refuses fewer than 3 masters.
    pub fn start(masters: usize, replicas: usize) -> Res<Cluster> {
        let inner = support::RedisCluster::start(masters, replicas);
        let masters: Vec<String> = inner
            .masters()
            .into_iter()
            .map(|i| inner.nodes[i].url())
            .collect();
        let mut con = scenario::connect(&masters[0])?;
        let ranges: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con)?;
        let mut by_port: BTreeMap<i64, u64> = BTreeMap::new();
        for range in ranges {
            if let (
                Some(redis::Value::Int(lo)),
                Some(redis::Value::Int(hi)),
                Some(redis::Value::Array(master)),
            ) = (range.first(), range.get(1), range.get(2))
                && let Some(redis::Value::Int(port)) = master.get(1)
            {
                *by_port.entry(*port).or_default() += (hi - lo + 1) as u64;
            }
        }
        let slots = masters
            .iter()
            .map(|url| by_port.get(&port_of(url)).copied().unwrap_or(0))
            .collect();
        Ok(Cluster {
            inner,
            masters,
            slots,
        })
    }

    /// The one-URL form herdcache takes: `redis-cluster://h:p,h:p,…/`.
    pub fn url(&self) -> String {
        self.inner.url()
    }
}

fn port_of(url: &str) -> i64 {
    url.trim_end_matches('/')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

/// `host:port` of a `redis://host:port/` URL.
fn addr_of(url: &str) -> String {
    url.trim_start_matches("redis://")
        .trim_end_matches('/')
        .to_owned()
}

/// Blocking connections to a set of nodes (a cluster's masters), for
/// reading their counters.
pub struct Nodes {
    urls: Vec<String>,
    slots: Vec<u64>,
    cons: Vec<redis::Connection>,
}

impl Nodes {
    pub fn connect(urls: &[String], slots: &[u64]) -> Res<Nodes> {
        Ok(Nodes {
            urls: urls.to_vec(),
            slots: slots.to_vec(),
            cons: urls
                .iter()
                .map(|u| scenario::connect(u))
                .collect::<Res<_>>()?,
        })
    }

    /// Every node's counters, in order.
    pub fn snap(&mut self) -> Res<Vec<Snap>> {
        self.cons.iter_mut().map(info::snap).collect()
    }

    /// Every node's keys now (`DBSIZE`).
    pub fn keys(&mut self) -> Res<Vec<u64>> {
        self.cons
            .iter_mut()
            .map(|c| Ok(redis::cmd("DBSIZE").query(c)?))
            .collect()
    }

    /// What each node did since `before`, with its keys now.
    pub fn loads(&mut self, before: &[Snap]) -> Res<Vec<NodeLoad>> {
        let after = self.snap()?;
        let deltas: Vec<Delta> = before
            .iter()
            .zip(&after)
            .map(|(a, b)| info::delta(a, b))
            .collect();
        let keys = self.keys()?;
        Ok(self.node_loads(&deltas, &keys))
    }

    /// Per node, from its delta over a stretch and its keys.
    pub fn node_loads(&self, deltas: &[Delta], keys: &[u64]) -> Vec<NodeLoad> {
        deltas
            .iter()
            .enumerate()
            .map(|(i, d)| NodeLoad::of(&self.urls[i], self.slots[i], d, keys[i]))
            .collect()
    }
}

/// What one master did over a run.
#[derive(Debug, Clone, Serialize)]
pub struct NodeLoad {
    /// `host:port`.
    pub node: String,
    pub slots: u64,
    /// `DBSIZE` after the run.
    pub keys: u64,
    /// Calls of every command but `INFO` (a script's inner commands count
    /// on their own as well as in its `EVALSHA`, as `INFO` counts them).
    pub commands: u64,
    pub evalsha: u64,
    /// Sharded notices published on this master.
    pub spublish: u64,
    /// Classic notices: relayed to every node of a cluster (0 expected).
    pub publish: u64,
    /// The server process's CPU time over the run (user + sys), seconds.
    pub cpu_s: f64,
    pub secs: f64,
}

impl NodeLoad {
    fn of(url: &str, slots: u64, d: &Delta, keys: u64) -> NodeLoad {
        NodeLoad {
            node: addr_of(url),
            slots,
            keys,
            commands: d.cmds.values().map(|c| c.0).sum(),
            evalsha: d.calls("evalsha"),
            spublish: d.calls("spublish"),
            publish: d.calls("publish"),
            cpu_s: d.cpu_s,
            secs: d.secs,
        }
    }
}

/// `x` as a share of `of`.
fn pct(x: f64, of: f64) -> String {
    if of > 0.0 {
        format!("{:.1}%", 100.0 * x / of)
    } else {
        "-".to_owned()
    }
}

/// The per-master table: absolute figures, or per second with `per_s`.
pub fn print_table(rows: &[NodeLoad], per_s: bool) {
    let keys: u64 = rows.iter().map(|r| r.keys).sum();
    let commands: u64 = rows.iter().map(|r| r.commands).sum();
    let unit = if per_s { "/s" } else { "" };
    println!(
        "{:<17} {:>6} {:>8} {:>6} {:>12} {:>6} {:>12} {:>12} {:>10} {:>8}",
        "master",
        "slots",
        "keys",
        "share",
        format!("commands{unit}"),
        "share",
        format!("evalsha{unit}"),
        format!("spublish{unit}"),
        format!("publish{unit}"),
        "CPU %"
    );
    let rate = |n: u64, r: &NodeLoad| {
        if per_s {
            format!("{:.0}", n as f64 / r.secs.max(1e-9))
        } else {
            n.to_string()
        }
    };
    for r in rows {
        println!(
            "{:<17} {:>6} {:>8} {:>6} {:>12} {:>6} {:>12} {:>12} {:>10} {:>8.2}",
            r.node,
            r.slots,
            r.keys,
            pct(r.keys as f64, keys as f64),
            rate(r.commands, r),
            pct(r.commands as f64, commands as f64),
            rate(r.evalsha, r),
            rate(r.spublish, r),
            rate(r.publish, r),
            100.0 * r.cpu_s / r.secs.max(1e-9)
        );
    }
}

/// The per-master figures of several runs: the median of each figure,
/// master by master.
pub fn median(runs: &[Vec<NodeLoad>]) -> Vec<NodeLoad> {
    let Some(first) = runs.first() else {
        return Vec::new();
    };
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        }
    };
    (0..first.len())
        .map(|i| {
            let f = |g: fn(&NodeLoad) -> f64| med(runs.iter().map(|r| g(&r[i])).collect());
            NodeLoad {
                node: first[i].node.clone(),
                slots: first[i].slots,
                keys: f(|r| r.keys as f64) as u64,
                commands: f(|r| r.commands as f64) as u64,
                evalsha: f(|r| r.evalsha as f64) as u64,
                spublish: f(|r| r.spublish as f64) as u64,
                publish: f(|r| r.publish as f64) as u64,
                cpu_s: f(|r| r.cpu_s),
                secs: f(|r| r.secs),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_of_urls() {
        assert_eq!(addr_of("redis://127.0.0.1:7001/"), "127.0.0.1:7001");
        assert_eq!(port_of("redis://127.0.0.1:7001/"), 7001);
    }
}
