//! The model of docs/SCALING.md: Redis load of a fleet of `n` processes
//! reading `k` keys through herdcache at `r` requests/s each (uniform over
//! the keys, every key requested often enough to stay in every L1 between
//! refreshes), with a value TTL `ttl` and a loader taking `load`.
//!
//! Per key, one rebuild per TTL fleet-wide. It happens one of two ways:
//!
//! - **early** (XFetch): an L1 hit in some process draws an early refresh
//!   before expiry; that process probes (read-or-lock script) and fills
//!   (fill script, which publishes the notice); every subscribed process
//!   takes the value from the notice into L1. Other processes whose own
//!   draw fires before the notice lands probe once each.
//! - **expiry**: nobody drew (or the refresh lands after expiry); every
//!   request between expiry and the fill sends a GET (nil), and the first
//!   of each process a probe; one of them loads and fills.
//!
//! Everything else is an L1 hit (no command), plus one heartbeat `PING` per
//! second per process.

use serde::Serialize;

use super::costs::Costs;

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Workload {
    pub processes: f64,
    pub keys: f64,
    /// Requests/s per process.
    pub rate: f64,
    /// Value TTL, s.
    pub ttl: f64,
    /// Loader time, s (XFetch's delta).
    pub load: f64,
    /// XFetch's beta (the library default is 1).
    pub beta: f64,
    /// Heartbeat PINGs per second per process.
    pub pings: f64,
}

/// Per second, fleet-wide, at the measured Redis.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Load {
    pub fills: f64,
    pub probes: f64,
    /// GETs sent by clients (not those inside scripts).
    pub gets: f64,
    pub deliveries: f64,
    pub pings: f64,
    /// Every command the server counts, script-inner ones included
    /// (as `INFO commandstats` counts them).
    pub commands: f64,
    /// Server CPU, seconds per second (1.0 = one core: saturated).
    pub cpu: f64,
    /// Bytes/s the server sends, of which notices.
    pub out_bytes: f64,
    pub notice_bytes: f64,
    /// Chance a rebuild is an early refresh.
    pub p_early: f64,
    /// Mean time between two rebuilds of one key, s.
    pub cycle: f64,
}

pub fn predict(w: &Workload, c: &Costs) -> Load {
    let n = w.processes;
    let per_process = w.rate / w.keys; // requests/s to one key in one process
    let fleet = n * per_process; // ... in the whole fleet
    let d = w.load;
    let b = w.beta * d; // XFetch: a draw fires when b * -ln(u) >= time left
    // Draws are made only in the last `window` of a value's life.
    let window = (10.0 * b).min(w.ttl / 4.0);
    // Draws fire at rate fleet * e^(-t/b) with t left; `fired(t)` is how
    // many are expected with more than t left.
    let fired = |t: f64| fleet * b * ((-t / b).exp() - (-window / b).exp());
    // Expected per rebuild: its length, probes, GETs. Over the first
    // fire's time left t1 (density `fleet e^(-t1/b) e^(-fired(t1))`), and
    // the case where nothing fires.
    let (mut cycle, mut probes, mut gets, mut p_early) = (0.0, 0.0, 0.0, 0.0);
    let steps = 4_000;
    let dt = window / f64::from(steps);
    for i in 0..steps {
        let t1 = (f64::from(i) + 0.5) * dt;
        let p = fleet * (-t1 / b).exp() * (-fired(t1)).exp() * dt;
        p_early += p;
        // The refresher probes and loads; its value lands d later, with
        // t1 - d left. Other processes whose draw fires meanwhile (while
        // their copy is fresh) probe once each.
        let during = fired((t1 - d).max(0.0)) - fired(t1);
        let others = (n - 1.0) * (1.0 - (-during / n).exp());
        // Landing after expiry (t1 < d): every request in the gap sends a
        // GET (nil) before it joins its process's flight; each process
        // that asks in the gap probes once, then waits for the notice.
        let gap = (d - t1).max(0.0);
        let missed = n * (1.0 - (-per_process * gap).exp());
        cycle += p * (w.ttl + d - t1);
        probes += p * (1.0 + others + missed);
        gets += p * fleet * gap;
    }
    // Nothing fired: the first request after expiry (after 1/fleet on
    // average) misses and loads; the other processes that ask during the
    // load miss too.
    let p_late = 1.0 - p_early;
    let missed = 1.0 + (n - 1.0) * (1.0 - (-per_process * d).exp());
    cycle += p_late * (w.ttl + d + 1.0 / fleet);
    probes += p_late * missed;
    gets += p_late * (1.0 + fleet * d);
    // One rebuild per key per cycle, fleet-wide.
    let fills = w.keys / cycle;
    let probes = fills * probes;
    let gets = fills * gets;
    let deliveries = fills * n;
    let pings = n * w.pings;
    // Inside the scripts: probe = EVALSHA + GET + SET NX (+ PTTL when
    // locked); fill = EVALSHA + GET + SET + DEL + PUBLISH.
    let locked = (probes - fills).max(0.0);
    let commands = gets + probes * 3.0 + locked + fills * 5.0 + pings;
    let cpu = (gets * c.get_us
        + probes * c.probe_us
        + fills * c.fill_us
        + deliveries * c.delivery_us
        + pings * c.ping_us
        + c.idle_us_per_s)
        / 1e6;
    let notice_bytes = deliveries * c.delivery_bytes;
    let out_bytes = notice_bytes
        + gets * c.get_out_bytes
        + probes * c.probe_out_bytes
        + fills * c.fill_out_bytes
        + pings * c.ping_out_bytes;
    Load {
        fills,
        probes,
        gets,
        deliveries,
        pings,
        commands,
        cpu,
        out_bytes,
        notice_bytes,
        p_early,
        cycle,
    }
}
