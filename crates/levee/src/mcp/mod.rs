//! The MCP gateway: an `mcp: true` route is one Model Context Protocol endpoint (Streamable
//! HTTP) that federates the tools, resources and prompts of the MCP servers it names.
//!
//! Levee is an MCP server to its clients and an MCP client to each server behind it
//! ([`hub`]: remote servers over Streamable HTTP, local ones started as processes over
//! stdio). A client's `initialize` opens a session of Levee's own (`Mcp-Session-Id`); its
//! `tools/list`, `prompts/list` and `resources/list` ask every server the route names and
//! the caller may use, and merge the answers under prefixed names (`server__tool`,
//! resource URIs as `server+uri`) so they never collide; `tools/call`, `prompts/get` and
//! `resources/read` go to the one server the name points at. A server that is down (its
//! breaker open, its process restarting, its calls failing) drops out of the lists, and
//! the others keep working: the endpoint never fails as a whole.
//!
//! This is a backend of the one pipeline, like the AI gateway: auth, rate limits, shedding
//! and the call log are the pipeline's. Each `tools/call` is one request record (the
//! server as its upstream, the tool as its target, the outcome as its error) and is
//! counted in `levee_mcp_tool_calls_total`. Access rules (`mcp.access`) filter the lists
//! and refuse calls per consumer, key and team ([`federate`]).
//!
//! Answers are always one JSON body: what servers send besides the answer (progress,
//! logging, their own requests for sampling or roots) is not passed on.

mod federate;
pub mod http;
pub mod hub;
mod sse;
mod stdio;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::http::{Method, Response, StatusCode};
use serde_json::{json, Value};

use crate::body::ResponseBody;
use crate::client_body::ClientBody;
use crate::config::mcp::McpAccessSpec;
use crate::observability::metrics::MetricsShard;
use crate::record::RequestRecord;
pub use hub::Hub;

/// The protocol version Levee asks servers for, and the newest it serves.
pub const PROTOCOL_VERSION: &str = "2025-06-18";
/// The versions a client may ask for (Levee's answers are the same in each).
const VERSIONS: &[&str] = &["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25"];

/// What Levee tells servers it is.
fn client_info() -> Value {
    json!({ "name": "levee", "version": env!("CARGO_PKG_VERSION") })
}

/// Why a call to a server did not get its answer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum McpError {
    #[error("the server is unavailable: {0}")]
    Unavailable(String),
    #[error("the server did not answer in time")]
    Timeout,
    #[error("the server's circuit breaker is open")]
    CircuitOpen,
    #[error("the server's rate limit is reached")]
    RateLimited,
    #[error("the server's answer could not be read: {0}")]
    Protocol(String),
    #[error("the server no longer knows the session")]
    SessionExpired,
    #[error("no such server")]
    NoServer,
    /// The server answered with a JSON-RPC error: passed on as it is.
    #[error("{}", .0.get("message").and_then(Value::as_str).unwrap_or("the server refused"))]
    Remote(Value),
}

impl McpError {
    /// The outcome label of metrics and the call log.
    pub fn outcome(&self) -> &'static str {
        match self {
            McpError::Unavailable(_) | McpError::SessionExpired | McpError::NoServer => "unavailable",
            McpError::Timeout => "timeout",
            McpError::CircuitOpen => "circuit_open",
            McpError::RateLimited => "rate_limited",
            McpError::Protocol(_) => "bad_answer",
            McpError::Remote(_) => "error",
        }
    }
}

/// A JSON-RPC answer's result, or its error.
fn result_of(message: &Value) -> Result<Value, McpError> {
    match (message.get("result"), message.get("error")) {
        (Some(result), _) => Ok(result.clone()),
        (None, Some(error)) => Err(McpError::Remote(error.clone())),
        (None, None) => Err(McpError::Protocol(
            "an answer with neither result nor error".into(),
        )),
    }
}

/// Who is calling, as access rules name callers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    pub consumer: Option<&'a str>,
    pub key: Option<&'a str>,
    pub team: Option<&'a str>,
}

/// What an MCP route needs for one request; the pipeline hands it over.
pub struct Backend<'a> {
    pub hub: &'a Arc<Hub>,
    /// The servers the route federates.
    pub servers: &'a [Arc<str>],
    pub access: &'a [McpAccessSpec],
    pub caller: Caller<'a>,
    pub metrics: &'a MetricsShard,
    pub max_body_bytes: u64,
    pub read_timeout: Duration,
}

/// Serves one HTTP request to the MCP endpoint.
pub async fn serve(
    b: &Backend<'_>,
    parts: ::http::request::Parts,
    body: ClientBody,
    record: &mut RequestRecord,
) -> Response<ResponseBody> {
    let session = parts
        .headers
        .get(&http::MCP_SESSION_ID)
        .and_then(|v| v.to_str().ok())
        .map(|s| -> Arc<str> { Arc::from(s) });
    match parts.method {
        Method::POST => {}
        Method::DELETE => {
            let closed = session.is_some_and(|s| b.hub.close_session(&s));
            return plain(if closed {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            });
        }
        // Levee sends nothing unasked, so there is no stream to open.
        _ => {
            let mut response = plain(StatusCode::METHOD_NOT_ALLOWED);
            response.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("POST, DELETE"),
            );
            return response;
        }
    }
    let limit = usize::try_from(b.max_body_bytes).unwrap_or(usize::MAX);
    let read = tokio::time::timeout(b.read_timeout, Limited::new(body, limit).collect()).await;
    let Ok(Ok(bytes)) = read.map(|r| r.map(|c| c.to_bytes())) else {
        return rpc_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            -32700,
            "The request body could not be read.",
        );
    };
    record.bytes_in = Some(Arc::new(std::sync::atomic::AtomicU64::new(bytes.len() as u64)));
    let message: Value = match serde_json::from_slice(&bytes) {
        Ok(Value::Object(message)) => Value::Object(message),
        Ok(Value::Array(_)) => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32600,
                "Batches are not supported.",
            )
        }
        _ => {
            return rpc_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                -32700,
                "Parse error: the body is not a JSON-RPC message.",
            )
        }
    };
    let (Some(method), Some(id)) = (message.get("method").and_then(Value::as_str), message.get("id")) else {
        // A notification, or an answer to a request Levee never sends: accepted.
        return plain(StatusCode::ACCEPTED);
    };
    let id = id.clone();
    if method == "initialize" {
        return initialize(b, id, message.get("params"));
    }
    // A client that never initialized shares the session of all such clients.
    let session = match session {
        Some(s) if !b.hub.knows_session(&s) => {
            return rpc_error(
                StatusCode::NOT_FOUND,
                id,
                -32001,
                "Unknown or expired session: initialize again.",
            )
        }
        Some(s) => s,
        None => Arc::from(""),
    };
    let params = message.get("params").cloned().unwrap_or(json!({}));
    let call = federate::Call {
        backend: b,
        session,
        record,
    };
    match call.method(method, params).await {
        Ok(result) => json_response(
            StatusCode::OK,
            &json!({ "jsonrpc": "2.0", "id": id, "result": result }),
        ),
        Err((code, message)) => rpc_error(StatusCode::OK, id, code, &message),
    }
}

/// `initialize`: a new session of Levee's, and what Levee serves.
fn initialize(b: &Backend<'_>, id: Value, params: Option<&Value>) -> Response<ResponseBody> {
    let asked = params
        .and_then(|p| p.get("protocolVersion"))
        .and_then(Value::as_str);
    let version = asked.filter(|v| VERSIONS.contains(v)).unwrap_or(PROTOCOL_VERSION);
    let mut random = [0u8; 16];
    let session: Arc<str> = match getrandom::fill(&mut random) {
        Ok(()) => crate::hex::encode(&random).into(),
        Err(_) => {
            return rpc_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                id,
                -32603,
                "No randomness for a session id.",
            )
        }
    };
    b.hub.open_session(session.clone());
    let result = json!({
        "protocolVersion": version,
        "capabilities": { "tools": { "listChanged": false }, "prompts": { "listChanged": false }, "resources": {} },
        "serverInfo": { "name": "levee", "version": env!("CARGO_PKG_VERSION") },
        "instructions": "Tools, prompts and resources of several MCP servers, named `server__name`.",
    });
    let mut response = json_response(
        StatusCode::OK,
        &json!({ "jsonrpc": "2.0", "id": id, "result": result }),
    );
    if let Ok(value) = hyper::header::HeaderValue::from_str(&session) {
        response.headers_mut().insert(http::MCP_SESSION_ID.clone(), value);
    }
    response
}

/// The answer while the MCP gateway could not start (its thread did not).
pub fn not_running() -> Response<ResponseBody> {
    rpc_error(
        StatusCode::SERVICE_UNAVAILABLE,
        Value::Null,
        -32000,
        "The MCP gateway is not running.",
    )
}

fn plain(status: StatusCode) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(Bytes::new()));
    *response.status_mut() = status;
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response<ResponseBody> {
    let mut response = Response::new(ResponseBody::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    response
}

fn rpc_error(status: StatusCode, id: Value, code: i64, message: &str) -> Response<ResponseBody> {
    json_response(
        status,
        &json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }),
    )
}
