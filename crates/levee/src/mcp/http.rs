//! A remote MCP server over Streamable HTTP: each JSON-RPC message is POSTed to the
//! server's endpoint, whose answer is a JSON body or a server-sent event stream that carries
//! it (Levee reads the stream until the answer to its request arrives, skipping the
//! server's notifications). The server's `Mcp-Session-Id` is kept per client session, and a
//! session the server has forgotten (404) is started again once.

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde_json::{json, Value};

use super::{client_info, McpError, PROTOCOL_VERSION};
use crate::llm::sse::SseParser;

pub static MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
pub static MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");

/// A whole answer is read up to this size.
const MAX_ANSWER: usize = 32 << 20;

pub type Client = crate::outbound::OutboundClient<Full<Bytes>>;

/// Where a remote server is and what it is sent with each call.
pub struct Remote {
    pub url: http::Uri,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// A session with a remote server: its id (if it gave one) and the protocol version agreed.
#[derive(Debug, Clone, Default)]
pub struct Session {
    pub id: Option<String>,
    pub version: String,
}

impl Remote {
    /// Starts a session: `initialize`, then `notifications/initialized`.
    pub async fn open(&self, client: &Client) -> Result<Session, McpError> {
        let request = json!({
            "jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": { "protocolVersion": PROTOCOL_VERSION, "capabilities": {}, "clientInfo": client_info() },
        });
        let (answer, id) = self.post(client, &Session::default(), &request).await?;
        let result =
            super::result_of(&answer.ok_or_else(|| McpError::Protocol("no answer to initialize".into()))?)?;
        let session = Session {
            id,
            version: result
                .get("protocolVersion")
                .and_then(Value::as_str)
                .unwrap_or(PROTOCOL_VERSION)
                .to_owned(),
        };
        let initialized = json!({ "jsonrpc": "2.0", "method": "notifications/initialized" });
        self.post(client, &session, &initialized).await?;
        Ok(session)
    }

    /// One request in `session`: its result, or the error.
    pub async fn request(
        &self,
        client: &Client,
        session: &Session,
        id: u64,
        method: &str,
        params: Value,
    ) -> Result<Value, McpError> {
        let request = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        let (answer, _) = self.post(client, session, &request).await?;
        super::result_of(&answer.ok_or_else(|| McpError::Protocol("the server sent no answer".into()))?)
    }

    /// Ends `session` on the server (it may not support it: that is fine).
    pub async fn close(&self, client: &Client, session: &Session) {
        let Some(id) = &session.id else { return };
        let mut request = http::Request::delete(self.url.clone());
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Ok(request) = request.header(&MCP_SESSION_ID, id).body(Full::new(Bytes::new())) {
            let _ = client.request(request).await;
        }
    }

    /// POSTs `message`; the answer to it (if it is a request) and the session id the server
    /// gave, if any.
    async fn post(
        &self,
        client: &Client,
        session: &Session,
        message: &Value,
    ) -> Result<(Option<Value>, Option<String>), McpError> {
        let mut request = http::Request::post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream");
        for (name, value) in &self.headers {
            request = request.header(name, value);
        }
        if let Some(id) = &session.id {
            request = request.header(&MCP_SESSION_ID, id);
        }
        if !session.version.is_empty() {
            request = request.header(&MCP_PROTOCOL_VERSION, &session.version);
        }
        let request = request
            .body(Full::new(Bytes::from(message.to_string())))
            .map_err(|e| McpError::Protocol(e.to_string()))?;
        let response = client
            .request(request)
            .await
            .map_err(|e| McpError::Unavailable(format!("the server could not be reached: {e}")))?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND && session.id.is_some() {
            return Err(McpError::SessionExpired);
        }
        let session_id = response
            .headers()
            .get(&MCP_SESSION_ID)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if status == StatusCode::ACCEPTED || message.get("id").is_none() {
            return Ok((None, session_id));
        }
        if !status.is_success() {
            return Err(McpError::Unavailable(format!("the server answered {status}")));
        }
        let is_stream = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.starts_with("text/event-stream"));
        let body = response.into_body();
        let answer = match is_stream {
            true => answer_in_stream(body, message.get("id")).await?,
            false => {
                let bytes = Limited::new(body, MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| match e.downcast_ref::<LengthLimitError>() {
                        // Too large is what the server said, not a connection that failed.
                        Some(_) => McpError::Protocol(format!("an answer over {MAX_ANSWER} bytes")),
                        None => McpError::Unavailable(format!("the answer broke off: {e}")),
                    })?
                    .to_bytes();
                serde_json::from_slice(&bytes)
                    .map_err(|e| McpError::Protocol(format!("unreadable answer: {e}")))?
            }
        };
        Ok((Some(answer), session_id))
    }
}

/// Reads a server-sent event stream until the answer to request `id`.
async fn answer_in_stream(mut body: hyper::body::Incoming, id: Option<&Value>) -> Result<Value, McpError> {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| McpError::Unavailable(format!("the stream broke off: {e}")))?;
        let Some(data) = frame.data_ref() else { continue };
        parser
            .push(data, &mut events)
            .map_err(|_| McpError::Protocol("an event too large".into()))?;
        for event in events.drain(..) {
            let Ok(message) = serde_json::from_str::<Value>(&event.data) else {
                continue;
            };
            if message.get("id") == id && message.get("method").is_none() {
                return Ok(message);
            }
        }
    }
    Err(McpError::Unavailable(
        "the stream ended without the answer".into(),
    ))
}
