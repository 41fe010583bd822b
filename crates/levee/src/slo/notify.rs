//! Delivery of alert notifications to webhooks and Alertmanager.
//!
//! Each receiver has its own bounded queue and task: a receiver that is down delays only
//! its own notifications, retried with exponential backoff and full jitter, and the
//! evaluation loop (let alone a request) never waits for one. A full queue drops the
//! notification; every outcome is counted in `levee_alert_notifications_total`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{Method, Request};
use http_body_util::Full;
use tokio::sync::mpsc;

use super::alerts::{alertmanager_body, webhook_body, Transition};
use super::SloEngine;
use crate::config::spec::AlertingSpec;
use crate::outbound::OutboundClient;

/// Notifications waiting per receiver at most.
const QUEUE: usize = 256;
/// Tries per notification before it is given up.
const MAX_ATTEMPTS: u32 = 8;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// Firing alerts are re-sent to Alertmanager this often, and end this long after the last
/// send unless sent again (Prometheus uses 1m and 4 x 1m).
pub const RESEND_EVERY: Duration = Duration::from_secs(60);
const RESEND_ENDS_AFTER: Duration = Duration::from_secs(240);

/// Notification outcomes per (receiver URL, result).
#[derive(Debug, Default)]
pub struct Counters(Mutex<BTreeMap<(String, &'static str), u64>>);

impl Counters {
    fn add(&self, receiver: &str, result: &'static str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((receiver.to_owned(), result)).or_default() += 1;
    }

    /// How many notifications to `receiver` ended with `result`.
    pub fn get(&self, receiver: &str, result: &'static str) -> u64 {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(receiver.to_owned(), result)).copied().unwrap_or(0)
    }

    pub(super) fn render(&self, out: &mut String) {
        use crate::observability::metrics::{escape, family};
        use std::fmt::Write as _;
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.is_empty() {
            return;
        }
        family(
            out,
            "levee_alert_notifications_total",
            "counter",
            "Alert notifications by receiver and result: sent, retried (an attempt failed), failed (given up), dropped (queue full).",
        );
        for ((receiver, result), count) in map.iter() {
            let _ = writeln!(
                out,
                "levee_alert_notifications_total{{receiver=\"{}\",result=\"{result}\"}} {count}",
                escape(receiver)
            );
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Webhook,
    Alertmanager,
}

#[derive(Debug)]
struct Receiver {
    url: http::Uri,
    kind: Kind,
    tx: mpsc::Sender<Bytes>,
    task: tokio::task::AbortHandle,
}

/// The receivers of one `alerting` config, each with its delivery task. Must live on a
/// tokio runtime (the tasks run there); dropping it stops them.
#[derive(Debug)]
pub struct Outbox {
    spec: AlertingSpec,
    receivers: Vec<Receiver>,
    external_url: String,
    engine: Arc<SloEngine>,
}

impl Drop for Outbox {
    fn drop(&mut self) {
        for receiver in &self.receivers {
            receiver.task.abort();
        }
    }
}

impl Outbox {
    /// Starts a delivery task per receiver of `spec`.
    pub fn start(spec: &AlertingSpec, external_url: String, engine: Arc<SloEngine>) -> Outbox {
        let client: OutboundClient<Full<Bytes>> = crate::outbound::client(ATTEMPT_TIMEOUT);
        let targets = spec
            .alertmanager
            .iter()
            .map(|u| (u, Kind::Alertmanager))
            .chain(spec.webhooks.iter().map(|u| (u, Kind::Webhook)));
        let receivers = targets
            .map(|(url, kind)| {
                let (tx, rx) = mpsc::channel(QUEUE);
                let task = tokio::spawn(deliver(url.clone(), rx, client.clone(), engine.clone()));
                Receiver {
                    url: url.clone(),
                    kind,
                    tx,
                    task: task.abort_handle(),
                }
            })
            .collect();
        Outbox {
            spec: spec.clone(),
            receivers,
            external_url,
            engine,
        }
    }

    /// The config these receivers come from.
    pub fn spec(&self) -> &AlertingSpec {
        &self.spec
    }

    /// Queues alerts that started or stopped firing for every receiver.
    pub fn notify(&self, transitions: &[Transition], now_ms: u64) {
        if transitions.is_empty() {
            return;
        }
        for receiver in &self.receivers {
            match receiver.kind {
                Kind::Webhook => {
                    for t in transitions {
                        self.queue(receiver, &webhook_body(t, &self.external_url));
                    }
                }
                Kind::Alertmanager => {
                    let body = alertmanager_body(transitions, now_ms, millis(RESEND_ENDS_AFTER));
                    self.queue(receiver, &body);
                }
            }
        }
    }

    /// Sends alerts that still fire to Alertmanager again, so it does not resolve them.
    pub fn resend(&self, firing: &[Transition], now_ms: u64) {
        if firing.is_empty() {
            return;
        }
        for receiver in self.receivers.iter().filter(|r| r.kind == Kind::Alertmanager) {
            self.queue(
                receiver,
                &alertmanager_body(firing, now_ms, millis(RESEND_ENDS_AFTER)),
            );
        }
    }

    fn queue(&self, receiver: &Receiver, body: &serde_json::Value) {
        let bytes = Bytes::from(body.to_string());
        if receiver.tx.try_send(bytes).is_err() {
            self.engine
                .notifications
                .add(&receiver.url.to_string(), "dropped");
            tracing::warn!(receiver = %receiver.url, "alert notification queue full; notification dropped");
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Sends each queued body in turn, retrying failures with backoff.
async fn deliver(
    url: http::Uri,
    mut rx: mpsc::Receiver<Bytes>,
    client: OutboundClient<Full<Bytes>>,
    engine: Arc<SloEngine>,
) {
    let label = url.to_string();
    while let Some(body) = rx.recv().await {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = tokio::time::timeout(ATTEMPT_TIMEOUT, post(&client, &url, body.clone())).await;
            let error = match result {
                Ok(Ok(())) => {
                    engine.notifications.add(&label, "sent");
                    break;
                }
                Ok(Err(error)) => error,
                Err(_) => "timed out".to_owned(),
            };
            if attempt >= MAX_ATTEMPTS {
                engine.notifications.add(&label, "failed");
                tracing::warn!(receiver = %url, %error, attempts = attempt, "alert notification given up");
                break;
            }
            engine.notifications.add(&label, "retried");
            if attempt == 1 {
                tracing::warn!(receiver = %url, %error, "alert notification failed; retrying with backoff");
            }
            let wait = levee_resilience::full_jitter(attempt, BACKOFF_BASE, BACKOFF_CAP, fastrand::f64());
            tokio::time::sleep(wait.max(Duration::from_millis(50))).await;
        }
    }
}

async fn post(client: &OutboundClient<Full<Bytes>>, url: &http::Uri, body: Bytes) -> Result<(), String> {
    let request = Request::builder()
        .method(Method::POST)
        .uri(url.clone())
        .header(CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("levee/", env!("CARGO_PKG_VERSION")),
        )
        .body(Full::new(body))
        .map_err(|e| e.to_string())?;
    let response = client.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    // The answer's body is not needed; dropping it closes or returns the connection.
    drop(response);
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("status {status}"))
    }
}
