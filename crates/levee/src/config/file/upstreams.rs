//! Upstreams as written: targets, balancing, timeouts, the pool, the bulkhead queue, health
//! checks, outlier ejection and circuit breakers (whose settings LLM models share).

use std::borrow::Cow;
use std::fmt;

use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::config::duration::DurationStr;

/// A named group of targets.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    /// The targets: `IP:PORT` / `HOST:PORT` strings, or `{ addr, weight }` maps.
    pub targets: Vec<TargetFile>,
    /// Load-balancing policy. Default `round_robin`.
    #[serde(default)]
    pub balance: BalanceFile,
    /// For `consistent_hash`: where the key comes from: `header:NAME`, `cookie:NAME` or `ip`
    /// (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_key: Option<String>,
    /// Connect and request timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsFile,
    /// Keep-alive connection pool to the targets.
    #[serde(default)]
    pub pool: PoolFile,
    /// The protocol spoken to the targets. Default `http1`.
    #[serde(default)]
    pub protocol: ProtocolFile,
    /// TLS to the targets (`tls: {}` for the defaults: the system's root certificates, the
    /// target's host as the server name). Health checks use it too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<UpstreamTlsFile>,
    /// HTTP/2 connection settings, for `protocol: h2`, `h2c` or `auto`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http2: Option<UpstreamHttp2File>,
    /// Per-target circuit breaker. On by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreakerFile>,
    /// Active health checks: HTTP GET of `path` on each target (TCP connect when no path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheckFile>,
    /// Passive outlier ejection, shared by all workers. On by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierFile>,
    /// Bulkhead: requests in flight to this upstream at most (across all workers); beyond it
    /// new requests get 503 at once. Default 1024 (Envoy's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<usize>,
    /// A bounded wait for a place when the bulkhead is full. Without it (the default) a full
    /// bulkhead refuses at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue: Option<QueueFile>,
}

/// A target: a plain `HOST:PORT` string or a map with a weight.
#[derive(Debug, Clone, Serialize)]
pub struct TargetFile {
    /// `IP:PORT` or `HOST:PORT`.
    pub addr: String,
    /// Relative share of traffic for `round_robin`, `least_request`, `p2c_ewma` and
    /// `consistent_hash`. Default 1.
    pub weight: u32,
}

impl JsonSchema for TargetFile {
    fn schema_name() -> Cow<'static, str> {
        "Target".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A target: `HOST:PORT`, or `{ addr: HOST:PORT, weight: N }` (weight 1 to 1000, default 1).",
            "oneOf": [
                { "type": "string", "examples": ["127.0.0.1:9001"] },
                {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["addr"],
                    "properties": {
                        "addr": { "type": "string", "description": "`IP:PORT` or `HOST:PORT`." },
                        "weight": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 1 }
                    }
                }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for TargetFile {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct TargetMap {
            addr: String,
            #[serde(default = "default_weight")]
            weight: u32,
        }
        struct TargetVisitor;
        impl<'de> Visitor<'de> for TargetVisitor {
            type Value = TargetFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a target `HOST:PORT` or a map `{ addr: HOST:PORT, weight: N }`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetFile, E> {
                Ok(TargetFile {
                    addr: v.to_string(),
                    weight: 1,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<TargetFile, A::Error> {
                let target = TargetMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(TargetFile {
                    addr: target.addr,
                    weight: target.weight,
                })
            }
        }
        deserializer.deserialize_any(TargetVisitor)
    }
}

fn default_weight() -> u32 {
    1
}

/// Load-balancing policies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BalanceFile {
    /// Weighted round robin (smooth: weights interleave rather than burst).
    #[default]
    RoundRobin,
    /// The target with the fewest requests in flight (relative to its weight).
    LeastRequest,
    /// Power of two random choices, scored by peak-EWMA latency times load.
    P2cEwma,
    /// A hash ring: the same key goes to the same target; adding a target moves ~1/N keys.
    ConsistentHash,
}

/// The protocol spoken to an upstream's targets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProtocolFile {
    /// HTTP/1.1, one request at a time per pooled connection (over TLS when `tls` is set).
    #[default]
    Http1,
    /// HTTP/2 over TLS (needs `tls`): requests multiplexed over few connections.
    H2,
    /// HTTP/2 in cleartext with prior knowledge (no `tls`), as gRPC services inside a
    /// trusted network usually speak it.
    H2c,
    /// Over TLS, whatever ALPN agrees (`h2` preferred, else HTTP/1.1); in cleartext, HTTP/1.1.
    Auto,
}

/// TLS to an upstream's targets (rustls: TLS 1.2 and 1.3).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsFile {
    /// The server name sent (SNI) and verified in the certificate. Default: the target's
    /// host (a name, or an IP address checked against the certificate's IP entries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sni: Option<String>,
    /// PEM file of the certificate authorities to trust instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// PEM certificate chain presented to targets that ask for one (mutual TLS); reloaded
    /// when the file changes. Needs `client_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    /// PEM private key of `client_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
    /// Accept any certificate (encryption without authentication). For tests only:
    /// `levee check` warns about it. Default false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_skip_verify: Option<bool>,
}

/// HTTP/2 to an upstream's targets.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamHttp2File {
    /// Requests in flight on one connection at most (per worker); one more opens another
    /// connection. Default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_streams: Option<usize>,
    /// A PING is sent on a connection silent this long, to find dead ones (`0s`: never).
    /// Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_interval: Option<DurationStr>,
    /// A connection whose PING is not answered within this is closed. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keepalive_timeout: Option<DurationStr>,
}

/// Upstream timeouts.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsFile {
    /// Time allowed to establish a TCP connection to a target. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<DurationStr>,
    /// Time from sending the request until the response headers arrive. Streaming bodies
    /// are not cut by it. Default 15s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<DurationStr>,
}

/// Upstream keep-alive pool settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolFile {
    /// Idle keep-alive connections kept per target and per worker. Default 128.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_idle_per_target: Option<usize>,
    /// How long an idle pooled connection is kept. Default 90s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_timeout: Option<DurationStr>,
}

/// The bulkhead's waiting room.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct QueueFile {
    /// Requests that may wait at once; more are refused at once.
    pub size: usize,
    /// How long a request may wait for a place before it is refused.
    pub timeout: DurationStr,
}

/// What an active health check does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HealthKindFile {
    /// A GET of `path` whose status must be expected.
    Http,
    /// Opening a connection (TCP, and TLS when the upstream has it).
    Tcp,
    /// `grpc.health.v1.Health/Check` (for `service`), which must answer `SERVING`.
    Grpc,
}

/// Active health checking of each target.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckFile {
    /// `http`, `tcp` or `grpc`. Default: `http` when a `path` is given, else `tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<HealthKindFile>,
    /// Path to GET, e.g. `/healthz` (kind `http`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The service name asked about (kind `grpc`). Default `""`: the server as a whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Time between checks of a target. Default 5s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<DurationStr>,
    /// Time a check may take. Default 1s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<DurationStr>,
    /// Failed checks in a row that mark a target unhealthy. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy_after: Option<u32>,
    /// Passed checks in a row that bring an unhealthy target back. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_after: Option<u32>,
    /// Statuses that pass. Default: any 2xx.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expected_statuses: Option<Vec<u16>>,
}

/// Passive outlier ejection: a target that fails many requests in a row is taken out of
/// rotation for a while, by every worker at once.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierFile {
    /// Set false to turn ejection off. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Failures in a row (connect failures, timeouts, resets, 5xx) that eject. Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// First ejection period; each repeat ejection lasts one more period. Default 30s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection: Option<DurationStr>,
    /// Longest ejection. Default 300s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection: Option<DurationStr>,
    /// At most this share of the targets is ejected at once (one always may be). Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejected_percent: Option<u32>,
}

/// Circuit breaker thresholds (see docs/resilience.md).
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerFile {
    /// Set false to turn the breaker off. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Share of failed requests in the window that opens the breaker. Default 0.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    /// Requests the window must hold before the failure rate counts. Default 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_requests: Option<u64>,
    /// Sliding window for the failure rate. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<DurationStr>,
    /// How long the breaker stays open before letting probes through. Default 10s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_for: Option<DurationStr>,
    /// Failures in a row that open the breaker whatever the rate (0 = off). Default 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// Probe requests let through at a time while half-open; that many successes close
    /// the breaker. Default 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub half_open_probes: Option<u32>,
}
