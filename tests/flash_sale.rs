//! The flash sale across real processes (`examples/flash_sale.rs` as buyer
//! and order-worker processes), with faults: a worker killed with orders
//! pending, Redis restarted mid-sale. Buyers log what they were told on a
//! separate redis-server; orders land in SQLite; the test reconciles them.

mod support;

use herdcache::Client;
use rusqlite::{Connection, params};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::{RedisCluster, RedisServer};

fn flash_sale_bin() -> PathBuf {
    support::example_bin_path("flash_sale")
}

struct Procs(Vec<Child>);

impl Procs {
    fn spawn(&mut self, args: Vec<String>) {
        self.0.push(
            Command::new(flash_sale_bin())
                .args(args)
                .stdin(Stdio::null())
                .spawn()
                .expect("spawn flash_sale"),
        );
    }

    fn wait_all(&mut self) {
        for c in &mut self.0 {
            let status = c.wait().expect("wait");
            assert!(status.success(), "a worker process failed: {status}");
        }
        self.0.clear();
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn kv(k: &str, v: impl ToString) -> String {
    format!("{k}={}", v.to_string())
}

/// A worker's arguments: its mode, the sale's Redis, the log Redis, then
/// `rest`.
fn worker_args(mode: &str, url: &str, log: &RedisServer, rest: Vec<String>) -> Vec<String> {
    let mut args = vec![mode.to_owned(), kv("url", url), kv("log", log.url())];
    args.extend(rest);
    args
}

fn temp_db(tag: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "herdcache-test-{tag}-{}-{}.sqlite3",
        std::process::id(),
        support::now_ms()
    ));
    let con = Connection::open(&path).unwrap();
    con.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE orders (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL, user_id TEXT NOT NULL,
             qty INTEGER NOT NULL, cancelled INTEGER NOT NULL DEFAULT 0);",
    )
    .unwrap();
    path
}

fn orders_in_db(db: &Path, sku: &str) -> HashSet<String> {
    let con = Connection::open(db).unwrap();
    let mut stmt = con
        .prepare("SELECT order_id FROM orders WHERE sku = ?1")
        .unwrap();
    stmt.query_map(params![sku], |r| r.get::<_, String>(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn told(log: &mut redis::Connection, sku: &str) -> Vec<String> {
    redis::cmd("LRANGE")
        .arg(format!("told:{sku}"))
        .arg(0)
        .arg(-1)
        .query(log)
        .unwrap()
}

fn count(log: &mut redis::Connection, key: &str) -> u64 {
    redis::cmd("GET")
        .arg(key)
        .query::<Option<u64>>(log)
        .unwrap()
        .unwrap_or(0)
}

async fn available(url: &str, sku: &str) -> u64 {
    let client = Client::connect(url).await.unwrap();
    client.stock(sku).available().await.unwrap()
}

fn remove_db(db: &Path) {
    for ext in ["sqlite3", "sqlite3-wal", "sqlite3-shm"] {
        let _ = std::fs::remove_file(db.with_extension(ext));
    }
}

/// 8 processes x 1,250 buyers = 10,000 attempts on a stock of 100, 20
/// sales: exactly 100 reserved each time, 100 orders in SQLite, 0 left,
/// and every retried order id got its first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_buyers_on_a_stock_of_100_sell_exactly_100_twenty_times() {
    let redis = RedisServer::start();
    let log_redis = RedisServer::start();
    sell_out(&redis.url(), &log_redis, 20, "sell").await;
}

/// The same sale on a Redis Cluster (3 masters + 3 replicas): 6 SKUs, two
/// on each master, 10,000 attempts each from 8 processes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_buyers_sell_exactly_100_on_a_cluster() {
    let cluster = RedisCluster::start(3, 1);
    let log_redis = RedisServer::start();
    let mut per_master = HashMap::<usize, usize>::new();
    for run in 0..6 {
        *per_master
            .entry(cluster.master_of(&format!("sale-{run}")))
            .or_default() += 1;
    }
    assert_eq!(per_master.len(), 3, "SKUs on every master: {per_master:?}");
    sell_out(&cluster.url(), &log_redis, 6, "sell-cluster").await;
}

/// `runs` sales of SKUs `sale-<run>`, 100 units each, 8 buyer processes x
/// 1,250 attempts per sale, 2 consumer processes into SQLite: exactly 100
/// reserved, stored and told each time.
async fn sell_out(url: &str, log_redis: &RedisServer, runs: usize, tag: &str) {
    let db = temp_db(tag);
    let client = Client::connect(url).await.unwrap();
    for run in 0..runs {
        client
            .stock(format!("sale-{run}"))
            .set_available(100)
            .await
            .unwrap();
    }
    let mut workers = Procs(Vec::new());
    for i in 0..2 {
        workers.spawn(worker_args(
            "consumer",
            url,
            log_redis,
            vec![
                kv("db", db.display()),
                kv("sku", "sale"),
                kv("runs", runs),
                kv("name", format!("w{i}")),
            ],
        ));
    }
    let mut buyers = Procs(Vec::new());
    let started = Instant::now();
    for _ in 0..8 {
        buyers.spawn(worker_args(
            "buyer",
            url,
            log_redis,
            vec![
                kv("sku", "sale"),
                kv("runs", runs),
                kv("attempts", 1250),
                kv("tasks", 16),
            ],
        ));
    }
    buyers.wait_all();
    let buying = started.elapsed();
    let mut log = log_redis.connection();
    let () = redis::cmd("SET")
        .arg("stop")
        .arg(1)
        .query(&mut log)
        .unwrap();
    workers.wait_all();
    assert_eq!(count(&mut log, "mismatch"), 0, "a retry got another answer");
    for run in 0..runs {
        let sku = format!("sale-{run}");
        let told = told(&mut log, &sku);
        let in_db = orders_in_db(&db, &sku);
        let answers = count(&mut log, &format!("answers:{sku}:reserved"))
            + count(&mut log, &format!("answers:{sku}:sold_out"));
        assert_eq!(answers, 10_000, "{sku}: every attempt answered");
        assert_eq!(told.len(), 100, "{sku}: exactly 100 reserved");
        assert_eq!(available(url, &sku).await, 0, "{sku}");
        assert_eq!(in_db.len(), 100, "{sku}: 100 orders stored");
        assert_eq!(told.iter().cloned().collect::<HashSet<_>>(), in_db, "{sku}");
    }
    eprintln!("{runs} sales x 10,000 attempts: 100 sold each, 0 oversold; buying took {buying:?}");
    remove_db(&db);
}

/// One user, 50 attempts from 5 processes, limit 3: exactly 3 reserved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_holds_across_processes() {
    let redis = RedisServer::start();
    let log_redis = RedisServer::start();
    let client = Client::connect(&redis.url()).await.unwrap();
    client.stock("ltd").set_available(100).await.unwrap();
    let mut buyers = Procs(Vec::new());
    for _ in 0..5 {
        buyers.spawn(worker_args(
            "buyer",
            &redis.url(),
            &log_redis,
            vec![
                kv("sku", "ltd"),
                kv("attempts", 10),
                kv("tasks", 10),
                kv("limit", 3),
                kv("user", "fixed"),
            ],
        ));
    }
    buyers.wait_all();
    let mut log = log_redis.connection();
    assert_eq!(count(&mut log, "answers:ltd:reserved"), 3);
    assert_eq!(count(&mut log, "answers:ltd:user_limit"), 47);
    assert_eq!(available(&redis.url(), "ltd").await, 97);
}

/// A worker killed with orders pending: another takes them over within
/// claim_after + 1 s, and each order is in the database exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_orders_are_taken_over_and_stored_once() {
    let redis = RedisServer::start();
    let log_redis = RedisServer::start();
    let db = temp_db("kill");
    let client = Client::connect(&redis.url()).await.unwrap();
    let stock = client.stock("k");
    stock.set_available(40).await.unwrap();
    for i in 0..40 {
        stock.reserve(&format!("o{i}"), "u", 1).await.unwrap();
    }
    let claim_ms = 1000;
    let worker = |name: &str, slow_ms: u64| {
        worker_args(
            "consumer",
            &redis.url(),
            &log_redis,
            vec![
                kv("db", db.display()),
                kv("sku", "k"),
                kv("name", name),
                kv("claim_ms", claim_ms),
                kv("slow_ms", slow_ms),
            ],
        )
    };
    // A slow worker takes a batch, stores a few, and is killed.
    let mut slow = Procs(Vec::new());
    slow.spawn(worker("slow", 100));
    let deadline = Instant::now() + Duration::from_secs(20);
    while orders_in_db(&db, "k").len() < 3 {
        assert!(Instant::now() < deadline, "the slow worker stored nothing");
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = slow.0[0].kill();
    let _ = slow.0[0].wait();
    slow.0.clear();
    let killed = Instant::now();
    let mut conn = redis.connection();
    let pending: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg("hc:st:{k}:o")
        .arg("db")
        .query(&mut conn)
        .unwrap();
    assert!(pending.0 > 0, "the killed worker left orders pending");
    let left_pending = pending.0;
    let mut fast = Procs(Vec::new());
    fast.spawn(worker("fast", 0));
    while orders_in_db(&db, "k").len() < 40 {
        assert!(
            killed.elapsed()
                < Duration::from_millis(claim_ms) + Duration::from_secs(1) + Duration::from_secs(2),
            "orders not taken over in time: {} stored",
            orders_in_db(&db, "k").len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = killed.elapsed();
    let mut log = log_redis.connection();
    let () = redis::cmd("SET")
        .arg("stop")
        .arg(1)
        .query(&mut log)
        .unwrap();
    fast.wait_all();
    let con = Connection::open(&db).unwrap();
    let rows: i64 = con
        .query_row("SELECT COUNT(*) FROM orders", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 40, "each order exactly once");
    let pending: (u64, Option<String>, Option<String>, redis::Value) = redis::cmd("XPENDING")
        .arg("hc:st:{k}:o")
        .arg("db")
        .query(&mut conn)
        .unwrap();
    assert_eq!(pending.0, 0, "everything acknowledged");
    eprintln!(
        "{left_pending} orders pending at the kill; all 40 stored {took:?} after it (claim_after {claim_ms} ms)"
    );
    assert!(
        took <= Duration::from_millis(claim_ms) + Duration::from_secs(1),
        "{took:?}"
    );
    remove_db(&db);
}

/// Redis (appendonly, appendfsync always) restarted mid-sale: no
/// oversell, and every reservation a buyer was told about has its order in
/// the database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_mid_sale_oversells_nothing_and_loses_no_told_order() {
    let mut redis = RedisServer::start_durable();
    let log_redis = RedisServer::start();
    let db = temp_db("restart");
    let client = Client::connect(&redis.url()).await.unwrap();
    client.stock("r").set_available(300).await.unwrap();
    drop(client);
    let mut workers = Procs(Vec::new());
    workers.spawn(worker_args(
        "consumer",
        &redis.url(),
        &log_redis,
        vec![
            kv("db", db.display()),
            kv("sku", "r"),
            kv("name", "w"),
            kv("claim_ms", 500),
        ],
    ));
    let mut buyers = Procs(Vec::new());
    for _ in 0..4 {
        buyers.spawn(worker_args(
            "buyer",
            &redis.url(),
            &log_redis,
            vec![kv("sku", "r"), kv("attempts", 2000), kv("tasks", 8)],
        ));
    }
    let mut log = log_redis.connection();
    let deadline = Instant::now() + Duration::from_secs(20);
    while count(&mut log, "answers:r:reserved") < 50 {
        assert!(Instant::now() < deadline, "the sale did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    redis.restart();
    let restarted_at = count(&mut log, "answers:r:reserved");
    buyers.wait_all();
    let () = redis::cmd("SET")
        .arg("stop")
        .arg(1)
        .query(&mut log)
        .unwrap();
    workers.wait_all();
    let told = told(&mut log, "r");
    let in_db = orders_in_db(&db, "r");
    let unknown = count(&mut log, "unknown:r");
    let left = available(&redis.url(), "r").await;
    eprintln!(
        "restart after {restarted_at} reservations: told {}, stored {}, left {left}, unanswered {unknown}",
        told.len(),
        in_db.len()
    );
    assert!(told.len() <= 300, "oversold: {}", told.len());
    assert_eq!(unknown, 0, "every buyer got an answer after the restart");
    let missing: Vec<_> = told.iter().filter(|o| !in_db.contains(*o)).collect();
    assert!(missing.is_empty(), "told but not stored: {missing:?}");
    assert_eq!(
        told.len() as u64 + left,
        300,
        "Redis and the answers reconcile"
    );
    assert_eq!(in_db.len(), told.len());
    remove_db(&db);
}
