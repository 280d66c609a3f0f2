//! The in-process tier: a `moka` cache of decoded values, plus the table of
//! loads in flight that coalesces concurrent misses of one key.
//!
//! We use `moka::sync::Cache`, not `moka::future::Cache`: the future cache's
//! selling point is its async `get_with` coalescing, but our coalescing has
//! to do more than moka's (take a fleet-wide lock, be voidable by
//! `invalidate`, keep running when the caller is dropped), so we keep our own
//! table, and the sync cache gives a hit path with no `.await` at all.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

use crate::cache::envelope::{Header, now_ms};
use crate::error::Error;
use crate::shared::telemetry::Served;

/// One L1 entry: the shared value and when it stops being fresh.
pub(crate) struct Entry<V> {
    pub(crate) value: Arc<V>,
    pub(crate) fresh_until: Instant,
    /// The same instant as stored in the envelope (unix ms): an early refresh
    /// compares it with Redis' copy to see whether someone refreshed already.
    pub(crate) fresh_until_ms: u64,
    expires_at: Instant,
    /// Before this instant an early refresh (XFetch) cannot fire, so the hit
    /// path skips the random draw: `fresh_until - 10 * beta * delta`
    /// (`e^-10` is the chance the draw would have fired earlier).
    early_from: Instant,
    /// `beta * delta` in seconds, delta being the value's compute time.
    beta_delta: f64,
}

impl<V> Clone for Entry<V> {
    fn clone(&self) -> Self {
        Entry {
            value: self.value.clone(),
            fresh_until: self.fresh_until,
            fresh_until_ms: self.fresh_until_ms,
            expires_at: self.expires_at,
            early_from: self.early_from,
            beta_delta: self.beta_delta,
        }
    }
}

impl<V> Entry<V> {
    /// XFetch (Vattani, Chierichetti, Lowenstein, VLDB 2015): refresh early
    /// when `now - delta * beta * ln(rand()) >= expiry`. The chance rises as
    /// expiry nears, and with the compute time, so one caller usually
    /// refreshes before anyone sees a miss.
    #[inline]
    pub(crate) fn refresh_early(&self, now: Instant) -> bool {
        if now < self.early_from {
            return false;
        }
        let left = self
            .fresh_until
            .saturating_duration_since(now)
            .as_secs_f64();
        let draw = -(1.0 - fastrand::f64()).ln(); // rand() in (0, 1]
        self.beta_delta * draw >= left
    }
}

/// The moka tier. Cheap to clone (moka's cache is an `Arc` inside).
///
/// moka expires entries by one cache-wide `time_to_live` (= `local_ttl`), and
/// each entry's own, possibly shorter, life (`expires_at`: stale-until, a
/// negative TTL) is checked here on read. A per-entry `moka::Expiry` would
/// say the same thing, but moka then does expiry bookkeeping on every read
/// (~50 ns per hit measured: docs/BENCHMARKS.md), which is the L1 hit's whole
/// budget over raw moka. The price: an entry past its own life occupies its
/// slot until `local_ttl` or eviction, unless a read removes it first.
pub(crate) struct Local<V> {
    /// `None` when `local_ttl` is zero: no L1, and no moka work on any path.
    cache: Option<moka::sync::Cache<String, Entry<V>>>,
    local_ttl: Duration,
    beta: f64,
}

impl<V> Clone for Local<V> {
    fn clone(&self) -> Self {
        Local {
            cache: self.cache.clone(),
            local_ttl: self.local_ttl,
            beta: self.beta,
        }
    }
}

impl<V: Send + Sync + 'static> Local<V> {
    pub(crate) fn new(max_capacity: u64, local_ttl: Duration, beta: f64) -> Self {
        let cache = (!local_ttl.is_zero()).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(max_capacity)
                // moka refuses a TTL over 1,000 years; entries' own life
                // is checked on read anyway.
                .time_to_live(local_ttl.min(Duration::from_secs(100 * 365 * 24 * 3600)))
                .build()
        });
        Local {
            cache,
            local_ttl,
            beta,
        }
    }

    /// False when `local_ttl` is zero.
    pub(crate) fn is_enabled(&self) -> bool {
        self.cache.is_some()
    }

    /// The entry, if it is alive (fresh or stale), with the instant it was
    /// judged at. Freshness is the caller's question. The clock is read only
    /// after a lookup that found something: a miss, or no L1, costs no read.
    #[inline]
    pub(crate) fn get(&self, key: &str) -> Option<(Entry<V>, Instant)> {
        let entry = self.cache.as_ref()?.get(key)?;
        let now = Instant::now();
        if now < entry.expires_at {
            Some((entry, now))
        } else {
            self.remove(key);
            None
        }
    }

    /// Keeps `value` until the header's stale-until instant, but never longer
    /// than `local_ttl`: L1 copies are the ones other processes can only
    /// reach by pub/sub, so their life is capped independently.
    pub(crate) fn insert(&self, key: &str, value: Arc<V>, header: &Header) {
        let Some(cache) = &self.cache else { return };
        let now = Instant::now();
        let now_unix = now_ms();
        let at = |unix_ms: u64| now + Duration::from_millis(unix_ms.saturating_sub(now_unix));
        let cap = now + self.local_ttl;
        let fresh_until = at(header.fresh_until_ms).min(cap);
        let expires_at = at(header.stale_until_ms).min(cap).max(fresh_until);
        if expires_at <= now {
            return;
        }
        let beta_delta = self.beta * f64::from(header.compute_ms) / 1000.0;
        // The window is also capped at a quarter of the value's fresh life: at
        // very high hit rates XFetch fires as soon as its window opens, and
        // with a TTL only a few compute-times long that would reload far
        // more often than once per TTL.
        let fresh_life = fresh_until.saturating_duration_since(now).as_secs_f64();
        let window = (10.0 * beta_delta).min(fresh_life / 4.0);
        let early_from = fresh_until
            .checked_sub(Duration::from_secs_f64(window))
            .unwrap_or(now);
        cache.insert(
            key.to_owned(),
            Entry {
                value,
                fresh_until,
                fresh_until_ms: header.fresh_until_ms,
                expires_at,
                early_from,
                beta_delta,
            },
        );
    }

    pub(crate) fn remove(&self, key: &str) {
        if let Some(cache) = &self.cache {
            cache.invalidate(key);
        }
    }

    pub(crate) fn clear(&self) {
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }
}

pub(crate) type Outcome<V> = Result<Arc<V>, Error>;

/// One load in flight in this process; every caller of the key awaits it.
///
/// A `OnceLock` plus a `Notify`, not a `watch` channel: the common flight
/// (an L2 hit) completes with nobody waiting, and `watch` would allocate its
/// shared state and wake eight `Notify`s on send and again on drop.
pub(crate) struct Flight<V> {
    /// The outcome, and how it was come by (for spans and metrics).
    result: OnceLock<(Outcome<V>, Served)>,
    /// How the load task came by its value, noted before it settles the
    /// flight (`Served` as a `u8`; `Loaded` until noted otherwise).
    served: AtomicU8,
    done: Notify,
    /// Set by `set`/`invalidate` of the key. A mutex, not an atomic, so that
    /// "not voided, so insert into L1" is one step that `void` cannot split.
    voided: Mutex<bool>,
    /// The load task is waiting for another process's fill.
    waiting_for_fill: std::sync::atomic::AtomicBool,
    /// Set for an early refresh, which is answered at once with the current
    /// value and may then stay in the table while it waits: past this
    /// instant (that value's freshness) the answer is out of date, and
    /// `Flights::join` starts a new flight instead of handing it out.
    answer_until: OnceLock<Instant>,
}

impl<V> Flight<V> {
    fn new() -> Self {
        Flight {
            result: OnceLock::new(),
            served: AtomicU8::new(Served::Loaded as u8),
            done: Notify::new(),
            voided: Mutex::new(false),
            waiting_for_fill: Default::default(),
            answer_until: OnceLock::new(),
        }
    }

    /// Settles the flight with a value that is good only until `until`
    /// (see `answer_until`).
    pub(crate) fn complete_until(&self, value: Arc<V>, until: Instant) {
        let _ = self.answer_until.set(until);
        self.complete_as(Ok(value), Served::L1);
    }

    /// Notes how the load task came by the value it is about to settle the
    /// flight with (see `complete`).
    pub(crate) fn note(&self, served: Served) {
        self.served.store(served as u8, Relaxed);
    }

    /// True if the flight was answered with a value that has expired since.
    fn answer_expired(&self) -> bool {
        self.answer_until
            .get()
            .is_some_and(|until| Instant::now() >= *until)
    }

    pub(crate) fn mark_waiting_for_fill(&self) {
        self.waiting_for_fill.store(true, SeqCst);
    }

    pub(crate) fn is_waiting_for_fill(&self) -> bool {
        self.waiting_for_fill.load(SeqCst)
    }

    /// Waits for the outcome. The load runs in its own task (which settles
    /// the flight even if it panics), so dropping this future abandons only
    /// the wait, never the load.
    /// Returns the outcome with how the flight came by it.
    pub(crate) async fn wait_served(&self) -> (Outcome<V>, Served) {
        loop {
            // Registered before the check, so a `complete` between the check
            // and the await still wakes us.
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(outcome) = self.result.get() {
                return outcome.clone();
            }
            notified.await;
        }
    }

    /// Settles the flight. The first outcome wins: a flight that answered
    /// early with a stale value keeps that answer for late joiners.
    ///
    /// An error is `Served::Error`; a value is served as last
    /// [`note`](Self::note)d (`Loaded` if never).
    pub(crate) fn complete(&self, outcome: Outcome<V>) {
        let served = Served::from_u8(self.served.load(Relaxed));
        self.complete_as(outcome, served);
    }

    /// [`complete`](Self::complete), saying how the value was come by.
    pub(crate) fn complete_as(&self, outcome: Outcome<V>, served: Served) {
        let served = if outcome.is_err() {
            Served::Error
        } else {
            served
        };
        if self.result.set((outcome, served)).is_ok() {
            self.done.notify_waiters();
        }
    }

    pub(crate) fn is_complete(&self) -> bool {
        self.result.get().is_some()
    }

    /// True once `set` or `invalidate` ran for the key after this load
    /// started: its result must not enter L1.
    #[cfg(test)]
    pub(crate) fn is_voided(&self) -> bool {
        *self.voided.lock().expect("voided lock")
    }

    /// Puts the loaded value into L1 unless the flight was voided meanwhile.
    /// Holding the lock across the insert means that once `void` returns, no
    /// value from this flight can still land in L1.
    pub(crate) fn insert_unless_voided(
        &self,
        local: &Local<V>,
        key: &str,
        value: Arc<V>,
        header: &Header,
    ) where
        V: Send + Sync + 'static,
    {
        if !local.is_enabled() {
            return;
        }
        let voided = self.voided.lock().expect("voided lock");
        if !*voided {
            local.insert(key, value, header);
        }
    }
}

/// The table of loads in flight, by key, and the lanes of plain reads.
///
/// foldhash (seeded per table, so keys chosen by an attacker cannot aim at
/// one bucket) costs a fraction of std's SipHash for the key hashing here.
pub(crate) struct Flights<V> {
    map: Mutex<HashMap<Box<str>, Arc<Flight<V>>, foldhash::fast::RandomState>>,
    lanes: Lanes,
}

impl<V> Default for Flights<V> {
    fn default() -> Self {
        Flights {
            map: Mutex::new(HashMap::default()),
            lanes: Lanes::default(),
        }
    }
}

/// The L2 hit's fast path: most reads that miss L1 find the value in Redis,
/// and for them a flight (a table entry, a boxed key, an `Arc`, a wake-up
/// primitive) is pure overhead, about a fifth of the hit's CPU. So a read
/// first tries to take its key's *lane*: if no other plain read is on that
/// lane, it `GET`s without any flight. Concurrent readers of a hot key find
/// the lane taken and coalesce on a flight as before, so a burst of misses
/// of one key costs at most two `GET`s per process, not one per caller.
///
/// A lane also carries an epoch, bumped by everything that voids flights
/// (`set`, `invalidate`, change notices, `clear`, a reconnect). A read
/// without a flight snapshots it before its `GET` and puts the value into
/// L1 only if the epoch has not moved, under the lane's lock, which the bump
/// takes too: the same guarantee as a voided flight. (Either the insert
/// comes first and the write's own L1 removal, after its bump, takes it
/// out; or the bump comes first and the insert is skipped.)
struct Lanes {
    lanes: Box<[Lane]>,
    hasher: foldhash::fast::RandomState,
}

#[derive(Default)]
struct Lane {
    reading: AtomicU32,
    epoch: AtomicU64,
    /// Held to bump the epoch, and to compare it and insert into L1: an
    /// insert-then-check would leave the older value visible for a moment
    /// after the write returned.
    write: Mutex<()>,
}

impl Lane {
    fn bump(&self) {
        let _write = self.write.lock().expect("lane lock");
        self.epoch.fetch_add(1, SeqCst);
    }
}

/// Many more lanes than reads in flight, so that reads of *different* keys
/// rarely share one (64 concurrent reads: ~6% take the flight path for
/// that reason). 16 KiB per cache.
const LANES: usize = 1024;

impl Default for Lanes {
    fn default() -> Self {
        Lanes {
            lanes: (0..LANES).map(|_| Lane::default()).collect(),
            hasher: Default::default(),
        }
    }
}

impl Lanes {
    fn lane(&self, key: &str) -> &Lane {
        &self.lanes[self.hasher.hash_one(key) as usize % LANES]
    }
}

/// An epoch snapshot of a key's lane; see [`Flights::ticket`].
pub(crate) struct Ticket<'a> {
    lane: &'a Lane,
    epoch: u64,
}

impl Ticket<'_> {
    /// False if a write of some key of this lane was applied since.
    pub(crate) fn still_current(&self) -> bool {
        self.lane.epoch.load(SeqCst) == self.epoch
    }
}

/// A plain read holding its key's lane; see [`Flights::solo_read`].
pub(crate) struct SoloRead<'a> {
    pub(crate) ticket: Ticket<'a>,
}

impl Drop for SoloRead<'_> {
    fn drop(&mut self) {
        self.ticket.lane.reading.fetch_sub(1, SeqCst);
    }
}

impl<V: Send + Sync + 'static> Local<V> {
    /// Inserts a value read from Redis under `ticket`, unless a write was
    /// applied to its lane meanwhile (see [`Lanes`]).
    pub(crate) fn insert_if_current(
        &self,
        key: &str,
        value: Arc<V>,
        header: &Header,
        ticket: &Ticket<'_>,
    ) {
        if self.is_enabled() {
            let _write = ticket.lane.write.lock().expect("lane lock");
            if ticket.still_current() {
                self.insert(key, value, header);
            }
        }
    }
}

impl<V> Flights<V> {
    /// Snapshots the write epoch of `key`'s lane, before a read of Redis
    /// whose result goes into L1 without a flight.
    pub(crate) fn ticket(&self, key: &str) -> Ticket<'_> {
        let lane = self.lanes.lane(key);
        Ticket {
            lane,
            epoch: lane.epoch.load(SeqCst),
        }
    }

    /// Takes `key`'s lane for a read without a flight, unless another
    /// such read holds it (then the caller coalesces on a flight).
    pub(crate) fn solo_read(&self, key: &str) -> Option<SoloRead<'_>> {
        let lane = self.lanes.lane(key);
        if lane.reading.load(Relaxed) != 0 {
            return None;
        }
        lane.reading.fetch_add(1, SeqCst);
        Some(SoloRead {
            ticket: Ticket {
                lane,
                epoch: lane.epoch.load(SeqCst),
            },
        })
    }

    /// Joins the load of `key`, or registers a new one. `true` means the
    /// caller is the leader and must start the load.
    pub(crate) fn join(&self, key: &str) -> (Arc<Flight<V>>, bool) {
        let mut map = self.map.lock().expect("flights lock");
        if let Some(f) = map.get_mut(key) {
            if !f.answer_expired() {
                return (f.clone(), false);
            }
            // An early refresh still waiting, whose answer has expired:
            // this caller leads a new flight (the old one's `finish` leaves
            // the new one in place).
            let flight = Arc::new(Flight::new());
            *f = flight.clone();
            return (flight, true);
        }
        let flight = Arc::new(Flight::new());
        map.insert(key.into(), flight.clone());
        (flight, true)
    }

    /// The load of `key` in flight, if any.
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Flight<V>>> {
        self.map.lock().expect("flights lock").get(key).cloned()
    }

    /// Removes `flight` from the table if it is still the registered one.
    pub(crate) fn finish(&self, key: &str, flight: &Arc<Flight<V>>) {
        let mut map = self.map.lock().expect("flights lock");
        // One lookup in the common case; a newer flight (ours was voided)
        // goes back under its own boxed key, so nothing is allocated.
        if let Some((k, f)) = map.remove_entry(key)
            && !Arc::ptr_eq(&f, flight)
        {
            map.insert(k, f);
        }
    }

    /// Voids every load in flight (the namespace was cleared).
    pub(crate) fn void_all(&self) {
        for lane in self.lanes.lanes.iter() {
            lane.bump();
        }
        let all: Vec<_> = self.map.lock().expect("flights lock").drain().collect();
        for (_, f) in all {
            *f.voided.lock().expect("voided lock") = true;
        }
    }

    /// [`void`](Self::void), and in the same step (under the key's lane
    /// lock) runs `insert` if no write was applied to the lane since
    /// `ticket`: for a write's own L1 insert after its Redis write.
    pub(crate) fn void_then(&self, key: &str, ticket: &Ticket<'_>, insert: impl FnOnce()) {
        let lane = self.lanes.lane(key);
        let _write = lane.write.lock().expect("lane lock");
        let current = ticket.still_current();
        self.detach(key);
        if current {
            insert();
        }
        lane.epoch.fetch_add(1, SeqCst);
    }

    /// Voids the load of `key`, if any, and detaches it so the next caller
    /// starts a new one.
    pub(crate) fn void(&self, key: &str) {
        self.lanes.lane(key).bump();
        self.detach(key);
    }

    /// Removes the load of `key` from the table and marks it voided.
    fn detach(&self, key: &str) {
        let flight = self.map.lock().expect("flights lock").remove(key);
        if let Some(f) = flight {
            *f.voided.lock().expect("voided lock") = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header for a value fresh (and alive) for one more minute.
    fn minute_header(compute_ms: u32) -> Header {
        let now = now_ms();
        Header {
            flags: 0,
            compute_ms,
            fresh_until_ms: now + 60_000,
            stale_until_ms: now + 60_000,
        }
    }

    #[test]
    fn one_leader_per_key_and_void_detaches() {
        let flights: Flights<u32> = Flights::default();
        let (a, lead_a) = flights.join("k");
        let (b, lead_b) = flights.join("k");
        assert!(lead_a && !lead_b && Arc::ptr_eq(&a, &b));
        flights.void("k");
        assert!(a.is_voided());
        let (c, lead_c) = flights.join("k");
        assert!(lead_c && !Arc::ptr_eq(&a, &c));
        flights.finish("k", &a); // stale flight must not remove the new one
        assert!(!flights.join("k").1);
    }

    #[test]
    fn one_solo_read_per_lane_and_writes_outdate_tickets() {
        let flights: Flights<u32> = Flights::default();
        let solo = flights.solo_read("k").expect("lane free");
        assert!(
            flights.solo_read("k").is_none(),
            "second reader must coalesce"
        );
        let ticket = flights.ticket("k");
        assert!(solo.ticket.still_current() && ticket.still_current());
        flights.void("k");
        assert!(!solo.ticket.still_current() && !ticket.still_current());
        drop(solo);
        let again = flights.solo_read("k").expect("lane freed on drop");
        flights.void_all();
        assert!(!again.ticket.still_current());

        // A read that raced a write takes its value back out of L1.
        let local: Local<u32> = Local::new(100, Duration::from_secs(60), 0.0);
        let header = minute_header(0);
        let ticket = flights.ticket("k");
        flights.void("k");
        local.insert_if_current("k", Arc::new(1), &header, &ticket);
        assert!(local.get("k").is_none());
        local.insert_if_current("k", Arc::new(2), &header, &flights.ticket("k"));
        assert_eq!(*local.get("k").unwrap().0.value, 2);

        // A write's own insert after its Redis write: skipped if another
        // write of the lane was applied since its ticket; either way the
        // lane moves on, so reads that started before it cannot insert.
        let ticket = flights.ticket("k");
        flights.void_then("k", &ticket, || local.insert("k", Arc::new(3), &header));
        assert_eq!(*local.get("k").unwrap().0.value, 3);
        assert!(!ticket.still_current());
        let ticket = flights.ticket("k");
        flights.void("k"); // a concurrent invalidate resumed first
        local.remove("k");
        flights.void_then("k", &ticket, || local.insert("k", Arc::new(4), &header));
        assert!(local.get("k").is_none());
    }

    #[test]
    fn xfetch_never_fires_far_from_expiry_and_always_at_it() {
        let local: Local<u32> = Local::new(100, Duration::from_secs(600), 1.0);
        local.insert("k", Arc::new(1), &minute_header(100));
        let e = local.get("k").unwrap().0;
        let t = Instant::now();
        assert!(
            (0..1000).all(|_| !e.refresh_early(t)),
            "60 s left, 0.1 s compute"
        );
        // 1 ms before expiry with a 100 ms compute (window capped to 15 s): fires almost always.
        let near = e.fresh_until - Duration::from_millis(1);
        let fired = (0..1000).filter(|_| e.refresh_early(near)).count();
        assert!(fired > 950, "{fired}");
    }

    #[test]
    fn l1_entry_life_is_capped_by_local_ttl() {
        let local: Local<u32> = Local::new(100, Duration::from_millis(50), 1.0);
        let header = minute_header(0);
        local.insert("k", Arc::new(7), &header);
        let e = local.get("k").unwrap().0;
        assert!(e.fresh_until <= Instant::now() + Duration::from_millis(50));
        let past = now_ms().saturating_sub(10);
        let expired = Header {
            fresh_until_ms: past,
            stale_until_ms: past,
            ..header
        };
        local.insert("gone", Arc::new(1), &expired);
        assert!(local.get("gone").is_none());
    }

    #[test]
    fn a_flight_whose_early_answer_expired_is_not_joined() {
        let flights: Flights<u32> = Flights::default();
        let (early, leader) = flights.join("k");
        assert!(leader);
        early.complete_until(Arc::new(1), Instant::now() + Duration::from_millis(30));
        // While the answer is fresh, callers join it and get it.
        let (joined, leader) = flights.join("k");
        assert!(!leader && Arc::ptr_eq(&joined, &early));
        std::thread::sleep(Duration::from_millis(40));
        // Past it, the next caller leads a new flight, and the early one's
        // task finishing later leaves the new one in the table.
        let (fresh, leader) = flights.join("k");
        assert!(leader && !Arc::ptr_eq(&fresh, &early));
        flights.finish("k", &early);
        let (again, leader) = flights.join("k");
        assert!(!leader && Arc::ptr_eq(&again, &fresh));
    }
}
