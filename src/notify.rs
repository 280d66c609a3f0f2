//! The namespace bus: fill notices that wake waiters, and change notices that
//! make other processes drop their L1 copy.
//!
//! Each cache subscribes once, at build time, to `hc:bus:<ns>` over RESP3 push
//! on its `ConnectionManager`, which resubscribes by itself after a
//! reconnect. A waiter therefore never issues SUBSCRIBE: it registers a local
//! [`Watch`] *before* re-reading Redis, so a notice that lands between its
//! read and its wait still wakes it (no lost wake-up). Pub/sub drops what is
//! published while a connection is down, so on the library's `Disconnection`
//! push every waiter is woken to re-check, and once a `PING` answers again
//! (the manager has reconnected and resubscribed) all of L1 is flushed: what
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

use redis::aio::ConnectionManager;
use redis::{PushInfo, PushKind, Value};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, mpsc};

use crate::remote::ping;

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
            b'f' => Some(NoticeKind::Filled),
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

    pub(crate) fn decode(bytes: &'a [u8]) -> Option<Self> {
        let (&kind, rest) = bytes.split_first()?;
        let origin = u64::from_le_bytes(rest.get(..8)?.try_into().ok()?);
        let key_len = u32::from_le_bytes(rest.get(8..12)?.try_into().ok()?) as usize;
        let key = rest.get(12..12 + key_len)?;
        let envelope = &rest[12 + key_len..];
        Some(Notice {
            kind: NoticeKind::from_byte(kind)?,
            origin,
            key: std::str::from_utf8(key).ok()?,
            envelope: (!envelope.is_empty()).then_some(envelope),
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
/// checker caught exactly that). So our own writes are announced here
/// first ([`Bus::expect_change`], [`Bus::expect_clear`]): until the write's
/// own notice comes back, which is after every notice published before the
/// write, a fill notice for that key (or any key, for a clear) is not taken
/// into L1; waiters are still woken and re-read Redis.
///
/// The `Disconnection` push goes to a task, since its handling waits for
/// Redis to answer again.
pub(crate) struct Bus {
    waiters: Arc<Waiters>,
    origin: u64,
    /// Set once the cache exists (the connection, and so the first pushes,
    /// come before it): notices before that have no L1 to act on.
    on_event: std::sync::OnceLock<OnEvent>,
    others: mpsc::UnboundedSender<PushInfo>,
    /// Our writes whose own notice has not come back yet, by key.
    pending: Mutex<HashMap<Box<str>, u32>>,
    /// Our `clear()`s whose own notice has not come back yet.
    pending_clears: std::sync::atomic::AtomicU32,
}

impl Bus {
    /// The bus, and the receiver that [`spawn_listener`] takes.
    pub(crate) fn new(
        waiters: Arc<Waiters>,
        origin: u64,
    ) -> (Arc<Self>, mpsc::UnboundedReceiver<PushInfo>) {
        let (others, rx) = mpsc::unbounded_channel();
        let bus = Bus {
            waiters,
            origin,
            on_event: std::sync::OnceLock::new(),
            others,
            pending: Mutex::default(),
            pending_clears: Default::default(),
        };
        (Arc::new(bus), rx)
    }

    /// Called before our `set`/`invalidate` of `key` is sent. If the write
    /// never reaches Redis, its notice never comes and fill notices for the
    /// key stay out of L1 until the next reconnect: a lost shortcut, never a
    /// stale value.
    pub(crate) fn expect_change(&self, key: &str) {
        *self
            .pending
            .lock()
            .expect("pending lock")
            .entry(key.into())
            .or_default() += 1;
    }

    /// Called before our `clear()` is sent.
    pub(crate) fn expect_clear(&self) {
        self.pending_clears.fetch_add(1, Relaxed);
    }

    /// Our own notice came back: everything published before our write has
    /// been applied.
    fn settle(&self, kind: NoticeKind, key: &str) {
        match kind {
            NoticeKind::Changed => {
                let mut pending = self.pending.lock().expect("pending lock");
                if let Some(n) = pending.get_mut(key) {
                    *n -= 1;
                    if *n == 0 {
                        pending.remove(key);
                    }
                }
            }
            NoticeKind::Cleared => {
                let _ = self
                    .pending_clears
                    .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1));
            }
            NoticeKind::Filled | NoticeKind::Released => {}
        }
    }

    /// True if a fill notice for `key` may predate a write of ours.
    fn predates_our_write(&self, key: &str) -> bool {
        self.pending_clears.load(Relaxed) > 0
            || self.pending.lock().expect("pending lock").contains_key(key)
    }

    pub(crate) fn attach(&self, on_event: OnEvent) {
        let _ = self.on_event.set(on_event);
    }

    /// The push sender for `ConnectionManagerConfig::set_push_sender`.
    pub(crate) fn sender(
        self: &Arc<Self>,
    ) -> impl Fn(PushInfo) -> Result<(), mpsc::error::SendError<PushInfo>> + Send + Sync + 'static
    {
        let bus = self.clone();
        move |push: PushInfo| {
            if push.kind == PushKind::Message {
                bus.apply(&push);
                Ok(())
            } else {
                bus.others.send(push)
            }
        }
    }

    /// Applies one notice. Must not block: it runs in the connection's read
    /// loop. L1 is updated *before* waiters are woken, so a woken waiter
    /// finds the new value there, and its own L1 insert is never undone by
    /// the notice that woke it.
    fn apply(&self, push: &PushInfo) {
        let Some(Value::BulkString(payload)) = push.data.get(1) else {
            return;
        };
        let Some(notice) = Notice::decode(payload) else {
            return;
        };
        if notice.origin == self.origin {
            self.settle(notice.kind, notice.key);
        } else if let Some(on_event) = self.on_event.get() {
            match notice.kind {
                NoticeKind::Filled if self.predates_our_write(notice.key) => {}
                NoticeKind::Filled => on_event(BusEvent::Filled {
                    key: notice.key,
                    envelope: notice.envelope,
                }),
                NoticeKind::Changed => on_event(BusEvent::Changed { key: notice.key }),
                NoticeKind::Released => {}
                NoticeKind::Cleared => {
                    let generation = notice
                        .envelope
                        .and_then(|g| std::str::from_utf8(g).ok())
                        .and_then(|g| g.parse().ok());
                    if let Some(generation) = generation {
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

/// Handles the pushes that are not notices until the connection manager is
/// gone: on a `Disconnection`, wakes every waiter to re-check, waits for
/// Redis to answer again (our PINGs also drive the manager's reconnect),
/// then reports `Reconnected` so L1 is flushed.
pub(crate) fn spawn_listener(
    mut pushes: mpsc::UnboundedReceiver<PushInfo>,
    bus: Arc<Bus>,
    conn: Weak<ConnectionManager>,
    timeout: Duration,
) {
    tokio::spawn(async move {
        while let Some(push) = pushes.recv().await {
            if push.kind != PushKind::Disconnection {
                continue;
            }
            bus.waiters.wake_all();
            loop {
                let Some(conn) = conn.upgrade() else { return };
                if ping(&conn, timeout).await {
                    break;
                }
                drop(conn);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Notices sent while we were away are lost, our own included:
            // L1 is flushed now, so nothing older can be waiting to come in.
            bus.pending.lock().expect("pending lock").clear();
            bus.pending_clears.store(0, Relaxed);
            if let Some(on_event) = bus.on_event.get() {
                on_event(BusEvent::Reconnected);
            }
            bus.waiters.wake_all();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
            }
        );
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
