//! The routes: `GET /products/{id}` through the cache, `PUT /products/{id}`
//! (write the row, then invalidate), `GET /metrics`.

use axum::Json;
use axum::Router;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use herdcache::{Cache, ErrorKind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::db::{Db, Product, ProductWrite};
use crate::metrics::{Requests, Snapshot};

/// Shared by every request of the process.
pub(crate) struct App {
    /// `None` cached for a missing product (negative caching), so ids that
    /// do not exist stop reaching the database too.
    pub(crate) cache: Cache<Option<Product>>,
    pub(crate) namespace: String,
    pub(crate) ttl: Duration,
    pub(crate) db: Arc<Db>,
    pub(crate) requests: Requests,
    pub(crate) invalidate_errors: AtomicU64,
}

pub(crate) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/products/{id}", get(get_product).put(put_product))
        .route("/metrics", get(metrics))
        .layer(middleware::from_fn_with_state(app.clone(), count_request))
        .with_state(app)
}

/// Counts every answer by method, matched route and status.
async fn count_request(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let method = req.method().clone();
    let response = next.run(req).await;
    app.requests
        .record(method.as_str(), &route, response.status().as_u16());
    response
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

fn not_found(id: i64) -> Response {
    error(StatusCode::NOT_FOUND, format!("no product {id}"))
}

async fn get_product(State(app): State<Arc<App>>, Path(id): Path<i64>) -> Response {
    let db = app.db.clone();
    let key = id.to_string();
    let found = app
        .cache
        .get_or_compute(key.as_str(), move || async move { db.product(id).await })
        .await;
    match found {
        Ok(product) => match product.as_ref() {
            Some(product) => Json(product).into_response(),
            None => not_found(id),
        },
        Err(e) => {
            let status = match e.kind() {
                ErrorKind::WaitTimeout | ErrorKind::LoadTimeout => StatusCode::SERVICE_UNAVAILABLE,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            };
            error(status, format!("reading product {id}: {e}"))
        }
    }
}

/// Writes the row, then invalidates its cache key.
///
/// If the invalidation fails (Redis down or slow), the row is committed but
/// cached copies of the old row may be served until they expire. The answer
/// is then 500 with a message saying exactly that, rather than a 200 that
/// hides it or a background retry the caller cannot see: a `PUT` is
/// idempotent, so the caller can simply send it again, and that retry
/// invalidates again.
async fn put_product(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
    Json(write): Json<ProductWrite>,
) -> Response {
    if write.name.trim().is_empty() || write.price_cents < 0 {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "name must not be empty and price_cents must not be negative".to_owned(),
        );
    }
    let product = match app.db.put(id, write).await {
        Ok(product) => product,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("writing product {id}: {e}"),
            );
        }
    };
    if let Err(e) = app.cache.invalidate(id.to_string().as_str()).await {
        app.invalidate_errors.fetch_add(1, Relaxed);
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!(
                "product {id} was saved (version {}), but its cache entry could not be \
                 invalidated ({e}): other service processes may serve the previous row for up \
                 to {} s. Send the same PUT again to invalidate again.",
                product.version,
                app.ttl.as_secs()
            ),
        );
    }
    Json(product).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> Response {
    let text = Snapshot {
        requests: &app.requests,
        db_queries: app.db.queries.load(Relaxed),
        db_writes: app.db.writes.load(Relaxed),
        invalidate_errors: app.invalidate_errors.load(Relaxed),
        namespace: &app.namespace,
        cache: app.cache.stats(),
    }
    .render();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
