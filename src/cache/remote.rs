//! The Redis tier: one method per round trip the read and write paths make.
//! Everything here is a thin typed wrapper over a script in `scripts.rs` or
//! a single command; the decisions live in `cache.rs`.
//!
//! Every call is bounded by `redis_timeout`. A single command (the `GET` of
//! an L2 hit, `MGET`) is bounded by the connection's own response timeout
//! and needs no timer of ours (the connection never makes a call wait for a
//! reconnect: `link.rs`). A script can take three round trips (`EVALSHA`,
//! then `SCRIPT LOAD` and `EVALSHA` again after a Redis restart), so it is
//! bounded as a whole (`shared/server.rs`).

use redis::{Cmd, FromRedisValue, RedisResult, ScriptInvocation, Value};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::keys::{Layout, RedisKeys};
use crate::cache::notify::{Notice, NoticeKind};
use crate::cache::scripts;
use crate::cache::stats::Counters;
use crate::shared::scripts as shared_scripts;
use crate::shared::server::{Server, breaker_open};

/// What the read-or-lock probe found.
#[derive(Debug)]
pub(crate) enum Probe {
    /// A fresh value, or bytes not in our format (decoding decides).
    Value(Vec<u8>),
    /// No fresh value (`stale` holds the stale one, if any); we now hold the lock.
    Acquired { stale: Option<Vec<u8>> },
    /// No fresh value; someone else holds the lock for `pttl` more.
    Locked {
        pttl: Duration,
        stale: Option<Vec<u8>>,
    },
}

pub(crate) struct Remote {
    server: Arc<Server>,
    layout: Layout,
    origin: u64,
    stats: Arc<Counters>,
}

fn ms(d: Duration) -> u64 {
    (d.as_millis() as u64).max(1)
}

impl Remote {
    pub(crate) fn new(
        server: Arc<Server>,
        layout: Layout,
        origin: u64,
        stats: Arc<Counters>,
    ) -> Self {
        Remote {
            server,
            layout,
            origin,
            stats,
        }
    }

    /// Every call goes through here: refused at once while the breaker is
    /// open, and its outcome recorded.
    async fn call<T>(&self, call: impl Future<Output = RedisResult<T>>) -> RedisResult<T> {
        let breaker = &self.server.breaker;
        if !breaker.admit() {
            Counters::bump(&self.stats.breaker_rejections);
            return Err(breaker_open());
        }
        let result = call.await;
        breaker.record(&result);
        result
    }

    /// One command, bounded by the connection's response timeout.
    async fn command<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        self.call(self.server.raw_command(cmd)).await
    }

    /// One script, bounded by `redis_timeout` as a whole.
    async fn script<T: FromRedisValue>(&self, script: &ScriptInvocation<'_>) -> RedisResult<T> {
        self.call(self.server.raw_script(script)).await
    }

    pub(crate) fn keys(&self, key: &str) -> RedisKeys {
        self.layout.keys(key)
    }

    pub(crate) fn namespace(&self) -> &str {
        self.layout.namespace()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.layout.generation()
    }

    pub(crate) fn advance_generation(&self, g: u64) -> bool {
        self.layout.advance_generation(g)
    }

    /// Reads the namespace generation from Redis and moves to it.
    pub(crate) async fn sync_generation(&self) -> RedisResult<()> {
        let g: Option<u64> = self
            .command(redis::cmd("GET").arg(self.layout.generation_key()))
            .await?;
        self.layout.advance_generation(g.unwrap_or(0));
        Ok(())
    }

    /// Starts a new generation; returns it. `write_id`: see `Bus::own_write`.
    pub(crate) async fn clear(&self, write_id: u64) -> RedisResult<u64> {
        let g: u64 = self
            .script(
                scripts::CLEAR
                    .key(self.layout.generation_key())
                    .arg(self.layout.clear_channel())
                    .arg(Notice::cleared_prefix(self.origin, write_id))
                    .arg(self.server.publish_verb()),
            )
            .await?;
        self.layout.advance_generation(g);
        Ok(g)
    }

    fn notice(&self, kind: NoticeKind, key: &str, envelope: &[u8]) -> Vec<u8> {
        Notice::encode(kind, self.origin, key, envelope)
    }

    /// `GET` of the value of the user's `key`.
    pub(crate) async fn get(&self, key: &str) -> RedisResult<Option<Vec<u8>>> {
        self.command(redis::cmd("GET").arg(self.layout.value_key_arg(key)))
            .await
    }

    /// One MGET of the values of many user keys.
    pub(crate) async fn mget<'k>(
        &self,
        keys: impl Iterator<Item = &'k str>,
    ) -> RedisResult<Vec<Option<Vec<u8>>>> {
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(self.layout.value_key_arg(k));
        }
        self.command(&cmd).await
    }

    /// The read-or-lock probe. A stored value counts as fresh when its
    /// fresh-until is after `fresh_after_ms`: now, for a read; the fresh-until
    /// of our own copy, for an early refresh (a newer copy means somebody
    /// refreshed already).
    pub(crate) async fn get_or_lock(
        &self,
        keys: &RedisKeys,
        token: &str,
        lock_ttl: Duration,
        fresh_after_ms: u64,
    ) -> RedisResult<Probe> {
        let reply: Value = self
            .script(
                scripts::GET_OR_LOCK
                    .key(&keys.value)
                    .key(&keys.lock)
                    .arg(token)
                    .arg(ms(lock_ttl))
                    .arg(fresh_after_ms),
            )
            .await?;
        parse_probe(reply)
    }

    /// Takes the lock when a value exists but is unusable (undecodable).
    /// `Ok(None)` means acquired; `Ok(Some(pttl))` means someone holds it.
    pub(crate) async fn try_lock(
        &self,
        keys: &RedisKeys,
        token: &str,
        lock_ttl: Duration,
    ) -> RedisResult<Option<Duration>> {
        let pttl: i64 = self
            .script(
                shared_scripts::TRY_LOCK
                    .key(&keys.lock)
                    .arg(token)
                    .arg(ms(lock_ttl)),
            )
            .await?;
        Ok((pttl >= 0).then(|| Duration::from_millis(pttl as u64)))
    }

    pub(crate) async fn extend(
        &self,
        keys: &RedisKeys,
        token: &str,
        lock_ttl: Duration,
    ) -> RedisResult<bool> {
        let n: i64 = self
            .script(
                shared_scripts::EXTEND
                    .key(&keys.lock)
                    .arg(token)
                    .arg(ms(lock_ttl)),
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn fill(
        &self,
        key: &str,
        keys: &RedisKeys,
        token: &str,
        envelope: &[u8],
        px: Duration,
    ) -> RedisResult<bool> {
        let n: i64 = self
            .script(
                scripts::FILL
                    .key(&keys.value)
                    .key(&keys.lock)
                    .arg(token)
                    .arg(envelope)
                    .arg(ms(px))
                    .arg(self.layout.channel(key))
                    .arg(Notice::filled(
                        self.origin,
                        key,
                        envelope,
                        self.layout.bucketed().then_some(keys.generation),
                    ))
                    .arg(self.server.publish_verb()),
            )
            .await?;
        Ok(n == 1)
    }

    pub(crate) async fn release(
        &self,
        key: &str,
        keys: &RedisKeys,
        token: &str,
    ) -> RedisResult<bool> {
        let n: i64 = self
            .script(
                shared_scripts::RELEASE
                    .key(&keys.lock)
                    .arg(token)
                    .arg(self.layout.channel(key))
                    .arg(self.notice(NoticeKind::Released, key, &[]))
                    .arg(self.server.publish_verb()),
            )
            .await?;
        Ok(n == 1)
    }

    /// `write_id`: see `Bus::own_write`.
    pub(crate) async fn set(
        &self,
        key: &str,
        keys: &RedisKeys,
        envelope: &[u8],
        px: Duration,
        write_id: u64,
    ) -> RedisResult<()> {
        let _: i64 = self
            .script(
                scripts::SET_VOIDING
                    .key(&keys.value)
                    .key(&keys.lock)
                    .arg(envelope)
                    .arg(ms(px))
                    .arg(self.layout.channel(key))
                    .arg(Notice::changed(self.origin, key, write_id))
                    .arg(self.server.publish_verb()),
            )
            .await?;
        Ok(())
    }

    /// `write_id`: see `Bus::own_write`.
    pub(crate) async fn invalidate(
        &self,
        key: &str,
        keys: &RedisKeys,
        write_id: u64,
    ) -> RedisResult<()> {
        let _: i64 = self
            .script(
                scripts::INVALIDATE
                    .key(&keys.value)
                    .key(&keys.lock)
                    .arg(self.layout.channel(key))
                    .arg(Notice::changed(self.origin, key, write_id))
                    .arg(self.server.publish_verb()),
            )
            .await?;
        Ok(())
    }
}

fn parse_probe(reply: Value) -> RedisResult<Probe> {
    let bad = || {
        redis::RedisError::from((
            redis::ErrorKind::Parse,
            "unexpected reply from the read-or-lock script",
        ))
    };
    let Value::Array(items) = reply else {
        return Err(bad());
    };
    let mut items = items.into_iter();
    let tag = match items.next() {
        Some(Value::BulkString(t)) => t,
        Some(Value::SimpleString(t)) => t.into_bytes(),
        _ => return Err(bad()),
    };
    let pttl = |p: i64| Duration::from_millis(p.max(0) as u64);
    match (tag.as_slice(), items.next(), items.next()) {
        (b"v", Some(Value::BulkString(bytes)), None) => Ok(Probe::Value(bytes)),
        (b"a", None, None) => Ok(Probe::Acquired { stale: None }),
        (b"w", Some(Value::Int(p)), None) => Ok(Probe::Locked {
            pttl: pttl(p),
            stale: None,
        }),
        (b"sa", Some(Value::BulkString(bytes)), None) => Ok(Probe::Acquired { stale: Some(bytes) }),
        (b"sw", Some(Value::BulkString(bytes)), Some(Value::Int(p))) => Ok(Probe::Locked {
            pttl: pttl(p),
            stale: Some(bytes),
        }),
        _ => Err(bad()),
    }
}
