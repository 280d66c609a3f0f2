//! What the measured Redis says it did: `INFO commandstats`, its CPU time
//! and its network bytes, read before and after a stretch of work and
//! subtracted.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

use crate::Res;

/// One reading of the server's counters.
#[derive(Debug, Clone)]
pub struct Snap {
    pub at: Instant,
    /// Per command (lower case, as `cmdstat_<name>`): calls and µs.
    pub cmds: BTreeMap<String, (u64, u64)>,
    /// `used_cpu_user + used_cpu_sys`, seconds (the whole server process).
    pub cpu_s: f64,
    pub net_in: u64,
    pub net_out: u64,
    pub clients: u64,
}

/// Between two readings: what the server did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delta {
    pub secs: f64,
    /// Per command: calls, µs (commands run inside a script are counted
    /// both on their own and in the script's `evalsha`).
    pub cmds: BTreeMap<String, (u64, u64)>,
    pub cpu_s: f64,
    pub net_in: u64,
    pub net_out: u64,
}

impl Delta {
    pub fn calls(&self, cmd: &str) -> u64 {
        self.cmds.get(cmd).map_or(0, |c| c.0)
    }
}

/// Reads the counters. Two `INFO` calls, which the delta leaves out.
pub fn snap(con: &mut redis::Connection) -> Res<Snap> {
    let stats: String = redis::cmd("INFO").arg("commandstats").query(con)?;
    let rest: String = redis::cmd("INFO").arg("default").query(con)?;
    let mut cmds = BTreeMap::new();
    let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
    for line in stats.lines().chain(rest.lines()) {
        let Some((k, v)) = line.trim().split_once(':') else {
            continue;
        };
        if let Some(name) = k.strip_prefix("cmdstat_") {
            let mut calls = 0;
            let mut usec = 0;
            for kv in v.split(',') {
                match kv.split_once('=') {
                    Some(("calls", n)) => calls = n.parse()?,
                    Some(("usec", n)) => usec = n.parse()?,
                    _ => {}
                }
            }
            cmds.insert(name.to_owned(), (calls, usec));
        } else {
            fields.insert(k, v);
        }
    }
    let num = |k: &str| -> Res<f64> {
        Ok(fields
            .get(k)
            .ok_or_else(|| format!("INFO has no {k}"))?
            .parse()?)
    };
    Ok(Snap {
        at: Instant::now(),
        cmds,
        cpu_s: num("used_cpu_user")? + num("used_cpu_sys")?,
        net_in: num("total_net_input_bytes")? as u64,
        net_out: num("total_net_output_bytes")? as u64,
        clients: num("connected_clients")? as u64,
    })
}

/// `b - a`, without the `INFO` calls of the readings themselves.
pub fn delta(a: &Snap, b: &Snap) -> Delta {
    let mut cmds = BTreeMap::new();
    for (name, &(calls, usec)) in &b.cmds {
        if name == "info" {
            continue;
        }
        let (c0, u0) = a.cmds.get(name).copied().unwrap_or((0, 0));
        if calls > c0 {
            cmds.insert(name.clone(), (calls - c0, usec.saturating_sub(u0)));
        }
    }
    Delta {
        secs: (b.at - a.at).as_secs_f64(),
        cmds,
        cpu_s: b.cpu_s - a.cpu_s,
        net_in: b.net_in.saturating_sub(a.net_in),
        net_out: b.net_out.saturating_sub(a.net_out),
    }
}

/// Several servers' deltas over the same stretch as one (a cluster's
/// masters as if one server): calls, CPU and bytes added; the time is the
/// longest of them.
pub fn sum(deltas: &[Delta]) -> Delta {
    let mut all = Delta::default();
    for d in deltas {
        all.secs = all.secs.max(d.secs);
        for (name, &(calls, usec)) in &d.cmds {
            let c = all.cmds.entry(name.clone()).or_default();
            c.0 += calls;
            c.1 += usec;
        }
        all.cpu_s += d.cpu_s;
        all.net_in += d.net_in;
        all.net_out += d.net_out;
    }
    all
}
