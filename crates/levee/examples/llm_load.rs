//! Open-loop load for the LLM benchmark (bench/llm.sh): POSTs a JSON body at a fixed rate and
//! reports latency percentiles as one JSON line.
//!
//! Requests are scheduled every 1/rate seconds whatever the answers do, and each latency is
//! measured from its scheduled start (not from when it was actually sent), so a stalled server
//! shows up in the percentiles instead of slowing the load (coordinated omission).
//! The latency covers the whole answer, the last streamed byte included.
//!
//! Usage: llm_load URL RATE SECONDS BODY_JSON [HEADER:VALUE ...]
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tokio::time::Instant;

/// Requests in flight at most; past it the load generator counts a miss instead of growing.
const MAX_IN_FLIGHT: u64 = 4096;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 5 {
        panic!("usage: llm_load URL RATE SECONDS BODY_JSON [HEADER:VALUE ...]");
    }
    let url: http::Uri = args[1].parse().expect("URL");
    let rate: f64 = args[2].parse().expect("RATE");
    let seconds: f64 = args[3].parse().expect("SECONDS");
    let body = Bytes::from(args[4].clone());
    let headers: Vec<(String, String)> = args[5..]
        .iter()
        .filter_map(|h| h.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(url, rate, seconds, body, headers));
}

async fn run(url: http::Uri, rate: f64, seconds: f64, body: Bytes, headers: Vec<(String, String)>) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_max_idle_per_host(4096)
        .build(connector);
    let latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    let missed = Arc::new(AtomicU64::new(0));
    let in_flight = Arc::new(AtomicU64::new(0));
    let total = (rate * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled).await;
        if in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT {
            missed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        in_flight.fetch_add(1, Ordering::Relaxed);
        let mut request = http::Request::post(url.clone()).header("content-type", "application/json");
        for (k, v) in &headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let request = request.body(Full::new(body.clone())).unwrap();
        let (client, latencies, errors, in_flight) = (
            client.clone(),
            latencies.clone(),
            errors.clone(),
            in_flight.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let outcome = tokio::time::timeout(Duration::from_secs(30), async {
                let response = client.request(request).await.map_err(|_| ())?;
                let ok = response.status().is_success();
                response.into_body().collect().await.map_err(|_| ())?;
                if ok {
                    Ok(())
                } else {
                    Err(())
                }
            })
            .await;
            match outcome {
                Ok(Ok(())) => latencies
                    .lock()
                    .unwrap()
                    .push(scheduled.elapsed().as_secs_f64() * 1000.0),
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            in_flight.fetch_sub(1, Ordering::Relaxed);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut values = latencies.lock().unwrap().clone();
    values.sort_by(|a, b| a.total_cmp(b));
    let pick = |p: f64| {
        if values.is_empty() {
            return f64::NAN;
        }
        let rank = ((p * values.len() as f64).ceil() as usize).clamp(1, values.len());
        values[rank - 1]
    };
    println!(
        "{{\"requests\":{total},\"ok\":{},\"errors\":{},\"missed\":{},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"p999_ms\":{:.3},\"max_ms\":{:.3}}}",
        values.len(),
        errors.load(Ordering::Relaxed),
        missed.load(Ordering::Relaxed),
        pick(0.50),
        pick(0.90),
        pick(0.99),
        pick(0.999),
        values.last().copied().unwrap_or(f64::NAN),
    );
}
