//! Tracing (issue 15) against a real redis-server: a span per
//! `get_or_compute` past L1 with the namespace and the outcome, none for an
//! L1 hit, the key only when DEBUG is on, and the load-finished event.

#![cfg(feature = "tracing")]

mod support;

use herdcache::Cache;
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::RedisServer;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Field names and values, as recorded.
type FieldList = Vec<(String, String)>;

/// Keeps every span (name and fields) and event (level and fields),
/// enabled up to `max`. (tracing-subscriber is not a dependency.)
#[derive(Clone)]
struct Recorder {
    max: Level,
    next: Arc<AtomicU64>,
    spans: Arc<Mutex<HashMap<u64, (String, FieldList)>>>,
    events: Arc<Mutex<Vec<(Level, FieldList)>>>,
}

struct Fields<'a>(&'a mut Vec<(String, String)>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl Recorder {
    fn new(max: Level) -> Self {
        Recorder {
            max,
            next: Arc::new(AtomicU64::new(1)),
            spans: Arc::default(),
            events: Arc::default(),
        }
    }

    fn spans(&self, name: &str) -> Vec<HashMap<String, String>> {
        self.spans
            .lock()
            .unwrap()
            .values()
            .filter(|(n, _)| n == name)
            .map(|(_, fields)| fields.iter().cloned().collect())
            .collect()
    }

    /// Every field value of every span and event at INFO or above.
    fn text_at_info_or_above(&self) -> String {
        let mut text = String::new();
        for (_, fields) in self.spans.lock().unwrap().values() {
            for (k, v) in fields {
                text.push_str(&format!("{k}={v} "));
            }
        }
        for (level, fields) in self.events.lock().unwrap().iter() {
            if *level <= Level::INFO {
                for (k, v) in fields {
                    text.push_str(&format!("{k}={v} "));
                }
            }
        }
        text
    }
}

impl Subscriber for Recorder {
    // Asked every time: two tests in this binary run under two
    // recorders at once, and a cached interest would be one's.
    fn register_callsite(&self, _: &'static Metadata<'static>) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        *meta.level() <= self.max
    }
    fn max_level_hint(&self) -> Option<tracing::level_filters::LevelFilter> {
        Some(tracing::level_filters::LevelFilter::from_level(self.max))
    }
    fn new_span(&self, attrs: &Attributes<'_>) -> Id {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut fields = Vec::new();
        attrs.record(&mut Fields(&mut fields));
        self.spans
            .lock()
            .unwrap()
            .insert(id, (attrs.metadata().name().to_owned(), fields));
        Id::from_u64(id)
    }
    fn record(&self, span: &Id, values: &Record<'_>) {
        if let Some((_, fields)) = self.spans.lock().unwrap().get_mut(&span.into_u64()) {
            values.record(&mut Fields(fields));
        }
    }
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.events
            .lock()
            .unwrap()
            .push((*event.metadata().level(), fields));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}

/// One miss, one L1 hit, one L2 hit under `recorder` (current-thread
/// runtime: every task of the cache runs under it).
async fn traffic(server: &RedisServer, namespace: &str) {
    let a: Cache<String> = Cache::builder(namespace)
        .redis_url(server.url())
        .build()
        .await
        .unwrap();
    let b: Cache<String> = Cache::builder(namespace)
        .redis_url(server.url())
        .local_ttl(Duration::ZERO)
        .build()
        .await
        .unwrap();
    let load = || async { Ok::<_, String>("v".to_owned()) };
    a.get_or_compute("secret-key", load).await.unwrap();
    a.get_or_compute("secret-key", load).await.unwrap();
    b.get_or_compute("secret-key", load).await.unwrap();
}

/// One test, two recorders in turn: tracing's callsite interest is
/// process-wide, so two recorders at once in parallel tests would race.
#[tokio::test]
async fn spans_carry_namespace_and_outcome_and_keys_only_at_debug() {
    let server = RedisServer::start();
    info_phase(&server).await;
    debug_phase(&server).await;
}

async fn info_phase(server: &RedisServer) {
    let recorder = Recorder::new(Level::INFO);
    let _guard = tracing::subscriber::set_default(recorder.clone());
    traffic(server, "traced").await;

    let calls = recorder.spans("herdcache.get_or_compute");
    // The L1 hit opens no span.
    assert_eq!(calls.len(), 2, "{calls:?}");
    let outcomes: Vec<_> = calls.iter().map(|f| f["outcome"].as_str()).collect();
    assert!(
        outcomes.contains(&"loaded") && outcomes.contains(&"l2"),
        "{outcomes:?}"
    );
    assert!(calls.iter().all(|f| f["namespace"] == "traced"));
    assert_eq!(recorder.spans("herdcache.load").len(), 1);
    let text = recorder.text_at_info_or_above();
    assert!(!text.contains("secret-key"), "a key at INFO: {text}");
}

async fn debug_phase(server: &RedisServer) {
    let recorder = Recorder::new(Level::DEBUG);
    let _guard = tracing::subscriber::set_default(recorder.clone());
    traffic(server, "debugged").await;

    let calls = recorder.spans("herdcache.get_or_compute");
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(calls.iter().all(|f| f["key"] == "secret-key"), "{calls:?}");
    let events = recorder.events.lock().unwrap();
    let load = events
        .iter()
        .find(|(_, f)| f.iter().any(|(_, v)| v.contains("load finished")))
        .expect("a load-finished event");
    assert_eq!(load.0, Level::DEBUG);
    let fields: HashMap<_, _> = load.1.iter().cloned().collect();
    assert_eq!(fields["outcome"], "ok");
    assert_eq!(fields["namespace"], "debugged");
    assert!(fields["duration_ms"].parse::<u64>().is_ok(), "{fields:?}");
}
