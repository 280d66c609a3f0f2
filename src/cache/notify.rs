//! The namespace bus: fill notices that wake waiters, and change notices that
//! make other processes drop their L1 copy.
//!
//! Each cache subscribes once, at build time, to `hc:bus:<ns>` over RESP3 push
//! on its connection, and again on each new connection before calls can use
//! it (`link.rs`). A waiter therefore never issues SUBSCRIBE: it registers a local
//! [`Watch`] *before* re-reading Redis, so a notice that lands between its
//! read and its wait still wakes it (no lost wake-up). Pub/sub drops what is
//! published while a connection is down, so when a connection is lost every
//! waiter is woken to re-check, and once a new connection is up and
//! subscribed all of L1 is flushed: what
//! was invalidated meanwhile is gone, and what was not is re-read once. L1 is
//! *not* flushed at the disconnect itself: while Redis is unreachable, L1 is
//! what keeps serving (fail-safe), and nobody can change Redis through us.
//!
//! A notice is `[kind][origin: u64 LE][key length: u32 LE][key][envelope]`.
//! `origin` identifies the cache instance that sent it: a process does not
//! apply its own notices, but uses the return of its own `set`/`invalidate`/
//! `clear` notice to know that every notice published before that write has
//! been applied (see [`Bus`]). A fill notice carries the value's envelope when it is
//! small (`INLINE_MAX`): other processes then put the new value straight
//! into L1 and their waiters wake with it in hand, with no second GET.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

use crate::shared::link::Listener;

/// What a notice announces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoticeKind {
    /// A loader's value was written: waiters re-read; others drop their L1.
    Filled,
    /// `set` or `invalidate`: others drop their L1 copy.
    Changed,
    /// A lock was released with no value (failed load): waiters retry.
    Released,
    /// `clear()`: a new generation (its number is the notice's tail).
    Cleared,
}

impl NoticeKind {
    fn byte(self) -> u8 {
        match self {
            NoticeKind::Filled => b'f',
            NoticeKind::Changed => b'c',
            NoticeKind::Released => b'r',
            NoticeKind::Cleared => b'g',
        }
    }

    fn from_byte(b: u8) -> Option<Self> {
        match b {
            b'f' | b'F' => Some(NoticeKind::Filled),
            b'c' => Some(NoticeKind::Changed),
            b'r' => Some(NoticeKind::Released),
            b'g' => Some(NoticeKind::Cleared),
            _ => None,
        }
    }
}

/// Envelopes up to this size ride inside fill notices.
pub(crate) const INLINE_MAX: usize = 16 * 1024;

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Notice<'a> {
    pub(crate) kind: NoticeKind,
    pub(crate) origin: u64,
    pub(crate) key: &'a str,
    /// The filled value's envelope, when small enough to inline.
    pub(crate) envelope: Option<&'a [u8]>,
    /// On a Cluster, the namespace generation a fill was written in (see
    /// [`Notice::filled`]).
    pub(crate) filled_in: Option<u64>,
}

impl<'a> Notice<'a> {
    pub(crate) fn encode(kind: NoticeKind, origin: u64, key: &str, envelope: &[u8]) -> Vec<u8> {
        let inline = if envelope.len() <= INLINE_MAX {
            envelope
        } else {
            &[]
        };
        let mut out = Vec::with_capacity(13 + key.len() + inline.len());
        out.push(kind.byte());
        out.extend_from_slice(&origin.to_le_bytes());
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        out.extend_from_slice(inline);
        out
    }

    /// A fill notice. On a Cluster it also carries the generation the
    /// value was written in (kind byte `F`, the generation after the
    /// origin): there a `clear()` is announced on one bucket's channel and
    /// a fill on another's, and the two are not ordered, so a fill notice
    /// from before a `clear()` may arrive after it; the generation lets
    /// every process refuse it (on one node the channel's order does it).
    pub(crate) fn filled(
        origin: u64,
        key: &str,
        envelope: &[u8],
        generation: Option<u64>,
    ) -> Vec<u8> {
        let mut out = Self::encode(NoticeKind::Filled, origin, key, envelope);
        if let Some(g) = generation {
            out[0] = b'F';
            out.splice(9..9, g.to_le_bytes());
        }
        out
    }

    /// The notice of our `set`/`invalidate` number `id` of `key`: the tail
    /// is the write's id (8 bytes LE), so the bus knows when it is back.
    pub(crate) fn changed(origin: u64, key: &str, id: u64) -> Vec<u8> {
        Self::encode(NoticeKind::Changed, origin, key, &id.to_le_bytes())
    }

    /// The notice of our `clear()` number `id`, less the new generation,
    /// which the script appends: the tail reads `<id>:<generation>`.
    pub(crate) fn cleared_prefix(origin: u64, id: u64) -> Vec<u8> {
        Self::encode(NoticeKind::Cleared, origin, "", format!("{id}:").as_bytes())
    }

    /// The id of the write that sent a change or clear notice.
    pub(crate) fn write_id(&self) -> Option<u64> {
        let tail = self.envelope?;
        match self.kind {
            NoticeKind::Changed => Some(u64::from_le_bytes(tail.try_into().ok()?)),
            NoticeKind::Cleared => std::str::from_utf8(tail)
                .ok()?
                .split_once(':')?
                .0
                .parse()
                .ok(),
            NoticeKind::Filled | NoticeKind::Released => None,
        }
    }

    /// The generation a clear notice announces.
    pub(crate) fn generation(&self) -> Option<u64> {
        let tail = std::str::from_utf8(self.envelope?).ok()?;
        tail.split_once(':')?.1.parse().ok()
    }

    pub(crate) fn decode(bytes: &'a [u8]) -> Option<Self> {
        let (&kind, rest) = bytes.split_first()?;
        let origin = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        // `F`: a fill notice with its generation after the origin.
        let (filled_in, at) = if kind == b'F' {
            let g = u64::from_le_bytes(rest.get(8..16)?.try_into().ok()?);
            (Some(g), 16)
        } else {
            (None, 8)
        };
        let key_len = u32::from_le_bytes(rest.get(at..at + 4)?.try_into().ok()?) as usize;
        let key = rest.get(at + 4..at + 4 + key_len)?;
        let envelope = &rest[at + 4 + key_len..];
        Some(Notice {
            kind: NoticeKind::from_byte(kind)?,
            origin,
            key: std::str::from_utf8(key).ok()?,
            envelope: (!envelope.is_empty()).then_some(envelope),
            filled_in,
        })
    }
}

/// What the bus tells the cache about other processes.
#[derive(Debug)]
pub(crate) enum BusEvent<'a> {
    /// Another process filled `key`; `envelope` is the value when inlined.
    Filled {
        key: &'a str,
        envelope: Option<&'a [u8]>,
        /// On a Cluster, the generation the value was written in.
        filled_in: Option<u64>,
    },
    /// Another process set or invalidated `key`.
    Changed { key: &'a str },
    /// Another process cleared the namespace: generation `generation` began.
    Cleared { generation: u64 },
    /// The connection is back after a disconnect: notices may have been lost.
    Reconnected,
}

/// Applies a [`BusEvent`] to L1. A boxed callback so the bus need not know
/// the value type.
pub(crate) type OnEvent = Box<dyn Fn(BusEvent<'_>) + Send + Sync>;

/// Local registry of keys some flight of this process is waiting on.
#[derive(Default)]
pub(crate) struct Waiters {
    map: Mutex<HashMap<Box<str>, Arc<Notify>>>,
}

/// A registration to be woken when a notice for `key` arrives. Dropping it
/// unregisters.
pub(crate) struct Watch {
    waiters: Arc<Waiters>,
    key: Box<str>,
    notify: Arc<Notify>,
}

impl Waiters {
    pub(crate) fn watch(self: &Arc<Self>, key: &str) -> Watch {
        let mut map = self.map.lock().expect("waiters lock");
        let notify = map.entry(key.into()).or_default().clone();
        Watch {
            waiters: self.clone(),
            key: key.into(),
            notify,
        }
    }

    fn wake(&self, key: &str) {
        let notify = self.map.lock().expect("waiters lock").get(key).cloned();
        if let Some(n) = notify {
            n.notify_waiters();
        }
    }

    fn wake_all(&self) {
        let all: Vec<_> = self
            .map
            .lock()
            .expect("waiters lock")
            .values()
            .cloned()
            .collect();
        for n in all {
            n.notify_waiters();
        }
    }
}

impl Watch {
    pub(crate) fn notify(&self) -> &Notify {
        &self.notify
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut map = self.waiters.map.lock().expect("waiters lock");
        // The map holds one reference and we hold one: nobody else waits.
        if let Some(n) = map.get(&self.key)
            && Arc::ptr_eq(n, &self.notify)
            && Arc::strong_count(&self.notify) == 2
        {
            map.remove(&self.key);
        }
    }
}

/// Where the connection hands us its pushes.
///
/// Notices are applied in redis-rs's push callback, in the order they were
/// published (the manager forwards pushes from its read loop through one
/// channel to one task that calls us), with no further hop through a task of
/// ours. That order is the same for every process, but a push and a
/// *reply* travel separately: a fill notice published just before our own
/// `invalidate` may be applied after the `invalidate` call has returned,
/// and would put the old value back into our L1 (the randomized consistency
/// checker caught exactly that). So each of our own writes is registered
/// here first ([`Bus::own_write`]) and its notice carries the write's id:
/// until that notice comes back, which is after every notice published
/// before the write, a fill notice for that key (or any key, for a clear) is
/// not taken into L1; waiters are still woken and re-read Redis. The check
/// and the L1 insert happen under one lock that registering also takes, so
/// a write registered after the check finds the value in L1 and removes it.
///
/// A write's notice can be lost with its connection. When the next
/// connection is accepted ([`Bus::accept`], before it subscribes), the old
/// one delivers no more and the new one cannot bring notices published
/// before it subscribed, so the writes that have returned by then are
/// forgotten; writes still under way keep waiting for their notice (sent
/// on the new connection). A write that never
/// reaches Redis without a lost connection keeps its key out of the shortcut
/// until the next one: a lost shortcut, never a stale value.
pub(crate) struct Bus {
    waiters: Arc<Waiters>,
    origin: u64,
    /// Set once the cache exists (the connection, and so the first pushes,
    /// come before it): notices before that have no L1 to act on.
    on_event: std::sync::OnceLock<OnEvent>,
    pending: Mutex<Pending>,
}

/// Our writes whose own notice has not come back yet.
#[derive(Default)]
struct Pending {
    /// The serial of the connection whose pushes are applied (`link.rs`):
    /// a connection retired while calls still hold it stays subscribed for
    /// a moment, and its notices, unordered against the new connection's,
    /// must not reach L1 or settle our writes.
    accepted: Option<u64>,
    writes: HashMap<u64, PendingWrite>,
    by_key: HashMap<Box<str>, u32>,
    clears: u32,
    next_id: u64,
}

struct PendingWrite {
    /// `None` for a `clear()`.
    key: Option<Box<str>>,
    /// The write call has returned (or was dropped).
    returned: bool,
}

impl Pending {
    /// At an accepted connection: see [`Bus::accept`].
    fn forget_returned_writes(&mut self) {
        let returned: Vec<u64> = self
            .writes
            .iter()
            .filter(|(_, w)| w.returned)
            .map(|(&id, _)| id)
            .collect();
        for id in returned {
            self.remove(id);
        }
    }

    fn blocks(&self, key: &str) -> bool {
        self.clears > 0 || self.by_key.contains_key(key)
    }

    fn remove(&mut self, id: u64) {
        let Some(write) = self.writes.remove(&id) else {
            return;
        };
        match write.key {
            None => self.clears -= 1,
            Some(key) => {
                if let Some(n) = self.by_key.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        self.by_key.remove(&key);
                    }
                }
            }
        }
    }
}

/// One of our writes, registered with the bus; see [`Bus::own_write`].
pub(crate) struct OwnWrite<'a> {
    bus: &'a Bus,
    pub(crate) id: u64,
}

impl Drop for OwnWrite<'_> {
    fn drop(&mut self) {
        if let Some(w) = self.bus.pending().writes.get_mut(&self.id) {
            w.returned = true;
        }
    }
}

impl Bus {
    pub(crate) fn new(waiters: Arc<Waiters>, origin: u64) -> Arc<Self> {
        Arc::new(Bus {
            waiters,
            origin,
            on_event: std::sync::OnceLock::new(),
            pending: Mutex::default(),
        })
    }

    /// The connection was lost: every waiter re-checks (its notice may be
    /// lost with the connection).
    pub(crate) fn wake_all(&self) {
        self.waiters.wake_all();
    }

    /// A new connection is up and subscribed: L1 is flushed of what may
    /// have changed meanwhile, and waiters re-check.
    pub(crate) fn reconnected(&self) {
        if let Some(on_event) = self.on_event.get() {
            on_event(BusEvent::Reconnected);
        }
        self.waiters.wake_all();
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().expect("pending lock")
    }

    /// Registers our `set`/`invalidate` of `key` (`None`: our `clear()`).
    /// Call it before touching L1 for the write, and keep the guard until
    /// the write call ends; its `id` goes into the write's notice.
    pub(crate) fn own_write(&self, key: Option<&str>) -> OwnWrite<'_> {
        let mut pending = self.pending();
        let id = pending.next_id;
        pending.next_id += 1;
        match key {
            None => pending.clears += 1,
            Some(key) => *pending.by_key.entry(key.into()).or_default() += 1,
        }
        pending.writes.insert(
            id,
            PendingWrite {
                key: key.map(Into::into),
                returned: false,
            },
        );
        OwnWrite { bus: self, id }
    }
    pub(crate) fn attach(&self, on_event: OnEvent) {
        let _ = self.on_event.set(on_event);
    }

    /// From now on, notices are taken from connection `serial` only. Called
    /// before it subscribes, so the writes that have returned by now can
    /// get no notice on it (theirs were published before it subscribed, and
    /// older connections' notices are no longer taken): they are forgotten.
    pub(crate) fn accept(&self, serial: u64) {
        let mut pending = self.pending();
        pending.accepted = Some(serial);
        pending.forget_returned_writes();
    }

    /// Connection `serial` is gone (or was given up): its notices are no
    /// longer taken. (The writes it left unsettled are forgotten when the
    /// next connection is accepted; until then no notice arrives anyway.)
    pub(crate) fn retire(&self, serial: u64) {
        let mut pending = self.pending();
        if pending.accepted == Some(serial) {
            pending.accepted = None;
        }
    }

    /// Applies one notice. Must not block: it runs in the connection's
    /// task. L1 is updated *before* waiters are woken, so a woken waiter
    /// finds the new value there, and its own L1 insert is never undone by
    /// the notice that woke it.
    fn apply(&self, payload: &[u8], serial: u64) {
        let Some(notice) = Notice::decode(payload) else {
            return;
        };
        if notice.origin == self.origin {
            if let Some(id) = notice.write_id() {
                let mut pending = self.pending();
                if pending.accepted == Some(serial) {
                    pending.remove(id);
                }
            }
        } else if let Some(on_event) = self.on_event.get() {
            match notice.kind {
                NoticeKind::Filled => {
                    let pending = self.pending();
                    if pending.accepted == Some(serial) && !pending.blocks(notice.key) {
                        on_event(BusEvent::Filled {
                            key: notice.key,
                            envelope: notice.envelope,
                            filled_in: notice.filled_in,
                        });
                    }
                }
                NoticeKind::Changed => on_event(BusEvent::Changed { key: notice.key }),
                NoticeKind::Released => {}
                NoticeKind::Cleared => {
                    if let Some(generation) = notice.generation() {
                        on_event(BusEvent::Cleared { generation });
                    }
                }
            }
        }
        match notice.kind {
            NoticeKind::Filled | NoticeKind::Released => self.waiters.wake(notice.key),
            NoticeKind::Cleared => self.waiters.wake_all(),
            NoticeKind::Changed => {}
        }
    }
}

/// The bus listens on its namespace's channel of the client's connection.
impl Listener for Bus {
    fn message(&self, payload: &[u8], serial: u64) {
        self.apply(payload, serial);
    }

    fn accept(&self, serial: u64) {
        Bus::accept(self, serial);
    }

    fn retire(&self, serial: u64) {
        Bus::retire(self, serial);
    }

    fn lost(&self) {
        self.wake_all();
    }

    fn reconnected(&self) {
        Bus::reconnected(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_notices_carry_their_id() {
        let changed = Notice::changed(7, "k", 42);
        assert_eq!(Notice::decode(&changed).unwrap().write_id(), Some(42));
        // The CLEAR script appends the generation to the prefix.
        let mut cleared = Notice::cleared_prefix(7, 43);
        cleared.extend_from_slice(b"5");
        let cleared = Notice::decode(&cleared).unwrap();
        assert_eq!(
            (cleared.write_id(), cleared.generation()),
            (Some(43), Some(5))
        );
    }

    #[test]
    fn own_writes_hold_back_fills_until_their_notice_is_back() {
        let bus = Bus::new(Arc::new(Waiters::default()), 7);
        let w = bus.own_write(Some("k"));
        assert!(bus.pending().blocks("k") && !bus.pending().blocks("j"));
        bus.pending().remove(w.id); // its notice came back
        assert!(!bus.pending().blocks("k"));
        drop(w);
        // A clear holds back every key. When the next connection is
        // accepted, a write that has returned is forgotten (its notice, if
        // any, went down with the old connection); one still under way is
        // not. Retiring alone forgets nothing, and retiring a connection
        // that is not the accepted one changes nothing.
        bus.accept(1);
        bus.retire(0);
        assert_eq!(bus.pending().accepted, Some(1));
        let clear = bus.own_write(None);
        let under_way = bus.own_write(Some("x"));
        assert!(bus.pending().blocks("k"));
        drop(clear);
        bus.retire(1);
        assert!(bus.pending().blocks("k"));
        bus.accept(2);
        assert!(!bus.pending().blocks("k") && bus.pending().blocks("x"));
        drop(under_way);
        bus.retire(2);
        bus.accept(3);
        assert!(!bus.pending().blocks("x"));
    }

    fn message(payload: Vec<u8>) -> Vec<u8> {
        payload
    }

    #[test]
    fn only_the_accepted_connection_feeds_l1_and_settles_writes() {
        let bus = Bus::new(Arc::new(Waiters::default()), 7);
        let filled = Arc::new(Mutex::new(Vec::new()));
        let seen = filled.clone();
        bus.attach(Box::new(move |event| {
            if let BusEvent::Filled { key, .. } = event {
                seen.lock().unwrap().push(key.to_owned());
            }
        }));
        let fill = |key| message(Notice::encode(NoticeKind::Filled, 9, key, b"env"));
        bus.accept(1);
        // Connection 0 was retired but is still open: its notices are
        // not ordered against connection 1's, so they are not taken.
        bus.apply(&fill("a"), 0);
        bus.apply(&fill("b"), 1);
        assert_eq!(*filled.lock().unwrap(), ["b"]);
        let w = bus.own_write(Some("k"));
        bus.apply(&message(Notice::changed(7, "k", w.id)), 0);
        assert!(bus.pending().blocks("k"), "settled by a retired connection");
        bus.apply(&message(Notice::changed(7, "k", w.id)), 1);
        assert!(!bus.pending().blocks("k"));
    }

    #[test]
    fn notices_round_trip() {
        let bytes = Notice::encode(NoticeKind::Filled, 0xdead_beef, "k:1}{", b"env");
        let n = Notice::decode(&bytes).unwrap();
        assert_eq!(
            n,
            Notice {
                kind: NoticeKind::Filled,
                origin: 0xdead_beef,
                key: "k:1}{",
                envelope: Some(b"env"),
                filled_in: None,
            }
        );
        // On a Cluster a fill notice carries its generation.
        let g = Notice::filled(3, "k", b"env", Some(7));
        assert_eq!(g[0], b'F');
        let n = Notice::decode(&g).unwrap();
        assert_eq!((n.kind, n.origin, n.key), (NoticeKind::Filled, 3, "k"));
        assert_eq!((n.envelope, n.filled_in), (Some(&b"env"[..]), Some(7)));
        assert_eq!(
            Notice::filled(3, "k", b"env", None),
            Notice::encode(NoticeKind::Filled, 3, "k", b"env")
        );
        assert!(Notice::decode(&g[..12]).is_none(), "truncated generation");
        let big = vec![7u8; INLINE_MAX + 1];
        let n2 = Notice::encode(NoticeKind::Filled, 1, "k", &big);
        assert_eq!(
            Notice::decode(&n2).unwrap().envelope,
            None,
            "large values are not inlined"
        );
        assert!(Notice::decode(b"x12345678\x01\0\0\0k").is_none());
        assert!(Notice::decode(b"f123").is_none());
        let mut short = Notice::encode(NoticeKind::Changed, 1, "key", &[]);
        short.truncate(14);
        assert!(Notice::decode(&short).is_none(), "truncated key");
    }

    #[test]
    fn watch_unregisters_when_last_watcher_leaves() {
        let w = Arc::new(Waiters::default());
        let a = w.watch("k");
        let b = w.watch("k");
        assert!(Arc::ptr_eq(&a.notify, &b.notify));
        drop(a);
        assert_eq!(w.map.lock().unwrap().len(), 1);
        drop(b);
        assert!(w.map.lock().unwrap().is_empty());
    }
}
