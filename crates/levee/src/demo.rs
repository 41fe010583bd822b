//! `levee demo`: the gateway in front of two built-in upstreams on loopback, one healthy and
//! one flaky, so anyone can see routing, errors, the access log and metrics in a minute with
//! no config file and no network.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::server::{AccessLogSink, RunningGateway, StartError};

/// Share of the flaky upstream's requests that fail with 503.
pub const FLAKY_FAILURE_RATE: f64 = 0.3;
/// Share of the flaky upstream's requests that are too slow (past the route's 1s timeout).
pub const FLAKY_SLOW_RATE: f64 = 0.1;

/// A running demo: upstreams plus gateway.
pub struct Demo {
    pub gateway: RunningGateway,
    pub healthy: SocketAddr,
    pub flaky: SocketAddr,
    upstreams: Option<std::thread::JoinHandle<()>>,
    stop_upstreams: Option<tokio::sync::oneshot::Sender<()>>,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("demo upstreams: {0}")]
    Upstreams(std::io::Error),
    #[error("demo config is invalid (a bug): {0}")]
    Config(crate::config::ConfigErrors),
    #[error(transparent)]
    Start(#[from] StartError),
}

/// The demo's config, with the upstream ports filled in.
pub fn demo_config(gateway_port: u16, admin_port: u16, healthy: SocketAddr, flaky: SocketAddr) -> String {
    format!(
        r#"# The config `levee demo` runs.
listeners:
  - name: public
    bind: 127.0.0.1:{gateway_port}
admin:
  bind: 127.0.0.1:{admin_port}
shutdown_grace: 5s
upstreams:
  healthy:
    targets: ["{healthy}"]
  flaky:
    targets: ["{flaky}"]
    timeouts: {{ connect: 500ms, request: 1s }}
routes:
  - name: users
    match: {{ path: "/users/{{id}}", methods: [GET] }}
    upstream: healthy
  - name: healthy
    match: {{ path_prefix: /healthy }}
    upstream: healthy
    strip_prefix: true
    response_headers: {{ set: {{ x-levee-demo: healthy }} }}
  - name: flaky
    match: {{ path_prefix: /flaky }}
    upstream: flaky
    strip_prefix: true
  - name: flaky-retried
    match: {{ path_prefix: /retried }}
    upstream: flaky
    strip_prefix: true
    retry: {{ attempts: 3, on: [503, timeout], per_try_timeout: 500ms, backoff: 10ms }}
    fallback: {{ status: 200, body: '{{"upstream":"fallback","note":"served by the gateway while the upstream fails"}}' }}
slos:
  - name: flaky-availability
    route: flaky
    objective: 99
    window: 7d
    sli: availability
  - name: retried-availability
    route: flaky-retried
    objective: 99
    window: 7d
    sli: availability
"#
    )
}

impl Demo {
    /// Starts the demo upstreams and the gateway on `gateway_port`/`admin_port`, falling back
    /// to free ports when those are taken.
    pub fn start(gateway_port: u16, admin_port: u16) -> Result<Demo, DemoError> {
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let upstreams = std::thread::Builder::new()
            .name("levee-demo-upstreams".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = addr_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let healthy = TcpListener::bind("127.0.0.1:0").await;
                    let flaky = TcpListener::bind("127.0.0.1:0").await;
                    let (healthy, flaky) = match (healthy, flaky) {
                        (Ok(h), Ok(f)) => (h, f),
                        (Err(e), _) | (_, Err(e)) => {
                            let _ = addr_tx.send(Err(e));
                            return;
                        }
                    };
                    let addrs = healthy.local_addr().and_then(|h| Ok((h, flaky.local_addr()?)));
                    let _ = addr_tx.send(addrs);
                    tokio::select! {
                        _ = serve(healthy, false) => {}
                        _ = serve(flaky, true) => {}
                        _ = stop_rx => {}
                    }
                });
            })
            .map_err(DemoError::Upstreams)?;
        let (healthy, flaky) = addr_rx
            .recv()
            .map_err(|_| DemoError::Upstreams(std::io::Error::other("upstream thread ended")))?
            .map_err(DemoError::Upstreams)?;

        let load = |g: u16, a: u16| {
            crate::config::load_str(&demo_config(g, a, healthy, flaky), "demo.yaml")
                .map_err(DemoError::Config)
        };
        let gateway = match RunningGateway::start(load(gateway_port, admin_port)?, AccessLogSink::Stdout) {
            Ok(gateway) => gateway,
            Err(StartError::Bind { .. }) => RunningGateway::start(load(0, 0)?, AccessLogSink::Stdout)?,
            Err(other) => return Err(other.into()),
        };
        Ok(Demo {
            gateway,
            healthy,
            flaky,
            upstreams: Some(upstreams),
            stop_upstreams: Some(stop_tx),
        })
    }

    /// What to print for the person who ran `levee demo`; `levee` is how their shell runs
    /// this binary (its path when it is not on `PATH`), so the commands work as printed.
    pub fn instructions(&self, levee: &str) -> String {
        let gw = self
            .gateway
            .listener_addr("public")
            .map(|a| a.to_string())
            .unwrap_or_default();
        let admin = self
            .gateway
            .admin_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        format!(
            "Levee demo is running.\n\
             \n  gateway:  http://{gw}\n  admin:    http://{admin}\n\
             \nTry:\n\
             \x20 curl -i http://{gw}/healthy/hello        # proxied to the healthy upstream\n\
             \x20 curl -i http://{gw}/users/42             # a {{param}} route template\n\
             \x20 curl -i http://{gw}/flaky/hello          # ~30% 503 from the upstream, ~10% 504 (too slow)\n\
             \x20 curl -i http://{gw}/retried/hello        # the same upstream with retries and a fallback\n\
             \x20 curl http://{admin}/api/v1/upstreams     # targets: health, breaker state, load\n\
             \x20 {levee} slo status --admin http://{admin}  # SLOs: budget left, burn rates, alerts\n\
             \x20 curl -i http://{gw}/nowhere              # 404 no_route, as JSON\n\
             \x20 curl http://{admin}/metrics              # Prometheus metrics\n\
             \x20 curl http://{admin}/readyz               # readiness\n\
             \nAccess log lines follow on stdout. Press Ctrl-C to stop.\n"
        )
    }

    /// Drains the gateway, then stops the upstreams.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        self.gateway.begin_shutdown();
        if let Some(stop) = self.stop_upstreams.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.upstreams.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

async fn serve(listener: TcpListener, flaky: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let service = service_fn(move |request: Request<Incoming>| async move {
            Ok::<_, Infallible>(answer(&request, flaky).await)
        });
        tokio::spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn answer(request: &Request<Incoming>, flaky: bool) -> Response<Full<Bytes>> {
    let name = if flaky { "flaky" } else { "healthy" };
    let roll = fastrand::f64();
    let (status, note) = if flaky && roll < FLAKY_FAILURE_RATE {
        (StatusCode::SERVICE_UNAVAILABLE, "failed on purpose")
    } else if flaky && roll < FLAKY_FAILURE_RATE + FLAKY_SLOW_RATE {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        (StatusCode::OK, "slow on purpose")
    } else {
        (StatusCode::OK, "ok")
    };
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = serde_json::json!({
        "upstream": name,
        "path": request.uri().path(),
        "note": note,
        "request_id": request_id,
    });
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
