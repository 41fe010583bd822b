//! A remote MCP server over the older HTTP+SSE transport (protocol 2024-11-05): a session
//! is one server-sent event stream, opened with a GET; its first event (`endpoint`) names
//! where messages are POSTed, and the answers come back on the stream as `message`
//! events, matched to their requests by id.
//!
//! One task per session reads the stream (on the MCP thread) and hands each answer to the
//! call waiting for it; when the stream ends, the waiting calls fail and the session is
//! dead, so the next call opens a new one. Dropping the session stops its task, which
//! closes the stream. The server's own requests on the stream are not answered (there is
//! no client behind Levee to ask), and its notifications are skipped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::http::Client;
use super::{client_info, McpError};
use crate::llm::sse::SseParser;

/// Calls waiting for an answer on one session at most.
const MAX_PENDING: usize = 4096;
/// The protocol revision of this transport.
const VERSION: &str = "2024-11-05";

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// Where a server of the older transport is.
pub struct Legacy {
    pub url: Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// One session: the stream's reader and where messages go.
pub struct LegacySession {
    post: Uri,
    pending: Pending,
    alive: Arc<AtomicBool>,
    reader: tokio::task::AbortHandle,
}

impl Drop for LegacySession {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl Legacy {
    /// Opens the stream, learns the message endpoint, and initializes the session.
    pub async fn open(&self, client: &Client, id: u64) -> Result<LegacySession, McpError> {
        let mut request = http::Request::get(self.url.clone()).header(ACCEPT, "text/event-stream");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::new()))
            .map_err(|e| McpError::Protocol(e.to_string()))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| McpError::Unavailable(format!("the server could not be reached: {e}")))?;
        if !response.status().is_success() {
            return Err(McpError::Unavailable(format!(
                "the server answered {}",
                response.status()
            )));
        }
        let (endpoint_tx, endpoint_rx) = oneshot::channel();
        let pending: Pending = Arc::default();
        let alive = Arc::new(AtomicBool::new(true));
        let reader = tokio::spawn(read(
            response.into_body(),
            endpoint_tx,
            pending.clone(),
            alive.clone(),
        ));
        let endpoint = tokio::time::timeout(Duration::from_secs(10), endpoint_rx)
            .await
            .map_err(|_| McpError::Protocol("no `endpoint` event within 10s".into()))?
            .map_err(|_| {
                McpError::Unavailable("the event stream ended before its `endpoint` event".into())
            })?;
        let session = LegacySession {
            post: resolve(&self.url, &endpoint)?,
            pending,
            alive,
            reader: reader.abort_handle(),
        };
        let params = json!({ "protocolVersion": VERSION, "capabilities": {}, "clientInfo": client_info() });
        self.request(client, &session, id, "initialize", params).await?;
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        self.post(client, &session, &initialized).await?;
        Ok(session)
    }

    /// One request in `session`; a dead session is `SessionExpired` (the caller opens a new one).
    pub async fn request(
        &self,
        client: &Client,
        session: &LegacySession,
        id: u64,
        method: &str,
        params: Value,
    ) -> Result<Value, McpError> {
        if !session.alive.load(Ordering::Relaxed) {
            return Err(McpError::SessionExpired);
        }
        let (reply, answer) = oneshot::channel();
        {
            let mut pending = session.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.retain(|_, waiting| !waiting.is_closed());
            if pending.len() >= MAX_PENDING {
                return Err(McpError::Unavailable("too many calls waiting".into()));
            }
            pending.insert(id, reply);
        }
        let message = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        self.post(client, session, &message).await?;
        let answer = answer
            .await
            .map_err(|_| McpError::Unavailable("the event stream ended before the answer".into()))?;
        super::result_of(&answer)
    }

    async fn post(&self, client: &Client, session: &LegacySession, message: &Value) -> Result<(), McpError> {
        let mut request = http::Request::post(session.post.clone()).header(CONTENT_TYPE, "application/json");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(message.to_string())))
            .map_err(|e| McpError::Protocol(e.to_string()))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| McpError::Unavailable(format!("the server could not be reached: {e}")))?;
        let status = response.status();
        // The body says nothing (the answer comes on the stream); read it to free the connection.
        let _ = response.into_body().collect().await;
        match status {
            s if s.is_success() => Ok(()),
            http::StatusCode::NOT_FOUND => Err(McpError::SessionExpired),
            s => Err(McpError::Unavailable(format!("the server answered {s}"))),
        }
    }
}

/// The session's stream: the endpoint first, then answers to their callers.
async fn read(
    mut body: hyper::body::Incoming,
    endpoint: oneshot::Sender<String>,
    pending: Pending,
    alive: Arc<AtomicBool>,
) {
    let mut endpoint = Some(endpoint);
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Some(data) = frame.data_ref() else { continue };
        if parser.push(data, &mut events).is_err() {
            break;
        }
        for event in events.drain(..) {
            if event.event.as_deref() == Some("endpoint") {
                if let Some(tx) = endpoint.take() {
                    let _ = tx.send(event.data.trim().to_owned());
                }
                continue;
            }
            let Ok(message) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            if message.get("method").is_some() {
                continue;
            }
            let waiting = message
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|id| pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id));
            if let Some(waiting) = waiting {
                let _ = waiting.send(message);
            }
        }
    }
    alive.store(false, Ordering::Relaxed);
    pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
}

/// The message endpoint the server named: absolute, or relative to the stream's URL.
fn resolve(base: &Uri, endpoint: &str) -> Result<Uri, McpError> {
    let bad = || McpError::Protocol(format!("unusable `endpoint`: {endpoint}"));
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        return endpoint.parse().map_err(|_| bad());
    }
    let (scheme, authority) = (
        base.scheme_str().ok_or_else(bad)?,
        base.authority().ok_or_else(bad)?,
    );
    let path = match endpoint.starts_with('/') {
        true => endpoint.to_owned(),
        false => {
            let dir = base.path().rsplit_once('/').map_or("", |(dir, _)| dir);
            format!("{dir}/{endpoint}")
        }
    };
    format!("{scheme}://{authority}{path}").parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn endpoints_resolve_against_the_stream_url() {
        let base: Uri = "http://127.0.0.1:9/mcp/sse".parse().unwrap();
        assert_eq!(
            resolve(&base, "/messages/?session_id=ab").unwrap(),
            "http://127.0.0.1:9/messages/?session_id=ab"
        );
        assert_eq!(
            resolve(&base, "messages?s=1").unwrap(),
            "http://127.0.0.1:9/mcp/messages?s=1"
        );
        assert_eq!(
            resolve(&base, "https://x.example/m").unwrap(),
            "https://x.example/m"
        );
    }
}
