//! Reading a Redis stream through a consumer group, so that nothing is lost:
//! the machinery under the flash sale's order stream and the typed queue.
//!
//! Why not a list (`LPUSH` + `RPOP`, or `BRPOP`): a message popped by a
//! consumer that then crashes is gone; nothing remembers it was handed out.
//! A consumer group remembers: every entry handed to a consumer stays in
//! the group's pending list until that consumer acknowledges it (`XACK`),
//! after it has done its work. So:
//!
//! - a consumer that crashes leaves its entries pending; once they have
//!   been idle for `claim_after`, another consumer of the group takes them
//!   over (`XCLAIM` with a minimum idle time, so two consumers cannot both
//!   take one), and they are delivered again;
//! - an entry delivered `max_deliveries` times without an acknowledgement
//!   (a poison message that crashes every consumer) is moved to a
//!   dead-letter stream with the reason, instead of circling forever;
//! - trimming keeps every entry some group has not acknowledged.
//!
//! Delivery is *at least once*: a consumer that crashes after its work but
//! before its `XACK` gets the entry redelivered, so consumers must be
//! idempotent (the flash-sale example writes orders under a `UNIQUE` order
//! id).
//!
//! Waiting for new entries uses `XREADGROUP … BLOCK` on a connection of
//! the reader's own: Redis wakes the reader the moment an entry is added,
//! at no cost to the writer (no notice to publish), and the shared
//! connection is never blocked. Acknowledgements, claims and trims go
//! through the client's shared connection like every other call.

use redis::streams::{StreamClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use redis::{RedisResult, Script, Value};
use std::collections::VecDeque;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::time::Instant;

use crate::error::{Error, ErrorKind};
use crate::shared::link::RedisConn;
use crate::shared::server::Server;

/// How a group is read; each tool exposes these as options.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadOptions {
    /// Pending entries idle this long are taken over from their consumer.
    pub(crate) claim_after: Duration,
    /// Deliveries after which an unacknowledged entry is dead-lettered.
    pub(crate) max_deliveries: u32,
    /// Entries fetched per read.
    pub(crate) batch: usize,
    /// How long one blocking read waits before checking for stuck entries.
    pub(crate) block: Duration,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            claim_after: Duration::from_secs(30),
            max_deliveries: 5,
            batch: 32,
            block: Duration::from_secs(1),
        }
    }
}

/// The stream and its dead-letter stream (which share a hash tag).
#[derive(Debug, Clone)]
pub(crate) struct StreamKeys {
    pub(crate) stream: String,
    pub(crate) dead: String,
}

/// One entry handed to this consumer.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: String,
    pub(crate) fields: StreamId,
    /// How many times it has been delivered, this time included.
    pub(crate) deliveries: u32,
}

impl Entry {
    pub(crate) fn field(&self, name: &str) -> Option<Vec<u8>> {
        match self.fields.map.get(name)? {
            Value::BulkString(b) => Some(b.clone()),
            Value::SimpleString(s) => Some(s.clone().into_bytes()),
            Value::Int(n) => Some(n.to_string().into_bytes()),
            _ => None,
        }
    }

    pub(crate) fn text(&self, name: &str) -> Option<String> {
        String::from_utf8(self.field(name)?).ok()
    }
}

/// Moves one entry to the dead-letter stream, if it is still pending, idle
/// for at least the given time and delivered at least the given number of
/// times (checked here, atomically: another consumer may have claimed it
/// since we looked). Its fields are copied, with `dead_reason`,
/// `dead_id` (its id in the stream) and `dead_deliveries` added.
/// KEYS: stream, dead. ARGV: group, id, min idle ms, min deliveries, reason.
/// Returns 1 if moved.
static DEAD_LETTER: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local p = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], ARGV[2], ARGV[2], 1)
if #p == 0 or tonumber(p[1][4]) < tonumber(ARGV[4]) then return 0 end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if #e > 0 then
  local f = e[1][2]
  table.insert(f, 'dead_reason'); table.insert(f, ARGV[5])
  table.insert(f, 'dead_id'); table.insert(f, ARGV[2])
  table.insert(f, 'dead_deliveries'); table.insert(f, tostring(p[1][4]))
  redis.call('XADD', KEYS[2], '*', unpack(f))
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
return 1
",
    )
});

/// The stream scripts, loaded with each new connection.
pub(crate) fn scripts() -> [&'static Script; 1] {
    [&DEAD_LETTER]
}

fn redis_err(op: &str) -> impl FnOnce(redis::RedisError) -> Error + '_ {
    move |e| Error::redis(op, e)
}

/// A consumer of one group of one stream.
pub(crate) struct GroupReader {
    server: Arc<Server>,
    keys: StreamKeys,
    group: String,
    consumer: String,
    options: ReadOptions,
    /// For the blocking read only; made on first use and after an error.
    blocking: Option<RedisConn>,
    buffer: VecDeque<Entry>,
    next_reclaim: Instant,
    /// Our own entries still pending from before (a restarted consumer of
    /// the same name), read before new ones: the id to read after, batch
    /// by batch (`0` first), until a short batch; `None` once all are read.
    own_pending_from: Option<String>,
}

/// The longest `claim_after` taken: a year. Longer is surely a mistake,
/// and would overflow the clock arithmetic of the reclaim schedule.
const MAX_CLAIM_AFTER: Duration = Duration::from_secs(365 * 24 * 3600);

/// Whether Redis answered that the group (or its stream) does not exist:
/// a restart without persistence, or the key deleted.
fn no_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP")
}

/// `XGROUP CREATE <stream> <group> 0 MKSTREAM`; an existing group is fine.
async fn create_group(server: &Server, keys: &StreamKeys, group: &str) -> Result<(), Error> {
    let created: RedisResult<Value> = server
        .call(
            server.raw_command(
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&keys.stream)
                    .arg(group)
                    .arg("0")
                    .arg("MKSTREAM"),
            ),
        )
        .await;
    match created {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(Error::redis("XGROUP CREATE", e)),
    }
}

impl GroupReader {
    /// Joins (creating if needed) `group` on the stream. A new group starts
    /// at the stream's beginning: entries added before any consumer existed
    /// are delivered too.
    pub(crate) async fn join(
        server: Arc<Server>,
        keys: StreamKeys,
        group: &str,
        consumer: &str,
        options: ReadOptions,
    ) -> Result<GroupReader, Error> {
        check_name("group", group)?;
        check_name("consumer", consumer)?;
        if options.max_deliveries == 0 || options.claim_after.is_zero() {
            return Err(Error::new(
                ErrorKind::Config,
                "max_deliveries and claim_after must be above zero",
            ));
        }
        if options.claim_after > MAX_CLAIM_AFTER || options.block > MAX_CLAIM_AFTER {
            return Err(Error::new(
                ErrorKind::Config,
                format!("claim_after and block must be at most {MAX_CLAIM_AFTER:?}"),
            ));
        }
        create_group(&server, &keys, group).await?;
        Ok(GroupReader {
            server,
            keys,
            group: group.to_owned(),
            consumer: consumer.to_owned(),
            options,
            blocking: None,
            buffer: VecDeque::new(),
            next_reclaim: Instant::now(),
            own_pending_from: Some("0".to_owned()),
        })
    }

    /// The next entry: one already fetched, else one taken over from a
    /// consumer that stopped, else a new one (waiting for it).
    ///
    /// # Errors
    /// [`ErrorKind::Redis`] if Redis fails; nothing is lost (what was
    /// handed to us stays pending and is read again). Call again.
    pub(crate) async fn next(&mut self) -> Result<Entry, Error> {
        loop {
            if let Some(e) = self.poll().await? {
                return Ok(e);
            }
        }
    }

    /// [`next`](Self::next), or `None` after `timeout` with nothing.
    pub(crate) async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Entry>, Error> {
        let Some(deadline) = Instant::now().checked_add(timeout) else {
            // Past the end of the clock: no deadline.
            return self.next().await.map(Some);
        };
        loop {
            if let Some(e) = self.poll_until(Some(deadline)).await? {
                return Ok(Some(e));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
        }
    }

    async fn poll(&mut self) -> Result<Option<Entry>, Error> {
        self.poll_until(None).await
    }

    /// One round: the buffer, then stuck entries, then one blocking read
    /// (bounded by `block`, and by `deadline`).
    async fn poll_until(&mut self, deadline: Option<Instant>) -> Result<Option<Entry>, Error> {
        if let Some(e) = self.buffer.pop_front() {
            return Ok(Some(e));
        }
        while let Some(from) = self.own_pending_from.take() {
            let read = self.read(Some(&from), Duration::ZERO).await;
            if read.is_err() {
                self.own_pending_from = Some(from);
            }
            let got = read?;
            // A full batch: there may be more of our own after its last.
            if got == self.options.batch
                && let Some(last) = self.buffer.back()
            {
                self.own_pending_from = Some(last.id.clone());
            }
            if let Some(e) = self.buffer.pop_front() {
                return Ok(Some(e));
            }
        }
        if Instant::now() >= self.next_reclaim {
            self.reclaim().await?;
            // Check again a quarter of `claim_after` later: an entry is
            // then taken over at most 1.25 x `claim_after` after its
            // consumer stopped.
            self.next_reclaim =
                Instant::now() + (self.options.claim_after / 4).max(Duration::from_millis(10));
            if let Some(e) = self.buffer.pop_front() {
                return Ok(Some(e));
            }
        }
        let mut block = self
            .options
            .block
            .min(self.next_reclaim.saturating_duration_since(Instant::now()));
        if let Some(d) = deadline {
            block = block.min(d.saturating_duration_since(Instant::now()));
        }
        self.read(None, block.max(Duration::from_millis(1))).await?;
        Ok(self.buffer.pop_front())
    }

    /// `XREADGROUP`: new entries (`>`, blocking up to `block`), or with
    /// `from`, our own pending ones after that id (not blocking). Returns
    /// how many entries it buffered.
    ///
    /// The group gone (`NOGROUP`: Redis restarted without persistence, or
    /// the stream deleted) is made again and read once more: a consumer
    /// goes on by itself, and entries still in the stream are delivered
    /// again (consumers are idempotent).
    async fn read(&mut self, from: Option<&str>, block: Duration) -> Result<usize, Error> {
        match self.read_once(from, block).await {
            Err(e) if no_group(&e) => {
                create_group(&self.server, &self.keys, &self.group).await?;
                if from.is_none() {
                    // A new group: our own pending entries are gone with
                    // the old one; nothing to re-read.
                    self.own_pending_from = None;
                }
                self.read_once(from, block)
                    .await
                    .map_err(redis_err("XREADGROUP"))
            }
            other => other.map_err(redis_err("XREADGROUP")),
        }
    }

    async fn read_once(&mut self, from: Option<&str>, block: Duration) -> RedisResult<usize> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.options.batch);
        let reply: Option<StreamReadReply> = match from {
            Some(id) => {
                cmd.arg("STREAMS").arg(&self.keys.stream).arg(id);
                self.server.call(self.server.raw_command(&cmd)).await?
            }
            None => {
                cmd.arg("BLOCK")
                    .arg(block.as_millis().max(1) as u64)
                    .arg("STREAMS")
                    .arg(&self.keys.stream)
                    .arg(">");
                self.blocking_read(&cmd, block).await?
            }
        };
        let pending_reread = from.is_some();
        let mut n = 0;
        for key in reply.map(|r| r.keys).unwrap_or_default() {
            for id in key.ids {
                // Our own pending entries were delivered before: at least
                // twice now (the exact count is in XPENDING; this is what
                // a consumer needs to know: "not the first time").
                let deliveries = if pending_reread {
                    id.delivered_count.map_or(2, |n| n as u32 + 1)
                } else {
                    1
                };
                self.buffer.push_back(Entry {
                    id: id.id.clone(),
                    fields: id,
                    deliveries,
                });
                n += 1;
            }
        }
        Ok(n)
    }

    /// The blocking `XREADGROUP` on this consumer's own connection (a
    /// blocked read must not hold up the shared one).
    ///
    /// That connection is private: its failures are not the shared
    /// breaker's business (a connection left stale by a Redis restart
    /// would otherwise refuse every call of the client while the shared
    /// connection works). A kept connection that fails is replaced and
    /// the read tried once more on a new one; a new one that fails is the
    /// caller's error.
    async fn blocking_read(
        &mut self,
        cmd: &redis::Cmd,
        block: Duration,
    ) -> RedisResult<Option<StreamReadReply>> {
        if !self.server.breaker.admit() {
            return Err(crate::shared::server::breaker_open());
        }
        let mut kept = self.blocking.take();
        loop {
            let fresh = kept.is_none();
            let mut conn = match kept.take() {
                Some(c) => c,
                None => {
                    self.server
                        .link
                        .dedicated(block + self.server.timeout)
                        .await?
                }
            };
            // Bounded by our timer too: on a Cluster, a command to a
            // master that stalls can hang inside redis-rs past its
            // response timeout (seen: for good after a 0.7 s freeze).
            match crate::shared::server::bounded(
                block + self.server.timeout,
                cmd.query_async(&mut conn),
            )
            .await
            {
                Ok(reply) => {
                    self.blocking = Some(conn);
                    return Ok(reply);
                }
                // A server error (NOGROUP, say) on a working connection:
                // keep it.
                Err(e) if e.code().is_some() => {
                    self.blocking = Some(conn);
                    return Err(e);
                }
                // A new connection that fails, or one that timed out (the
                // server is slow, not the connection stale: trying again
                // would only double the wait), is the caller's error; the
                // connection is dropped either way.
                Err(e) if fresh || e.is_timeout() => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Takes over entries idle past `claim_after` (their consumer stopped),
    /// moving those delivered `max_deliveries` times to the dead letters.
    async fn reclaim(&mut self) -> Result<(), Error> {
        let idle_ms = self.options.claim_after.as_millis() as u64;
        let pending: RedisResult<StreamPendingCountReply> = self
            .server
            .call(
                self.server.raw_command(
                    redis::cmd("XPENDING")
                        .arg(&self.keys.stream)
                        .arg(&self.group)
                        .arg("IDLE")
                        .arg(idle_ms)
                        .arg("-")
                        .arg("+")
                        .arg(self.options.batch),
                ),
            )
            .await;
        let pending = match pending {
            // The group is gone (see `read`): made again, nothing to take.
            Err(e) if no_group(&e) => {
                return create_group(&self.server, &self.keys, &self.group).await;
            }
            other => other.map_err(redis_err("XPENDING"))?,
        };
        let mut claim = Vec::new();
        for p in pending.ids {
            if p.times_delivered as u32 >= self.options.max_deliveries {
                let reason = format!(
                    "delivered {} times without an acknowledgement",
                    p.times_delivered
                );
                self.dead_letter(&p.id, idle_ms, &reason).await?;
            } else {
                claim.push((p.id, p.times_delivered as u32));
            }
        }
        if claim.is_empty() {
            return Ok(());
        }
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.keys.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(idle_ms);
        for (id, _) in &claim {
            cmd.arg(id);
        }
        let claimed: StreamClaimReply = self
            .server
            .call(self.server.raw_command(&cmd))
            .await
            .map_err(redis_err("XCLAIM"))?;
        for id in claimed.ids {
            let before = claim
                .iter()
                .find(|(c, _)| *c == id.id)
                .map_or(1, |(_, n)| *n);
            self.buffer.push_back(Entry {
                id: id.id.clone(),
                fields: id,
                deliveries: before + 1,
            });
        }
        Ok(())
    }

    /// Moves entry `id` to the dead letters now (e.g. it cannot be decoded:
    /// no consumer will ever handle it), whatever its delivery count.
    pub(crate) async fn dead_letter_now(&self, id: &str, reason: &str) -> Result<(), Error> {
        self.dead_letter(id, 0, reason).await
    }

    async fn dead_letter(&self, id: &str, min_idle_ms: u64, reason: &str) -> Result<(), Error> {
        let mut inv = DEAD_LETTER.prepare_invoke();
        inv.key(&self.keys.stream)
            .key(&self.keys.dead)
            .arg(&self.group)
            .arg(id)
            .arg(min_idle_ms)
            .arg(if min_idle_ms == 0 {
                0
            } else {
                self.options.max_deliveries
            })
            .arg(reason);
        let _: i64 = self
            .server
            .script(&inv)
            .await
            .map_err(redis_err("dead-letter"))?;
        Ok(())
    }

    /// A handle that acknowledges entries of this group.
    pub(crate) fn acker(&self) -> Acker {
        Acker {
            server: self.server.clone(),
            stream: self.keys.stream.clone().into(),
            group: self.group.clone().into(),
        }
    }
}

/// Acknowledges entries of one group: cheap to clone into each delivery.
#[derive(Clone)]
pub(crate) struct Acker {
    server: Arc<Server>,
    stream: Arc<str>,
    group: Arc<str>,
}

impl std::fmt::Debug for Acker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acker")
            .field("stream", &self.stream)
            .field("group", &self.group)
            .finish()
    }
}

impl Acker {
    /// `XACK`: the entry is done; `Ok(false)` if it was not pending any
    /// more (acknowledged already, or dead-lettered).
    pub(crate) async fn ack(&self, id: &str) -> Result<bool, Error> {
        let n: i64 = self
            .server
            .call(
                self.server.raw_command(
                    redis::cmd("XACK")
                        .arg(&*self.stream)
                        .arg(&*self.group)
                        .arg(id),
                ),
            )
            .await
            .map_err(redis_err("XACK"))?;
        Ok(n == 1)
    }
}

/// Trims the stream of every entry that every group has acknowledged
/// (`XTRIM MINID` below the oldest entry some group still needs: its oldest
/// pending entry, or the first it has not been handed yet). A stream with
/// no group is not trimmed: nobody has read it. Returns the entries
/// removed.
pub(crate) async fn trim(server: &Server, stream: &str) -> Result<u64, Error> {
    let groups: Vec<std::collections::HashMap<String, Value>> = match server
        .call(server.raw_command(redis::cmd("XINFO").arg("GROUPS").arg(stream)))
        .await
    {
        Ok(g) => g,
        // No stream yet: nothing to trim.
        Err(e) if e.code() == Some("ERR") => return Ok(0),
        Err(e) => return Err(Error::redis("XINFO GROUPS", e)),
    };
    if groups.is_empty() {
        return Ok(0);
    }
    let mut keep_from: Option<(u64, u64)> = None;
    for g in &groups {
        let name: String = g
            .get("name")
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or_default();
        let last: String = g
            .get("last-delivered-id")
            .and_then(|v| redis::from_redis_value(v.clone()).ok())
            .unwrap_or_else(|| "0-0".to_owned());
        // The first entry not yet handed to this group.
        let mut need = parse_id(&last)
            .map(|(ms, seq)| (ms, seq + 1))
            .unwrap_or((0, 0));
        // Its oldest pending entry, if older.
        let summary: Value = server
            .call(server.raw_command(redis::cmd("XPENDING").arg(stream).arg(&name)))
            .await
            .map_err(redis_err("XPENDING"))?;
        if let Value::Array(items) = summary
            && let Some(min) = items.get(1)
            && let Ok(min) = redis::from_redis_value::<String>(min.clone())
            && let Some(id) = parse_id(&min)
        {
            need = need.min(id);
        }
        keep_from = Some(keep_from.map_or(need, |k| k.min(need)));
    }
    let Some((ms, seq)) = keep_from else {
        return Ok(0);
    };
    server
        .call(
            server.raw_command(
                redis::cmd("XTRIM")
                    .arg(stream)
                    .arg("MINID")
                    .arg(format!("{ms}-{seq}")),
            ),
        )
        .await
        .map_err(redis_err("XTRIM"))
}

fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// Group and consumer names: non-empty and printable enough to log.
fn check_name(what: &str, name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > 256 {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!("{what} name must be 1 to 256 bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_and_order() {
        assert_eq!(parse_id("1700000000000-3"), Some((1_700_000_000_000, 3)));
        assert_eq!(parse_id("0-0"), Some((0, 0)));
        assert_eq!(parse_id("x"), None);
        assert!(parse_id("5-1") < parse_id("5-2") && parse_id("5-9") < parse_id("6-0"));
    }
}
