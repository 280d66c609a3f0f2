//! A flash sale end to end, with no setup: a throwaway redis-server, an
//! embedded SQLite database, buyers and order workers in separate
//! processes.
//!
//! ```text
//! cargo run --release --example flash_sale
//! REDIS_URL=redis://127.0.0.1:6379/ cargo run --release --example flash_sale
//! ```
//!
//! - SQLite holds the product (with its stock of 100) and the `orders`
//!   table (`order_id` is the primary key: storing an order twice is a
//!   no-op, which is what makes at-least-once delivery safe).
//! - Every buyer reads the product page through `Cache::get_or_compute`
//!   (one database read for the whole fleet), warms the stock from the
//!   database with `Stock::warm` (once for the fleet), then reserves.
//! - Order workers consume the SKU's order stream in one consumer group and
//!   write each order to SQLite, acknowledging only after the write.
//! - At the end it prints sold, remaining, orders in the database, oversold
//!   and whether Redis, the stream and the database agree.
//!
//! The same binary is the buyer and the worker process (`flash_sale buyer
//! key=value…`, `flash_sale consumer key=value…`), which the tests in
//! `tests/flash_sale.rs` spawn too. Buyers log what they were told on the
//! `log` Redis (`told:<sku>`: order ids answered `Reserved`), so a test
//! can check it even across a restart of the sale's Redis.

#[path = "../tests/support/mod.rs"]
mod support;

use herdcache::{Client, OrderEvent, Reservation};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Product {
    id: u64,
    name: String,
    price_cents: u64,
}

/// `key=value` arguments of the worker modes.
struct Opts(HashMap<String, String>);

impl Opts {
    fn parse(args: &[String]) -> Opts {
        Opts(
            args.iter()
                .filter_map(|a| a.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    fn get(&self, key: &str) -> &str {
        self.0
            .get(key)
            .map(String::as_str)
            .unwrap_or_else(|| panic!("missing {key}=…"))
    }

    fn or<'a>(&'a self, key: &str, default: &'a str) -> &'a str {
        self.0.get(key).map_or(default, String::as_str)
    }

    fn num(&self, key: &str, default: u64) -> u64 {
        self.0.get(key).map_or(default, |v| v.parse().expect(key))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    match args.first().map(String::as_str) {
        Some("buyer") => rt.block_on(buyer(Opts::parse(&args[1..]))),
        Some("consumer") => rt.block_on(consumer(Opts::parse(&args[1..]))),
        None => rt.block_on(demo()),
        Some(other) => panic!("unknown mode {other:?}"),
    }
}

/// Creates the database: one product with its stock, and the orders table.
fn create_db(path: &Path, stock: u64) {
    let con = Connection::open(path).expect("open SQLite");
    con.execute_batch(
        "PRAGMA journal_mode = WAL;
         CREATE TABLE IF NOT EXISTS products (id INTEGER PRIMARY KEY, name TEXT NOT NULL,
             price_cents INTEGER NOT NULL, stock INTEGER NOT NULL);
         CREATE TABLE IF NOT EXISTS orders (order_id TEXT PRIMARY KEY, sku TEXT NOT NULL,
             user_id TEXT NOT NULL, qty INTEGER NOT NULL, cancelled INTEGER NOT NULL DEFAULT 0);",
    )
    .expect("create tables");
    con.execute(
        "INSERT OR REPLACE INTO products (id, name, price_cents, stock) VALUES (1, 'Limited sneaker', 19900, ?1)",
        params![stock as i64],
    )
    .expect("insert product");
}

fn open_db(path: &str) -> Connection {
    let con = Connection::open(path).expect("open SQLite");
    // Several worker processes write: wait for each other's locks.
    con.busy_timeout(Duration::from_secs(10))
        .expect("busy timeout");
    con
}

async fn log_conn(url: &str) -> redis::aio::MultiplexedConnection {
    support::bookkeeping(url).await
}

/// One buyer process: `url` (the sale's Redis), `log` (where answers are
/// logged), `sku`, `runs` (sales `sku-0`, `sku-1`, … when above 1),
/// `attempts` and `tasks`, `limit` (per user), `user=random|fixed`, `db`
/// (the SQLite file, for the product page and the warm-up; optional).
async fn buyer(o: Opts) {
    // Lazy: a buyer started while the sale's Redis restarts still starts,
    // and its reserves retry until Redis answers.
    let client = Client::builder(o.get("url"))
        .connect_lazy(true)
        .connect()
        .await
        .expect("connect");
    let mut log = log_conn(o.get("log")).await;
    let runs = o.num("runs", 1);
    let attempts = o.num("attempts", 1250);
    let tasks = o.num("tasks", 16);
    let limit = o.num("limit", 0) as u32;
    let fixed_user = o.or("user", "random") == "fixed";
    let db = o.0.get("db").cloned();
    let pid = std::process::id();
    let products = client
        .cache::<Product>("products")
        .ttl(Duration::from_secs(60))
        .build()
        .await
        .expect("cache (a lazy client builds it even while Redis is down)");
    for run in 0..runs {
        let sku = if runs > 1 {
            format!("{}-{run}", o.get("sku"))
        } else {
            o.get("sku").to_owned()
        };
        let stock = client.stock(&sku).per_user_limit(limit);
        if let Some(db) = &db {
            let (db, mut log) = (db.clone(), log.clone());
            stock
                .warm(Duration::from_secs(10), move || async move {
                    let _: i64 = redis::cmd("INCR")
                        .arg("warm_loads")
                        .query_async(&mut log)
                        .await?;
                    let con = open_db(&db);
                    let n: i64 = con
                        .query_row("SELECT stock FROM products WHERE id = 1", [], |r| r.get(0))
                        .map_err(|e| redis::RedisError::from(std::io::Error::other(e)))?;
                    Ok::<u64, redis::RedisError>(n as u64)
                })
                .await
                .expect("warm the stock");
        }
        let per_task = attempts.div_ceil(tasks);
        let mut all = Vec::new();
        for t in 0..tasks {
            let (stock, mut log, products, db) =
                (stock.clone(), log.clone(), products.clone(), db.clone());
            let sku = sku.clone();
            all.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                for i in 0..per_task {
                    let n = t * per_task + i;
                    if n >= attempts {
                        break;
                    }
                    if let Some(db) = &db {
                        let (db, mut log) = (db.clone(), log.clone());
                        products
                            .get_or_compute("1", move || async move {
                                let _: i64 = redis::cmd("INCR")
                                    .arg("page_loads")
                                    .query_async(&mut log)
                                    .await?;
                                let con = open_db(&db);
                                con.query_row(
                                    "SELECT id, name, price_cents FROM products WHERE id = 1",
                                    [],
                                    |r| {
                                        Ok(Product {
                                            id: r.get::<_, i64>(0)? as u64,
                                            name: r.get(1)?,
                                            price_cents: r.get::<_, i64>(2)? as u64,
                                        })
                                    },
                                )
                                .map_err(|e| redis::RedisError::from(std::io::Error::other(e)))
                            })
                            .await
                            .expect("product page");
                    }
                    let order = format!("o-{pid}-{run}-{n}");
                    let user = if fixed_user {
                        "u-fixed".to_owned()
                    } else {
                        format!("u-{}", fastrand::u32(..1_000_000))
                    };
                    let started = Instant::now();
                    let Some(answer) = reserve_retrying(&stock, &order, &user).await else {
                        let _: i64 = redis::cmd("INCR")
                            .arg(format!("unknown:{sku}"))
                            .query_async(&mut log)
                            .await
                            .expect("INCR");
                        continue;
                    };
                    lat.push(started.elapsed().as_micros() as u64);
                    let kind = match answer {
                        Reservation::Reserved { .. } => "reserved",
                        Reservation::SoldOut => "sold_out",
                        Reservation::UserLimit => "user_limit",
                        _ => "other",
                    };
                    let mut pipe = redis::pipe();
                    pipe.cmd("INCR")
                        .arg(format!("answers:{sku}:{kind}"))
                        .ignore();
                    if kind == "reserved" {
                        pipe.cmd("RPUSH")
                            .arg(format!("told:{sku}"))
                            .arg(&order)
                            .ignore();
                    }
                    let () = pipe.query_async(&mut log).await.expect("log the answer");
                    // Every tenth order is retried: it must get the same answer.
                    if n.is_multiple_of(10)
                        && reserve_retrying(&stock, &order, &user).await.as_ref() != Some(&answer)
                    {
                        let _: i64 = redis::cmd("INCR")
                            .arg("mismatch")
                            .query_async(&mut log)
                            .await
                            .expect("INCR");
                    }
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in all {
            lat.extend(t.await.expect("buyer task"));
        }
        lat.sort_unstable();
        let line = format!(
            "{} {} {}",
            lat.len(),
            support::percentile(&lat, 0.5),
            support::percentile(&lat, 0.99)
        );
        let _: i64 = redis::cmd("RPUSH")
            .arg(format!("latency:{sku}"))
            .arg(line)
            .query_async(&mut log)
            .await
            .expect("RPUSH");
    }
}

/// Reserves, retrying the same order id while Redis fails (safe: the
/// answer is idempotent), for up to 20 s.
async fn reserve_retrying(
    stock: &herdcache::Stock,
    order: &str,
    user: &str,
) -> Option<Reservation> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match stock.reserve(order, user, 1).await {
            Ok(answer) => return Some(answer),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            Err(_) => return None,
        }
    }
}

/// One order worker: consumes `sku` (or `sku-0`… for `runs` above 1) in
/// group `group` as `name`, writing orders to the SQLite file `db`,
/// acknowledging after each write (`slow_ms` first: to leave orders pending
/// for a test that kills it). Stops when `stop` exists on `log` and no
/// order came for a while, or after 120 s.
async fn consumer(o: Opts) {
    let client = Client::connect(o.get("url")).await.expect("connect");
    let mut log = log_conn(o.get("log")).await;
    let runs = o.num("runs", 1);
    let slow = Duration::from_millis(o.num("slow_ms", 0));
    let claim_after = Duration::from_millis(o.num("claim_ms", 2000));
    let con = open_db(o.get("db"));
    let mut consumers = Vec::new();
    for run in 0..runs {
        let sku = if runs > 1 {
            format!("{}-{run}", o.get("sku"))
        } else {
            o.get("sku").to_owned()
        };
        let orders = client
            .stock(&sku)
            .orders()
            .claim_after(claim_after)
            .block(Duration::from_millis(50));
        let mut c = loop {
            match orders.consumer(o.or("group", "db"), o.get("name")).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        // A fresh consumer's first poll also checks for orders to take
        // over; then each waits in turn.
        let _ = c.next_timeout(Duration::from_millis(1)).await;
        consumers.push(c);
    }
    let started = Instant::now();
    let mut quiet_since = Instant::now();
    loop {
        let mut got = false;
        for c in &mut consumers {
            let Ok(Some(d)) = c.next_timeout(Duration::from_millis(20)).await else {
                continue;
            };
            got = true;
            tokio::time::sleep(slow).await;
            match d.event() {
                OrderEvent::Reserved => con
                    .execute(
                        "INSERT OR IGNORE INTO orders (order_id, sku, user_id, qty) VALUES (?1, ?2, ?3, ?4)",
                        params![d.order_id(), d.sku(), d.user_id(), d.qty()],
                    )
                    .map(|_| ())
                    .expect("store the order"),
                _ => con
                    .execute(
                        "UPDATE orders SET cancelled = 1 WHERE order_id = ?1",
                        params![d.order_id()],
                    )
                    .map(|_| ())
                    .expect("store the cancellation"),
            }
            // Acknowledged only once stored: a crash before this line gets
            // the order delivered again, and the primary key makes the
            // second write a no-op.
            let _ = d.ack().await;
        }
        if got {
            quiet_since = Instant::now();
            continue;
        }
        let stop: bool = redis::cmd("EXISTS")
            .arg("stop")
            .query_async(&mut log)
            .await
            .unwrap_or(true);
        if (stop && quiet_since.elapsed() > Duration::from_millis(500))
            || started.elapsed() > Duration::from_secs(120)
        {
            return;
        }
    }
}

fn spawn(args: &[String]) -> Child {
    Command::new(std::env::current_exe().expect("current exe"))
        .args(args)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn a worker process")
}

async fn demo() {
    let (_server, url) = match std::env::var("REDIS_URL") {
        Ok(url) => (None, url),
        Err(_) => {
            let s = support::RedisServer::start();
            let url = s.url();
            (Some(s), url)
        }
    };
    let initial = 100;
    let stamp = support::now_ms();
    let sku = format!("sneaker-{stamp}");
    let db: PathBuf = std::env::temp_dir().join(format!("herdcache-flash-sale-{stamp}.sqlite3"));
    create_db(&db, initial);
    let db_s = db.to_string_lossy().into_owned();
    let client = Client::connect(&url).await.expect("connect");
    let mut log = log_conn(&url).await;
    let _: () = redis::cmd("DEL")
        .arg(&["stop", "warm_loads", "page_loads", "mismatch"])
        .query_async(&mut log)
        .await
        .expect("DEL");
    let (buyers, attempts, tasks) = (4, 500, 16);
    println!(
        "flash sale: {initial} units of one SKU, {buyers} buyer processes x {attempts} attempts \
         ({tasks} tasks each), 2 order workers; Redis {url}"
    );
    let arg = |k: &str, v: &str| format!("{k}={v}");
    let mut consumers: Vec<Child> = (0..2)
        .map(|i| {
            spawn(&[
                "consumer".into(),
                arg("url", &url),
                arg("log", &url),
                arg("db", &db_s),
                arg("sku", &sku),
                arg("name", &format!("worker-{i}")),
            ])
        })
        .collect();
    let started = Instant::now();
    let mut children: Vec<Child> = (0..buyers)
        .map(|_| {
            spawn(&[
                "buyer".into(),
                arg("url", &url),
                arg("log", &url),
                arg("db", &db_s),
                arg("sku", &sku),
                arg("attempts", &attempts.to_string()),
                arg("tasks", &tasks.to_string()),
            ])
        })
        .collect();
    for c in &mut children {
        assert!(
            c.wait().expect("wait for a buyer").success(),
            "a buyer failed"
        );
    }
    let elapsed = started.elapsed();
    let () = redis::cmd("SET")
        .arg("stop")
        .arg(1)
        .query_async(&mut log)
        .await
        .expect("SET");
    for c in &mut consumers {
        assert!(
            c.wait().expect("wait for a worker").success(),
            "a worker failed"
        );
    }

    let counts = log.clone();
    let count = |key: String| {
        let mut log = counts.clone();
        async move {
            redis::cmd("GET")
                .arg(key)
                .query_async::<Option<u64>>(&mut log)
                .await
                .expect("GET")
                .unwrap_or(0)
        }
    };
    let sold = count(format!("answers:{sku}:reserved")).await;
    let sold_out = count(format!("answers:{sku}:sold_out")).await;
    let remaining = client.stock(&sku).available().await.expect("available");
    let stream_len: u64 = redis::cmd("XLEN")
        .arg(format!("hc:st:{{{sku}}}:o"))
        .query_async(&mut log)
        .await
        .expect("XLEN");
    let con = open_db(&db_s);
    let in_db: i64 = con
        .query_row(
            "SELECT COUNT(*) FROM orders WHERE sku = ?1",
            params![sku],
            |r| r.get(0),
        )
        .expect("count orders");
    let stock_in_db: Option<i64> = con
        .query_row("SELECT stock FROM products WHERE id = 1", [], |r| r.get(0))
        .optional()
        .expect("read stock");
    let mut lat: Vec<(u64, u64, u64)> = Vec::new();
    let lines: Vec<String> = redis::cmd("LRANGE")
        .arg(format!("latency:{sku}"))
        .arg(0)
        .arg(-1)
        .query_async(&mut log)
        .await
        .expect("LRANGE");
    for l in lines {
        let v: Vec<u64> = l.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
        lat.push((v[0], v[1], v[2]));
    }
    let attempts_done: u64 = lat.iter().map(|l| l.0).sum();
    let oversold = sold.saturating_sub(initial);
    let reconciles = sold + remaining == initial
        && in_db as u64 == sold
        && stream_len == sold
        && stock_in_db == Some(initial as i64);
    println!();
    println!(
        "  attempts            {attempts_done} in {elapsed:.2?} ({:.0}/s)",
        attempts_done as f64 / elapsed.as_secs_f64()
    );
    println!("  sold (Reserved)     {sold}");
    println!("  sold out answers    {sold_out}");
    println!("  remaining in Redis  {remaining}");
    println!("  orders in stream    {stream_len}");
    println!("  orders in SQLite    {in_db}");
    println!("  oversold            {oversold}");
    println!(
        "  reserve p50 / p99   {} / {} µs (per buyer process: {})",
        lat.iter().map(|l| l.1).max().unwrap_or(0),
        lat.iter().map(|l| l.2).max().unwrap_or(0),
        lat.iter()
            .map(|l| format!("{}/{}", l.1, l.2))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  product page loads  {} (database reads for the page, whole fleet)",
        count("page_loads".into()).await
    );
    println!(
        "  stock warm-ups      {} (database reads of the stock, whole fleet)",
        count("warm_loads".into()).await
    );
    println!(
        "  retries, same answer {}",
        if count("mismatch".into()).await == 0 {
            "yes"
        } else {
            "NO"
        }
    );
    println!(
        "  Redis, stream and database reconcile: {}",
        if reconciles { "yes" } else { "NO" }
    );
    let _ = std::fs::remove_file(&db);
    let _ = std::fs::remove_file(db.with_extension("sqlite3-wal"));
    let _ = std::fs::remove_file(db.with_extension("sqlite3-shm"));
    if oversold > 0 || !reconciles {
        std::process::exit(1);
    }
}
