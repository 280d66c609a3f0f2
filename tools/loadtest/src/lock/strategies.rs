//! The three locks the `lock` scenario compares. Each is taken with a
//! lease of [`LEASE`] (the seed's `EXPIRE 10`), waits until the run's
//! deadline at most, and is released by its holder.

use herdcache::ErrorKind;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};
use std::sync::LazyLock;
use std::time::Duration;
use tokio::time::Instant;

/// How long a lock is held without renewal, for every strategy: the seed's
/// `EXPIRE key 10`. No critical section here comes near it.
pub const LEASE: Duration = Duration::from_secs(10);
/// The seed's retry: `sleep(100ms)` between `SETNX` attempts.
const SETNX_POLL: Duration = Duration::from_millis(100);
/// redsync's default retry delay: uniform in 50..=250 ms.
const JITTER_MS: std::ops::RangeInclusive<u64> = 50..=250;

/// A lock implementation under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LockStrategy {
    /// The seed: `SETNX key 1`, then `EXPIRE key 10` as a second call;
    /// on failure `sleep(100ms)` and retry; release with a plain `DEL`.
    SetnxSleep,
    /// redsync-like on one Redis: `SET key token NX PX lease`, retry after a
    /// random 50-250 ms; release with a Lua compare-and-delete.
    RetryJitter,
    /// `herdcache::Client::lock(name)`: acquire (woken by the release
    /// notice), release; one `Client` per process, shared by its tasks.
    Herdcache,
}

impl LockStrategy {
    /// In the order the report lists them: the seed first, herdcache last.
    pub const ALL: [LockStrategy; 3] = [
        LockStrategy::SetnxSleep,
        LockStrategy::RetryJitter,
        LockStrategy::Herdcache,
    ];

    pub fn name(self) -> &'static str {
        match self {
            LockStrategy::SetnxSleep => "setnx-sleep",
            LockStrategy::RetryJitter => "retry-jitter",
            LockStrategy::Herdcache => "herdcache",
        }
    }

    /// Commands this strategy's Redis runs only inside its Lua scripts,
    /// never as a client's request. `INFO commandstats` counts a script's
    /// own calls with everything else; leaving these out of the total
    /// leaves the requests clients sent (the round trips). herdcache's
    /// locks talk to Redis only through scripts (`src/lock/scripts.rs`,
    /// `src/shared/scripts.rs`): acquire, renew, release.
    pub fn script_only_commands(self) -> &'static [&'static str] {
        match self {
            LockStrategy::SetnxSleep => &[],
            LockStrategy::RetryJitter => &["get", "del"],
            LockStrategy::Herdcache => &["set", "get", "del", "time", "publish", "pttl", "pexpire"],
        }
    }
}

/// Compare-and-delete, as redsync releases: only the holder's token frees
/// the key. KEYS: lock. ARGV: token. Returns 1 if it was ours.
static RELEASE_IF_OURS: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
",
    )
});

/// One process's handle on a strategy, shared by its tasks.
pub enum Locker {
    SetnxSleep(MultiplexedConnection),
    RetryJitter(MultiplexedConnection),
    /// One lock handle per name, all on the process's one `Client`.
    Herdcache(Vec<herdcache::Lock>),
}

/// A lock held by a task.
pub enum Held {
    SetnxSleep { key: String },
    RetryJitter { key: String, token: String },
    Herdcache(herdcache::LockGuard),
}

impl Held {
    /// herdcache's fencing token; 0 for the baselines, which have none.
    pub fn fence(&self) -> u64 {
        match self {
            Held::Herdcache(g) => g.fencing_token(),
            _ => 0,
        }
    }
}

fn err(what: &str) -> impl Fn(redis::RedisError) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Locker {
    /// Connects the way each strategy would in a service: one multiplexed
    /// connection per process for the baselines, one `herdcache::Client`.
    pub async fn connect(
        strategy: LockStrategy,
        url: &str,
        names: &[String],
    ) -> Result<Self, String> {
        let plain = || async {
            redis::Client::open(url)
                .map_err(err("redis url"))?
                .get_multiplexed_async_connection()
                .await
                .map_err(err("connect to redis"))
        };
        Ok(match strategy {
            LockStrategy::SetnxSleep => Locker::SetnxSleep(plain().await?),
            LockStrategy::RetryJitter => Locker::RetryJitter(plain().await?),
            LockStrategy::Herdcache => {
                let client = herdcache::Client::connect(url)
                    .await
                    .map_err(|e| format!("herdcache client: {e}"))?;
                Locker::Herdcache(
                    names
                        .iter()
                        .map(|n| client.lock(n.as_str()).lease(LEASE))
                        .collect(),
                )
            }
        })
    }

    /// Waits for lock `index` (named `names[index]`) until `deadline`:
    /// `Ok(None)` if the deadline came first.
    pub async fn acquire(
        &self,
        names: &[String],
        index: usize,
        deadline: Instant,
        rng: &mut fastrand::Rng,
    ) -> Result<Option<Held>, String> {
        let key = &names[index];
        match self {
            Locker::Herdcache(locks) => {
                let left = deadline.saturating_duration_since(Instant::now());
                match locks[index].acquire_timeout(left).await {
                    Ok(guard) => Ok(Some(Held::Herdcache(guard))),
                    Err(e) if e.kind() == ErrorKind::LockTimeout => Ok(None),
                    Err(e) => Err(format!("herdcache acquire: {e}")),
                }
            }
            Locker::SetnxSleep(con) => {
                let mut con = con.clone();
                loop {
                    let won: bool = con.set_nx(key, 1).await.map_err(err("SETNX"))?;
                    if won {
                        // The seed's second call: a crash right here would
                        // leave a lock that never expires.
                        let _: bool = con
                            .expire(key, LEASE.as_secs() as i64)
                            .await
                            .map_err(err("EXPIRE"))?;
                        return Ok(Some(Held::SetnxSleep { key: key.clone() }));
                    }
                    if !sleep_before(deadline, SETNX_POLL).await {
                        return Ok(None);
                    }
                }
            }
            Locker::RetryJitter(con) => {
                let mut con = con.clone();
                let token = format!("{:016x}{:016x}", rng.u64(..), rng.u64(..));
                loop {
                    let ok: Option<String> = redis::cmd("SET")
                        .arg(key)
                        .arg(&token)
                        .arg("NX")
                        .arg("PX")
                        .arg(LEASE.as_millis() as u64)
                        .query_async(&mut con)
                        .await
                        .map_err(err("SET NX PX"))?;
                    if ok.is_some() {
                        return Ok(Some(Held::RetryJitter {
                            key: key.clone(),
                            token,
                        }));
                    }
                    let pause = Duration::from_millis(rng.u64(JITTER_MS));
                    if !sleep_before(deadline, pause).await {
                        return Ok(None);
                    }
                }
            }
        }
    }

    /// Releases; `Ok(false)` if the lock was no longer ours (or, for the
    /// seed's plain `DEL`, no longer there).
    pub async fn release(&self, held: Held) -> Result<bool, String> {
        match (self, held) {
            (_, Held::Herdcache(guard)) => guard
                .release()
                .await
                .map_err(|e| format!("herdcache release: {e}")),
            (Locker::SetnxSleep(con) | Locker::RetryJitter(con), Held::SetnxSleep { key }) => {
                let n: u64 = con.clone().del(&key).await.map_err(err("DEL"))?;
                Ok(n == 1)
            }
            (
                Locker::SetnxSleep(con) | Locker::RetryJitter(con),
                Held::RetryJitter { key, token },
            ) => {
                let n: u64 = RELEASE_IF_OURS
                    .key(&key)
                    .arg(&token)
                    .invoke_async(&mut con.clone())
                    .await
                    .map_err(err("release script"))?;
                Ok(n == 1)
            }
            (Locker::Herdcache(_), _) => Err("a baseline lock on a herdcache locker".into()),
        }
    }
}

/// Sleeps `pause`, or until `deadline` if that is sooner. False if the
/// deadline has passed: the waiter gives up without another attempt.
async fn sleep_before(deadline: Instant, pause: Duration) -> bool {
    let now = Instant::now();
    if now >= deadline {
        return false;
    }
    tokio::time::sleep_until((now + pause).min(deadline)).await;
    Instant::now() < deadline
}
