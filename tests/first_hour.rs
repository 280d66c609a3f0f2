//! A new user's first hour (issue 12): the things a first integration runs
//! into, each written the way a user would first write it, against real
//! redis-server processes. Two `Cache` values built separately have separate
//! connections, L1s and origins: to Redis and to each other they are two
//! processes.

mod support;

use herdcache::{Cache, ErrorKind};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::RedisServer;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Row {
    id: u64,
    name: String,
}

fn row(id: u64) -> Row {
    Row {
        id,
        name: format!("row {id}"),
    }
}

/// A JSON response struct as most services write them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Product {
    id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    discount: Option<u32>,
    name: String,
}

fn product(id: u64, discount: Option<u32>) -> Product {
    Product {
        id,
        discount,
        name: format!("product {id}"),
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no such table: products")]
struct NoTable;

fn exists(con: &mut redis::Connection, key: &str) -> bool {
    redis::cmd("EXISTS").arg(key).query(con).unwrap()
}

/// Each element of the chain (Display, then every `source()`) says
/// something the others do not.
fn assert_nothing_said_twice(e: &(dyn std::error::Error + 'static)) {
    let mut chain = vec![e.to_string()];
    let mut next = e.source();
    while let Some(s) = next {
        chain.push(s.to_string());
        next = s.source();
    }
    for (i, a) in chain.iter().enumerate() {
        for (j, b) in chain.iter().enumerate() {
            assert!(
                i == j || !a.contains(b.as_str()),
                "{b:?} is said twice in the chain {chain:?}"
            );
        }
    }
}

/// Counts WARN events and keeps their text (a subscriber of our own:
/// tracing-subscriber is not a dependency).
#[derive(Clone, Default)]
#[cfg_attr(not(feature = "tracing"), allow(dead_code))]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl tracing::Subscriber for Warnings {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                self.0 += &format!("{}={v:?} ", f.name());
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut text = Text(String::new());
            event.record(&mut text);
            self.0.lock().unwrap().push(text.0);
        }
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// ---------------------------------------------------------------------------
// 1. The codec trap

/// The case: with the default (bincode) codec a struct with
/// `skip_serializing_if` encoded, was stored, and never decoded: every read
/// in every process was a silent miss. Now the first write of such a value
/// is refused with a typed error that names the cause and the fix, for a
/// loader's fill (every coalesced caller gets it) and for `set`; nothing is
/// written.
#[tokio::test(flavor = "multi_thread")]
async fn bincode_refuses_a_value_it_cannot_read_back_at_the_first_write() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let a: Cache<Product> = Cache::builder("trap")
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let (a, calls) = (a.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            a.get_or_compute(1u64, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                Ok::<_, NoTable>(product(1, None))
            })
            .await
        }));
    }
    for t in tasks {
        let e = t.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Codec);
        let text = e.to_string();
        for needed in [
            "Product",
            "bincode",
            "skip_serializing_if",
            "herdcache::Json",
        ] {
            assert!(text.contains(needed), "{needed:?} missing from {text:?}");
        }
        assert!(
            std::error::Error::source(&e).is_some(),
            "the codec's own error"
        );
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(!exists(&mut con, "hc:{trap:1}:v"), "nothing written");
    assert!(!exists(&mut con, "hc:{trap:1}:l"), "lock released");

    let e = a.set(2u64, product(2, None)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Codec);
    assert!(!exists(&mut con, "hc:{trap:2}:v"));
    assert_eq!(a.stats().codec_errors, 2);

    // A value of the same type that does round-trip (the field is there)
    // is cached and shared as usual: the check is per value, so the
    // mixed case cannot slip through after a first good write.
    a.set(3u64, product(3, Some(10))).await.unwrap();
    let b: Cache<Product> = Cache::builder("trap")
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    let got = b
        .get_or_compute(3u64, || async { Err::<Product, _>(NoTable) })
        .await
        .unwrap();
    assert_eq!(*got, product(3, Some(10)));
    let e = a.set(3u64, product(3, None)).await.unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Codec);
    assert_eq!(b.stats().decode_errors, 0);
}

/// With the self-describing codec the same struct works across two caches
/// (two processes to Redis): one load for every call, and no decode errors.
#[cfg(feature = "json")]
#[tokio::test(flavor = "multi_thread")]
async fn json_codec_shares_skip_serializing_if_values_across_caches() {
    let server = RedisServer::start();
    let build = || {
        Cache::builder("json")
            .redis_url(server.url())
            .codec(herdcache::Json)
            .build()
    };
    let (a, b) = (build().await.unwrap(), build().await.unwrap());
    let calls = Arc::new(AtomicUsize::new(0));
    for i in 0..6u64 {
        let cache = if i % 2 == 0 { &a } else { &b };
        let calls = calls.clone();
        let got = cache
            .get_or_compute(7u64, move || async move {
                calls.fetch_add(1, Ordering::SeqCst);
                Ok::<_, NoTable>(product(7, None))
            })
            .await
            .unwrap();
        assert_eq!(*got, product(7, None));
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one load for 6 calls");
    // A fresh cache (a new process) reads it with `get`.
    let c: Cache<Product, herdcache::Json> = Cache::builder("json")
        .redis_url(server.url())
        .codec(herdcache::Json)
        .build()
        .await
        .unwrap();
    assert_eq!(*c.get(7u64).await.unwrap().unwrap(), product(7, None));
    for s in [a.stats(), b.stats(), c.stats()] {
        assert_eq!((s.decode_errors, s.codec_errors), (0, 0));
    }
    // JSON has no NaN: refused at write, not stored as `null`.
    let floats: Cache<f64, herdcache::Json> = Cache::builder("json-f")
        .redis_url(server.url())
        .codec(herdcache::Json)
        .build()
        .await
        .unwrap();
    assert_eq!(
        floats.set("nan", f64::NAN).await.unwrap_err().kind(),
        ErrorKind::Codec
    );
}

/// Bytes in Redis that do not decode (another version of the type wrote
/// them) are still a counted miss, and are now logged: once, not per read.
/// (Logged through `tracing`: without the feature there is no log.)
#[cfg(feature = "tracing")]
#[tokio::test]
async fn undecodable_bytes_in_redis_are_logged_once_not_per_read() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let warnings = Warnings::default();
    let _guard = tracing::subscriber::set_default(warnings.clone());
    // Another type under the same namespace: valid envelopes whose payload
    // is not a `Row`.
    let other: Cache<u8> = Cache::builder("old")
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    for k in 0..5u64 {
        other.set(k, 200).await.unwrap();
    }
    let rows: Cache<Row> = Cache::builder("old")
        .redis_url(server.url())
        .local_ttl(Duration::ZERO)
        .build()
        .await
        .unwrap();
    for k in 0..5u64 {
        assert!(rows.get(k).await.unwrap().is_none());
    }
    assert_eq!(rows.stats().decode_errors, 5);
    let logged: Vec<String> = (warnings.0.lock().unwrap().iter())
        .filter(|w| w.contains("codec"))
        .cloned()
        .collect();
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert!(logged[0].contains("Row") && logged[0].contains("decode_errors=1"));
    // The loader path overwrites them.
    let got = rows
        .get_or_compute(0u64, || async { Ok::<_, NoTable>(row(0)) })
        .await
        .unwrap();
    assert_eq!(*got, row(0));
    assert!(exists(&mut con, "hc:{old:0}:v"));
}

// ---------------------------------------------------------------------------
// 2. and 3. Loader errors as users write them, and what they print

/// A loader returning `anyhow::Result` compiles as written, and its error
/// reaches every coalesced caller, the very same error.
#[tokio::test(flavor = "multi_thread")]
async fn anyhow_loader_error_reaches_every_coalesced_caller() {
    use anyhow::Context as _;
    let server = RedisServer::start();
    let cache: Cache<Row> = Cache::builder("anyhow")
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    async fn load(_id: u64) -> anyhow::Result<Row> {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Err(NoTable).context("reading products")
    }
    let calls = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let (cache, calls) = (cache.clone(), calls.clone());
        tasks.push(tokio::spawn(async move {
            cache
                .get_or_compute(42u64, move || async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    load(42).await
                })
                .await
        }));
    }
    let mut errors = Vec::new();
    for t in tasks {
        errors.push(t.await.unwrap().unwrap_err());
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for e in &errors {
        assert_eq!(e.kind(), ErrorKind::Loader);
        assert!(e.same_as(&errors[0]));
        let cause = e.loader_error().unwrap();
        assert_eq!(cause.to_string(), "reading products");
        assert_eq!(
            cause.source().unwrap().to_string(),
            "no such table: products"
        );
    }
    let shown = format!("{:#}", anyhow::Error::from(errors[0].clone()));
    assert_eq!(
        shown,
        "loader failed for key \"42\": reading products: no such table: products"
    );
}

async fn load_with_anyhow() -> anyhow::Result<Row> {
    Err(NoTable.into())
}

/// Every error type a loader is commonly written with is accepted, and a
/// typed error is reachable by downcast.
#[tokio::test(flavor = "multi_thread")]
async fn loader_errors_of_every_common_type_are_accepted_and_reachable() {
    let server = RedisServer::start();
    let cache: Cache<Row> = Cache::builder("errs")
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    let typed = cache
        .get_or_compute("thiserror", || async { Err::<Row, _>(NoTable) })
        .await
        .unwrap_err();
    assert!(
        typed
            .loader_error()
            .and_then(|e| e.downcast_ref::<NoTable>())
            .is_some()
    );
    let boxed = cache
        .get_or_compute("boxed", || async {
            Err::<Row, Box<dyn std::error::Error + Send + Sync>>(Box::new(NoTable))
        })
        .await
        .unwrap_err();
    assert!(
        boxed
            .loader_error()
            .and_then(|e| e.downcast_ref::<NoTable>())
            .is_some()
    );
    let text = cache
        .get_or_compute("string", || async {
            Err::<Row, _>(format!("row {} gone", 7))
        })
        .await
        .unwrap_err();
    assert_eq!(text.loader_error().unwrap().to_string(), "row 7 gone");
    let literal = cache
        .get_or_compute("str", || async { Err::<Row, _>("gone") })
        .await
        .unwrap_err();
    assert_eq!(literal.loader_error().unwrap().to_string(), "gone");
    // anyhow boxes itself in its own wrapper (same text, no downcast); the
    // documented way to keep the type reachable:
    let wrapped = cache
        .get_or_compute("anyhow", || async {
            Err::<Row, _>(anyhow::Error::from(NoTable))
        })
        .await
        .unwrap_err();
    assert_eq!(
        wrapped.loader_error().unwrap().to_string(),
        "no such table: products"
    );
    let unwrapped = cache
        .get_or_compute("anyhow-typed", || async {
            load_with_anyhow()
                .await
                .map_err(anyhow::Error::reallocate_into_boxed_dyn_error_without_backtrace)
        })
        .await
        .unwrap_err();
    assert!(
        unwrapped
            .loader_error()
            .and_then(|e| e.downcast_ref::<NoTable>())
            .is_some()
    );
}

/// `{:#}` of an anyhow error built from ours says each thing once: for a
/// loader error, and for a refused connection (which said "Connection
/// refused" three times).
#[tokio::test(flavor = "multi_thread")]
async fn error_display_says_each_thing_once() {
    let server = RedisServer::start();
    let cache: Cache<Row> = Cache::builder("display")
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    let e = cache
        .get_or_compute("k", || async { Err::<Row, _>(NoTable) })
        .await
        .unwrap_err();
    assert_nothing_said_twice(&e);
    let shown = format!("{:#}", anyhow::Error::from(e));
    assert_eq!(
        shown,
        "loader failed for key \"k\": no such table: products"
    );

    // Nothing listens on a port whose Redis was killed.
    let mut gone = RedisServer::start();
    let url = gone.url();
    gone.kill();
    let e = Cache::<Row>::builder("display")
        .redis_url(url)
        .build()
        .await
        .err()
        .expect("nothing listens there");
    assert_eq!(e.kind(), ErrorKind::Redis);
    assert_nothing_said_twice(&e);
    assert!(e.redis_error().is_some());
    let shown = format!("{:#}", anyhow::Error::from(e));
    assert_eq!(shown.matches("efused").count(), 1, "{shown}");
    assert!(shown.starts_with("redis error: connect"), "{shown}");
}

// ---------------------------------------------------------------------------
// 4. Negative caching, written without type annotations

async fn find_row(id: u64) -> anyhow::Result<Option<Row>> {
    Ok((id < 100).then(|| row(id)))
}

#[tokio::test(flavor = "multi_thread")]
async fn negative_caching_reads_as_an_option_without_annotations() {
    let server = RedisServer::start();
    let cache = Cache::builder("neg")
        .redis_url(server.url())
        .negative_ttl(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let lookup = |id: u64| {
        let calls = calls.clone();
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            find_row(id).await
        }
    };
    let found = cache.get_or_compute_opt(7u64, lookup(7)).await.unwrap();
    assert_eq!(found.as_deref(), Some(&row(7)));
    assert_eq!(found.unwrap().name, "row 7", "derefs to the row");
    assert!(
        cache
            .get_or_compute_opt(500u64, lookup(500))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        cache
            .get_or_compute_opt(500u64, lookup(500))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2, "the miss is cached too");
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert!(
        cache
            .get_or_compute_opt(500u64, lookup(500))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "for negative_ttl only");
    assert!(
        cache
            .get_or_compute_opt(7u64, lookup(7))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3, "found rows live for ttl");
}

// ---------------------------------------------------------------------------
// 5. Building while Redis is down

#[tokio::test(flavor = "multi_thread")]
async fn built_while_redis_is_down_it_starts_using_redis_when_it_comes_up() {
    let mut server = RedisServer::start();
    server.kill(); // the port is free: nothing listens there
    let a: Cache<Row> = Cache::builder("lazy")
        .redis_url(server.url())
        .redis_timeout(Duration::from_millis(200))
        .connect_lazy(true)
        .build()
        .await
        .expect("connect_lazy builds without Redis");
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let got = a
        .get_or_compute(1u64, move || async move {
            c.fetch_add(1, Ordering::SeqCst);
            Ok::<_, NoTable>(row(1))
        })
        .await
        .unwrap();
    assert_eq!((*got).clone(), row(1));
    assert_eq!(calls.load(Ordering::SeqCst), 1, "served by the loader");

    server.restart();
    let b: Cache<Row> = Cache::builder("lazy")
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    b.set(2u64, row(2)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(Some(v)) = a.get(2u64).await {
            assert_eq!(*v, row(2));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a never reached the restarted Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And writes through it.
    a.set(3u64, row(3)).await.unwrap();
    assert!(exists(&mut server.connection(), "hc:{lazy:3}:v"));
}

// ---------------------------------------------------------------------------
// 6. Invalidating after a database commit while Redis is down

/// Killed then restarted: the retry lands once Redis is back, without the
/// caller doing anything, and this process dropped its copy at once.
#[tokio::test(flavor = "multi_thread")]
async fn invalidate_eventually_lands_after_redis_is_restarted() {
    let mut server = RedisServer::start();
    let a: Cache<Row> = Cache::builder("inv")
        .redis_url(server.url())
        .redis_timeout(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    a.set(1u64, row(1)).await.unwrap();
    server.kill();
    assert_eq!(
        a.invalidate(1u64).await.unwrap_err().kind(),
        ErrorKind::Redis
    );
    a.set(1u64, row(1)).await.unwrap_err();
    let landed = a.invalidate_eventually(1u64);
    // This process no longer serves its copy: `get` must go to Redis.
    assert!(a.get(1u64).await.is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!landed.is_finished(), "retrying while Redis is down");
    server.restart();
    tokio::time::timeout(Duration::from_secs(5), landed)
        .await
        .expect("landed within 5 s of the restart")
        .unwrap()
        .expect("invalidated");
}

/// Hung (SIGSTOP) then resumed, so Redis keeps its data: the old value is
/// still there while the retries fail, and gone once one lands.
#[tokio::test(flavor = "multi_thread")]
async fn invalidate_eventually_deletes_the_old_value_once_redis_answers() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let a: Cache<Row> = Cache::builder("inv2")
        .redis_url(server.url())
        .redis_timeout(Duration::from_millis(150))
        .build()
        .await
        .unwrap();
    a.set(1u64, row(1)).await.unwrap();
    server.freeze();
    let landed = a.invalidate_eventually(1u64);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!landed.is_finished(), "retrying while Redis is hung");
    server.thaw();
    tokio::time::timeout(Duration::from_secs(5), landed)
        .await
        .expect("landed within 5 s")
        .unwrap()
        .expect("invalidated");
    assert!(!exists(&mut con, "hc:{inv2:1}:v"), "the old value is gone");
}

// ---------------------------------------------------------------------------
// 7. Keys as call sites hold them

#[tokio::test(flavor = "multi_thread")]
// The borrows are the point: call sites hold `&id` and `&String`s.
#[allow(clippy::needless_borrows_for_generic_args)]
async fn integer_and_string_keys_name_the_same_entry() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let a: Cache<Row> = Cache::builder("keys")
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let load = |id: u64| {
        let calls = calls.clone();
        move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Ok::<_, NoTable>(row(id))
        }
    };
    let id: u64 = 42;
    let s = id.to_string();
    a.get_or_compute(42u64, load(42)).await.unwrap();
    a.get_or_compute(&id, load(42)).await.unwrap();
    a.get_or_compute("42", load(42)).await.unwrap();
    a.get_or_compute(&s, load(42)).await.unwrap();
    a.get_or_compute(s.clone(), load(42)).await.unwrap();
    a.get_or_compute(42i32, load(42)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(exists(&mut con, "hc:{keys:42}:v"));

    // Another process, through Redis, with other key types.
    let b: Cache<Row> = Cache::builder("keys")
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    assert_eq!(*b.get(42u8).await.unwrap().unwrap(), row(42));
    let many = b.get_many(&[41u64, 42]).await.unwrap();
    assert!(many[0].is_none() && many[1].is_some());
    let all = b
        .get_or_compute_many(&[41u64, 42], |k: String| async move {
            Ok::<_, NoTable>(row(k.parse().unwrap()))
        })
        .await
        .unwrap();
    assert_eq!(*all[0], row(41));
    b.invalidate(s).await.unwrap();
    assert!(!exists(&mut con, "hc:{keys:42}:v"));
    b.invalidate_many(&[41u64]).await.unwrap();
    assert!(!exists(&mut con, "hc:{keys:41}:v"));
}

// ---------------------------------------------------------------------------
// 8. Per-entry TTL

#[tokio::test(flavor = "multi_thread")]
async fn set_with_ttl_and_ttl_for_choose_a_ttl_per_value() {
    let server = RedisServer::start();
    let mut con = server.connection();
    let pttl = |con: &mut redis::Connection, key: &str| -> i64 {
        redis::cmd("PTTL").arg(key).query(con).unwrap()
    };
    let cache: Cache<Row> = Cache::builder("ttl")
        .redis_url(server.url())
        .ttl(Duration::from_secs(60))
        .ttl_for(|r: &Row| (r.id == 0).then_some(Duration::from_secs(2)))
        .build()
        .await
        .unwrap();
    cache
        .set_with_ttl(1u64, row(1), Duration::from_secs(5))
        .await
        .unwrap();
    let t = pttl(&mut con, "hc:{ttl:1}:v");
    assert!((4_000..=5_000).contains(&t), "{t}");
    cache.set(0u64, row(0)).await.unwrap();
    let t = pttl(&mut con, "hc:{ttl:0}:v");
    assert!((1_500..=2_000).contains(&t), "{t}");
    cache
        .get_or_compute(2u64, || async { Ok::<_, NoTable>(row(2)) })
        .await
        .unwrap();
    let t = pttl(&mut con, "hc:{ttl:2}:v");
    assert!((50_000..=60_000).contains(&t), "{t}");
}
