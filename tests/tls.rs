//! TLS and ACL against a real redis-server: a certificate authority made
//! for the test with `openssl`, a server on a TLS port, and the narrowest
//! ACL user herdcache needs (README, "TLS and ACL"). Every tool works
//! through it; a wrong password, a wrong CA and a missing permission are
//! each a clear error within the connect timeout.
#![cfg(feature = "tls")]

mod support;

use herdcache::{Client, ErrorKind, Reservation};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use support::{NARROW_ACL, RedisServer};

struct Pki {
    dir: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (Debian: apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate it signed for 127.0.0.1, and a second CA
/// that signed nothing of ours.
fn pki() -> Pki {
    // One directory per call: the tests of this file run at once.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "herdcache-tls-{}-{}-{}",
        std::process::id(),
        support::now_ms(),
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    for ca in ["ca", "other-ca"] {
        let (key, crt, subj) = (
            format!("{ca}.key"),
            format!("{ca}.crt"),
            format!("/CN=herdcache {ca}"),
        );
        let mut args = vec!["req", "-x509"];
        args.extend(ec);
        args.extend(["-keyout", &key, "-out", &crt, "-days", "1", "-subj", &subj]);
        openssl(&dir, &args);
    }
    let mut args = vec!["req"];
    args.extend(ec);
    args.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&dir, &args);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ],
    );
    Pki { dir }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server with a TLS port (the plain port stays, for the test's own
/// bookkeeping) and the users `app` (narrow), `nolua` (narrow less the
/// scripts) and the default user with password `admin`.
fn tls_server(pki: &Pki) -> (RedisServer, u16) {
    let tls_port = free_port();
    let p = |f: &str| pki.dir.join(f).to_string_lossy().into_owned();
    let mut args: Vec<String> = vec![
        "--tls-port".into(),
        tls_port.to_string(),
        "--tls-cert-file".into(),
        p("server.crt"),
        "--tls-key-file".into(),
        p("server.key"),
        "--tls-ca-cert-file".into(),
        p("ca.crt"),
        "--tls-auth-clients".into(),
        "no".into(),
        "--user".into(),
        "app".into(),
        "on".into(),
        ">app-secret".into(),
    ];
    args.extend(NARROW_ACL.iter().map(|s| s.to_string()));
    args.extend([
        "--user".into(),
        "nolua".into(),
        "on".into(),
        ">nolua-secret".into(),
    ]);
    args.extend(
        NARROW_ACL
            .iter()
            .filter(|c| !c.contains("script") && !c.contains("eval"))
            .map(|s| s.to_string()),
    );
    (RedisServer::start_with(&args), tls_port)
}

fn ca(pki: &Pki, name: &str) -> Vec<u8> {
    std::fs::read(pki.dir.join(format!("{name}.crt"))).unwrap()
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Job {
    id: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tool_works_through_tls_as_the_narrow_acl_user() {
    let pki = pki();
    let (_redis, port) = tls_server(&pki);
    let url = format!("rediss://app:app-secret@127.0.0.1:{port}/");
    let client = Client::builder(url)
        .tls_root_cert(ca(&pki, "ca"))
        .connect()
        .await
        .expect("connect over TLS as app");

    let cache = client.cache::<u64>("ns").build().await.unwrap();
    let v = cache
        .get_or_compute("k", || async { Ok::<_, std::io::Error>(7) })
        .await
        .unwrap();
    assert_eq!(*v, 7);
    cache.set("k", 8).await.unwrap();
    assert_eq!(*cache.get("k").await.unwrap().unwrap(), 8);
    cache.invalidate("k").await.unwrap();

    let g = client.lock("l").acquire().await.unwrap();
    assert!(g.fencing_token() > 0);
    assert!(g.release().await.unwrap());

    let stock = client.stock("s");
    stock.set_available(2).await.unwrap();
    assert!(matches!(
        stock.reserve("o1", "u", 1).await.unwrap(),
        Reservation::Reserved { remaining: 1 }
    ));
    let mut orders = stock.orders().consumer("g", "c").await.unwrap();
    let d = orders
        .next_timeout(Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.order_id(), "o1");
    assert!(d.ack().await.unwrap());
    assert_eq!(stock.orders().trim().await.unwrap(), 1);

    let queue = client.queue::<Job>("jobs");
    queue.push(&Job { id: 1 }).await.unwrap();
    let mut c = queue.consumer("g", "c").await.unwrap();
    let m = c
        .next_timeout(Duration::from_secs(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(m.value(), &Job { id: 1 });
    m.ack().await.unwrap();

    assert_eq!(client.counter("c").incr(2).await.unwrap(), 2);
    let limiter = client.rate_limiter("r").rate(10, Duration::from_secs(1));
    assert!(limiter.check("user-1", 1).await.unwrap().is_allowed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_a_wrong_ca_and_a_missing_permission_are_clear_errors() {
    let pki = pki();
    let (_redis, port) = tls_server(&pki);
    let timeout = Duration::from_millis(500);
    let connect = |url: String, ca_name: &'static str| {
        let pem = ca(&pki, ca_name);
        async move {
            let started = Instant::now();
            let r = Client::builder(url)
                .tls_root_cert(pem)
                .redis_timeout(timeout)
                .connect()
                .await;
            (r, started.elapsed())
        }
    };
    let chain = |e: &herdcache::Error| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    };

    let (r, took) = connect(format!("rediss://app:wrong@127.0.0.1:{port}/"), "ca").await;
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Redis);
    let text = chain(&e).to_lowercase();
    assert!(text.contains("auth") || text.contains("password"), "{text}");
    assert!(took < timeout * 2, "{took:?}");

    let (r, took) = connect(
        format!("rediss://app:app-secret@127.0.0.1:{port}/"),
        "other-ca",
    )
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Redis);
    let text = chain(&e).to_lowercase();
    assert!(
        text.contains("certificate") || text.contains("tls"),
        "{text}"
    );
    assert!(took < timeout * 2, "{took:?}");

    // A user that may not run scripts cannot load them at connect.
    let (r, took) = connect(
        format!("rediss://nolua:nolua-secret@127.0.0.1:{port}/"),
        "ca",
    )
    .await;
    let e = r.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Redis);
    let text = chain(&e).to_lowercase();
    assert!(
        text.contains("permission") || text.contains("noperm"),
        "{text}"
    );
    assert!(took < timeout * 2, "{took:?}");
}

/// A Redis Cluster over TLS (`tls-cluster yes`, `tls-replication yes`):
/// the client is seeded with the nodes' `rediss://` URLs and the test CA;
/// the cluster answers it with its TLS ports. Caches (with a change
/// notice between two clients), locks and stock on every master.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_works_over_tls() {
    let pki = pki();
    let p = |f: &str| pki.dir.join(f).to_string_lossy().into_owned();
    let mut tls_ports = Vec::new();
    let cluster = support::RedisCluster::start_each(3, 0, |_| {
        let port = free_port();
        tls_ports.push(port);
        [
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &p("server.crt"),
            "--tls-key-file",
            &p("server.key"),
            "--tls-ca-cert-file",
            &p("ca.crt"),
            "--tls-auth-clients",
            "no",
            "--tls-cluster",
            "yes",
            "--tls-replication",
            "yes",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    });
    let urls: Vec<String> = tls_ports
        .iter()
        .map(|port| format!("rediss://127.0.0.1:{port}/"))
        .collect();
    let connect = || async {
        Client::cluster_builder(&urls)
            .tls_root_cert(ca(&pki, "ca"))
            .connect()
            .await
            .expect("connect to the cluster over TLS")
    };
    let (a, b) = (connect().await, connect().await);
    let ca_ = a.cache::<u64>("ns").build().await.unwrap();
    let cb = b.cache::<u64>("ns").build().await.unwrap();
    for i in 0..12u64 {
        let k = format!("k{i}");
        let v = ca_
            .get_or_compute(
                k.as_str(),
                move || async move { Ok::<_, std::io::Error>(i) },
            )
            .await
            .unwrap();
        assert_eq!(*v, i);
        assert_eq!(*cb.get(k.as_str()).await.unwrap().unwrap(), i);
        cb.set(k.as_str(), i + 100).await.unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for i in 0..12u64 {
        let k = format!("k{i}");
        while *ca_.get(k.as_str()).await.unwrap().unwrap() != i + 100 {
            assert!(
                std::time::Instant::now() < deadline,
                "{k}: no change notice"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    for name in ["a", "b", "c", "d", "e", "f"] {
        let g = a.lock(name).acquire().await.unwrap();
        assert!(g.release().await.unwrap());
    }
    let stock = b.stock("tls-sku");
    stock.set_available(1).await.unwrap();
    assert!(matches!(
        stock.reserve("o1", "u", 1).await.unwrap(),
        Reservation::Reserved { remaining: 0 }
    ));
    assert!(
        cluster.dbsizes().iter().all(|n| n.unwrap_or(0) > 0),
        "{:?}",
        cluster.dbsizes()
    );
}
