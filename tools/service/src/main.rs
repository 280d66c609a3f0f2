//! `service`: an axum example service over herdcache.
//!
//! - `GET /products/{id}`: the row from SQLite through
//!   `Cache::get_or_compute`, as JSON; 404 for a missing product (the miss
//!   is cached too, for 5 s). However many requests and service processes
//!   ask for a cold product at once, one of them reads the database.
//! - `PUT /products/{id}` with `{"name": "…", "price_cents": 1234}`: writes
//!   the row (insert or replace), then `Cache::invalidate`; answers the row
//!   as committed. If the invalidation fails the answer is 500 (see
//!   `app::put_product`).
//! - `GET /metrics`: Prometheus text format.
//!
//! Settings, from the environment:
//!
//! | variable | default | |
//! |---|---|---|
//! | `REDIS_URL` | a throwaway `redis-server` | started on a free loopback port and stopped on exit; its URL is printed |
//! | `DATABASE_PATH` | `herdcache-service.sqlite3` in the temp dir | created and filled with 1,000 products if missing |
//! | `LISTEN` | `127.0.0.1:3000` | port 0 picks a free port |
//! | `CACHE_NAMESPACE` | `products` | the cache's namespace in Redis |
//!
//! On start it prints `listening on http://ADDR` on stdout. SIGTERM or
//! ctrl-c stops accepting, lets requests in flight finish (at most 10 s),
//! then exits.

#[path = "../../../tests/support/mod.rs"]
mod support;

mod app;
mod db;
mod metrics;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use crate::app::App;
use crate::db::{Db, Opened, Product};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long a cached product is fresh.
const TTL: Duration = Duration::from_secs(60);
/// How long "no such product" is cached.
const NEGATIVE_TTL: Duration = Duration::from_secs(5);
/// How long requests in flight may take to finish after the signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

#[tokio::main]
async fn main() -> ExitCode {
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("service: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), BoxError> {
    // Declared first, so dropped last: the throwaway Redis (if any) outlives
    // the cache and its connection.
    let mut _throwaway = None;
    let redis_url = match env("REDIS_URL") {
        Some(url) => url,
        None => {
            let server = tokio::task::spawn_blocking(support::RedisServer::start).await?;
            let url = server.url();
            println!("redis at {url} (a throwaway redis-server, stopped when the service exits)");
            _throwaway = Some(server);
            url
        }
    };
    let db_path = env("DATABASE_PATH").map_or_else(
        || std::env::temp_dir().join("herdcache-service.sqlite3"),
        PathBuf::from,
    );
    let listen: SocketAddr = env("LISTEN")
        .as_deref()
        .unwrap_or("127.0.0.1:3000")
        .parse()
        .map_err(|e| format!("LISTEN must be an address such as 127.0.0.1:3000: {e}"))?;
    let namespace = env("CACHE_NAMESPACE").unwrap_or_else(|| "products".to_owned());

    let (db, opened) = {
        let path = db_path.clone();
        tokio::task::spawn_blocking(move || Db::open(&path))
            .await?
            .map_err(|e| format!("database {}: {e}", db_path.display()))?
    };
    match opened {
        Opened::Existing => println!("database {}", db_path.display()),
        Opened::Created { products } => println!(
            "database {} (created, filled with {products} products)",
            db_path.display()
        ),
    }

    let client = herdcache::Client::connect(&redis_url).await?;
    let cache = client
        .cache::<Option<Product>>(namespace.clone())
        .ttl(TTL)
        .negative_ttl(NEGATIVE_TTL)
        .build()
        .await?;
    let app = Arc::new(App {
        cache,
        namespace,
        ttl: TTL,
        db,
        requests: Default::default(),
        invalidate_errors: Default::default(),
    });

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| format!("listen on {listen}: {e}"))?;
    println!("listening on http://{}", listener.local_addr()?);

    let (signalled, mut signal_seen) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, app::router(app)).with_graceful_shutdown(async move {
        shutdown_signal().await;
        println!("shutting down");
        let _ = signalled.send(true);
    });
    tokio::select! {
        served = async move { server.await } => served?,
        () = async move {
            let _ = signal_seen.wait_for(|s| *s).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => eprintln!(
            "service: requests still open {} s after the signal; exiting anyway",
            SHUTDOWN_GRACE.as_secs()
        ),
    }
    Ok(())
}

/// Ctrl-c, or SIGTERM on Unix.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
