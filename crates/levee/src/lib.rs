//! Levee: a reliability-first API and AI gateway.
//!
//! The library holds the whole gateway; the `levee` binary only parses the command line.
//! Start at [`pipeline`], which reads like a request's way through the gateway; each other
//! module owns one concern:
//!
//! * [`config`]: the YAML file, its validation and the checked runtime spec
//! * [`server`]: listeners, worker threads, graceful shutdown
//! * [`state`]: the state the workers, the admin API and reloads share (running config, metrics)
//! * [`tls`]: TLS termination and certificate reload
//! * [`router`]: route matching
//! * [`auth`], [`jwt`]: API keys, consumers and JSON Web Tokens
//! * [`ratelimit`]: route rate limits (GCRA) and their headers
//! * [`chaos`]: fault injection
//! * [`upstream`]: targets, load balancing, pooled connections, timeouts
//! * [`host`]: which host a request is for (`Host`, absolute form, `:authority`)
//! * [`headers`]: hop-by-hop, forwarding, request id, trace context
//! * [`hex`]: the one hex encoder and decoder
//! * [`edge`]: failures to JSON error responses, in one place
//! * [`observability`]: metrics and the access log
//! * [`stale`]: the last good answers, served when an upstream fails
//! * [`admin`]: health, readiness, metrics and the admin REST API
//! * [`reload`]: hot reload of the config file
//! * [`restart`]: zero-downtime restart on inherited sockets
//! * [`demo`]: the self-contained `levee demo`
//! * [`llm`]: the AI gateway (OpenAI-compatible API over LLM providers)
//! * [`slo`]: SLOs computed from the gateway's own traffic, burn-rate alerts, chaos experiments
//! * [`outbound`]: the HTTP client for calls Levee makes itself (providers, JWKS, OTLP, alerts)

pub mod admin;
pub mod admin_client;
pub mod admission;
pub mod auth;
pub mod body;
pub mod chaos;
pub mod config;
pub mod demo;
pub mod edge;
#[doc(hidden)]
pub mod fuzzing;
pub mod gateway;
pub mod headers;
pub mod hex;
pub mod host;
pub mod jwt;
pub mod llm;
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
pub mod tls;
pub mod upstream;

pub use config::{load_file, load_str, Config, ConfigError, ConfigErrors};
pub use server::{AccessLogSink, RunningGateway, StartError};
