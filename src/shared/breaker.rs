//! A circuit breaker in front of Redis: after a connection-level failure
//! (refused, reset, timed out) it fails calls at once for `cooldown`, then
//! lets exactly one call through as a probe. The probe's success closes it.
//! A probe that never reports (its caller's future was dropped mid-call,
//! or a renewal cut off at its lease's end) is given up after another
//! cooldown, and the next caller probes: nothing can leave the breaker
//! open for good while Redis answers.
//!
//! Without it, every cache miss during an outage would pay the full
//! `redis_timeout` before falling back to the loader.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::shared::now_ms;
use crate::shared::telemetry;

#[derive(Debug)]
pub(crate) struct Breaker {
    /// 0 when closed; else unix ms until which calls are refused.
    open_until_ms: AtomicU64,
    /// 0 when no probe is out; else unix ms when the current one started.
    probe_started_ms: AtomicU64,
    cooldown_ms: u64,
}

/// Connection-class failures open the breaker; a Redis *reply* error (a
/// script error, WRONGTYPE) proves the server is up and does not.
pub(crate) fn is_outage(e: &redis::RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal()
}

impl Breaker {
    pub(crate) fn new(cooldown: Duration) -> Self {
        Breaker {
            open_until_ms: AtomicU64::new(0),
            probe_started_ms: AtomicU64::new(0),
            cooldown_ms: cooldown.as_millis().max(1) as u64,
        }
    }

    /// May a call go to Redis now?
    pub(crate) fn admit(&self) -> bool {
        let until = self.open_until_ms.load(Relaxed);
        if until == 0 {
            return true;
        }
        let now = now_ms();
        if now < until {
            return false;
        }
        // Half-open: one caller probes, the rest keep failing fast, until
        // the probe reports or is a cooldown old (abandoned: see above).
        let started = self.probe_started_ms.load(Relaxed);
        if started != 0 && now < started + self.cooldown_ms {
            return false;
        }
        self.probe_started_ms
            .compare_exchange(started, now.max(1), Relaxed, Relaxed)
            .is_ok()
    }

    pub(crate) fn record<T>(&self, result: &redis::RedisResult<T>) {
        match result {
            Err(e) if is_outage(e) => {
                let was = self
                    .open_until_ms
                    .swap(now_ms() + self.cooldown_ms, Relaxed);
                self.probe_started_ms.store(0, Relaxed);
                if was == 0 {
                    telemetry::breaker_opened(self.cooldown_ms);
                }
            }
            _ => {
                if self.open_until_ms.load(Relaxed) != 0 && self.open_until_ms.swap(0, Relaxed) != 0
                {
                    self.probe_started_ms.store(0, Relaxed);
                    telemetry::breaker_closed();
                }
            }
        }
    }

    /// A new connection is up: Redis answered it (and every subscription
    /// and script load on it), so calls need not wait out the cooldown.
    pub(crate) fn close(&self) {
        if self.open_until_ms.swap(0, Relaxed) != 0 {
            self.probe_started_ms.store(0, Relaxed);
            telemetry::breaker_closed();
        }
    }

    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.open_until_ms.load(Relaxed) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outage() -> redis::RedisResult<()> {
        Err(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "down").into())
    }

    #[test]
    fn opens_on_outage_probes_once_and_closes_on_success() {
        let b = Breaker::new(Duration::from_millis(30));
        assert!(b.admit());
        b.record(&outage());
        assert!(b.is_open() && !b.admit(), "refuses during cooldown");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.admit(), "one probe after cooldown");
        assert!(!b.admit(), "only one");
        b.record(&Ok(()));
        assert!(!b.is_open() && b.admit() && b.admit());
    }

    #[test]
    fn a_probe_that_never_reports_is_given_up_after_a_cooldown() {
        let b = Breaker::new(Duration::from_millis(30));
        b.record(&outage());
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.admit(), "the probe");
        // Its caller is dropped: no record(). Others fail fast a while...
        assert!(!b.admit());
        std::thread::sleep(Duration::from_millis(40));
        // ...then the next caller probes, and its success closes it.
        assert!(b.admit(), "a new probe");
        assert!(!b.admit(), "only one");
        b.record(&Ok(()));
        assert!(!b.is_open() && b.admit());
    }

    #[test]
    fn reply_errors_do_not_open_it() {
        let b = Breaker::new(Duration::from_millis(30));
        let reply: redis::RedisResult<()> = Err((redis::ErrorKind::Parse, "WRONGTYPE").into());
        b.record(&reply);
        assert!(!b.is_open());
    }
}
