//! [`RateLimiter`] (GCRA on Redis's clock) and its answer, [`RateDecision`].

use std::sync::Arc;
use std::time::Duration;

use crate::client::Client;
use crate::error::{Error, ErrorKind};
use crate::rate::keys::{check_limiter_name, limiter_key};
use crate::rate::scripts::GCRA;

/// The largest `interval x burst` accepted, in µs (2^48 µs, about 8.9
/// years): the limiter's times then stay exact in Lua's doubles.
const MAX_TOLERANCE_US: u128 = 1 << 48;

/// A rate limiter shared by every process of the fleet: at most `n`
/// requests per `per` for each key (a buyer, an IP, a product), with bursts
/// of up to `burst` at once. Make it with
/// [`Client::rate_limiter`](crate::Client::rate_limiter), then set
/// [`rate`](Self::rate) (required) and [`burst`](Self::burst):
///
/// ```no_run
/// # async fn f(client: herdcache::Client) -> Result<(), herdcache::Error> {
/// use herdcache::RateDecision;
/// use std::time::Duration;
///
/// let buyers = client
///     .rate_limiter("checkout")
///     .rate(5, Duration::from_secs(1))
///     .burst(5);
/// match buyers.check("user:42", 1).await? {
///     RateDecision::Allowed { .. } => { /* on to the stock */ }
///     RateDecision::Limited { retry_after, .. } => { /* 429, Retry-After */ }
///     _ => {}
/// }
/// # Ok(()) }
/// ```
///
/// # How it decides
///
/// GCRA, the generic cell rate algorithm (as in redis-cell): each key has
/// one number in Redis, the time at which its allowance would be whole
/// again, pushed `per / n` later by each admitted unit. A request is
/// admitted if that time stays within `burst` intervals of now. It is a
/// token bucket of `burst` tokens refilled at `n` per `per`, decided in one
/// script on Redis (no read-then-write race between processes), by Redis's
/// own clock (processes whose clocks disagree still agree), with the number
/// stored with an expiry (`PX`) at which it means no more than an absent
/// key, so idle keys vanish. A limited request writes nothing.
///
/// Every process using one name must give it the same rate and burst: the
/// name, not the settings, is what Redis keys on.
///
/// The interval `per / n` is kept in whole microseconds (rounded to the
/// nearest; the rate is then off by at most half a microsecond per
/// request: 0.05% at 1,000 per second). A rate of more than about 2
/// million per second for one key is refused.
///
/// Cheap to clone; nothing is sent until [`check`](Self::check).
#[derive(Clone, Debug)]
pub struct RateLimiter {
    client: Client,
    name: Arc<str>,
    rate: Option<(u64, Duration)>,
    burst: Option<u64>,
}

/// What [`RateLimiter::check`] decided. New variants and fields may be
/// added: match with `..`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Admitted; the cost was taken from the key's allowance.
    #[non_exhaustive]
    Allowed {
        /// How many more unit-cost requests the key would be admitted at
        /// this instant (0 when this one took the last of the burst).
        remaining: u64,
    },
    /// Not admitted; nothing was taken.
    #[non_exhaustive]
    Limited {
        /// How long until the same request would be admitted, if no other
        /// takes the allowance first (by Redis's clock, rounded up to the
        /// microsecond): the value for an HTTP `Retry-After`.
        retry_after: Duration,
    },
}

impl RateDecision {
    /// Whether the request was admitted.
    pub fn is_allowed(&self) -> bool {
        matches!(self, RateDecision::Allowed { .. })
    }
}

/// A checked configuration, in the script's units.
struct Params {
    interval_us: u64,
    tolerance_us: u64,
    burst: u64,
}

impl RateLimiter {
    pub(crate) fn new(client: Client, name: String) -> Self {
        RateLimiter {
            client,
            name: name.into(),
            rate: None,
            burst: None,
        }
    }

    /// At most `n` requests (of cost 1) per `per`, for each key, on
    /// average: the allowance comes back one unit every `per / n`.
    /// Required; `n` or `per` of zero is an [`ErrorKind::Config`] error
    /// from [`check`](Self::check).
    pub fn rate(mut self, n: u64, per: Duration) -> Self {
        self.rate = Some((n, per));
        self
    }

    /// The most units a key may take at one instant (the bucket's size);
    /// after that, one unit per `per / n`. Default: `n`, the rate's count
    /// (as the `governor` crate's quotas do), so a key idle for a whole
    /// `per` may take its whole period's allowance at once. The trade-off:
    /// a larger burst is kinder to clients that send in clumps (a page
    /// that fires several calls), but lets through up to `burst + n - 1`
    /// in one interval of length `per` (about 2x the rate with the
    /// default); `burst(1)` spaces requests evenly and holds every
    /// interval of length `per` to `n`, but refuses two requests that
    /// arrive closer than `per / n`, however idle the key was. Zero is an
    /// [`ErrorKind::Config`] error from [`check`](Self::check).
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }

    /// The limiter's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Takes `cost` units of `key`'s allowance if they fit now
    /// ([`RateDecision::Allowed`]), else takes nothing and says when they
    /// would ([`RateDecision::Limited`]). One script on Redis: one round
    /// trip.
    ///
    /// `cost` 0 takes nothing and writes nothing: it answers `Allowed {
    /// remaining }` with what the key has left now (`Limited` only if
    /// another process gave this name a larger burst and used it). A
    /// `cost` above the burst could never be admitted, so it is an error,
    /// not a `Limited` that would be retried forever.
    ///
    /// # Errors
    /// [`ErrorKind::InvalidKey`] for a bad name or key (empty, too long:
    /// [`MAX_LIMITER_NAME_LEN`](crate::MAX_LIMITER_NAME_LEN),
    /// [`MAX_LIMITER_KEY_LEN`](crate::MAX_LIMITER_KEY_LEN); holding `{` or
    /// `}`; a name holding `:`); [`ErrorKind::Config`] for no
    /// [`rate`](Self::rate), a rate or burst of zero, a rate above about 2
    /// million per second, `per / n x burst` over about 8.9 years, or a
    /// `cost` above the burst. Nothing is sent for any of these.
    /// [`ErrorKind::Redis`] if Redis fails or is down (the call is bounded
    /// by the client's `redis_timeout`, and skipped at once while the
    /// circuit breaker is open): a limiter that cannot reach Redis neither
    /// admits nor refuses, and the caller chooses (fail open or closed).
    pub async fn check(&self, key: &str, cost: u64) -> Result<RateDecision, Error> {
        let params = self.params()?;
        check_limiter_name(&self.name)?;
        let redis_key = limiter_key(&self.name, key)?;
        if cost > params.burst {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "cost {cost} is above rate limiter {:?}'s burst of {}: it could never be admitted",
                    self.name, params.burst
                ),
            ));
        }
        let mut inv = GCRA.prepare_invoke();
        inv.key(&redis_key)
            .arg(params.interval_us)
            .arg(params.tolerance_us)
            .arg(cost);
        let (allowed, n): (i64, i64) = self
            .client
            .server
            .script(&inv)
            .await
            .map_err(|e| Error::redis("rate limiter check", e))?;
        let n = n.max(0) as u64;
        Ok(if allowed == 1 {
            RateDecision::Allowed { remaining: n }
        } else {
            RateDecision::Limited {
                retry_after: Duration::from_micros(n),
            }
        })
    }

    fn params(&self) -> Result<Params, Error> {
        let config = |msg: String| Error::new(ErrorKind::Config, msg);
        let name = &self.name;
        let Some((n, per)) = self.rate else {
            return Err(config(format!(
                "rate limiter {name:?} has no rate: set one with .rate(n, per)"
            )));
        };
        if n == 0 || per.is_zero() {
            return Err(config(format!(
                "rate limiter {name:?}: rate {n} per {per:?} must have n and per above zero"
            )));
        }
        // per / n in µs, rounded to the nearest.
        let per_ns = per.as_nanos();
        let n_ns = u128::from(n) * 1000;
        let interval_us = (per_ns + n_ns / 2) / n_ns;
        if interval_us == 0 {
            return Err(config(format!(
                "rate limiter {name:?}: rate {n} per {per:?} is an interval under half a microsecond"
            )));
        }
        let burst = self.burst.unwrap_or(n);
        if burst == 0 {
            return Err(config(format!(
                "rate limiter {name:?}: burst must be above zero"
            )));
        }
        // Saturating: a `per` of centuries times a huge burst overflows
        // even a u128.
        let tolerance_us = interval_us.saturating_mul(u128::from(burst));
        if tolerance_us > MAX_TOLERANCE_US {
            return Err(config(format!(
                "rate limiter {name:?}: burst {burst} at {n} per {per:?} spans more than \
                 {MAX_TOLERANCE_US} µs"
            )));
        }
        Ok(Params {
            interval_us: interval_us as u64,
            tolerance_us: tolerance_us as u64,
            burst,
        })
    }
}
