//! The `sqlite` loader's database: a temp file the parent creates and fills
//! before any worker starts, then read by every worker process.
//!
//! SQLite is bundled (`rusqlite` feature `bundled`), so there is nothing to
//! install. The query is a real join and aggregate, so a load costs what a
//! small database read costs; `--loader-ms` adds a delay on top to stand in
//! for the round trip and queueing of a remote database.

use rusqlite::{Connection, OpenFlags, params};
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::strategies::{LoadError, Product};

/// Reviews in the database at most, whatever `--keys` is: keeps the fill
/// under a second or two.
const MAX_REVIEWS: u64 = 800_000;

/// Creates and fills a database of `products` rows (ids 1..=products) with
/// reviews spread over them. The file is deleted when the returned path is
/// dropped.
pub fn create(products: u32) -> Result<tempfile::TempPath, Box<dyn std::error::Error>> {
    let path = tempfile::Builder::new()
        .prefix("herdcache-loadtest-")
        .suffix(".sqlite3")
        .tempfile()?
        .into_temp_path();
    let mut con = Connection::open(&path)?;
    // A throwaway file: no journal, no fsync.
    con.execute_batch(
        "PRAGMA journal_mode = OFF;
         PRAGMA synchronous = OFF;
         CREATE TABLE products (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price_cents INTEGER NOT NULL);
         CREATE TABLE reviews (id INTEGER PRIMARY KEY, product_id INTEGER NOT NULL, stars INTEGER NOT NULL, body TEXT NOT NULL);",
    )?;
    let tx = con.transaction()?;
    {
        let mut insert =
            tx.prepare("INSERT INTO products (id, name, price_cents) VALUES (?1, ?2, ?3)")?;
        for id in 1..=i64::from(products) {
            insert.execute(params![
                id,
                format!("product {id}"),
                199 + (id * 37) % 10_000
            ])?;
        }
        let reviews = (u64::from(products) * 8).min(MAX_REVIEWS) as i64;
        let mut insert =
            tx.prepare("INSERT INTO reviews (product_id, stars, body) VALUES (?1, ?2, ?3)")?;
        for r in 0..reviews {
            let product = r % i64::from(products) + 1;
            insert.execute(params![product, 1 + (r * 7) % 5, "works as described"])?;
        }
    }
    tx.commit()?;
    con.execute_batch("CREATE INDEX reviews_by_product ON reviews (product_id); ANALYZE;")?;
    Ok(path)
}

thread_local! {
    /// One read-only connection per blocking-pool thread: no lock between
    /// concurrent loads, and no open per query. Keyed by path because
    /// one process reads one file, but tests may open several.
    static CONN: RefCell<Option<(PathBuf, Connection)>> = const { RefCell::new(None) };
}

/// Reads product `id` with its review count and average, on Tokio's blocking
/// pool (SQLite calls block).
pub async fn query(path: Arc<PathBuf>, id: i64) -> Result<Product, LoadError> {
    tokio::task::spawn_blocking(move || query_blocking(&path, id))
        .await
        .map_err(|e| LoadError(format!("query task: {e}")))?
        .map_err(|e| LoadError(format!("sqlite: {e}")))
}

fn query_blocking(path: &Path, id: i64) -> rusqlite::Result<Product> {
    CONN.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(open, _)| open != path) {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            *slot = Some((path.to_owned(), Connection::open_with_flags(path, flags)?));
        }
        let (_, con) = slot.as_ref().expect("connection just opened");
        let mut stmt = con.prepare_cached(
            "SELECT p.id, p.name, p.price_cents, COUNT(r.id), COALESCE(AVG(r.stars), 0.0)
             FROM products p LEFT JOIN reviews r ON r.product_id = p.id
             WHERE p.id = ?1
             GROUP BY p.id",
        )?;
        stmt.query_row(params![id], |row| {
            Ok(Product {
                id: row.get(0)?,
                name: row.get(1)?,
                price_cents: row.get(2)?,
                reviews: row.get(3)?,
                avg_stars: row.get(4)?,
                loaded_at_ms: 0,
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn filled_database_answers_the_loader_query() {
        let path = create(10).unwrap();
        let p = query(Arc::new(path.to_path_buf()), 3).await.unwrap();
        assert_eq!(p.id, 3);
        assert_eq!(p.name, "product 3");
        assert_eq!(p.reviews, 8);
        assert!((1.0..=5.0).contains(&p.avg_stars));
        assert!(query(Arc::new(path.to_path_buf()), 11).await.is_err());
    }
}
