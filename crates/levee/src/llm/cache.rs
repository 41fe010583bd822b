//! The exact-match answer cache: a repeated, deterministic, non-streamed chat request is
//! answered from memory without calling a provider.
//!
//! Only requests that ask for determinism are stored and served: `temperature: 0`, or a
//! client that sends `x-levee-cache: use`. The key is a digest of the consumer, the model
//! name and the request with its object keys sorted (so key order and whitespace do not
//! matter); answers are never shared between consumers. Memory is bounded by entry count and
//! by bytes; the oldest entries go first, and entries expire after the configured TTL.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

/// A stored answer.
#[derive(Debug, Clone)]
pub struct Cached {
    pub body: Bytes,
    pub content_type: Option<http::HeaderValue>,
    pub provider: std::sync::Arc<str>,
    pub model: std::sync::Arc<str>,
}

#[derive(Debug)]
struct Entry {
    answer: Cached,
    stored: Instant,
}

#[derive(Debug, Default)]
struct Store {
    entries: HashMap<[u8; 32], Entry>,
    /// Insertion order, for evicting the oldest first.
    order: VecDeque<[u8; 32]>,
    bytes: usize,
}

/// The cache, shared by every worker.
#[derive(Debug)]
pub struct AnswerCache {
    ttl: Duration,
    max_entries: usize,
    max_bytes: usize,
    store: Mutex<Store>,
}

/// Whether a request may be answered from, and stored in, the cache.
pub fn wanted(request: &Map<String, Value>, header: Option<&http::HeaderValue>) -> bool {
    if request.get("stream").and_then(Value::as_bool) == Some(true) {
        return false;
    }
    match header.map(http::HeaderValue::as_bytes) {
        Some(b"use") => true,
        Some(b"skip") => false,
        _ => request.get("temperature").and_then(Value::as_f64) == Some(0.0),
    }
}

/// The cache key of a request: consumer, model and the request with sorted keys.
pub fn key(consumer: Option<&str>, request: &Map<String, Value>) -> [u8; 32] {
    let mut canonical = String::new();
    write_canonical(&Value::Object(request.clone()), &mut canonical);
    let mut digest = Sha256::new();
    digest.update(consumer.unwrap_or("").as_bytes());
    digest.update([0]);
    digest.update(canonical.as_bytes());
    digest.finalize().into()
}

/// JSON with object keys sorted at every level, whatever map type serde_json was built with.
fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::from(key.as_str()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

impl AnswerCache {
    pub fn new(ttl: Duration, max_entries: usize, max_bytes: usize) -> AnswerCache {
        AnswerCache {
            ttl,
            max_entries,
            max_bytes,
            store: Mutex::new(Store::default()),
        }
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &[u8; 32], now: Instant) -> Option<Cached> {
        let store = self.store();
        let entry = store.entries.get(key)?;
        (now.saturating_duration_since(entry.stored) < self.ttl).then(|| entry.answer.clone())
    }

    pub fn put(&self, key: [u8; 32], answer: Cached, now: Instant) {
        let size = answer.body.len();
        if size > self.max_bytes {
            return;
        }
        let mut store = self.store();
        if let Some(old) = store.entries.remove(&key) {
            store.bytes -= old.answer.body.len();
            store.order.retain(|k| *k != key);
        }
        while store.entries.len() >= self.max_entries || store.bytes + size > self.max_bytes {
            let Some(oldest) = store.order.pop_front() else {
                break;
            };
            if let Some(gone) = store.entries.remove(&oldest) {
                store.bytes -= gone.answer.body.len();
            }
        }
        store.bytes += size;
        store.order.push_back(key);
        store.entries.insert(key, Entry { answer, stored: now });
    }

    /// Entries held (for tests and the admin API).
    pub fn len(&self) -> usize {
        self.store().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn answer(body: &'static str) -> Cached {
        Cached {
            body: Bytes::from(body),
            content_type: None,
            provider: "p".into(),
            model: "m".into(),
        }
    }

    #[test]
    fn keys_ignore_key_order_but_not_content_or_consumer() {
        let a = json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "x"}]});
        let b = json!({"messages": [{"content": "x", "role": "user"}], "temperature": 0, "model": "m"});
        let c = json!({"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "y"}]});
        let (a, b, c) = (
            a.as_object().unwrap(),
            b.as_object().unwrap(),
            c.as_object().unwrap(),
        );
        assert_eq!(key(None, a), key(None, b));
        assert_ne!(key(None, a), key(None, c));
        assert_ne!(key(Some("team-a"), a), key(Some("team-b"), a));
        assert!(wanted(a, None));
        let warm = json!({"temperature": 0.7});
        assert!(!wanted(warm.as_object().unwrap(), None));
        assert!(wanted(
            warm.as_object().unwrap(),
            Some(&http::HeaderValue::from_static("use"))
        ));
        assert!(!wanted(a, Some(&http::HeaderValue::from_static("skip"))));
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_memory_stays_bounded() {
        let cache = AnswerCache::new(Duration::from_secs(60), 2, 10);
        let now = Instant::now();
        cache.put([1; 32], answer("aaaa"), now);
        cache.put([2; 32], answer("bbbb"), now);
        cache.put([3; 32], answer("cccc"), now);
        assert!(cache.get(&[1; 32], now).is_none(), "the oldest went first");
        assert_eq!(cache.len(), 2);
        cache.put([4; 32], answer("dddddddd"), now);
        assert_eq!(cache.len(), 1, "the byte bound evicts too");
        cache.put([5; 32], answer("far too large for it"), now);
        assert!(cache.get(&[5; 32], now).is_none());
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(cache.get(&[4; 32], Instant::now()).is_none(), "expired");
    }
}
