//! [`Server`]: the one connection of a client, its breaker and its bound on
//! every call. Each tool sends its commands and scripts through here, so
//! every Redis call of the crate is bounded and skips a Redis that is down.

use futures_util::FutureExt;
use futures_util::future::Either;
use redis::{Cmd, FromRedisValue, RedisResult, Script, ScriptInvocation};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::shared::breaker::Breaker;
use crate::shared::link::Link;

pub(crate) struct Server {
    pub(crate) link: Arc<Link>,
    pub(crate) breaker: Breaker,
    /// `redis_timeout`: the bound on every call.
    pub(crate) timeout: Duration,
}

/// Bounds a multi-round-trip Redis call by `limit` as a whole.
pub(crate) fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = RedisResult<T>>,
) -> impl Future<Output = RedisResult<T>> {
    // A combinator, not an `async fn`: an `async fn` would hold `call`
    // twice (the argument, and the awaited copy), and futures are copied
    // whole each time they move.
    tokio::time::timeout(limit, call).map(move |result| match result {
        Ok(result) => result,
        Err(_) => Err(redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("no answer from Redis within {limit:?}"),
        ))),
    })
}

/// The error of a call the breaker refused.
pub(crate) fn breaker_open() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "Redis is unreachable (circuit breaker open)",
    ))
}

/// `EVALSHA <sha> <nkeys>`, to which the caller adds keys, then arguments
/// (for [`Server::eval`]).
pub(crate) fn evalsha(script: &Script, nkeys: usize) -> Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash()).arg(nkeys);
    cmd
}

impl Server {
    /// The command a script publishes its notices with: `SPUBLISH` on a
    /// Redis Cluster (sharded pub/sub: the notice reaches only the nodes of
    /// its channel's shard, and a script may publish only to a channel in
    /// its keys' slot), `PUBLISH` on one node or under Sentinel (Redis 6
    /// has no sharded pub/sub).
    pub(crate) fn publish_verb(&self) -> &'static str {
        if self.link.sharded() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }

    /// Runs `call` unless the breaker is open, and records its outcome.
    /// The breaker is asked when the call is made, not when it is first
    /// polled. A combinator rather than an `async fn`, for the reason
    /// given at [`bounded`]: this wraps every call on the hot path.
    pub(crate) fn call<'a, T: 'a>(
        &'a self,
        call: impl Future<Output = RedisResult<T>> + 'a,
    ) -> impl Future<Output = RedisResult<T>> + 'a {
        if !self.breaker.admit() {
            return Either::Left(std::future::ready(Err(breaker_open())));
        }
        Either::Right(call.map(move |result| {
            self.breaker.record(&result);
            result
        }))
    }

    /// One command, bounded by the connection's response timeout (no
    /// timer of ours: see `link.rs`). Not breaker-checked: callers wrap it
    /// in [`call`](Self::call) as they need.
    pub(crate) async fn raw_command<T: FromRedisValue>(&self, cmd: &Cmd) -> RedisResult<T> {
        self.link.query(cmd).await
    }

    /// One script, bounded by `redis_timeout` as a whole (EVALSHA, and
    /// after a Redis restart SCRIPT LOAD and EVALSHA again). The connection
    /// is checked on the bounded result: when our bound fires first, the
    /// call's own timeout never does. Not breaker-checked.
    pub(crate) async fn raw_script<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        self.raw_script_within(self.timeout, script).await
    }

    /// [`raw_script`](Self::raw_script) with a tighter bound.
    pub(crate) async fn raw_script_within<T: FromRedisValue>(
        &self,
        limit: Duration,
        script: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        let mut conn = self.link.get()?;
        let result = bounded(limit, script.invoke_async(&mut conn.conn)).await;
        self.link.check(&conn, &result);
        result
    }

    /// A breaker-checked script on the hot path: `cmd` is an `EVALSHA` of
    /// `script` (from [`evalsha`]) with its keys and arguments, sent on
    /// the connection as one command, bounded by its response timeout like
    /// a plain `GET`. `ScriptInvocation::invoke_async` costs a boxed
    /// future and, under our bound, a timer for every call; here only a
    /// `NOSCRIPT` answer (the script cache was flushed: every new
    /// connection loads the scripts, so not after a restart) pays for a
    /// `SCRIPT LOAD` and a second try, bounded as a whole.
    pub(crate) async fn eval<T: FromRedisValue>(
        &self,
        script: &Script,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        self.call(async {
            match self.link.query(cmd).await {
                // Boxed: the load's future is ~8 KB, and a future is moved
                // (copied whole) at each level of `.await` that holds it;
                // inline, every script call on the hot path paid for
                // copying it.
                Err(e) if e.code() == Some("NOSCRIPT") => {
                    Box::pin(self.load_and_retry(script, cmd)).await
                }
                other => other,
            }
        })
        .await
    }

    /// After `NOSCRIPT`: `SCRIPT LOAD`, then the call again, bounded as a
    /// whole.
    async fn load_and_retry<T: FromRedisValue>(
        &self,
        script: &Script,
        cmd: &Cmd,
    ) -> RedisResult<T> {
        bounded(self.timeout, async {
            let mut conn = self.link.get()?;
            script.load_async(&mut conn.conn).await?;
            self.link.query(cmd).await
        })
        .await
    }

    /// A breaker-checked script.
    pub(crate) async fn script<T: FromRedisValue>(
        &self,
        script: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        self.call(self.raw_script(script)).await
    }
}
