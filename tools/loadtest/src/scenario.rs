//! What the lock and seckill scenarios share: two throwaway Redis servers
//! (one for what is measured, one for the tool's bookkeeping, so the first
//! one's `INFO commandstats` counts only the scenario's commands), the
//! parent's blocking connections, and a worker's progress reports.

use redis::AsyncCommands;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::{Res, support};

/// How often a worker adds its progress to the parent's counter.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// The measured Redis and the bookkeeping Redis: both `REDIS_URL` when it
/// is set, else two throwaway servers (kept alive by the returned vector).
/// `role` names the first in the message on stderr.
pub fn two_servers(role: &str) -> (Vec<support::RedisServer>, String, String) {
    match std::env::var("REDIS_URL") {
        Ok(url) => (Vec::new(), url.clone(), url),
        Err(_) => {
            let servers = vec![support::RedisServer::start(), support::RedisServer::start()];
            let (measured, book) = (servers[0].url(), servers[1].url());
            eprintln!(
                "started two throwaway redis-servers: {measured} for {role}, {book} for the \
                 tool's bookkeeping"
            );
            (servers, measured, book)
        }
    }
}

/// A blocking connection for the parent, with bounded connect and reads.
pub fn connect(url: &str) -> Res<redis::Connection> {
    let con = redis::Client::open(url)?.get_connection_with_timeout(Duration::from_secs(5))?;
    con.set_read_timeout(Some(Duration::from_secs(10)))?;
    Ok(con)
}

/// Adds `done`'s growth to the counter `key` every [`PROGRESS_EVERY`], for
/// the parent's progress bar, and one last time once `finished` is set.
/// Bounded: `run_ms` in periods, plus a minute of slack.
pub async fn report_progress(
    mut con: redis::aio::MultiplexedConnection,
    key: String,
    done: &AtomicU64,
    finished: &AtomicBool,
    run_ms: u64,
) {
    let mut sent = 0;
    let max = run_ms / PROGRESS_EVERY.as_millis() as u64 + 240;
    for _ in 0..max {
        let last = finished.load(Ordering::Relaxed);
        if !last {
            tokio::time::sleep(PROGRESS_EVERY).await;
        }
        let now = done.load(Ordering::Relaxed);
        if now > sent {
            let _: Result<u64, _> = con.incr(&key, now - sent).await;
            sent = now;
        }
        if last {
            return;
        }
    }
}
