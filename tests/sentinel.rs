//! Redis Sentinel: a master, a replica and three sentinels (real
//! `redis-server` and `redis-sentinel` processes on loopback ports). The
//! master is killed under load; the client follows the failover to the
//! promoted replica with no restart.

mod support;

use herdcache::{Client, Reservation};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::RedisServer;

struct Sentinel {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Sentinel {
    fn start(master_port: u16) -> Sentinel {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("herdcache-sentinel-{port}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {}\n\
                 sentinel monitor mymaster 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds mymaster 500\n\
                 sentinel failover-timeout mymaster 2000\n\
                 sentinel parallel-syncs mymaster 1\n",
                dir.display()
            ),
        )
        .unwrap();
        let child = Command::new("redis-sentinel")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `redis-sentinel` ({e}); Debian: apt-get install redis-sentinel")
            });
        Sentinel { child, port, dir }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn conn(&self) -> Option<redis::Connection> {
        redis::Client::open(self.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()
    }

    fn master_port(&self) -> Option<u16> {
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg("mymaster")
            .query(&mut self.conn()?)
            .ok()?;
        addr.map(|a| a.1)
    }

    fn replicas_known(&self) -> usize {
        let Some(mut c) = self.conn() else { return 0 };
        redis::cmd("SENTINEL")
            .arg("replicas")
            .arg("mymaster")
            .query::<Vec<redis::Value>>(&mut c)
            .map(|r| r.len())
            .unwrap_or(0)
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_failover_to_the_promoted_replica() {
    let mut master = RedisServer::start();
    let replica = RedisServer::start_with(&[
        "--replicaof".into(),
        "127.0.0.1".into(),
        master.port().to_string(),
    ]);
    let sentinels: Vec<Sentinel> = (0..3).map(|_| Sentinel::start(master.port())).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    while sentinels.iter().any(|s| s.replicas_known() == 0) {
        assert!(Instant::now() < deadline, "sentinels never saw the replica");
        std::thread::sleep(Duration::from_millis(100));
    }
    let urls: Vec<String> = sentinels.iter().map(Sentinel::url).collect();
    let client = Client::sentinel(&urls, "mymaster")
        .await
        .expect("connect through sentinel");
    let cache = client.cache::<u64>("ns").build().await.unwrap();
    let stock = client.stock("s");
    stock.set_available(1_000_000).await.unwrap();
    cache.set("k", 1).await.unwrap();
    assert_eq!(*cache.get("k").await.unwrap().unwrap(), 1);

    // Writers under load: record when each write succeeded or failed.
    // (started, finished, succeeded) of every write.
    let log: Arc<Mutex<Vec<(Instant, Instant, bool)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for t in 0..4 {
        let (cache, stock, log, stop) = (cache.clone(), stock.clone(), log.clone(), stop.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let started = Instant::now();
                let ok = if t % 2 == 0 {
                    cache.set("k", i).await.is_ok()
                } else {
                    matches!(
                        stock.reserve(&format!("o{t}-{i}"), "u", 1).await,
                        Ok(Reservation::Reserved { .. })
                    )
                };
                log.lock().unwrap().push((started, Instant::now(), ok));
                if !ok {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let old_port = master.port();
    master.kill();
    // The process is gone (killed and reaped): a write started from now
    // on can only succeed on another master.
    let killed = Instant::now();
    // The failover: when the sentinels name the replica as master.
    let failed_over = loop {
        if sentinels
            .iter()
            .any(|s| s.master_port() == Some(replica.port()))
        {
            break Instant::now();
        }
        assert!(killed.elapsed() < Duration::from_secs(30), "no failover");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    // The first write started after the kill that succeeded went to the
    // new master (the old one is dead).
    let first_write = loop {
        let first = log
            .lock()
            .unwrap()
            .iter()
            .find(|(started, _, ok)| *ok && *started > killed)
            .map(|(_, done, _)| *done);
        if let Some(at) = first {
            break at;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "never wrote to the new master"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let failover = failed_over.duration_since(killed);
    let to_write = first_write.duration_since(killed);
    let failed = log.lock().unwrap().iter().filter(|(_, _, ok)| !ok).count();
    eprintln!(
        "sentinel: master :{old_port} killed; failover to :{} after {failover:?}; first write to the \
         new master {to_write:?} after the kill ({:?} after the failover); {failed} failed writes meanwhile",
        replica.port(),
        to_write.saturating_sub(failover)
    );
    assert!(
        to_write <= failover + Duration::from_secs(1),
        "{to_write:?} vs failover {failover:?}"
    );
    // The tools work on the new master, with no new client.
    let mut conn = replica.connection();
    let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut conn).unwrap();
    assert!(matches!(&role[0], redis::Value::BulkString(r) if r == b"master"));
    cache.set("k", 99).await.unwrap();
    let v: Option<Vec<u8>> = redis::cmd("GET")
        .arg("hc:{ns:k}:v")
        .query(&mut conn)
        .unwrap();
    assert!(v.is_some(), "the cache writes to the promoted replica");
    let g = client.lock("after").acquire().await.unwrap();
    g.release().await.unwrap();
}
