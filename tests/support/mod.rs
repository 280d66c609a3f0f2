//! Real `redis-server` processes for tests, benches and the demo: each on a
//! free loopback port, with no persistence, killed on drop. Owning the
//! process is what lets a test kill Redis and restart it on the same port.
//!
//! A missing `redis-server` is a loud panic, never a skip.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on 127.0.0.1.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    /// With persistence: its own data directory (kept across restarts,
    /// removed on drop).
    data_dir: Option<PathBuf>,
    /// More `redis-server` arguments (a replica's `--replicaof`, TLS, ACL),
    /// kept for restarts.
    extra: Vec<String>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral loopback port")
        .local_addr()
        .expect("local addr")
        .port()
}

impl RedisServer {
    /// Starts a server on a free port, retrying if another process grabbed
    /// the port between our probe and Redis' bind.
    pub fn start() -> Self {
        Self::start_inner(false, Vec::new())
    }

    /// A server started with more arguments (`--replicaof 127.0.0.1 P`,
    /// `--tls-port …`); they are used again on restart.
    pub fn start_with(extra: &[String]) -> Self {
        Self::start_inner(false, extra.to_vec())
    }

    /// A server that logs every write to its append-only file and fsyncs
    /// it before answering (`appendonly yes`, `appendfsync always`): what
    /// it acknowledged survives [`restart`](Self::restart).
    pub fn start_durable() -> Self {
        Self::start_inner(true, Vec::new())
    }

    fn start_inner(durable: bool, extra: Vec<String>) -> Self {
        let mut last = String::new();
        for _ in 0..5 {
            let port = free_port();
            let data_dir = durable.then(|| {
                let dir = std::env::temp_dir()
                    .join(format!("herdcache-aof-{port}-{}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("create the AOF directory");
                dir
            });
            let mut server = RedisServer {
                child: None,
                port,
                log: PathBuf::new(),
                data_dir,
                extra: extra.clone(),
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(log) => last = log,
            }
        }
        panic!("redis-server did not start after 5 tries; last log:\n{last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.log = std::env::temp_dir().join(format!(
            "herdcache-redis-{}-{}.log",
            self.port,
            std::process::id()
        ));
        let log = std::fs::File::create(&self.log).expect("create redis log file");
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", ""]);
        match &self.data_dir {
            Some(dir) => cmd
                .args(["--appendonly", "yes", "--appendfsync", "always"])
                .args(["--dir", &dir.to_string_lossy()]),
            // A file name of its own: a replica writes the RDB it receives
            // from its master, and a shared `dump.rdb` would be loaded by
            // every server started after it.
            None => cmd
                .args(["--appendonly", "no"])
                .args(["--dir", &std::env::temp_dir().to_string_lossy()])
                .args(["--dbfilename", &self.rdb_name()]),
        };
        cmd.args(&self.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `redis-server` ({e}). Install it (Debian: apt-get install redis-server); \
                     the tests need a real Redis and do not skip without one"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(format!("exited with {status}:\n{}", self.log_text()));
            }
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill();
        Err(format!(
            "not answering PING after 10 s:\n{}",
            self.log_text()
        ))
    }

    fn ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut con).is_ok()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A plain synchronous connection, for test bookkeeping.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("client")
            .get_connection()
            .unwrap_or_else(|e| panic!("connect to test redis: {e}\n{}", self.log_text()))
    }

    /// SIGKILLs the server (the process we started, by its PID).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOPs the server: it keeps its sockets and accepts connections,
    /// but answers nothing (a hung Redis). [`thaw`](Self::thaw) resumes it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("server running").to_string();
        let ok = Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid} failed");
    }

    /// Starts the server again on the same port (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn() {
                Ok(()) => return,
                Err(log) if Instant::now() > deadline => {
                    panic!("redis-server did not restart on port {}:\n{log}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    fn rdb_name(&self) -> String {
        format!("herdcache-{}-{}.rdb", self.port, std::process::id())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_file(&self.log);
        let _ = std::fs::remove_file(std::env::temp_dir().join(self.rdb_name()));
        if let Some(dir) = &self.data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The demo example's binary, which is also the multi-process worker the
/// tests spawn. Built here (a no-op when fresh), so that running one test
/// target alone (`cargo test --test stampede`) never uses a stale worker.
pub fn demo_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| example_bin("demo")).clone()
}

/// The consistency checker's worker (`examples/checker.rs`), built as
/// [`demo_bin`] is.
pub fn checker_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| example_bin("checker")).clone()
}

/// The lock tests' worker (`examples/lock_worker.rs`), built as
/// [`demo_bin`] is.
pub fn lock_worker_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| example_bin("lock_worker")).clone()
}

/// The rate limiter tests' worker (`examples/rate_worker.rs`), built as
/// [`demo_bin`] is.
pub fn rate_worker_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| example_bin("rate_worker")).clone()
}

/// Example `name` built with the test's own profile (once per test binary).
pub fn example_bin_path(name: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, path)) = built.iter().find(|(n, _)| n == name) {
        return path.clone();
    }
    let path = example_bin(name);
    built.push((name.to_owned(), path.clone()));
    path
}

/// Builds example `name` with the test's own profile and returns its path.
fn example_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test> -> target/<profile>/examples/<name>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in target/<profile>/deps");
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let mut build = Command::new(env!("CARGO"));
    build
        .args(["build", "--quiet", "--example", name])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if release {
        build.arg("--release");
    }
    let status = build
        .status()
        .unwrap_or_else(|e| panic!("run cargo to build the {name} worker: {e}"));
    assert!(status.success(), "building the {name} worker failed");
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} is missing after building it",
        bin.display()
    );
    bin
}

/// A connection for a test's or a worker's own bookkeeping (counters and
/// logs on a Redis beside the one under test). Its response timeout is
/// long: on a loaded 2-core machine a bookkeeping call that waits half a
/// second must not fail the run it is recording.
pub async fn bookkeeping(url: &str) -> redis::aio::MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(10)))
        .set_response_timeout(Some(Duration::from_secs(30)));
    redis::Client::open(url)
        .expect("bookkeeping Redis URL")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to the bookkeeping Redis")
}

pub fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// What one stampede run did, read back from Redis.
pub struct RunReport {
    pub loads: u64,
    pub seen: Vec<u64>,
    pub errors: Vec<String>,
    pub lat_us: Vec<u64>,
    /// Per caller: when it got its answer, less when the (single) load's
    /// loader returned, in µs, sorted. Empty unless exactly one load ran.
    pub after_load_us: Vec<u64>,
    /// Per caller: when it got its answer, less when the fill's notice
    /// reached a subscriber in this test process (the fill instant plus one
    /// pub/sub delivery), in µs, sorted; 0 for callers done before that.
    /// Empty if no fill notice was seen (herdcache off).
    pub after_fill_us: Vec<u64>,
    /// How long the single load's loader ran (its `load_ended` less its
    /// `load_started`, both µs), if exactly one load ran and recorded both.
    pub loader_us: Option<u64>,
    pub stats: Vec<String>,
}

pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// Spawns `procs` worker processes (`exe worker_args…`), waits until all are
/// ready, releases them at one instant via `<run>:go`, waits for them to exit,
/// and reads back what they recorded in Redis.
pub fn run_stampede(
    exe: &Path,
    url: &str,
    run: &str,
    procs: usize,
    worker_args: &[String],
) -> RunReport {
    run_stampede_with(exe, url, run, procs, worker_args, true)
}

/// [`run_stampede`]; `watch_fill` false when the workers' cache is not on
/// `url` (a Cluster, whose notices are sharded): nothing to watch there.
pub fn run_stampede_with(
    exe: &Path,
    url: &str,
    run: &str,
    procs: usize,
    worker_args: &[String],
    watch_fill: bool,
) -> RunReport {
    let children: Vec<_> = (0..procs)
        .map(|_| {
            Command::new(exe)
                .args(worker_args)
                .stdout(Stdio::piped())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    // Watches the demo namespace's bus for the first notice (the fill's),
    // to time callers' answers from the fill itself.
    let fill_seen = {
        let sub = watch_fill.then(|| {
            let sub = redis::Client::open(url).unwrap().get_connection().unwrap();
            sub.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            sub
        });
        let channel = format!("hc:bus:demo-{run}");
        std::thread::spawn(move || {
            let mut sub = sub?;
            let mut pubsub = sub.as_pubsub();
            pubsub.subscribe(&channel).ok()?;
            pubsub.get_message().ok()?;
            Some(unix_us())
        })
    };
    let mut con = redis::Client::open(url).unwrap().get_connection().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ready: Option<usize> = redis::cmd("GET")
            .arg(format!("{run}:ready"))
            .query(&mut con)
            .unwrap();
        if ready == Some(procs) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "workers not ready after 30 s"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let _: () = redis::cmd("SET")
        .arg(format!("{run}:go"))
        .arg(now_ms() + 100)
        .query(&mut con)
        .unwrap();
    let mut stats = Vec::new();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "worker failed: {:?}", out.status);
        stats.push(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let list = |con: &mut redis::Connection, name: &str| -> Vec<String> {
        redis::cmd("LRANGE")
            .arg(format!("{run}:{name}"))
            .arg(0)
            .arg(-1)
            .query(con)
            .unwrap()
    };
    let loads: Option<u64> = redis::cmd("GET")
        .arg(format!("{run}:loads"))
        .query(&mut con)
        .unwrap();
    let mut lat_us: Vec<u64> = list(&mut con, "lat")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    lat_us.sort_unstable();
    let ends: Vec<u64> = list(&mut con, "ends")
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let since = |t: u64| {
        let mut v: Vec<u64> = ends.iter().map(|e| e.saturating_sub(t)).collect();
        v.sort_unstable();
        v
    };
    let load_ended = list(&mut con, "load_ended");
    let after_load_us = match load_ended.as_slice() {
        [ended] => since(ended.parse().unwrap()),
        _ => Vec::new(),
    };
    let after_fill_us = match fill_seen.join().unwrap() {
        Some(t) if !load_ended.is_empty() => since(t),
        _ => Vec::new(),
    };
    let loader_us = match (
        list(&mut con, "load_started").as_slice(),
        load_ended.as_slice(),
    ) {
        ([started], [ended]) => Some(
            ended
                .parse::<u64>()
                .unwrap()
                .saturating_sub(started.parse().unwrap()),
        ),
        _ => None,
    };
    RunReport {
        after_load_us,
        after_fill_us,
        loader_us,
        loads: loads.unwrap_or(0),
        seen: list(&mut con, "seen")
            .iter()
            .map(|s| s.parse().unwrap())
            .collect(),
        errors: list(&mut con, "errors"),
        lat_us,
        stats,
    }
}

/// A Redis Cluster of real `redis-server` processes on loopback ports:
/// `masters` masters with `replicas` replicas each, made with
/// `redis-cli --cluster create`, `cluster-node-timeout` 1 s (so a failover
/// fits in a test). Each node's cluster bus gets a free port of its own
/// (`cluster-port`), since port + 10000 may not be free or even valid.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
    configs: Vec<PathBuf>,
}

/// The cluster's `cluster-node-timeout`.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1000);

impl RedisCluster {
    pub fn start(masters: usize, replicas: usize) -> Self {
        Self::start_with(masters, replicas, &[])
    }

    /// A cluster whose nodes get `extra` arguments too (an ACL `--user`).
    pub fn start_with(masters: usize, replicas: usize, extra_args: &[String]) -> Self {
        Self::start_each(masters, replicas, |_| extra_args.to_vec())
    }

    /// A cluster whose node `i` gets `extra(i)` arguments too (a TLS port
    /// of its own).
    pub fn start_each(
        masters: usize,
        replicas: usize,
        mut extra_args: impl FnMut(usize) -> Vec<String>,
    ) -> Self {
        let mut nodes = Vec::new();
        let mut configs = Vec::new();
        for i in 0..masters * (1 + replicas) {
            let config = std::env::temp_dir().join(format!(
                "herdcache-nodes-{}-{}.conf",
                std::process::id(),
                free_port()
            ));
            let _ = std::fs::remove_file(&config);
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                &config.to_string_lossy(),
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT.as_millis().to_string(),
                "--cluster-port",
                &free_port().to_string(),
                // A replica may always take over, however long ago it last
                // heard from its master (on a busy 2-core machine the
                // default validity can bar every replica).
                "--cluster-replica-validity-factor",
                "0",
            ]
            .iter()
            .map(|s| s.to_string())
            .chain(extra_args(i))
            .collect();
            nodes.push(RedisServer::start_with(&extra));
            configs.push(config);
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run `redis-cli` ({e}); it comes with redis-server"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes, configs };
        cluster.wait_until_ok(masters);
        cluster
    }

    /// Waits until every running node says `cluster_state:ok` and sees
    /// `masters` masters that serve every slot.
    pub fn wait_until_ok(&self, masters: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = self.nodes.iter().filter(|n| n.pid().is_some()).all(|n| {
                let Ok(client) = redis::Client::open(n.url()) else {
                    return false;
                };
                let Ok(mut con) = client.get_connection_with_timeout(Duration::from_millis(200))
                else {
                    return false;
                };
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut con)
                    .unwrap_or_default();
                let replication: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut con)
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&format!("cluster_size:{masters}"))
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            });
            if ok {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not become ok within 30 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node's URL (masters and replicas), as a client's seed list.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// One URL for the whole cluster (`redis-cluster://h:p,h:p,…`), which
    /// `Client::connect` and the worker binaries take like any URL.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        format!("redis-cluster://{}/", hosts.join(","))
    }

    /// The index in `nodes` of each running master, by `ROLE`.
    pub fn masters(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.role(i).as_deref() == Some("master"))
            .collect()
    }

    /// A node's `ROLE` (`master` or `slave`), or `None` if it is down.
    pub fn role(&self, i: usize) -> Option<String> {
        let node = &self.nodes[i];
        node.pid()?;
        let client = redis::Client::open(node.url()).ok()?;
        let mut con = client
            .get_connection_with_timeout(Duration::from_millis(200))
            .ok()?;
        let role: Vec<redis::Value> = redis::cmd("ROLE").query(&mut con).ok()?;
        match role.first() {
            Some(redis::Value::BulkString(r)) => Some(String::from_utf8_lossy(r).into_owned()),
            _ => None,
        }
    }

    /// The index of the master that serves `key`'s slot now.
    pub fn master_of(&self, key: &str) -> usize {
        let slot = {
            let any = self
                .nodes
                .iter()
                .find(|n| n.pid().is_some())
                .expect("a running node");
            let mut con = any.connection();
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(key)
                .query::<u16>(&mut con)
                .expect("CLUSTER KEYSLOT")
        };
        for i in self.masters() {
            let mut con = self.nodes[i].connection();
            let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query(&mut con)
                .expect("CLUSTER SLOTS");
            let port = self.nodes[i].port() as i64;
            for range in slots {
                let (
                    Some(redis::Value::Int(lo)),
                    Some(redis::Value::Int(hi)),
                    Some(redis::Value::Array(master)),
                ) = (range.first(), range.get(1), range.get(2))
                else {
                    continue;
                };
                if (*lo..=*hi).contains(&(slot as i64))
                    && matches!(master.get(1), Some(redis::Value::Int(p)) if *p == port)
                {
                    return i;
                }
            }
        }
        panic!("no running master serves slot {slot} of {key:?}");
    }

    /// Keys per node (`DBSIZE`), in `nodes` order; `None` for a node that is down.
    pub fn dbsizes(&self) -> Vec<Option<u64>> {
        self.nodes
            .iter()
            .map(|n| {
                n.pid()?;
                redis::cmd("DBSIZE").query(&mut n.connection()).ok()
            })
            .collect()
    }

    /// The master holding the most keys.
    pub fn busiest_master(&self) -> usize {
        let sizes = self.dbsizes();
        self.masters()
            .into_iter()
            .max_by_key(|&m| sizes[m].unwrap_or(0))
            .expect("a running master")
    }

    /// The replica of `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let port = format!("master_port:{}", self.nodes[master].port());
        (0..self.nodes.len())
            .find(|&i| {
                self.role(i).as_deref() == Some("slave") && {
                    let info: String = redis::cmd("INFO")
                        .arg("replication")
                        .query(&mut self.nodes[i].connection())
                        .unwrap();
                    info.contains(&port)
                }
            })
            .expect("the master's replica")
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        for config in &self.configs {
            let _ = std::fs::remove_file(config);
        }
    }
}

/// The narrowest ACL rule for every herdcache tool: its keys and channels
/// only, and the commands its calls and scripts run (scripts run their
/// commands with the caller's permissions).
pub const NARROW_ACL: &[&str] = &[
    "~hc:*",
    "&hc:*",
    "-@all",
    // Connection set-up, heartbeat, subscriptions.
    "+hello",
    "+auth",
    "+ping",
    "+subscribe",
    "+unsubscribe",
    // Scripts (loaded at connect, then EVALSHA; EVAL after a flush).
    "+evalsha",
    "+eval",
    "+script|load",
    // A lock's acquisition on one node (MULTI; SET NX PX; INCR; EXEC).
    "+multi",
    "+exec",
    // Cache, locks, counters, rate limiter (directly or in scripts).
    "+get",
    "+mget",
    "+set",
    "+del",
    "+exists",
    "+incr",
    "+incrby",
    "+decrby",
    "+pexpire",
    "+pttl",
    "+publish",
    "+time",
    "+hget",
    "+hset",
    "+hsetnx",
    "+hincrby",
    "+hmget",
    "+hdel",
    // Stock orders and queues (streams and consumer groups).
    "+xadd",
    "+xgroup|create",
    "+xreadgroup",
    "+xpending",
    "+xclaim",
    "+xack",
    "+xrange",
    "+xinfo|groups",
    "+xtrim",
];

/// What a Redis Cluster adds to [`NARROW_ACL`]: sharded notices, and the
/// slot map the client routes by.
pub const CLUSTER_ACL: &[&str] = &[
    "+ssubscribe",
    "+sunsubscribe",
    "+spublish",
    "+cluster|slots",
];

/// The hash tag of a cache key's bucket on a Cluster (64 buckets, FNV-1a of
/// the key: `src/cache/keys.rs`), e.g. `{products:17}`.
pub fn bucket_tag(namespace: &str, key: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{{{namespace}:{}}}", h % 64)
}
