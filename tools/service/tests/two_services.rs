//! Two `service` processes on one Redis and one SQLite file, driven over
//! HTTP as a load balancer would:
//!
//! 1. 500 concurrent `GET`s of one cold product, split across both and
//!    released at one instant: one database query in all, every answer the
//!    same row.
//! 2. `PUT` a new price through A: from the moment it returns, A never
//!    answers the old row, and B answers the new one within 100 ms.
//! 3. A missing product: 404 from both with one query (negative caching);
//!    a `PUT` through B creates it and both answer it.
//! 4. `/metrics` of each shows the requests this test sent it, the queries,
//!    and cache counters consistent with all that; SIGTERM stops both
//!    cleanly.

#[path = "../../../tests/support/mod.rs"]
mod support;

use serde_json::Value;
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STAMPEDE: usize = 500;
const COLD: i64 = 500;
const MISSING: i64 = 1_000_001;
const PROPAGATION_BOUND: Duration = Duration::from_millis(100);

/// A service process of ours, SIGKILLed if still running when dropped (so
/// a failing test leaves nothing behind).
struct Service {
    name: &'static str,
    child: Child,
    addr: SocketAddr,
}

impl Service {
    /// Spawns a service; [`wait_ready`](Self::wait_ready) reads its address.
    fn spawn(name: &'static str, redis_url: &str, db: &Path) -> (Service, mpsc::Receiver<String>) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_service"))
            .env("REDIS_URL", redis_url)
            .env("DATABASE_PATH", db)
            .env("LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the service binary");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Drains stdout until the process exits, so it never blocks on a
        // full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[service {name}] {line}");
                let _ = tx.send(line);
            }
        });
        let service = Service {
            name,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        };
        (service, rx)
    }

    fn wait_ready(&mut self, lines: &mpsc::Receiver<String>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = lines.recv_timeout(left).unwrap_or_else(|e| {
                panic!("service {} printed no address within 30 s ({e})", self.name)
            });
            if let Some(addr) = line.strip_prefix("listening on http://") {
                self.addr = addr.trim().parse().expect("a socket address");
                return;
            }
        }
    }

    /// SIGTERM, then waits (at most 15 s) for the process to exit.
    fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(sent, "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "service {} still running 15 s after SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The SQLite file and its WAL companions, removed on drop.
struct TempDb(PathBuf);

impl Drop for TempDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}

/// What the test sent each service, by (service, method, route, status):
/// the counts its `/metrics` must show.
#[derive(Clone, Default)]
struct Sent(Arc<Mutex<HashMap<Exchange, u64>>>);

/// (service, method, route, status)
type Exchange = (SocketAddr, String, String, u16);

impl Sent {
    fn count(&self, addr: SocketAddr, method: &str, route: &str, status: u16) -> u64 {
        let sent = self.0.lock().unwrap();
        sent.get(&(addr, method.to_owned(), route.to_owned(), status))
            .copied()
            .unwrap_or(0)
    }
}

struct Reply {
    status: u16,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

fn route_of(path: &str) -> &'static str {
    if path.starts_with("/products/") {
        "/products/{id}"
    } else if path == "/metrics" {
        "/metrics"
    } else {
        "unmatched"
    }
}

/// One HTTP/1.1 exchange on its own connection (`Connection: close`),
/// bounded at 10 s. `stream` is an already open connection, if any.
async fn exchange(
    sent: &Sent,
    addr: SocketAddr,
    stream: Option<TcpStream>,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Reply {
    let io = async {
        let mut stream = match stream {
            Some(s) => s,
            None => TcpStream::connect(addr).await?,
        };
        let body = body.unwrap_or("");
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        std::io::Result::Ok(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .unwrap_or_else(|_| panic!("{method} {path} to {addr}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("{method} {path} to {addr}: {e}"));
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a header block");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "unexpected chunked response: {head}"
    );
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    *sent
        .0
        .lock()
        .unwrap()
        .entry((addr, method.to_owned(), route_of(path).to_owned(), status))
        .or_default() += 1;
    Reply {
        status,
        body: body.to_owned(),
    }
}

async fn get(sent: &Sent, addr: SocketAddr, path: &str) -> Reply {
    exchange(sent, addr, None, "GET", path, None).await
}

/// A `/metrics` scrape: every sample, by its name and labels as written.
async fn scrape(sent: &Sent, addr: SocketAddr) -> HashMap<String, u64> {
    let reply = get(sent, addr, "/metrics").await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let mut samples = HashMap::new();
    for line in reply.body.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let name = series.split('{').next().unwrap();
        assert!(
            reply.body.contains(&format!("# TYPE {name} counter\n")),
            "no TYPE line for {name}"
        );
        samples.insert(series.to_owned(), value.parse().expect("an integer"));
    }
    samples
}

fn sample(m: &HashMap<String, u64>, series: &str) -> u64 {
    *m.get(series)
        .unwrap_or_else(|| panic!("{series} missing from /metrics"))
}

fn cache(m: &HashMap<String, u64>, field: &str) -> u64 {
    sample(m, &format!("herdcache_{field}_total{{cache=\"products\"}}"))
}

fn db_queries(m: &HashMap<String, u64>) -> u64 {
    sample(m, "service_db_queries_total")
}

fn requests(method: &str, route: &str, status: u16) -> String {
    format!("service_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}}")
}

#[test]
fn two_services_one_query_per_cold_product_and_invalidation_across_processes() {
    let redis = support::RedisServer::start();
    let db = TempDb(std::env::temp_dir().join(format!(
        "herdcache-service-test-{}-{}.sqlite3",
        std::process::id(),
        support::unix_us()
    )));
    // Both start at once on a database that does not exist yet: one of
    // them creates and fills it.
    let (mut a, a_lines) = Service::spawn("A", &redis.url(), &db.0);
    let (mut b, b_lines) = Service::spawn("B", &redis.url(), &db.0);
    a.wait_ready(&a_lines);
    b.wait_ready(&b_lines);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(drive(a.addr, b.addr));

    for service in [&mut a, &mut b] {
        let status = service.terminate();
        assert!(
            status.success(),
            "service {} exited with {status} after SIGTERM",
            service.name
        );
    }
    drop(redis);
}

async fn drive(a: SocketAddr, b: SocketAddr) {
    let sent = Sent::default();
    let m = scrape(&sent, a).await;
    assert_eq!(db_queries(&m) + db_queries(&scrape(&sent, b).await), 0);

    // 1. The stampede: every connection is open before the barrier, then
    // all 500 requests are sent at once, alternately to A and B.
    let barrier = Arc::new(tokio::sync::Barrier::new(STAMPEDE));
    let path = format!("/products/{COLD}");
    let started = Instant::now();
    let tasks: Vec<_> = (0..STAMPEDE)
        .map(|i| {
            let addr = if i % 2 == 0 { a } else { b };
            let (barrier, sent, path) = (barrier.clone(), sent.clone(), path.clone());
            tokio::spawn(async move {
                let stream =
                    tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
                        .await
                        .expect("connect within 10 s")
                        .expect("connect");
                barrier.wait().await;
                exchange(&sent, addr, Some(stream), "GET", &path, None).await
            })
        })
        .collect();
    let mut replies = Vec::with_capacity(STAMPEDE);
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    let stampede_time = started.elapsed();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(
            reply.body, replies[0].body,
            "every caller gets the same row"
        );
    }
    let old = replies[0].json();
    assert_eq!(old["id"], COLD);
    assert_eq!(old["version"], 1);
    let (ma, mb) = (scrape(&sent, a).await, scrape(&sent, b).await);
    let stampede_queries = db_queries(&ma) + db_queries(&mb);
    eprintln!(
        "stampede: {STAMPEDE} concurrent GETs of a cold product over 2 processes in {stampede_time:?}: \
         {stampede_queries} database query (A {}, B {})",
        db_queries(&ma),
        db_queries(&mb)
    );
    assert_eq!(
        stampede_queries, 1,
        "one database query across both processes"
    );
    assert_eq!(cache(&ma, "loads") + cache(&mb, "loads"), 1);

    // B now holds the old row in its L1: the case invalidation must reach.
    let before = get(&sent, b, &path).await;
    assert_eq!(before.json()["version"], 1);

    // 2. A new price through A.
    let put = exchange(
        &sent,
        a,
        None,
        "PUT",
        &path,
        Some(r#"{"name":"Product 500 (sale)","price_cents":4242}"#),
    )
    .await;
    let put_returned = Instant::now();
    assert_eq!(put.status, 200, "{}", put.body);
    let new = put.json();
    assert_eq!(new["version"], 2);
    assert_eq!(new["price_cents"], 4242);
    let new_body = put.body.clone();

    let reader_a = {
        let (sent, path, new_body) = (sent.clone(), path.clone(), new_body.clone());
        async move {
            for n in 0..200 {
                let reply = get(&sent, a, &path).await;
                assert_eq!(reply.status, 200);
                assert_eq!(
                    reply.body, new_body,
                    "A answered GET #{n} after its own PUT returned with another row"
                );
            }
        }
    };
    let reader_b = {
        let (sent, path, new_body) = (sent.clone(), path.clone(), new_body.clone());
        async move {
            let mut last_stale_sent = None;
            for stale in 0..2_000 {
                let asked = put_returned.elapsed();
                let reply = get(&sent, b, &path).await;
                assert_eq!(reply.status, 200);
                if reply.body == new_body {
                    let seen = put_returned.elapsed();
                    // Once B has the new row, it keeps it.
                    for _ in 0..20 {
                        assert_eq!(get(&sent, b, &path).await.body, new_body);
                    }
                    return (asked, seen, stale, last_stale_sent);
                }
                assert_eq!(reply.json()["version"], 1, "B answered neither row");
                last_stale_sent = Some(asked);
                if put_returned.elapsed() > Duration::from_secs(2) {
                    break;
                }
            }
            panic!("B still answered the old row 2 s after the PUT returned");
        }
    };
    let ((), (asked, seen, stale, last_stale)) = tokio::join!(reader_a, reader_b);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    eprintln!(
        "propagation: B answered the new row {:.2} ms after A's PUT returned, to a GET sent at \
         {:.2} ms ({stale} old answers before it{})",
        ms(seen),
        ms(asked),
        last_stale.map_or(String::new(), |t| format!(
            ", the last one to a GET sent at {:.2} ms",
            ms(t)
        )),
    );
    assert!(
        seen <= PROPAGATION_BOUND,
        "B took {seen:?} to answer the new row (bound {PROPAGATION_BOUND:?})"
    );
    let (ma, mb) = (scrape(&sent, a).await, scrape(&sent, b).await);
    assert_eq!(
        db_queries(&ma) + db_queries(&mb),
        2,
        "one more query fleet-wide after the PUT"
    );

    // 3. A product that does not exist: 404 everywhere, one query (the
    // miss is cached); a PUT through B creates it, and both see it.
    let missing = format!("/products/{MISSING}");
    for i in 0..10 {
        let reply = get(&sent, if i % 2 == 0 { a } else { b }, &missing).await;
        assert_eq!(reply.status, 404, "{}", reply.body);
    }
    let (ma, mb) = (scrape(&sent, a).await, scrape(&sent, b).await);
    assert_eq!(db_queries(&ma) + db_queries(&mb), 3, "the miss is cached");
    let created = exchange(
        &sent,
        b,
        None,
        "PUT",
        &missing,
        Some(r#"{"name":"New product","price_cents":100}"#),
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.body);
    assert_eq!(created.json()["version"], 1);
    let reply = get(&sent, b, &missing).await;
    assert_eq!((reply.status, &reply.body), (200, &created.body));
    let created_at = Instant::now();
    loop {
        let reply = get(&sent, a, &missing).await;
        if reply.status == 200 {
            assert_eq!(reply.body, created.body);
            break;
        }
        assert!(
            created_at.elapsed() < Duration::from_secs(2),
            "A still answers 404 for a created product"
        );
    }
    // A bad body is refused before anything is written.
    let refused = exchange(&sent, a, None, "PUT", &path, Some(r#"{"name":"x"}"#)).await;
    assert_eq!(refused.status, 422, "{}", refused.body);

    // 4. What /metrics says against what happened.
    let (ma, mb) = (scrape(&sent, a).await, scrape(&sent, b).await);
    for (name, addr, m) in [("A", a, &ma), ("B", b, &mb)] {
        // Every request this test sent (the scrape just read is answered
        // after its own body is made, so it is not in it yet).
        for (method, route, status) in [
            ("GET", "/products/{id}", 200),
            ("GET", "/products/{id}", 404),
            ("PUT", "/products/{id}", 200),
            ("PUT", "/products/{id}", 422),
        ] {
            let want = sent.count(addr, method, route, status);
            let have = m
                .get(&requests(method, route, status))
                .copied()
                .unwrap_or(0);
            assert_eq!(have, want, "{name}: {method} {route} {status}");
        }
        assert_eq!(
            sample(m, &requests("GET", "/metrics", 200)),
            sent.count(addr, "GET", "/metrics", 200) - 1,
            "{name}: scrapes"
        );
        assert!(cache(m, "l1_hits") > 0, "{name}: L1 hits");
        assert!(
            cache(m, "remote_changes") >= 1,
            "{name}: the other's PUT reached it"
        );
        for field in [
            "load_errors",
            "wait_timeouts",
            "redis_errors",
            "redis_fallback_loads",
        ] {
            assert_eq!(cache(m, field), 0, "{name}: {field}");
        }
        assert_eq!(sample(m, "service_db_writes_total"), 1, "{name}: writes");
        assert_eq!(sample(m, "service_invalidate_errors_total"), 0);
        assert_eq!(
            db_queries(m),
            cache(m, "loads"),
            "{name}: one query per load"
        );
    }
    let total_queries = db_queries(&ma) + db_queries(&mb);
    assert_eq!(total_queries, 4);
    // B was served the cold product without loading it: from Redis, or by
    // A's fill notice, or waiting on A's lock (or the other way round).
    let waited = |m: &HashMap<String, u64>| {
        cache(m, "l2_hits") + cache(m, "remote_fills") + cache(m, "notified_wakeups")
    };
    assert!(waited(&ma) + waited(&mb) > 0);
    eprintln!(
        "metrics: A {} GET 200, {} l1 hits, {} coalesced, {} queries; \
         B {} GET 200, {} l1 hits, {} coalesced, {} queries",
        sample(&ma, &requests("GET", "/products/{id}", 200)),
        cache(&ma, "l1_hits"),
        cache(&ma, "coalesced"),
        db_queries(&ma),
        sample(&mb, &requests("GET", "/products/{id}", 200)),
        cache(&mb, "l1_hits"),
        cache(&mb, "coalesced"),
        db_queries(&mb),
    );
}
