//! Stock, the order stream and the typed queue against a real redis-server,
//! in one process: answers, idempotency, limits, bad input, take-over of a
//! stopped consumer's orders, dead letters, trimming.

mod support;

use herdcache::{Cancellation, Client, ErrorKind, OrderEvent, Reservation};
use std::collections::HashSet;
use std::time::{Duration, Instant};
use support::RedisServer;

async fn client(redis: &RedisServer) -> Client {
    Client::connect(&redis.url()).await.expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserve_never_oversells_and_retries_get_the_first_answer() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let stock = client.stock("sku-1");
    stock.set_available(3).await.unwrap();
    assert_eq!(stock.available().await.unwrap(), 3);
    assert_eq!(
        stock.reserve("o1", "u1", 2).await.unwrap(),
        Reservation::Reserved { remaining: 1 }
    );
    // Asks for more than is left: sold out, nothing taken.
    assert_eq!(
        stock.reserve("o2", "u2", 2).await.unwrap(),
        Reservation::SoldOut
    );
    assert_eq!(stock.available().await.unwrap(), 1);
    assert_eq!(
        stock.reserve("o3", "u3", 1).await.unwrap(),
        Reservation::Reserved { remaining: 0 }
    );
    assert_eq!(
        stock.reserve("o4", "u4", 1).await.unwrap(),
        Reservation::SoldOut
    );
    // A restock does not change answers already given.
    assert_eq!(stock.add(5).await.unwrap(), 5);
    assert_eq!(
        stock.reserve("o2", "u2", 2).await.unwrap(),
        Reservation::SoldOut
    );
    assert_eq!(
        stock.reserve("o1", "u1", 2).await.unwrap(),
        Reservation::Reserved { remaining: 1 }
    );
    // Cancel gives units back once.
    assert_eq!(
        stock.cancel("o1").await.unwrap(),
        Cancellation::Cancelled { available: 7 }
    );
    assert_eq!(
        stock.cancel("o1").await.unwrap(),
        Cancellation::AlreadyCancelled
    );
    assert_eq!(stock.cancel("o2").await.unwrap(), Cancellation::NotReserved);
    assert_eq!(
        stock.cancel("nope").await.unwrap(),
        Cancellation::UnknownOrder
    );
    assert_eq!(stock.available().await.unwrap(), 7);
    // Counts far above 10^14 are written as integers, not `1.1e+15`.
    let big = client.stock("big");
    big.set_available(1 << 50).await.unwrap();
    assert_eq!(
        big.reserve("o", "u", 1).await.unwrap(),
        Reservation::Reserved {
            remaining: (1 << 50) - 1
        }
    );
    assert_eq!(
        big.cancel("o").await.unwrap(),
        Cancellation::Cancelled { available: 1 << 50 }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_holds_under_concurrency() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let stock = client.stock("limited").per_user_limit(3);
    stock.set_available(100).await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let stock = stock.clone();
        tasks.push(tokio::spawn(async move {
            stock
                .reserve(&format!("o{i}"), "same-user", 1)
                .await
                .unwrap()
        }));
    }
    let mut reserved = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            Reservation::Reserved { .. } => reserved.push(format!("o{i}")),
            Reservation::UserLimit => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(reserved.len(), 3);
    assert_eq!(stock.available().await.unwrap(), 97);
    assert_eq!(
        stock.reserve("extra", "same-user", 1).await.unwrap(),
        Reservation::UserLimit
    );
    // A cancellation frees the user's room for one more.
    stock.cancel(&reserved[0]).await.unwrap();
    assert!(matches!(
        stock.reserve("extra2", "same-user", 1).await.unwrap(),
        Reservation::Reserved { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error_and_takes_nothing() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let stock = client.stock("s");
    stock.set_available(5).await.unwrap();
    assert_eq!(
        stock.reserve("o", "u", 0).await.unwrap_err().kind(),
        ErrorKind::Config
    );
    assert_eq!(
        stock
            .reserve("o", "u", herdcache::MAX_QTY + 1)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Config
    );
    assert_eq!(
        stock.reserve("", "u", 1).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    assert_eq!(
        stock.reserve("o", "", 1).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    let long = "x".repeat(herdcache::MAX_ID_LEN + 1);
    assert_eq!(
        stock.reserve(&long, "u", 1).await.unwrap_err().kind(),
        ErrorKind::InvalidKey
    );
    for sku in ["", "a{b", "c}"] {
        let err = client.stock(sku).reserve("o", "u", 1).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey, "{sku:?}");
    }
    // Braces are fine inside ids: they are never part of a key.
    assert!(matches!(
        stock.reserve("{o}", "{u}", 1).await.unwrap(),
        Reservation::Reserved { remaining: 4 }
    ));
    // A SKU never set: a typed error, and nothing recorded.
    let never = client.stock("never-set");
    assert_eq!(
        never.reserve("o", "u", 1).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(
        never.available().await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let mut conn = redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("hc:st:{never-set}*")
        .query(&mut conn)
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
    assert_eq!(stock.available().await.unwrap(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_are_consumed_acknowledged_and_taken_over_from_a_stopped_consumer() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let stock = client.stock("sale");
    stock.set_available(10).await.unwrap();
    for i in 0..10 {
        let r = stock
            .reserve(&format!("o{i}"), &format!("u{i}"), 1)
            .await
            .unwrap();
        assert!(matches!(r, Reservation::Reserved { .. }));
    }
    stock.cancel("o3").await.unwrap();
    let orders = stock.orders().claim_after(Duration::from_millis(300));
    // A consumer takes four orders and stops without acknowledging them.
    let mut first = orders.consumer("db", "a").await.unwrap();
    let mut taken = Vec::new();
    for _ in 0..4 {
        taken.push(first.next().await.unwrap());
    }
    let lost: HashSet<String> = taken.iter().map(|d| d.order_id().to_owned()).collect();
    drop(taken);
    drop(first);
    // Another consumer of the group gets the rest, then those four once
    // they have been idle past claim_after.
    let mut second = orders.consumer("db", "b").await.unwrap();
    let started = Instant::now();
    let mut seen = HashSet::new();
    let mut cancelled = 0;
    while seen.len() < 10 || cancelled == 0 {
        let d = second
            .next_timeout(Duration::from_secs(3))
            .await
            .unwrap()
            .expect("an order within 3 s");
        match d.event() {
            OrderEvent::Reserved => {
                assert_eq!(d.sku(), "sale");
                assert_eq!(d.qty(), 1);
                assert_eq!(d.user_id(), format!("u{}", &d.order_id()[1..]));
                if lost.contains(d.order_id()) {
                    assert!(d.deliveries() >= 2, "a taken-over order says so");
                }
                seen.insert(d.order_id().to_owned());
            }
            OrderEvent::Cancelled => {
                assert_eq!(d.order_id(), "o3");
                cancelled += 1;
            }
            _ => unreachable!(),
        }
        assert!(d.ack().await.unwrap());
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_millis(300) + Duration::from_secs(1));
    // All acknowledged: trimming removes them all; nothing is redelivered.
    assert_eq!(orders.trim().await.unwrap(), 11);
    assert!(
        second
            .next_timeout(Duration::from_millis(500))
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_order_ends_in_the_dead_letters_and_trim_keeps_what_is_pending() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let stock = client.stock("poison");
    stock.set_available(2).await.unwrap();
    stock.reserve("bad", "u", 1).await.unwrap();
    stock.reserve("good", "u2", 1).await.unwrap();
    let orders = stock
        .orders()
        .claim_after(Duration::from_millis(100))
        .max_deliveries(3)
        .block(Duration::from_millis(50));
    let mut c = orders.consumer("g", "c").await.unwrap();
    let mut bad_deliveries = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let Some(d) = c.next_timeout(Duration::from_millis(300)).await.unwrap() else {
            break;
        };
        assert!(Instant::now() < deadline);
        if d.order_id() == "bad" {
            // The consumer "crashes" on it every time: no ack.
            bad_deliveries += 1;
            // Nothing acknowledged yet: trimming must keep it.
            assert_eq!(orders.trim().await.unwrap(), 0);
        } else {
            d.ack().await.unwrap();
        }
    }
    assert_eq!(bad_deliveries, 3);
    let mut conn = redis.connection();
    let dead: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
        .arg("hc:st:{poison}:d")
        .arg("-")
        .arg("+")
        .query(&mut conn)
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    let fields: std::collections::HashMap<_, _> = dead[0].1.iter().cloned().collect();
    assert_eq!(fields["order"], "bad");
    assert!(fields["dead_reason"].contains("3 times"), "{fields:?}");
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Email {
    to: String,
    body: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typed_queue_delivers_acknowledges_and_dead_letters_what_does_not_decode() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let queue = client
        .queue::<Email>("mail")
        .claim_after(Duration::from_millis(200));
    for i in 0..5 {
        queue
            .push(&Email {
                to: format!("u{i}@example.com"),
                body: "hi".into(),
            })
            .await
            .unwrap();
    }
    // Bytes that are no Email, written by hand.
    let mut conn = redis.connection();
    let _: String = redis::cmd("XADD")
        .arg("hc:q:{mail}:s")
        .arg("*")
        .arg("v")
        .arg(&[0xffu8, 0xff, 0xff][..])
        .query(&mut conn)
        .unwrap();
    let mut c = queue.consumer("senders", "s1").await.unwrap();
    let mut got = Vec::new();
    while let Some(m) = c.next_timeout(Duration::from_millis(500)).await.unwrap() {
        got.push(m.value().to().to_owned());
        assert_eq!(m.deliveries(), 1);
        m.ack().await.unwrap();
    }
    assert_eq!(got.len(), 5, "{got:?}");
    let dead: usize = redis::cmd("XLEN")
        .arg("hc:q:{mail}:d")
        .query(&mut conn)
        .unwrap();
    assert_eq!(dead, 1);
    assert_eq!(
        client
            .queue::<Email>("a{b")
            .push(&got_email())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::InvalidKey
    );
}

fn got_email() -> Email {
    Email {
        to: "x".into(),
        body: String::new(),
    }
}

impl Email {
    fn to(&self) -> &str {
        &self.to
    }
}

/// Counts beyond what Lua's numbers hold exactly, and durations past the
/// end of the clock: a typed error up front, never a stock that fails on
/// every later call or a rounded count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_and_durations_out_of_range_are_typed_errors() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let stock = client.stock("big");
    for n in [u64::MAX, i64::MAX as u64, herdcache::MAX_AVAILABLE + 1] {
        let err = stock.set_available(n).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Config, "{n}: {err}");
    }
    assert_eq!(
        stock.available().await.unwrap_err().kind(),
        ErrorKind::NotFound,
        "nothing was set"
    );
    // The largest stock is exact through reserve and cancel.
    let max = herdcache::MAX_AVAILABLE;
    stock.set_available(max).await.unwrap();
    assert_eq!(
        stock.reserve("o1", "u1", 1).await.unwrap(),
        Reservation::Reserved { remaining: max - 1 }
    );
    assert_eq!(
        stock.cancel("o1").await.unwrap(),
        herdcache::Cancellation::Cancelled { available: max }
    );
    // A restock that would pass it adds nothing.
    let err = stock.add(1).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    assert_eq!(stock.available().await.unwrap(), max);
    let small = client.stock("small");
    assert_eq!(small.add(3).await.unwrap(), 3, "add starts a SKU from 0");
    assert_eq!(small.add(4).await.unwrap(), 7);
    assert_eq!(
        small.add(u64::MAX).await.unwrap_err().kind(),
        ErrorKind::Config
    );
    assert_eq!(small.available().await.unwrap(), 7);
    // Durations: a timeout past the end of the clock waits as `next`; a
    // claim_after past a year is refused.
    let queue = client.queue::<u64>("q");
    queue.push(&7).await.unwrap();
    let mut c = queue.consumer("g", "c").await.unwrap();
    let m = c.next_timeout(Duration::MAX).await.unwrap().expect("one");
    assert_eq!(*m.value(), 7);
    m.ack().await.unwrap();
    let err = client
        .queue::<u64>("q")
        .claim_after(Duration::MAX)
        .consumer("g", "c2")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
    let err = client
        .rate_limiter("rl")
        .rate(1, Duration::new(1 << 45, 0))
        .burst(1 << 63)
        .check("k", 1)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config, "{err}");
}

/// A Redis restart under a consumer: without persistence its group is
/// gone (`NOGROUP`), with it the consumer's own connection is stale. Either
/// way the consumer goes on by itself, and the stale connection does not
/// open the client's breaker for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_goes_on_after_a_redis_restart() {
    for durable in [false, true] {
        let mut redis = if durable {
            RedisServer::start_durable()
        } else {
            RedisServer::start()
        };
        let client = client(&redis).await;
        let queue = client.queue::<u64>("q");
        let mut c = queue.consumer("g", "c1").await.unwrap();
        queue.push(&1).await.unwrap();
        let m = c.next_timeout(Duration::from_secs(2)).await.unwrap();
        m.expect("the first message").ack().await.unwrap();
        redis.restart();
        // The client's shared connection comes back by itself.
        let counter = client.counter("x");
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while counter.incr(1).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "client never back");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        queue.push(&2).await.unwrap();
        // The consumer's next read meets its stale connection (and, without
        // persistence, no group): it must still deliver the new message,
        // and no call of the client may fail meanwhile.
        let got = c.next_timeout(Duration::from_secs(3)).await;
        for _ in 0..20 {
            counter.incr(1).await.expect("the breaker stays closed");
        }
        let m = got
            .unwrap_or_else(|e| panic!("durable={durable}: {e}"))
            .unwrap_or_else(|| panic!("durable={durable}: nothing delivered"));
        assert_eq!(*m.value(), 2);
        m.ack().await.unwrap();
    }
}

/// A consumer restarted under its own name gets back every entry it had
/// not acknowledged, not just the first batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_consumer_gets_back_all_its_pending_entries() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    let queue = client.queue::<u64>("many");
    for i in 0..100 {
        queue.push(&i).await.unwrap();
    }
    {
        let mut c = queue.consumer("g", "w1").await.unwrap();
        for _ in 0..100 {
            drop(c.next().await.unwrap());
        }
    }
    let mut c = queue.consumer("g", "w1").await.unwrap();
    let mut seen = Vec::new();
    while let Some(m) = c.next_timeout(Duration::from_millis(300)).await.unwrap() {
        assert!(m.deliveries() >= 2);
        seen.push(*m.value());
        m.ack().await.unwrap();
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..100).collect::<Vec<u64>>());
}

/// Concurrent reservations of one SKU in one process go to Redis together
/// (fewer script calls than reservations), and each is still its own
/// atomic step: exactly the stock sold, every `remaining` told once, an
/// order id twice in flight answered once, each handle's limit its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_are_batched_and_each_stays_atomic() {
    let redis = RedisServer::start();
    let client = client(&redis).await;
    client.stock("b").set_available(100).await.unwrap();
    let mut conn = redis.connection();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut conn)
        .unwrap();
    let mut tasks = Vec::new();
    for i in 0..400u32 {
        let stock = if i % 2 == 0 {
            client.stock("b")
        } else {
            // Another handle of the SKU, with a limit of its own: user
            // `limited` gets at most 2 units through it.
            client.stock("b").per_user_limit(2)
        };
        tasks.push(tokio::spawn(async move {
            let (order, user) = match i {
                // The same order id four times at once.
                0..4 => ("dup".to_owned(), "d".to_owned()),
                _ if i % 2 == 1 && i < 40 => (format!("o{i}"), "limited".to_owned()),
                _ => (format!("o{i}"), format!("u{i}")),
            };
            (
                order.clone(),
                stock.reserve(&order, &user, 1).await.unwrap(),
            )
        }));
    }
    let mut remaining = std::collections::BTreeSet::new();
    let (mut reserved, mut limited, mut dup) = (0, 0, Vec::new());
    for t in tasks {
        let (order, r) = t.await.unwrap();
        if order == "dup" {
            dup.push(r);
            continue;
        }
        match r {
            Reservation::Reserved { remaining: left } => {
                reserved += 1;
                assert!(remaining.insert(left), "remaining {left} told twice");
            }
            Reservation::UserLimit => limited += 1,
            Reservation::SoldOut => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(dup.windows(2).all(|w| w[0] == w[1]), "{dup:?}");
    let dup_took = usize::from(matches!(dup[0], Reservation::Reserved { .. }));
    if let Reservation::Reserved { remaining: left } = dup[0] {
        assert!(remaining.insert(left));
    }
    assert_eq!(reserved + dup_took, 100, "exactly the stock");
    assert_eq!(client.stock("b").available().await.unwrap(), 0);
    let limited_held: u32 = redis::cmd("HGET")
        .arg("hc:st:{b}:u")
        .arg("limited")
        .query(&mut conn)
        .unwrap();
    assert!(limited_held <= 2, "{limited_held}");
    assert!(limited > 0, "the limit answered some");
    let stream: usize = redis::cmd("XLEN")
        .arg("hc:st:{b}:o")
        .query(&mut conn)
        .unwrap();
    assert_eq!(stream, 100, "one order message per unit");
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut conn)
        .unwrap();
    let calls: u64 = info
        .lines()
        .find(|l| l.starts_with("cmdstat_evalsha:"))
        .and_then(|l| l.split(['=', ',']).nth(1))
        .and_then(|n| n.parse().ok())
        .expect("evalsha calls");
    assert!(calls < 400, "{calls} script calls for 400 reservations");
    println!("400 reservations in {calls} script calls");
}
