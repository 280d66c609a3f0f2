//! Per-operation Redis costs of herdcache, measured on a throwaway
//! `redis-server` that nothing else uses: for each kind of operation, run
//! it `ops` times from this process and divide what `INFO` says the server
//! did (commands by type, CPU time, bytes in and out) by `ops`.
//!
//! Operations run one at a time (one task, each waiting for its reply),
//! as a lightly loaded fleet sends them; `l2_hit_64` shows how much cheaper
//! a command is when 64 are in flight on one connection (the server reads
//! and answers them in batches).

use herdcache::Cache;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::Res;
use crate::info::{self, Delta};
use crate::strategies::{LoadError, Product};

/// One operation's cost, per operation.
#[derive(Debug, Clone, Serialize)]
pub struct Cost {
    pub name: &'static str,
    pub what: &'static str,
    pub ops: u64,
    /// Calls per operation, by command (script-inner commands included).
    pub calls: BTreeMap<String, f64>,
    /// `INFO commandstats` µs per operation, by command.
    pub usec: BTreeMap<String, f64>,
    /// Server CPU (user + sys), µs per operation.
    pub cpu_us: f64,
    pub in_bytes: f64,
    pub out_bytes: f64,
}

impl Cost {
    fn from_delta(name: &'static str, what: &'static str, ops: u64, d: &Delta) -> Cost {
        let n = ops as f64;
        Cost {
            name,
            what,
            ops,
            calls: d
                .cmds
                .iter()
                .map(|(k, v)| (k.clone(), v.0 as f64 / n))
                .collect(),
            usec: d
                .cmds
                .iter()
                .map(|(k, v)| (k.clone(), v.1 as f64 / n))
                .collect(),
            cpu_us: d.cpu_s * 1e6 / n,
            in_bytes: d.net_in as f64 / n,
            out_bytes: d.net_out as f64 / n,
        }
    }
}

/// Tasks in flight for the `_64` rows.
const BUSY: u64 = 64;

/// Server CPU µs per operation with 64 in flight: what a busy server
/// pays (it reads, runs and answers commands in batches).
#[derive(Debug, Clone, Serialize)]
pub struct Busy {
    pub get_us: f64,
    pub probe_us: f64,
    pub fill_us: f64,
    pub delivery_us: f64,
}

/// What [`measure`] found, and the figures the model uses.
#[derive(Debug, Clone, Serialize)]
pub struct Costs {
    pub rows: Vec<Cost>,
    pub busy: Busy,
    /// Server CPU µs: a GET (L2 hit), the read-or-lock probe, the fill
    /// script, one notice delivered to one subscriber, a heartbeat PING.
    pub get_us: f64,
    pub probe_us: f64,
    pub fill_us: f64,
    pub delivery_us: f64,
    pub ping_us: f64,
    /// Bytes the server sends per notice per subscriber (RESP3 push frame
    /// included), measured.
    pub delivery_bytes: f64,
    /// The notice itself: 13 + key + inlined envelope.
    pub notice_bytes: usize,
    /// The server's own background CPU, µs per second (cron), with the
    /// connections of this measurement open and idle but for PINGs.
    pub idle_us_per_s: f64,
    /// Connections open during the idle reading.
    pub idle_clients: u64,
    pub idle_pings_per_s: f64,
    /// Reply bytes of a GET (L2 hit), a probe, a fill, a PING.
    pub get_out_bytes: f64,
    pub probe_out_bytes: f64,
    pub fill_out_bytes: f64,
    pub ping_out_bytes: f64,
}

fn product(id: i64) -> Product {
    Product {
        id,
        name: format!("product {id}"),
        price_cents: 100 * id,
        reviews: 0,
        avg_stars: 0.0,
        loaded_at_ms: 1_700_000_000_000,
    }
}

fn hc<T>(r: Result<T, herdcache::Error>) -> Res<T> {
    r.map_err(|e| format!("{e:#}").into())
}

async fn cache(url: &str, ns: &str, l1: bool) -> Res<Cache<Product>> {
    let b = Cache::<Product>::builder(ns)
        .redis_url(url)
        .ttl(Duration::from_secs(600));
    let b = if l1 { b } else { b.local_ttl(Duration::ZERO) };
    hc(b.build().await)
}

/// Misses of `ops` distinct keys (`<prefix><i>`), `tasks` at a time:
/// GET, probe, load, fill.
async fn misses(c: &Cache<Product>, prefix: &str, ops: u64, tasks: u64) -> Res<()> {
    let per = ops.div_ceil(tasks);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (c, prefix) = (c.clone(), prefix.to_owned());
            tokio::spawn(async move {
                for i in t * per..(t + 1) * per {
                    let id = i as i64;
                    c.get_or_compute(format!("{prefix}{i}"), move || async move {
                        Ok::<_, LoadError>(product(id))
                    })
                    .await?;
                }
                Ok::<_, herdcache::Error>(())
            })
        })
        .collect();
    for h in handles {
        hc(h.await?)?;
    }
    Ok(())
}

/// `set` of `ops` distinct keys, `tasks` at a time.
async fn sets(c: &Cache<Product>, prefix: &str, ops: u64, tasks: u64) -> Res<()> {
    let per = ops.div_ceil(tasks);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let (c, prefix) = (c.clone(), prefix.to_owned());
            tokio::spawn(async move {
                for i in t * per..(t + 1) * per {
                    c.set(format!("{prefix}{i}"), product(i as i64)).await?;
                }
                Ok::<_, herdcache::Error>(())
            })
        })
        .collect();
    for h in handles {
        hc(h.await?)?;
    }
    Ok(())
}

/// L2 hits: task `t` reads key `k<t>` (no two calls in flight share a
/// key, so none is coalesced), `ops` in all.
async fn l2_hits(c: &Cache<Product>, ops: u64, tasks: u64) -> Res<()> {
    let per = ops.div_ceil(tasks);
    let handles: Vec<_> = (0..tasks)
        .map(|t| {
            let c = c.clone();
            tokio::spawn(async move {
                for _ in 0..per {
                    c.get_or_compute(format!("k{t}"), || async {
                        Err::<Product, _>(LoadError("the key is in Redis".into()))
                    })
                    .await?;
                }
                Ok::<_, herdcache::Error>(())
            })
        })
        .collect();
    for h in handles {
        hc(h.await?)?;
    }
    Ok(())
}

/// Runs `op` (`n` operations) between two `INFO` snapshots of `con`, and
/// records its cost as row `name`.
async fn measured(
    con: &mut redis::Connection,
    rows: &mut Vec<Cost>,
    name: &'static str,
    what: &'static str,
    n: u64,
    op: impl std::future::Future<Output = Res<()>>,
) -> Res<Cost> {
    let a = info::snap(con)?;
    op.await?;
    let b = info::snap(con)?;
    let cost = Cost::from_delta(name, what, n, &info::delta(&a, &b));
    rows.push(cost.clone());
    Ok(cost)
}

/// Measures every operation `ops` times against `url` (a server nobody
/// else uses), with `subscribers` extra subscribed processes' worth of
/// connections for the delivery cost.
pub async fn measure(url: &str, ops: u64, subscribers: usize) -> Res<Costs> {
    let mut con = crate::scenario::connect(url)?;
    let mut rows = Vec::new();

    // L2 hit: L1 off, the keys in Redis.
    let l2 = cache(url, "costs-l2", false).await?;
    for t in 0..BUSY {
        hc(l2.set(format!("k{t}"), product(1)).await)?;
    }
    let get = measured(
        &mut con,
        &mut rows,
        "l2_hit",
        "get_or_compute, L1 off, value in Redis: one GET",
        ops,
        l2_hits(&l2, ops, 1),
    )
    .await?;
    let get_busy = measured(
        &mut con,
        &mut rows,
        "l2_hit_64",
        "the same, 64 tasks in flight on the connection, a key each",
        ops.div_ceil(BUSY) * BUSY,
        l2_hits(&l2, ops, BUSY),
    )
    .await?;

    // set: the SET_VOIDING script (SET, DEL, PUBLISH), delivered to itself.
    let s = cache(url, "costs-set", true).await?;
    let set = measured(
        &mut con,
        &mut rows,
        "set",
        "set of a new key: one script (SET, DEL, PUBLISH), 1 subscriber",
        ops,
        sets(&s, "s", ops, 1),
    )
    .await?;
    let set_busy = measured(
        &mut con,
        &mut rows,
        "set_64",
        "the same, 64 tasks",
        ops.div_ceil(BUSY) * BUSY,
        sets(&s, "b", ops, BUSY),
    )
    .await?;

    // Misses, with the cache itself as the only subscriber.
    let m = cache(url, "costs-miss", true).await?;
    let miss = measured(
        &mut con,
        &mut rows,
        "miss",
        "cold miss: GET, probe script, load, fill script (PUBLISH), 1 subscriber",
        ops,
        misses(&m, "m", ops, 1),
    )
    .await?;
    let miss_busy = measured(
        &mut con,
        &mut rows,
        "miss_64",
        "the same, 64 tasks",
        ops.div_ceil(BUSY) * BUSY,
        misses(&m, "b", ops, BUSY),
    )
    .await?;

    // The same with `subscribers` more caches of the namespace listening.
    let fan = cache(url, "costs-fan", true).await?;
    let mut others = Vec::new();
    for _ in 0..subscribers {
        others.push(cache(url, "costs-fan", true).await?);
    }
    let fanned = measured(
        &mut con,
        &mut rows,
        "miss_fanned",
        "miss with 16 more subscribed caches (see delivery)",
        ops,
        misses(&fan, "m", ops, 1),
    )
    .await?;
    let fanned_busy = measured(
        &mut con,
        &mut rows,
        "miss_fan_64",
        "the same, 64 tasks",
        ops.div_ceil(BUSY) * BUSY,
        misses(&fan, "b", ops, BUSY),
    )
    .await?;
    let k = subscribers.max(1) as f64;
    let delivery_us = (fanned.cpu_us - miss.cpu_us) / k;
    let delivery_bytes = (fanned.out_bytes - miss.out_bytes) / k;
    let delivery_busy_us = (fanned_busy.cpu_us - miss_busy.cpu_us) / k;

    // Lock acquire + release.
    let client = hc(herdcache::Client::connect(url).await)?;
    let lock = client.lock("costs");
    let a = info::snap(&mut con)?;
    for _ in 0..ops {
        let g = hc(lock.acquire().await)?;
        hc(g.release().await)?;
    }
    let b = info::snap(&mut con)?;
    rows.push(Cost::from_delta(
        "lock",
        "Lock::acquire + release, uncontended",
        ops,
        &info::delta(&a, &b),
    ));

    // Idle: every connection above open, nothing sent but heartbeats.
    let a = info::snap(&mut con)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = info::snap(&mut con)?;
    let idle = info::delta(&a, &b);
    let pings = idle.calls("ping") as f64;
    let idle_row = Cost::from_delta("idle_1s", "one second with no requests", 1, &idle);
    let idle_us_per_s = idle.cpu_s * 1e6 / idle.secs;
    rows.push(idle_row);

    // The notice of one fill of key "m0": 13 bytes + key + envelope.
    // (Only key m0 has "m0" in its name: no other key number starts with 0.)
    let mut envelope = 0;
    let keys: Vec<String> = redis::cmd("KEYS").arg("*costs-miss*m0*").query(&mut con)?;
    for key in keys {
        let v: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query(&mut con)?;
        envelope = envelope.max(v.map_or(0, |v| v.len()));
    }
    if envelope == 0 {
        return Err("the value of key m0 is not in Redis".into());
    }
    let notice_bytes = 13 + "m0".len() + envelope;

    let get_us = get.cpu_us;
    // The fill script does what set's script does plus one GET of the
    // lock inside Lua; its notice is a little longer. So: fill ≈ set.
    let fill_us = set.cpu_us - delivery_us;
    let probe_us = miss.cpu_us - get_us - fill_us - delivery_us;
    let busy = Busy {
        get_us: get_busy.cpu_us,
        fill_us: set_busy.cpu_us - delivery_busy_us,
        probe_us: miss_busy.cpu_us - set_busy.cpu_us - get_busy.cpu_us,
        delivery_us: delivery_busy_us,
    };
    Ok(Costs {
        rows,
        busy,
        get_us,
        probe_us,
        fill_us,
        delivery_us,
        ping_us: get_us, // a PING is a command with no key: costed as a GET
        delivery_bytes,
        notice_bytes,
        idle_us_per_s: (idle_us_per_s - pings / idle.secs * get_us).max(0.0),
        idle_clients: b.clients,
        idle_pings_per_s: pings / idle.secs,
        get_out_bytes: get.out_bytes,
        // A probe that finds the key locked answers a short array; the
        // miss's probe answered one too ('a').
        probe_out_bytes: (miss.out_bytes - set.out_bytes - 5.0).max(0.0),
        fill_out_bytes: (set.out_bytes - delivery_bytes).max(0.0),
        ping_out_bytes: 7.0, // "+PONG\r\n"
    })
}
