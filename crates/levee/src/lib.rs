//! Levee: a reliability-first API and AI gateway.
//!
//! The library holds the whole gateway; the `levee` binary only parses the command line.
//! Start at [`pipeline`], which reads like a request's way through the gateway for every
//! route. Each module owns one concern, and the modules form layers: a module imports only
//! modules below it (`scripts/check_layers.py` fails on any import cycle; the diagram is in
//! `docs/architecture.md`). From the bottom:
//!
//! Helpers, importing nothing of the crate but [`hex`]:
//! * [`hex`]: the one hex encoder and decoder
//! * [`headers`]: hop-by-hop, forwarding, request id
//! * [`host`]: which host a request is for (`Host`, absolute form, `:authority`)
//! * [`outbound`]: the HTTP client for calls Levee makes itself (providers, JWKS, OTLP, alerts)
//! * [`strict`]: the guard that makes hyper refuse `Content-Length` with `Transfer-Encoding`
//! * [`admission`]: load shedding's permits (a place under a worker's request or connection cap)
//! * [`restart`]: zero-downtime restart on inherited sockets
//! * [`admin_client`]: the CLI's client of the admin API (`levee calls`, `levee top`)
//!
//! Configuration:
//! * [`config`]: the YAML file, its validation and the checked runtime spec
//!
//! Observability, plain data:
//! * [`observability`]: metrics, the access log, the call log, traces
//!
//! The fleet's shared stores:
//! * [`cluster`]: Redis and PostgreSQL connections, the roll call, leases (cluster mode)
//!
//! Features:
//! * [`router`]: route matching
//! * [`ratelimit`]: route rate limits (GCRA) and their headers
//! * [`upstream`]: targets, balancing, pooled connections, timeouts, the replayable request body
//! * [`stale`]: the last good answers, served when an upstream fails
//! * [`tls`]: TLS termination and certificate reload
//! * [`jwt`]: JSON Web Tokens
//! * [`auth`]: API keys and consumers
//! * [`slo`]: SLOs computed from the gateway's own traffic, burn-rate alerts, canary releases
//! * [`chaos`]: fault injection and chaos experiments
//!
//! What a request leaves behind:
//! * [`record`]: the request's record, written once when its response ends
//! * [`body`]: the response body, which carries the record to the end
//!
//! The AI gateway:
//! * [`llm`]: an OpenAI-compatible API over LLM providers, the backend of `llm: true` routes
//!
//! The compiled config and the error edge:
//! * [`gateway`]: the running config shared by the workers, and each worker's own state
//! * [`edge`]: failures to error responses (Levee's, OpenAI's or Anthropic's shape), in one place
//!
//! Shared state:
//! * [`state`]: what the workers, the admin API and reloads share (running config, metrics)
//!
//! What drives the running gateway:
//! * [`pipeline`]: the request's way through, for every route
//! * [`reload`]: hot reload of the config file
//! * [`supervisor`]: the `levee-slo` thread's loop (SLOs, alerts, canary rollbacks, experiments)
//!
//! The admin API, the process, and the entry points:
//! * [`admin`]: health, readiness, metrics and the admin REST API
//! * [`server`]: listeners, worker threads, graceful shutdown
//! * [`demo`]: the self-contained `levee demo`
//! * `fuzzing`: entry points for the fuzz targets (hidden)

pub mod admin;
pub mod admin_client;
pub mod admission;
pub mod auth;
pub mod body;
pub mod chaos;
pub mod client_body;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod edge;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod grpc;
pub mod guardrails;
pub mod headers;
pub mod hex;
pub mod host;
pub mod jwt;
pub mod llm;
pub mod management;
pub mod mcp;
pub mod observability;
pub mod outbound;
pub mod pipeline;
pub mod ratelimit;
pub mod record;
pub mod reload;
pub mod restart;
pub mod router;
pub mod server;
pub mod slo;
pub mod stale;
pub mod state;
pub mod strict;
pub mod supervisor;
pub mod tls;
pub mod upstream;

pub use config::{load_file, load_str, Config, ConfigError, ConfigErrors};
pub use server::{AccessLogSink, RunningGateway, StartError};
