//! The products table in SQLite (bundled: nothing to install), created and
//! filled on first start. Reads and writes run on Tokio's blocking pool
//! with a connection taken from a small pool of idle ones; every read is
//! counted, because "how many times did we reach the database" is what the
//! cache is for.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How many products a new database is filled with (ids `1..=SEED_PRODUCTS`).
pub(crate) const SEED_PRODUCTS: i64 = 1_000;

/// Idle connections kept for reuse; more may be open while busy.
const MAX_IDLE: usize = 8;

/// One row of `products`, as cached and as served (JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Product {
    pub(crate) id: i64,
    pub(crate) name: String,
    pub(crate) price_cents: i64,
    /// Starts at 1 and goes up by one on every `PUT`: lets a reader tell an
    /// old row from a new one.
    pub(crate) version: i64,
}

/// The body of `PUT /products/{id}`: the whole row but its id and version.
#[derive(Debug, Deserialize)]
pub(crate) struct ProductWrite {
    pub(crate) name: String,
    pub(crate) price_cents: i64,
}

pub(crate) type DbError = Box<dyn std::error::Error + Send + Sync>;

/// The database file, a pool of idle connections, and the counters.
pub(crate) struct Db {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    /// Product reads run (each one a `SELECT`, from the cache's loader).
    pub(crate) queries: AtomicU64,
    /// Product writes committed (`PUT`).
    pub(crate) writes: AtomicU64,
}

/// How [`Db::open`] found the file.
pub(crate) enum Opened {
    Existing,
    Created { products: i64 },
}

impl Db {
    /// Opens the database at `path`, creating the table and filling it with
    /// [`SEED_PRODUCTS`] rows if it does not exist yet. Safe when several
    /// processes start at once on the same new file: the check and the fill
    /// are one `BEGIN IMMEDIATE` transaction, so exactly one of them fills.
    /// Blocking (run it on the blocking pool).
    pub(crate) fn open(path: &Path) -> Result<(Arc<Db>, Opened), DbError> {
        // Switching a new file to WAL while another process has it open
        // answers SQLITE_BUSY at once (the busy handler is not called where
        // waiting could deadlock): start over, a bounded number of times.
        let mut attempt = 0;
        loop {
            match Db::open_once(path) {
                Err(e) if is_busy(&e) && attempt < 100 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(20 + fastrand_ms()));
                }
                done => return done,
            }
        }
    }

    fn open_once(path: &Path) -> Result<(Arc<Db>, Opened), DbError> {
        let mut conn = connect(path)?;
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'products')",
            [],
            |r| r.get(0),
        )?;
        let opened = if exists {
            Opened::Existing
        } else {
            tx.execute_batch(
                "CREATE TABLE products (
                     id          INTEGER PRIMARY KEY,
                     name        TEXT    NOT NULL,
                     price_cents INTEGER NOT NULL,
                     version     INTEGER NOT NULL
                 )",
            )?;
            {
                let mut insert = tx.prepare(
                    "INSERT INTO products (id, name, price_cents, version) VALUES (?1, ?2, ?3, 1)",
                )?;
                for id in 1..=SEED_PRODUCTS {
                    let price = 199 + (id * 7_919) % 100_000;
                    insert.execute(params![id, format!("Product {id}"), price])?;
                }
            }
            Opened::Created {
                products: SEED_PRODUCTS,
            }
        };
        tx.commit()?;
        let db = Db {
            path: path.to_owned(),
            idle: Mutex::new(vec![conn]),
            queries: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        };
        Ok((Arc::new(db), opened))
    }

    /// Reads product `id` (`None` if there is no such row). This is the
    /// cache's loader: each call is one database query, and is counted.
    pub(crate) async fn product(self: &Arc<Self>, id: i64) -> Result<Option<Product>, DbError> {
        self.queries.fetch_add(1, Relaxed);
        self.with(move |conn| {
            conn.prepare_cached(
                "SELECT id, name, price_cents, version FROM products WHERE id = ?1",
            )?
            .query_row([id], row)
            .optional()
        })
        .await
    }

    /// Writes product `id` (insert, or replace name and price and bump the
    /// version) and returns the row as committed.
    pub(crate) async fn put(
        self: &Arc<Self>,
        id: i64,
        write: ProductWrite,
    ) -> Result<Product, DbError> {
        let product = self
            .with(move |conn| {
                conn.prepare_cached(
                    "INSERT INTO products (id, name, price_cents, version) VALUES (?1, ?2, ?3, 1)
                     ON CONFLICT (id) DO UPDATE SET
                         name = excluded.name,
                         price_cents = excluded.price_cents,
                         version = products.version + 1
                     RETURNING id, name, price_cents, version",
                )?
                .query_row(params![id, write.name, write.price_cents], row)
            })
            .await?;
        self.writes.fetch_add(1, Relaxed);
        Ok(product)
    }

    /// Runs `f` on a pooled connection on the blocking pool.
    async fn with<T, F>(self: &Arc<Self>, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let db = self.clone();
        tokio::task::spawn_blocking(move || {
            let taken = db.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let mut conn = match taken {
                Some(conn) => conn,
                None => connect(&db.path)?,
            };
            let out = f(&mut conn)?;
            let mut idle = db.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < MAX_IDLE {
                idle.push(conn);
            }
            Ok(out)
        })
        .await?
    }
}

fn connect(path: &Path) -> Result<Connection, DbError> {
    let conn = Connection::open(path)?;
    // Several service processes may share the file: wait for a writer
    // rather than fail, and let readers read while one writes.
    conn.busy_timeout(Duration::from_secs(5))?;
    let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(conn)
}

fn is_busy(e: &DbError) -> bool {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    e.downcast_ref::<rusqlite::Error>()
        .and_then(rusqlite::Error::sqlite_error_code)
        .is_some_and(|code| matches!(code, DatabaseBusy | DatabaseLocked))
}

/// 0..20 ms, different in each process, so that two processes retrying
/// `open` do not keep colliding.
fn fastrand_ms() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    u64::from((nanos ^ std::process::id()) % 20)
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        id: r.get(0)?,
        name: r.get(1)?,
        price_cents: r.get(2)?,
        version: r.get(3)?,
    })
}
