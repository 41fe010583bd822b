//! A small client of the admin API for the `levee calls`, `levee top` and management
//! (`levee keys`, `levee teams`, ...) commands.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// GETs `url` (with the admin token when given) and parses the JSON answer.
pub async fn get_json(url: &str, token: Option<&str>) -> Result<serde_json::Value, String> {
    send_json(http::Method::GET, url, token, None).await
}

/// Sends `method` to `url` (with the admin token when given, and `body` as JSON when given)
/// and parses the JSON answer. An answer that is not a success is an error carrying the
/// API's message (`{"error": {"message": ..}}`).
pub async fn send_json(
    method: http::Method,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, String> {
    let uri: http::Uri = url.parse().map_err(|_| format!("invalid URL `{url}`"))?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut request = http::Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let body = match body {
        Some(body) => {
            request = request.header(http::header::CONTENT_TYPE, "application/json");
            Full::new(Bytes::from(body.to_string()))
        }
        None => Full::new(Bytes::new()),
    };
    let request = request.body(body).map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(std::time::Duration::from_secs(10), client.request(request))
        .await
        .map_err(|_| format!("{url} did not answer within 10s"))?
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), 64 * 1024 * 1024)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    let json: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| format!("{url} answered {status} without JSON"))?;
    if !status.is_success() {
        let message = json
            .get("error")
            .and_then(|e| e.get("message"))
            .and_then(|m| m.as_str())
            .unwrap_or("request failed");
        return Err(format!("{url}: {status}: {message}"));
    }
    Ok(json)
}

/// Formats rows as an aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}
