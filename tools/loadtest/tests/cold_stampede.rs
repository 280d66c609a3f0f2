//! The tool end to end: a real cold stampede, 2 worker processes x 10 tasks
//! against a throwaway redis-server the tool starts itself, read back from
//! its `--json` output.

use std::process::Command;

#[test]
fn herdcache_loads_once_where_cache_aside_stampedes() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--processes", "2", "--tasks", "10", "--json"])
        .args(["--strategy", "none,herdcache", "--loader-ms", "50"])
        // Its own redis-server, whatever the environment points at.
        .env_remove("REDIS_URL")
        .output()
        .expect("run loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stderr}"));
    assert_eq!(report["settings"]["mode"], "cold");

    let strategy = |name: &str| {
        report["strategies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["strategy"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .clone()
    };
    let none = strategy("none");
    let herd = strategy("herdcache");
    for s in [&none, &herd] {
        assert_eq!(s["requests"], 20, "every task made its request: {s}");
        assert_eq!(s["errors"], 0, "{s}");
    }
    assert_eq!(
        herd["loader_calls"], 1,
        "herdcache: one loader call across both processes; {}",
        herd["herdcache"]
    );
    let stats = &herd["herdcache"]["stats"];
    assert_eq!(stats["loads"], 1, "herdcache's own count agrees: {stats}");
    assert!(
        none["loader_calls"].as_u64().unwrap() > 1,
        "plain cache-aside should stampede: {}",
        none["loader_calls"]
    );
}
