//! `--scenario seckill` end to end: 2 worker processes x 10 tasks per
//! strategy sell 50 units to 1,000 buyers on a throwaway redis-server the
//! tool starts itself, read back from its `--json` output.

use std::process::Command;

#[test]
fn herdcache_sells_exactly_the_stock_and_persists_every_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let chart = dir.path().join("sale.svg");
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--scenario", "seckill", "--json"])
        .args(["--processes", "2", "--tasks", "10"])
        .args(["--stock", "50", "--buyers", "1000"])
        .arg("--chart")
        .arg(&chart)
        // Its own redis-servers, whatever the environment points at.
        .env_remove("REDIS_URL")
        .output()
        .expect("run loadtest");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "loadtest failed: {stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("bad JSON ({e}): {stderr}"));
    assert_eq!(report["settings"]["scenario"], "seckill");
    let svg = std::fs::read_to_string(&chart).expect("the chart was written");
    assert!(
        svg.starts_with("<svg") && svg.contains("herdcache"),
        "{svg:.200}"
    );

    let strategy = |name: &str| {
        report["strategies"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["strategy"] == name)
            .unwrap_or_else(|| panic!("no {name} in {report}"))
            .clone()
    };
    let n = |s: &serde_json::Value, field: &str| {
        s[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {s}"))
    };
    let naive = strategy("naive");
    let undo = strategy("decr-undo");
    let watch = strategy("watch");
    let herd = strategy("herdcache");
    for s in [&naive, &undo, &watch, &herd] {
        assert_eq!(n(s, "errors"), 0, "{s}");
        assert_eq!(n(s, "attempts") + n(s, "not_attempted"), 1000, "{s}");
        assert_eq!(n(s, "not_attempted"), 0, "{s}");
        // One unit per buyer: units sold are accepted orders.
        assert_eq!(n(s, "sold"), n(s, "accepted"), "{s}");
        // Every strategy here stores each order it accepted, once.
        assert_eq!(n(s, "persisted"), n(s, "accepted"), "{s}");
        assert_eq!(n(s, "accepted_not_persisted"), 0, "{s}");
        assert_eq!(n(s, "persisted_not_accepted"), 0, "{s}");
        assert_eq!(n(s, "persist_duplicates"), 0, "{s}");
        // Each sale took its unit from the counter, once.
        assert_eq!(
            s["final_stock"].as_i64().unwrap(),
            50 - n(s, "sold") as i64,
            "{s}"
        );
        assert_eq!(n(s, "oversold"), n(s, "sold").saturating_sub(50), "{s}");
        assert!(s["sold_out_ms"].as_f64().unwrap() > 0.0, "{s}");
        assert!(s["latency"]["p99_ms"].as_f64().unwrap() > 0.0, "{s}");
    }
    // Whether the tutorial pattern oversells depends on the machine's
    // timing: only that it is reported.
    assert!(naive["oversold"].is_u64(), "{naive}");

    // The two baselines that cannot oversell do not.
    assert_eq!(n(&undo, "sold"), 50, "{undo}");
    assert_eq!(n(&watch, "oversold"), 0, "{watch}");
    assert!(watch["aborts"].is_u64(), "{watch}");

    // herdcache: exactly the stock, every order persisted through its
    // consumer group, nobody refused while a unit was left.
    assert_eq!(n(&herd, "sold"), 50, "{herd}");
    assert_eq!(n(&herd, "oversold"), 0, "{herd}");
    assert_eq!(herd["final_stock"], 0, "{herd}");
    assert_eq!(n(&herd, "persisted"), 50, "{herd}");
    assert_eq!(herd["refused_with_stock"], 0, "{herd}");
    assert_eq!(n(&herd, "sold_out_answers"), 950, "{herd}");
    assert!(herd["last_persisted_ms"].as_f64().is_some(), "{herd}");
}

#[test]
fn seckill_options_belong_to_seckill() {
    for (args, says) in [
        (&["--stock", "5"][..], "--stock"),
        (&["--scenario", "lock", "--buyers", "5"][..], "--buyers"),
        (
            &["--scenario", "seckill", "--duration", "1s"][..],
            "--duration",
        ),
        (&["--scenario", "seckill", "--keys", "5"][..], "--keys"),
        (&["--scenario", "lock", "--chart", "x.svg"][..], "--chart"),
        (
            &["--scenario", "seckill", "--strategy", "setnx-sleep"][..],
            "setnx-sleep",
        ),
        (&["--strategy", "decr-undo"][..], "decr-undo"),
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
