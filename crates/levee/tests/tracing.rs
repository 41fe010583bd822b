//! OpenTelemetry traces: spans received by an in-process OTLP/HTTP collector on loopback,
//! decoded with the official protobuf types, and checked for parent/child links; sampling;
//! and a collector that is down or silent.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

mod common;

use std::collections::HashMap;

use common::Harness;
use levee_test_support::{eventually, get, refused_addr, silent_upstream, MockUpstream, Reply};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// An OTLP/HTTP collector: accepts every export and keeps the requests.
async fn collector() -> MockUpstream {
    MockUpstream::start(|_| Reply::ok("")).await
}

/// Every span the collector received, with the resource's `service.name` checked.
fn received(collector: &MockUpstream) -> Vec<Span> {
    let mut spans = Vec::new();
    for seen in collector.seen() {
        assert_eq!(seen.uri.path(), "/v1/traces");
        assert_eq!(seen.headers["content-type"], "application/x-protobuf");
        let request = ExportTraceServiceRequest::decode(seen.body.clone()).expect("an OTLP export request");
        for resource in request.resource_spans {
            let attrs = attributes(&resource.resource.unwrap().attributes);
            assert_eq!(attrs["service.name"], "gateway-under-test");
            for scope in resource.scope_spans {
                assert_eq!(scope.scope.unwrap().name, "levee");
                spans.extend(scope.spans);
            }
        }
    }
    spans
}

fn attributes(kvs: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(Value::StringValue(s)) => s.clone(),
                Some(Value::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A gateway tracing to `endpoint` (with `extra` tracing keys) in front of `upstream`.
fn traced_gateway(endpoint: &str, extra: &str, upstream: &MockUpstream) -> Harness {
    Harness::start(&format!(
        "{}
upstreams:
  api:
    targets: [{}]
routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: api
",
        tracing_config(endpoint, extra),
        upstream.addr,
    ))
}

fn tracing_config(endpoint: &str, extra: &str) -> String {
    format!(
        "tracing:\n  otlp_endpoint: {endpoint}\n  service_name: gateway-under-test\n  export_interval: 20ms\n{extra}"
    )
}

#[tokio::test]
async fn a_retried_request_is_a_server_span_with_one_child_span_per_attempt() {
    let otlp = collector().await;
    let dead = refused_addr().await;
    let live = MockUpstream::fixed("ok").await;
    let h = Harness::start(&format!(
        "{}
upstreams:
  api:
    targets: [{dead}, {live}]
    balance: round_robin
    outlier_detection: {{ enabled: false }}
routes:
  - name: api
    match: {{ path_prefix: / }}
    upstream: api
    retry: {{ attempts: 2, on: [connect_failure], backoff: 1ms, budget: 1.0 }}
",
        tracing_config(&format!("http://{}", otlp.addr), ""),
        live = live.addr,
    ));
    let client_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let parent = format!("00-{client_trace}-{client_span}-01");
    // Round robin alternates, so of two requests one meets the dead target first.
    for _ in 0..2 {
        let answer = get(
            &h.url("/x"),
            &[("traceparent", parent.as_str()), ("tracestate", "vendor=1")],
        )
        .await;
        assert_eq!(answer.status, 200);
    }
    // Each request is a server span plus one span per attempt it made.
    let complete = |spans: &[Span]| {
        let servers = spans.iter().filter(|s| s.kind == SpanKind::Server as i32);
        let expected: usize = servers
            .map(|s| {
                1 + attributes(&s.attributes)["levee.attempts"]
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        spans.iter().filter(|s| s.kind == SpanKind::Server as i32).count() == 2 && spans.len() == expected
    };
    eventually("both traces exported", || async { complete(&received(&otlp)) }).await;
    let spans = received(&otlp);
    let servers: Vec<&Span> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Server as i32)
        .collect();
    for server in &servers {
        assert_eq!(hex(&server.trace_id), client_trace);
        assert_eq!(
            hex(&server.parent_span_id),
            client_span,
            "the caller's span is the parent"
        );
        assert_eq!(server.name, "GET api");
        assert_eq!(server.trace_state, "vendor=1");
        assert!(server.end_time_unix_nano >= server.start_time_unix_nano);
        let attrs = attributes(&server.attributes);
        assert_eq!(attrs["http.response.status_code"], "200");
        assert_eq!(attrs["levee.route"], "api");
        assert_eq!(attrs["url.path"], "/x");
    }
    let retried = servers
        .iter()
        .find(|s| attributes(&s.attributes)["levee.attempts"] == "2")
        .expect("one request was retried");
    let mut attempts: Vec<&Span> = spans
        .iter()
        .filter(|s| s.parent_span_id == retried.span_id)
        .collect();
    attempts.sort_by_key(|s| attributes(&s.attributes)["levee.attempt"].clone());
    assert_eq!(attempts.len(), 2, "each attempt is a child of the server span");
    let (first, second) = (
        attributes(&attempts[0].attributes),
        attributes(&attempts[1].attributes),
    );
    assert_eq!(attempts[0].kind, SpanKind::Client as i32);
    assert_eq!(first["levee.attempt"], "1");
    assert_eq!(first["levee.target"], dead.to_string());
    assert_eq!(first["error.type"], "connect_error");
    assert_eq!(
        attempts[0].status.as_ref().unwrap().code,
        StatusCode::Error as i32
    );
    assert_eq!(second["levee.attempt"], "2");
    assert_eq!(second["http.request.resend_count"], "1");
    assert_eq!(second["levee.target"], live.addr.to_string());
    assert_eq!(second["http.response.status_code"], "200");
    for attempt in &attempts {
        assert_eq!(attempt.trace_id, retried.trace_id);
        assert!(attempt.start_time_unix_nano >= retried.start_time_unix_nano);
        assert!(attempt.end_time_unix_nano <= retried.end_time_unix_nano);
    }

    // The upstream saw the attempt's span as its parent, and the caller's tracestate.
    let span_ids: Vec<String> = spans
        .iter()
        .filter(|s| attributes(&s.attributes).get("levee.target") == Some(&live.addr.to_string()))
        .map(|s| hex(&s.span_id))
        .collect();
    for seen in live.seen() {
        let sent = seen.headers["traceparent"].to_str().unwrap();
        let fields: Vec<&str> = sent.split('-').collect();
        assert_eq!(fields[1], client_trace);
        assert!(
            span_ids.contains(&fields[2].to_string()),
            "{sent} is an attempt span"
        );
        assert_eq!(seen.headers["tracestate"], "vendor=1");
    }
    // The access log names the same trace.
    let logs = h.access_log();
    assert!(logs.iter().all(|l| l["trace_id"] == client_trace));
}

#[tokio::test]
async fn sampling_follows_the_ratio_and_the_callers_decision() {
    let otlp = collector().await;
    let upstream = MockUpstream::fixed("ok").await;
    let h = traced_gateway(&format!("http://{}", otlp.addr), "  sample_ratio: 0\n", &upstream);
    // A new trace at ratio 0: not recorded, and the upstream is told so.
    assert_eq!(get(&h.url("/new"), &[]).await.status, 200);
    let sent = upstream.seen()[0].headers["traceparent"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(sent.ends_with("-00"), "not sampled: {sent}");
    // A caller that sampled its trace: recorded (parent based).
    let parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    assert_eq!(
        get(&h.url("/sampled"), &[("traceparent", parent)]).await.status,
        200
    );
    eventually("the sampled trace exported", || async {
        !received(&otlp).is_empty()
    })
    .await;
    // Spans leave in request order, so the unsampled request would have come first.
    let spans = received(&otlp);
    assert_eq!(spans.len(), 2, "{spans:#?}");
    assert!(spans
        .iter()
        .all(|s| hex(&s.trace_id) == "0af7651916cd43dd8448eb211c80319c"));
    let metrics = reqwest_metrics(&h).await;
    assert!(
        metrics.contains("levee_trace_spans_exported_total 2"),
        "{metrics}"
    );
}

async fn reqwest_metrics(h: &Harness) -> String {
    get(&format!("{}/metrics", h.admin), &[]).await.text()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_collector_that_is_down_costs_spans_not_requests() {
    let down = refused_addr().await;
    let upstream = MockUpstream::fixed("ok").await;
    let h = traced_gateway(&format!("http://{down}"), "", &upstream);
    for _ in 0..20 {
        assert_eq!(get(&h.url("/"), &[]).await.status, 200);
    }
    // Each request is a server span and an attempt span; all of them are counted as dropped.
    eventually("dropped spans counted", || async {
        metric(
            &reqwest_metrics(&h).await,
            "levee_trace_spans_dropped_total{reason=\"export_failed\"}",
        ) == 40
    })
    .await;
}

#[tokio::test]
async fn a_silent_collector_fills_the_queue_and_requests_go_on() {
    let (silent, _accepted, _task) = silent_upstream().await;
    let upstream = MockUpstream::fixed("ok").await;
    let h = traced_gateway(
        &format!("http://{silent}"),
        "  queue: 2\n  batch_size: 1\n  export_timeout: 60s\n",
        &upstream,
    );
    // The exporter waits on the silent collector; the queue takes two traces, and every
    // later one is dropped at once instead of making its request wait.
    for _ in 0..20 {
        assert_eq!(get(&h.url("/"), &[]).await.status, 200);
    }
    let metrics = reqwest_metrics(&h).await;
    let dropped = metric(&metrics, "levee_trace_spans_dropped_total{reason=\"queue_full\"}");
    // At most two traces wait in the queue and two more were taken by the exporter (one of
    // them in the export that hangs); every other trace's two spans were dropped.
    assert!(dropped >= 2 * (20 - 4), "{metrics}");
    // Stopping does not wait out the export timeout on the silent collector.
    let mut h = h;
    let gateway = h.gateway.take().unwrap();
    let stopped = tokio::task::spawn_blocking(move || gateway.stop());
    tokio::time::timeout(levee_test_support::DEADLINE, stopped)
        .await
        .expect("the gateway stops without waiting for the silent collector")
        .unwrap();
}

#[tokio::test]
async fn spans_survive_a_collector_restart() {
    let otlp = collector().await;
    let upstream = MockUpstream::fixed("ok").await;
    let h = traced_gateway(&format!("http://{}", otlp.addr), "", &upstream);
    assert_eq!(get(&h.url("/"), &[]).await.status, 200);
    eventually("first trace exported", || async { received(&otlp).len() == 2 }).await;
    otlp.kill();
    assert_eq!(get(&h.url("/"), &[]).await.status, 200);
    eventually("the trace sent while down is counted", || async {
        metric(
            &reqwest_metrics(&h).await,
            "levee_trace_spans_dropped_total{reason=\"export_failed\"}",
        ) == 2
    })
    .await;
    let back = MockUpstream::start_on(otlp.addr, |_| Reply::ok("")).await;
    assert_eq!(get(&h.url("/"), &[]).await.status, 200);
    eventually("export resumes", || async { received(&back).len() == 2 }).await;
}
