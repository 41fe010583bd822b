//! Stale-if-error: the last good answer to a GET, kept for a bounded time and served when
//! the upstream fails (RFC 5861's `stale-if-error`, decided by the gateway).
//!
//! Serving a slightly old page beats serving an error for most read traffic (catalogues,
//! configuration, public profiles). It is unsafe for personal data, so only requests without
//! `Authorization` or `Cookie` are stored or served, and responses marked `private`/`no-store`
//! or carrying `Set-Cookie` are never stored. Memory is bounded by `max_entries` and
//! `max_body`: bodies are captured while they stream to the client and dropped from the
//! capture as soon as they grow past the cap.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, COOKIE, SET_COOKIE};
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode};
use tokio::time::Instant;

use crate::config::spec::StaleSpec;

#[derive(Debug, Clone)]
pub struct StaleEntry {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    stored: Instant,
}

/// One route's store of last good answers.
#[derive(Debug)]
pub struct StaleCache {
    spec: StaleSpec,
    /// Entries plus their insertion order, for first-in-first-out eviction.
    inner: Mutex<(HashMap<String, StaleEntry>, VecDeque<String>)>,
}

impl StaleCache {
    pub fn new(spec: StaleSpec) -> StaleCache {
        StaleCache {
            spec,
            inner: Mutex::new((HashMap::new(), VecDeque::new())),
        }
    }

    pub fn max_body(&self) -> usize {
        self.spec.max_body
    }

    /// The key for a request when its answer may be stored or served, else `None`.
    pub fn key(parts: &Parts) -> Option<String> {
        if parts.method != Method::GET
            || parts.headers.contains_key(AUTHORIZATION)
            || parts.headers.contains_key(COOKIE)
        {
            return None;
        }
        let host = parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        Some(format!("{host}{path}"))
    }

    /// Whether a response may be stored.
    pub fn storable(status: StatusCode, headers: &HeaderMap) -> bool {
        let private = headers
            .get_all(CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                let v = v.to_ascii_lowercase();
                v.contains("private") || v.contains("no-store")
            });
        status == StatusCode::OK && !private && !headers.contains_key(SET_COOKIE)
    }

    /// A stored answer younger than `max_age`, with its age.
    pub fn get(&self, key: &str, now: Instant) -> Option<(StaleEntry, Duration)> {
        let inner = self.inner.lock().ok()?;
        let entry = inner.0.get(key)?;
        let age = now.saturating_duration_since(entry.stored);
        (age <= self.spec.max_age).then(|| (entry.clone(), age))
    }

    pub fn insert(&self, key: String, status: StatusCode, headers: HeaderMap, body: Bytes, now: Instant) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let (entries, order) = &mut *inner;
        let entry = StaleEntry {
            status,
            headers,
            body,
            stored: now,
        };
        if entries.insert(key.clone(), entry).is_none() {
            order.push_back(key);
            while entries.len() > self.spec.max_entries {
                match order.pop_front() {
                    Some(oldest) => {
                        entries.remove(&oldest);
                    }
                    None => break,
                }
            }
        }
    }
}

/// A response body being captured for the stale cache as it streams.
#[derive(Debug)]
pub struct Capture {
    pub cache: std::sync::Arc<StaleCache>,
    pub key: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    chunks: Vec<Bytes>,
    size: usize,
    overflowed: bool,
}

impl Capture {
    pub fn new(
        cache: std::sync::Arc<StaleCache>,
        key: String,
        status: StatusCode,
        headers: HeaderMap,
    ) -> Capture {
        Capture {
            cache,
            key,
            status,
            headers,
            chunks: Vec::new(),
            size: 0,
            overflowed: false,
        }
    }

    pub fn push(&mut self, chunk: &Bytes) {
        if self.overflowed {
            return;
        }
        self.size += chunk.len();
        if self.size > self.cache.max_body() {
            self.overflowed = true;
            self.chunks = Vec::new();
        } else {
            self.chunks.push(chunk.clone());
        }
    }

    /// Stores the captured answer once the body has been sent in full.
    pub fn complete(self) {
        if self.overflowed {
            return;
        }
        let body: Bytes = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks.into_iter().next().unwrap_or_default(),
            _ => Bytes::from(self.chunks.concat()),
        };
        self.cache
            .insert(self.key, self.status, self.headers, body, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_entries: usize) -> StaleCache {
        StaleCache::new(StaleSpec {
            max_age: Duration::from_secs(60),
            max_entries,
            max_body: 10,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_are_bounded() {
        let c = cache(2);
        for key in ["a", "b", "c"] {
            c.insert(
                key.into(),
                StatusCode::OK,
                HeaderMap::new(),
                Bytes::from(key),
                Instant::now(),
            );
        }
        assert!(c.get("a", Instant::now()).is_none(), "the oldest was evicted");
        assert_eq!(c.get("c", Instant::now()).unwrap().0.body, "c");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(c.get("c", Instant::now()).is_none(), "too old to serve");
    }

    #[test]
    fn private_answers_and_personal_requests_are_not_kept() {
        let mut h = HeaderMap::new();
        assert!(StaleCache::storable(StatusCode::OK, &h));
        assert!(!StaleCache::storable(StatusCode::CREATED, &h));
        h.insert(CACHE_CONTROL, "private, max-age=10".parse().unwrap());
        assert!(!StaleCache::storable(StatusCode::OK, &h));
        let mut h = HeaderMap::new();
        h.insert(SET_COOKIE, "a=b".parse().unwrap());
        assert!(!StaleCache::storable(StatusCode::OK, &h));
        let req = |k: &str| {
            let r = http::Request::get("/x?y=1")
                .header("host", "h")
                .header(k, "v")
                .body(())
                .unwrap();
            StaleCache::key(&r.into_parts().0)
        };
        assert_eq!(req("x-other").as_deref(), Some("h/x?y=1"));
        assert_eq!(req("authorization"), None);
        assert_eq!(req("cookie"), None);
    }

    #[test]
    fn captures_past_max_body_are_dropped() {
        let c = std::sync::Arc::new(cache(10));
        let mut capture = Capture::new(c.clone(), "k".into(), StatusCode::OK, HeaderMap::new());
        capture.push(&Bytes::from("0123456"));
        capture.push(&Bytes::from("789ab"));
        capture.complete();
        assert!(c.get("k", Instant::now()).is_none());
        let mut capture = Capture::new(c.clone(), "k".into(), StatusCode::OK, HeaderMap::new());
        capture.push(&Bytes::from("01234"));
        capture.push(&Bytes::from("56789"));
        capture.complete();
        assert_eq!(c.get("k", Instant::now()).unwrap().0.body, "0123456789");
    }
}
