//! Redis Cluster: 3 masters + 3 replicas of real `redis-server` processes
//! on loopback ports (`redis-cli --cluster create`). Every tool made from a
//! `Client::cluster` works unchanged, with its keys spread over the masters.

mod support;

use herdcache::{Client, Reservation};
use std::time::Duration;
use support::{CLUSTER_ACL, NARROW_ACL, RedisCluster, RedisServer, bucket_tag};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_works_on_a_cluster() {
    let cluster = RedisCluster::start(3, 1);
    let client = Client::cluster(&cluster.urls()).await.expect("connect");
    exercise(&client, &cluster).await;

    // A lazy client returns at once and is usable once its background
    // connection is up.
    let lazy = Client::cluster_builder(&cluster.urls())
        .connect_lazy(true)
        .connect()
        .await
        .expect("lazy connect");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lazy.counter("lazy").incr(1).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "never connected");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The same as the narrowest ACL user (README's rule plus the Cluster's
/// additions), given as the one-URL form; a wrong password, an unreachable
/// cluster and an empty seed list are typed errors within the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_works_on_a_cluster_as_the_narrow_acl_user() {
    let mut user: Vec<String> = ["--user", "app", "on", ">app-secret"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    user.extend(NARROW_ACL.iter().chain(CLUSTER_ACL).map(|s| s.to_string()));
    let cluster = RedisCluster::start_with(3, 1, &user);
    let url = cluster
        .url()
        .replace("redis-cluster://", "redis-cluster://app:app-secret@");
    let client = Client::connect(&url).await.expect("connect as app");
    exercise(&client, &cluster).await;

    let t = std::time::Instant::now();
    let wrong = cluster
        .url()
        .replace("redis-cluster://", "redis-cluster://app:nope@");
    let err = Client::connect(&wrong).await.expect_err("wrong password");
    assert_eq!(err.kind(), herdcache::ErrorKind::Redis, "{err}");
    let down = Client::cluster(&["redis://127.0.0.1:1/"])
        .await
        .expect_err("nothing there");
    assert_eq!(down.kind(), herdcache::ErrorKind::Redis, "{down}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    // One node's plain URL: found to be a Cluster node, and used as a seed.
    let plain = cluster.nodes[0]
        .url()
        .replace("redis://", "redis://app:app-secret@");
    let client = Client::connect(&plain).await.expect("connect to one node");
    for name in ["a", "b", "c", "d", "e", "f"] {
        let g = client
            .lock(name)
            .acquire()
            .await
            .expect("lock on any master");
        assert!(g.fencing_token() > 0);
        assert!(g.release().await.unwrap());
        // Unfenced: a plain `SET NX PX`, routed to the name's master.
        let g = client
            .lock(name)
            .fenced(false)
            .acquire()
            .await
            .expect("unfenced lock on any master");
        assert_eq!(g.fencing_token(), 0);
        assert!(g.release().await.unwrap());
    }
    let none = Client::cluster::<&str>(&[]).await.expect_err("no seeds");
    assert_eq!(none.kind(), herdcache::ErrorKind::Config, "{none}");
}

/// Every tool on `client`, its keys spread over the cluster's masters.
async fn exercise(client: &Client, cluster: &RedisCluster) {
    // Locks of names in different slots, with a waiter woken by the
    // sharded release notice.
    for name in ["a", "b", "c", "d"] {
        let lock = client.lock(name);
        let guard = lock.acquire().await.unwrap();
        let token = guard.fencing_token();
        let waiter = {
            let lock = lock.clone();
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                let g = lock.acquire_timeout(Duration::from_secs(5)).await.unwrap();
                (g.fencing_token(), t.elapsed())
            })
        };
        // Held 400 ms: the waiter's fallback polls (20 ms doubling) fall
        // at 20, 60, 140, 300 and 620 ms, so returning before 600 ms means
        // the release notice woke it.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(guard.release().await.unwrap());
        let (next, waited) = waiter.await.unwrap();
        assert!(next > token, "fencing token {next} after {token}");
        assert!(
            waited < Duration::from_millis(580),
            "waiter woke after {waited:?}: the release notice did not reach it"
        );
    }

    // Stock and its order stream.
    let stock = client.stock("sku-1").per_user_limit(2);
    stock.set_available(3).await.unwrap();
    let mut consumer = stock.orders().consumer("g", "c1").await.unwrap();
    let mut sold = 0;
    for i in 0..5 {
        match stock
            .reserve(&format!("o{i}"), &format!("u{i}"), 1)
            .await
            .unwrap()
        {
            Reservation::Reserved { .. } => sold += 1,
            Reservation::SoldOut => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(sold, 3);
    assert_eq!(stock.available().await.unwrap(), 0);
    for _ in 0..3 {
        let d = consumer.next().await.unwrap();
        assert!(d.ack().await.unwrap());
    }

    // Counter, rate limiter, queue.
    let counter = client.counter("visits");
    assert_eq!(counter.incr(2).await.unwrap(), 2);
    assert_eq!(counter.get().await.unwrap(), 2);
    let limiter = client
        .rate_limiter("buyers")
        .rate(2, Duration::from_secs(60))
        .burst(2);
    let decisions: Vec<bool> =
        futures_util::future::join_all((0..4).map(|_| limiter.check("user-9", 1)))
            .await
            .into_iter()
            .map(|d| d.unwrap().is_allowed())
            .collect();
    assert_eq!(decisions.iter().filter(|a| **a).count(), 2, "{decisions:?}");
    let queue = client.queue::<String>("jobs");
    let mut jobs = queue.consumer("workers", "w1").await.unwrap();
    queue.push(&"hello".to_owned()).await.unwrap();
    let m = jobs.next().await.unwrap();
    assert_eq!(m.value(), "hello");
    assert!(m.ack().await.unwrap());

    // The keys went to more than one master.
    let used = cluster
        .dbsizes()
        .iter()
        .zip(&cluster.nodes)
        .enumerate()
        .filter(|(i, (n, _))| cluster.masters().contains(i) && n.unwrap_or(0) > 0)
        .count();
    assert!(
        used >= 2,
        "keys on {used} master(s): {:?}",
        cluster.dbsizes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_spreads_over_the_masters_and_its_notices_reach_every_process() {
    let cluster = RedisCluster::start(3, 1);
    let a = Client::cluster(&cluster.urls()).await.expect("connect");
    let b = Client::cluster(&cluster.urls()).await.expect("connect");
    let ttl = Duration::from_secs(60);
    let ca = a
        .cache::<String>("products")
        .ttl(ttl)
        .build()
        .await
        .unwrap();
    let cb = b
        .cache::<String>("products")
        .ttl(ttl)
        .build()
        .await
        .unwrap();

    // Fills from `a`; `b` takes each value (fill notices) or reads it once.
    let keys: Vec<String> = (0..60).map(|i| format!("p{i}")).collect();
    for k in &keys {
        let value = format!("v1-{k}");
        let v = ca
            .get_or_compute(
                k.as_str(),
                move || async move { Ok::<_, std::io::Error>(value) },
            )
            .await
            .unwrap();
        assert_eq!(*v, format!("v1-{k}"));
    }
    for k in &keys {
        let v = cb
            .get_or_compute(k.as_str(), || async {
                Ok::<_, std::io::Error>("loaded twice".to_owned())
            })
            .await
            .unwrap();
        assert_eq!(
            *v,
            format!("v1-{k}"),
            "b must read a's value, not load again"
        );
    }
    // Changes from `b` reach `a`'s L1 through the sharded notices.
    for k in &keys {
        cb.set(k.as_str(), format!("v2-{k}")).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for k in &keys {
        loop {
            let v = ca.get(k.as_str()).await.unwrap().expect("value");
            if *v == format!("v2-{k}") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{k}: a still serves {v}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    cb.invalidate("p1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(ca.get("p1").await.unwrap(), None);
    // get_many across slots, then clear().
    // A cache with an empty L1: one MGET over keys in several slots.
    let fresh = a
        .cache::<String>("products")
        .ttl(ttl)
        .build()
        .await
        .unwrap();
    let many = fresh.get_many(&["p2", "p3", "p4", "p5"]).await.unwrap();
    let many: Vec<String> = many.into_iter().map(|v| (*v.unwrap()).clone()).collect();
    assert_eq!(
        many,
        ["v2-p2", "v2-p3", "v2-p4", "v2-p5"],
        "in order, across slots"
    );
    ca.clear().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cb.get("p2").await.unwrap(), None);

    // Keys on every master, one sharded subscription per bucket.
    let masters = cluster.masters();
    let sizes = cluster.dbsizes();
    for m in &masters {
        assert!(
            sizes[*m].unwrap_or(0) > 0,
            "master {m} holds no key: {sizes:?}"
        );
    }
}

/// A master `SIGKILL`led while 4 worker processes (the demo binary in
/// steady mode: 8 tasks each reading 20 cached keys spread over the
/// masters) run; its replica is promoted. Counted: failed calls (0: every
/// key has an L1 value, which serves while the client reconnects), the
/// time from the kill to the promotion (Redis's failover) and to the
/// first successful Redis call after it (ours).
#[test]
fn a_master_killed_under_load_fails_no_call_for_cached_keys() {
    let mut cluster = RedisCluster::start(3, 1);
    let log = RedisServer::start();
    let run = "fo";
    let mut con = log.connection();
    let _: () = redis::cmd("SET")
        .arg(format!("{run}:go"))
        .arg(support::now_ms() + 300)
        .query(&mut con)
        .unwrap();
    let workers: Vec<_> = (0..4)
        .map(|_| {
            std::process::Command::new(support::demo_bin())
                .args(["worker", "--redis", &cluster.url(), "--log", &log.url()])
                .args(["--run", run, "--mode", "steady", "--tasks", "8"])
                .args([
                    "--keys",
                    "20",
                    "--ttl-ms",
                    "60000",
                    "--loader-ms",
                    "2",
                    "--pause-us",
                    "2000",
                ])
                .args(["--duration-ms", "9000", "--warmup-ms", "300"])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("spawn worker")
        })
        .collect();
    // Warm (every key cached), then kill the master that serves the most
    // of the keys.
    std::thread::sleep(Duration::from_millis(2500));
    let victim = cluster.busiest_master();
    let replica = cluster.replica_of(victim);
    let killed_at = support::now_ms();
    cluster.nodes[victim].kill();
    let promoted_at = loop {
        if cluster.role(replica).as_deref() == Some("master") {
            break support::now_ms();
        }
        assert!(
            support::now_ms() - killed_at < 15_000,
            "replica not promoted"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    for mut w in workers {
        assert!(w.wait().unwrap().success(), "worker failed");
    }
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{run}:w:*"))
        .query(&mut con)
        .unwrap();
    assert_eq!(keys.len(), 4, "every worker reported");
    let mut served = 0;
    let mut recoveries = Vec::new();
    for k in keys {
        let r: std::collections::HashMap<String, String> =
            redis::cmd("HGETALL").arg(k).query(&mut con).unwrap();
        let field = |name: &str| -> u64 { r[name].parse().unwrap() };
        assert_eq!(field("errors"), 0, "first error: {}", r["first_error"]);
        served += field("served");
        let recovered = field("recovered_at");
        println!(
            "  worker: canary failed {} times, recovered at {}",
            field("canary_failed"),
            recovered.saturating_sub(killed_at)
        );
        if recovered > 0 {
            recoveries.push(recovered.saturating_sub(killed_at));
        }
    }
    let failover = promoted_at - killed_at;
    println!(
        "cluster failover: replica promoted {failover} ms after the SIGKILL \
         (cluster-node-timeout {} ms); each process's first successful Redis call after the \
         kill: {recoveries:?} ms after it; {served} calls served, 0 failed",
        support::CLUSTER_NODE_TIMEOUT.as_millis()
    );
    assert!(served > 1000, "served {served}");
    // Every process lost its connection (its canary failed) and got a
    // working one back before the end of the run.
    assert_eq!(
        recoveries.len(),
        4,
        "a process never used Redis again after the kill"
    );
    // Redis's own part (failure detection after cluster-node-timeout, then
    // the replica's election delay of 500-1000 ms) is not ours to shorten;
    // ours is from the promotion to the first call that works: a new
    // cluster connection, its slot map and every sharded subscription.
    for r in &recoveries {
        assert!(
            *r <= failover + 1500,
            "a process used Redis again only {r} ms after the kill, {} ms after the promotion",
            r.saturating_sub(failover)
        );
    }
}

/// On a Cluster `clear()` is announced on bucket 0's channel and a fill on
/// its key's bucket's: not ordered. A fill notice from before the clear,
/// delivered after it (here: captured, then published again), must not
/// put its old value back into another process's L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fill_notice_from_before_a_clear_is_not_taken_into_l1() {
    let cluster = RedisCluster::start(3, 0);
    let a = Client::cluster(&cluster.urls()).await.unwrap();
    let b = Client::cluster(&cluster.urls()).await.unwrap();
    let ttl = Duration::from_secs(60);
    let ca = a.cache::<String>("gen").ttl(ttl).build().await.unwrap();
    let cb = b.cache::<String>("gen").ttl(ttl).build().await.unwrap();
    // A raw subscriber on the key's bucket channel, on the master of its slot.
    let tag = bucket_tag("gen", "k");
    let channel = format!("hc:bus:{tag}");
    let node = &cluster.nodes[cluster.master_of(&tag)];
    let mut sub = node.connection();
    sub.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _: redis::Value = redis::cmd("SSUBSCRIBE")
        .arg(&channel)
        .query(&mut sub)
        .unwrap();
    let v = ca
        .get_or_compute("k", || async { Ok::<_, std::io::Error>("old".to_owned()) })
        .await
        .unwrap();
    assert_eq!(*v, "old");
    let fill: Vec<u8> = loop {
        let msg = sub.recv_response().unwrap();
        if let redis::Value::Array(parts) | redis::Value::Push { data: parts, .. } = msg
            && let Some(redis::Value::BulkString(payload)) = parts.get(2)
        {
            break payload.clone();
        }
    };
    assert_eq!(fill[0], b'F', "a fill notice with its generation");
    ca.clear().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cb.get("k").await.unwrap(), None, "cleared");
    // The old fill notice arrives late.
    let n: u64 = redis::cmd("SPUBLISH")
        .arg(&channel)
        .arg(&fill)
        .query(&mut node.connection())
        .unwrap();
    assert!(n >= 2, "both caches subscribed ({n})");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cb.get("k").await.unwrap(), None, "the old value came back");
}

/// A node that stalls (`SIGSTOP`: it accepts connections and never
/// answers) must cost only its own keys, and only while it stalls:
/// - a consumer blocked on a stream of the stalled master returns (a typed
///   error or nothing) instead of hanging inside redis-rs for good;
/// - a client given every node as a seed connects while one replica is
///   frozen (redis-rs waits for every seed; a frozen one used to take the
///   whole connect bound and fail every attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_node_costs_only_its_own_keys() {
    let cluster = RedisCluster::start(3, 1);
    let client = Client::cluster(&cluster.urls()).await.unwrap();
    let queue = client.queue::<String>("stall");
    let mut consumer = queue.consumer("g", "c").await.unwrap();
    let victim = cluster.master_of("hc:q:{stall}:s");
    for round in 0..2 {
        cluster.nodes[victim].freeze();
        let thaw = {
            let pid = cluster.nodes[victim].pid().unwrap();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(700));
                std::process::Command::new("kill")
                    .args(["-CONT", &pid.to_string()])
                    .status()
                    .unwrap();
            })
        };
        let t = std::time::Instant::now();
        let got = tokio::time::timeout(
            Duration::from_secs(5),
            consumer.next_timeout(Duration::from_millis(300)),
        )
        .await;
        assert!(
            got.is_ok(),
            "round {round}: next_timeout(300 ms) still pending after {:?}",
            t.elapsed()
        );
        thaw.join().unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // After the stalls, the consumer gets what is pushed.
    queue.push(&"after".to_owned()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match consumer.next_timeout(Duration::from_millis(300)).await {
            Ok(Some(m)) => {
                assert_eq!(m.value(), "after");
                m.ack().await.unwrap();
                break;
            }
            other => assert!(
                std::time::Instant::now() < deadline,
                "consumer not back: {other:?}"
            ),
        }
    }

    // A frozen replica among the seeds.
    let replica = (0..cluster.nodes.len())
        .find(|&i| cluster.role(i).as_deref() == Some("slave"))
        .expect("a replica");
    cluster.nodes[replica].freeze();
    let t = std::time::Instant::now();
    let seeded = Client::cluster(&cluster.urls()).await;
    let took = t.elapsed();
    println!("connect with a frozen seed: {took:?}");
    cluster.nodes[replica].thaw();
    let seeded = seeded.unwrap_or_else(|e| panic!("connect with a frozen seed: {e}"));
    assert!(took < Duration::from_secs(2), "{took:?}");
    for name in ["a", "b", "c", "d", "e", "f"] {
        seeded.counter(name).incr(1).await.unwrap();
    }
}

/// A master that freezes (not dies) is failed over by the cluster; the
/// client must follow the promotion while the old master is still frozen,
/// not wait for it to thaw (a frozen node among the seeds used to fail
/// every reconnection attempt).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_master_is_failed_over_and_the_client_follows() {
    let cluster = RedisCluster::start(3, 1);
    let client = Client::cluster(&cluster.urls()).await.unwrap();
    let names = ["a", "b", "c", "d", "e", "f"];
    for name in names {
        client.counter(name).incr(1).await.unwrap();
    }
    let victim = cluster.master_of("hc:ct:{a}");
    let replica = cluster.replica_of(victim);
    cluster.nodes[victim].freeze();
    let frozen_at = std::time::Instant::now();
    // Keep using every shard while the cluster fails the master over.
    let promoted = loop {
        for name in names {
            let _ = client.counter(name).incr(1).await;
        }
        if cluster.role(replica).as_deref() == Some("master") {
            break frozen_at.elapsed();
        }
        assert!(
            frozen_at.elapsed() < Duration::from_secs(15),
            "no promotion"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Every shard, the promoted one included, is used again soon after,
    // with the old master still frozen.
    let t = std::time::Instant::now();
    let mut pending: Vec<&str> = names.to_vec();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for name in pending {
            if client.counter(name).incr(1).await.is_err() {
                still.push(name);
            }
        }
        pending = still;
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "{pending:?} still failing {:?} after the promotion ({promoted:?} after the freeze)",
            t.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "frozen master: promoted {promoted:?} after the freeze; every shard used again {:?} after",
        t.elapsed()
    );
    cluster.nodes[victim].thaw();
}
