//! The fleet-wide rebuild lock: random tokens, and running the loader while a
//! watchdog keeps the lock alive.
//!
//! The lock is `SET lock token NX PX lock_ttl`. `lock_ttl` is short (seconds)
//! so that a holder that dies frees the key quickly; a loader that runs
//! longer keeps it because the watchdog re-arms it every `lock_ttl / 3` with a
//! compare-token-then-PEXPIRE script. If the token no longer matches (the
//! lease was voided by `set`/`invalidate`, or expired during a Redis outage),
//! the watchdog stops and the final fill will be refused: the loader may have
//! read data older than the write that voided it.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::{Instant, MissedTickBehavior};

use crate::cache::keys::RedisKeys;
use crate::cache::load::LoaderError;
use crate::cache::remote::Remote;
use crate::cache::stats::Counters;
use crate::error::{Error, ErrorKind};

/// Runs `loader` in its own task (so a panic is caught as an error and the
/// caller's cancellation cannot cut it short), bounded by `load_timeout`,
/// extending the lock while it runs when `lock` is given.
pub(crate) async fn run_loader<V, F, Fut, E>(
    key: &str,
    loader: F,
    load_timeout: Duration,
    lock: Option<(&Remote, &RedisKeys, &str, Duration)>,
    stats: &Arc<Counters>,
) -> Result<V, Error>
where
    V: Send + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<V, E>> + Send + 'static,
    E: LoaderError,
{
    // Boxed inside the task: `E` itself need not be `Send` or `'static`
    // (the box is), so any error `?` could box is a loader error.
    let mut task = tokio::spawn(async move { loader().await.map_err(Into::into) });
    let timeout = tokio::time::sleep(load_timeout);
    tokio::pin!(timeout);
    // Without a lock the tick branch below is disabled (`held` is false), so
    // the period is then irrelevant.
    let period = lock.map_or(Duration::from_secs(3600), |(_, _, _, ttl)| ttl / 3);
    let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut held = lock.is_some();
    loop {
        tokio::select! {
            joined = &mut task => {
                return match joined {
                    Ok(Ok(value)) => Ok(value),
                    Ok(Err(e)) => Err(Error::loader(key, e)),
                    Err(e) if e.is_panic() => Err(Error::new(
                        ErrorKind::LoaderPanicked,
                        panic_message(e.into_panic()),
                    )),
                    Err(e) => Err(Error::new(ErrorKind::LoaderPanicked, e.to_string())),
                };
            }
            _ = &mut timeout => {
                task.abort();
                return Err(Error::new(
                    ErrorKind::LoadTimeout,
                    format!("for key {key:?}: still running after {load_timeout:?}"),
                ));
            }
            _ = ticker.tick(), if held => {
                let (remote, keys, token, ttl) = lock.expect("held implies a lock");
                match remote.extend(keys, token, ttl).await {
                    Ok(true) => {}
                    Ok(false) => held = false,
                    // A failed extension is retried on the next tick; the
                    // lock survives one missed tick by construction (ttl/3).
                    Err(_) => Counters::bump(&stats.redis_errors),
                }
            }
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "loader panicked with a non-string payload".to_owned()
    }
}
