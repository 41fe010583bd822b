//! Delivery of alert notifications to webhooks and Alertmanager.
//!
//! Each receiver has its own bounded queue and task: a receiver that is down delays only
//! its own notifications, retried with exponential backoff and full jitter, and the
//! evaluation loop (let alone a request) never waits for one. A full queue drops the
//! notification; every outcome is counted in `levee_alert_notifications_total`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
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

/// Notification outcomes per (receiver, result). Receivers are named `alertmanager` and
/// `webhook-N` (by position in the config), never by URL: webhook URLs often carry a token.
#[derive(Debug, Default)]
pub struct Counters(Mutex<BTreeMap<(String, &'static str), u64>>);

/// Every result a notification can end with.
const RESULTS: [&str; 4] = ["sent", "retried", "failed", "dropped"];

impl Counters {
    /// Shows every result of `receiver` at zero until it happens (so rates start from 0).
    fn register(&self, receiver: &str) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for result in RESULTS {
            map.entry((receiver.to_owned(), result)).or_default();
        }
    }

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
    /// `alertmanager` or `webhook-N`, for metrics and logs.
    name: String,
    kind: Kind,
    tx: mpsc::Sender<Bytes>,
    /// Notifications queued or being delivered.
    pending: Arc<AtomicUsize>,
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
        let alertmanager = spec
            .alertmanager
            .iter()
            .map(|u| (u, Kind::Alertmanager, "alertmanager".to_owned()));
        let webhooks = spec
            .webhooks
            .iter()
            .enumerate()
            .map(|(i, u)| (u, Kind::Webhook, format!("webhook-{i}")));
        let receivers = alertmanager
            .chain(webhooks)
            .map(|(url, kind, name)| {
                engine.notifications.register(&name);
                let (tx, rx) = mpsc::channel(QUEUE);
                let pending = Arc::new(AtomicUsize::new(0));
                let delivery = Delivery {
                    url: url.clone(),
                    name: name.clone(),
                    client: client.clone(),
                    engine: engine.clone(),
                    pending: pending.clone(),
                };
                let task = tokio::spawn(delivery.run(rx));
                Receiver {
                    name,
                    kind,
                    tx,
                    pending,
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
        receiver.pending.fetch_add(1, Ordering::SeqCst);
        if receiver.tx.try_send(bytes).is_err() {
            receiver.pending.fetch_sub(1, Ordering::SeqCst);
            self.engine.notifications.add(&receiver.name, "dropped");
            tracing::warn!(receiver = %receiver.name, "alert notification queue full; notification dropped");
        }
    }

    /// Waits until every queued notification was delivered or given up, or `limit` passed
    /// (the gateway stops, or the receivers change); what is left is counted as dropped.
    pub async fn drain(self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self
            .receivers
            .iter()
            .any(|r| r.pending.load(Ordering::SeqCst) > 0)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for receiver in &self.receivers {
            for _ in 0..receiver.pending.load(Ordering::SeqCst) {
                self.engine.notifications.add(&receiver.name, "dropped");
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// One receiver's delivery task.
struct Delivery {
    url: http::Uri,
    name: String,
    client: OutboundClient<Full<Bytes>>,
    engine: Arc<SloEngine>,
    pending: Arc<AtomicUsize>,
}

impl Delivery {
    /// Sends each queued body in turn, retrying failures with backoff.
    async fn run(self, mut rx: mpsc::Receiver<Bytes>) {
        while let Some(body) = rx.recv().await {
            let result = self.deliver(body).await;
            self.engine.notifications.add(&self.name, result);
            self.pending.fetch_sub(1, Ordering::SeqCst);
        }
    }

    async fn deliver(&self, body: Bytes) -> &'static str {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result =
                tokio::time::timeout(ATTEMPT_TIMEOUT, post(&self.client, &self.url, body.clone())).await;
            let error = match result {
                Ok(Ok(())) => return "sent",
                Ok(Err(error)) => error,
                Err(_) => "timed out".to_owned(),
            };
            if attempt >= MAX_ATTEMPTS {
                tracing::warn!(receiver = %self.name, %error, attempts = attempt, "alert notification given up");
                return "failed";
            }
            self.engine.notifications.add(&self.name, "retried");
            if attempt == 1 {
                tracing::warn!(receiver = %self.name, %error, "alert notification failed; retrying with backoff");
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
