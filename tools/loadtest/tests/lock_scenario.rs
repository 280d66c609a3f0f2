//! `--scenario lock` end to end: 2 worker processes x 2 tasks per strategy
//! contending for one lock name on a throwaway redis-server the tool starts
//! itself, read back from its `--json` output.

use std::process::Command;

#[test]
fn herdcache_lock_excludes_and_hands_off_faster_than_the_seed() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--scenario", "lock", "--json"])
        .args(["--processes", "2", "--tasks", "2", "--duration", "1500ms"])
        // Its own redis-servers, whatever the environment points at.
        .env_remove("REDIS_URL")
        .output()
        .expect("run loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stderr}"));
    assert_eq!(report["settings"]["scenario"], "lock");

    let strategy = |name: &str| {
        report["strategies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["strategy"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .clone()
    };
    let seed = strategy("setnx-sleep");
    let jitter = strategy("retry-jitter");
    let herd = strategy("herdcache");
    for s in [&seed, &jitter, &herd] {
        // No lease runs out here (10 s against 1 ms sections), so every
        // strategy must exclude; a broken check would show up as overlaps.
        assert_eq!(s["overlaps"], 0, "{s}");
        assert_eq!(s["interval_overlaps"], 0, "{s}");
        assert_eq!(s["errors"], 0, "{s}");
        assert!(s["sections"].as_u64().unwrap() > 0, "{s}");
        assert!(s["handoff"]["samples"].as_u64().unwrap() > 0, "{s}");
        assert!(
            s["redis"]["requests_per_section"].as_f64().unwrap() >= 2.0,
            "{s}"
        );
    }
    assert_eq!(herd["fence_regressions"], 0, "{herd}");
    assert_eq!(herd["lost_releases"], 0, "{herd}");
    assert!(
        herd["redis"]["commands"]["evalsha"].as_u64().unwrap() > 0,
        "herdcache's lock goes through its scripts: {herd}"
    );
    let p50 = |s: &serde_json::Value| s["handoff"]["p50_ms"].as_f64().unwrap();
    assert!(
        p50(&herd) < p50(&seed),
        "herdcache hands off on the release notice; the seed waits for a poll: \
         herdcache p50 {} ms, setnx-sleep p50 {} ms",
        p50(&herd),
        p50(&seed)
    );
}

#[test]
fn options_of_the_other_scenario_are_refused() {
    for (args, says) in [
        (&["--scenario", "lock", "--keys", "5"][..], "--keys"),
        (&["--hold-ms", "5"][..], "--hold-ms"),
        (
            &["--scenario", "lock", "--strategy", "naive-lock"][..],
            "naive-lock",
        ),
        (&["--strategy", "setnx-sleep"][..], "setnx-sleep"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(args)
            .env_remove("REDIS_URL")
            .output()
            .expect("run loadtest");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}
