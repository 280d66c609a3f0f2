//! `--cluster 3`: a cold stampede through a throwaway 3-master cluster the
//! tool starts itself; the per-master figures in its `--json` output show
//! the namespace's keys and notices spread over the masters, notices sent
//! with `SPUBLISH` only.

use std::process::Command;

#[test]
fn a_cluster_run_spreads_keys_and_sharded_notices_over_the_masters() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--cluster", "3", "--processes", "2", "--tasks", "50"])
        .args([
            "--keys",
            "64",
            "--loader",
            "sleep",
            "--loader-ms",
            "20",
            "--json",
        ])
        .env_remove("REDIS_URL")
        .output()
        .expect("run loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stderr}"));
    assert_eq!(report["settings"]["cluster"]["masters"], 3);
    // The baselines are skipped with a note; herdcache alone runs.
    let strategies = report["strategies"].as_array().unwrap();
    assert_eq!(strategies.len(), 1, "{report}");
    assert!(stderr.contains("skipping none"), "{stderr}");
    let hc = &strategies[0];
    assert_eq!(hc["strategy"], "herdcache");
    assert_eq!(hc["errors"], 0, "{hc}");

    let masters = hc["per_master"].as_array().expect("per_master");
    assert_eq!(masters.len(), 3, "{hc}");
    let n = |m: &serde_json::Value, k: &str| m[k].as_u64().unwrap();
    let keys: u64 = masters.iter().map(|m| n(m, "keys")).sum();
    // One value per key requested (100 requests over 64 keys), plus
    // nothing of the tool's own: its keys are on another server.
    let loads = hc["loader_calls"].as_u64().unwrap();
    assert!(
        keys >= loads && loads > 10,
        "keys {keys}, loads {loads}: {hc}"
    );
    assert!(
        masters
            .iter()
            .all(|m| n(m, "keys") > 0 && n(m, "commands") > 0),
        "a master without keys or commands: {hc}"
    );
    // Every fill told its bucket's master only.
    assert!(masters.iter().all(|m| n(m, "publish") == 0), "{hc}");
    let spublish: u64 = masters.iter().map(|m| n(m, "spublish")).sum();
    assert_eq!(spublish, loads, "one SPUBLISH per fill: {hc}");
}
