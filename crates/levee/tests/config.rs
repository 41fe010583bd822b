//! Config validation: every problem reported as FILE:LINE:COL with a useful message.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::path::PathBuf;

const BASE: &str = "listeners:
  - name: public
    bind: 127.0.0.1:8080
upstreams:
  users:
    targets: [127.0.0.1:9001]
";

/// Errors for `yaml`, rendered as the CLI prints them.
fn errors(yaml: &str) -> Vec<String> {
    match levee::load_str(yaml, "levee.yaml") {
        Ok(_) => panic!("config should be rejected:\n{yaml}"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn a_valid_config_loads() {
    let config = levee::load_str(
        &format!("{BASE}routes:\n  - name: users\n    upstream: users\n"),
        "levee.yaml",
    )
    .unwrap();
    assert_eq!(config.routes.len(), 1);
    assert_eq!(config.upstreams[0].targets[0].addr.as_ref(), "127.0.0.1:9001");
}

#[test]
fn unknown_keys_name_the_position_and_the_nearest_key() {
    let yaml = format!("{BASE}routes:\n  - name: users\n    upstreem: users\n");
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].starts_with("levee.yaml:9:5: "), "{}", errs[0]);
    assert!(
        errs[0].contains("unknown key `upstreem` (did you mean `upstream`?)"),
        "{}",
        errs[0]
    );
}

#[test]
fn slos_and_alerting_are_validated_with_positions() {
    let yaml = format!(
        "{BASE}routes:\n  - name: users\n    upstream: users\nslos:\n  - name: a\n    route: user\n    objective: 100\n    sli: availability\n  - name: a\n    route: users\n    consumer: nobody\n    objective: 99\n    window: 10m\n    sli: {{ latency_below: 0ms }}\nalerting:\n  evaluation_interval: 0s\n  webhooks: [ {{ url: \"ftp://x\" }} ]\n"
    );
    let errs = errors(&yaml);
    for (position, text) in [
        (
            "levee.yaml:12:12: ",
            "no route named `user` (did you mean `users`?)",
        ),
        (
            "levee.yaml:13:16: ",
            "objective is a percentage above 0 and below 100",
        ),
        ("levee.yaml:15:11: ", "duplicate SLO name `a`"),
        ("levee.yaml:17:15: ", "no consumer named `nobody`"),
        ("levee.yaml:19:13: ", "window must be from 1h to 90d"),
        ("levee.yaml:20:27: ", "latency_below must be above zero"),
        ("levee.yaml:22:24: ", "evaluation_interval must be from 1s to 1m"),
        ("levee.yaml:23:22: ", "`ftp://x` is not an http(s) URL"),
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(position) && e.contains(text)),
            "{position}{text} not in {errs:#?}"
        );
    }
    // The minute buckets are bounded: 60 SLOs of 90 days would take 296 MiB.
    let many: String = (0..60)
        .map(|i| {
            format!("  - {{ name: s{i}, route: users, objective: 99, window: 90d, sli: availability }}\n")
        })
        .collect();
    let errs = errors(&format!(
        "{BASE}routes:\n  - name: users\n    upstream: users\nslos:\n{many}"
    ));
    assert!(
        errs.iter()
            .any(|e| e.contains("the SLOs' minute buckets would take 296 MiB, more than 256 MiB")),
        "{errs:#?}"
    );
    // A valid section passes, with an Alertmanager base URL.
    let yaml = format!(
        "{BASE}routes:\n  - name: users\n    upstream: users\nslos:\n  - name: users-availability\n    route: users\n    objective: 99.9\n    sli: availability\nalerting:\n  alertmanager: {{ url: \"http://127.0.0.1:9093/\" }}\n"
    );
    let config = levee::load_str(&yaml, "levee.yaml").unwrap();
    assert_eq!(config.slos.len(), 1);
    assert_eq!(config.slos[0].window, std::time::Duration::from_secs(30 * 86_400));
    assert_eq!(
        config.alerting.alertmanager.unwrap().to_string(),
        "http://127.0.0.1:9093/api/v2/alerts"
    );
    // Behind a proxy with a path and a query, the API path goes between them.
    let config = levee::load_str(
        &yaml.replace("http://127.0.0.1:9093/", "https://am.example/team-a/?tenant=7"),
        "levee.yaml",
    )
    .unwrap();
    assert_eq!(
        config.alerting.alertmanager.unwrap().to_string(),
        "https://am.example/team-a/api/v2/alerts?tenant=7"
    );
}

#[test]
fn fault_injection_is_validated() {
    let yaml = format!("{BASE}routes:\n  - name: users\n    upstream: users\n    fault: {{ abort: {{ percent: 150, status: 200 }}, delay: {{ percent: 5, duration: 2h }} }}\n");
    let errs = errors(&yaml);
    for text in [
        "percent must be from 0 to 100",
        "status must be from 400 to 599",
        "duration must be at most 1h",
    ] {
        assert!(errs.iter().any(|e| e.contains(text)), "{text}: {errs:#?}");
    }
}

#[test]
fn bad_durations_point_at_the_value() {
    let yaml = "listeners:\n  - name: public\n    bind: 127.0.0.1:8080\nupstreams:\n  users:\n    targets: [127.0.0.1:9001]\n    timeouts: { connect: 10 }\nroutes: []\n";
    let errs = errors(yaml);
    assert!(errs[0].starts_with("levee.yaml:7:"), "{errs:?}");
    assert!(errs[0].contains("duration `10` needs a unit"), "{errs:?}");
    let errs = errors(&yaml.replace("10 }", "ten seconds }"));
    assert!(errs[0].contains("invalid duration `ten seconds`"), "{errs:?}");
}

#[test]
fn semantic_errors_are_all_reported_with_positions() {
    let yaml = format!(
        "{BASE}routes:
  - name: users
    upstream: userz
  - name: users
    match: {{ path_prefix: /api }}
    upstream: users
  - name: api-users
    match: {{ path_prefix: /api/users }}
    upstream: users
  - name: bad-template
    match: {{ path: \"/u/{{id\" }}
    upstream: users
"
    );
    let errs = errors(&yaml);
    assert_eq!(
        errs,
        vec![
            "levee.yaml:9:15: route `users` names unknown upstream `userz` (did you mean `users`?)",
            "levee.yaml:10:11: duplicate route name `users` (first used by routes[0])",
            "levee.yaml:14:12: route `api-users` can never match: route `users` comes first and takes every request it would",
            "levee.yaml:17:20: invalid path segment `{id`: a template parameter must be a whole segment, like /users/{id}",
        ]
    );
}

#[test]
fn addresses_targets_and_balancing_are_checked() {
    let yaml = "listeners:
  - name: public
    bind: localhost:80
upstreams:
  u:
    targets: [\"127.0.0.1\", { addr: 127.0.0.1:9, weight: 0 }]
    hash_key: header:x-user
routes:
  - name: r
    upstream: u
    strip_prefix: true
";
    let errs = errors(yaml);
    let joined = errs.join("\n");
    assert!(
        joined.contains("levee.yaml:3:11: invalid address `localhost:80`"),
        "{joined}"
    );
    assert!(
        joined.contains("levee.yaml:6:15: invalid target `127.0.0.1`"),
        "{joined}"
    );
    assert!(
        joined.contains("target weight must be from 1 to 1000, got 0"),
        "{joined}"
    );
    assert!(
        joined.contains("levee.yaml:7:15: hash_key is only used with `balance: consistent_hash`"),
        "{joined}"
    );
    assert!(
        joined.contains("strip_prefix needs `match.path_prefix`"),
        "{joined}"
    );
}

#[test]
fn syntax_errors_have_positions_too() {
    let errs = errors("listeners:\n  - name: [unclosed\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("levee.yaml:"), "{errs:?}");
    let parts: Vec<&str> = errs[0].splitn(4, ':').collect();
    assert!(parts[1].parse::<usize>().unwrap() >= 2, "{errs:?}");
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_example_config_is_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_root().join("examples")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            if let Err(e) = levee::load_file(&path) {
                panic!("{} is invalid:\n{e}", path.display());
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "expected at least the minimal and multi-upstream examples"
    );
}

#[test]
fn the_published_json_schema_is_current() {
    let generated = serde_json::to_string_pretty(&levee::config::file::json_schema()).unwrap();
    let published = std::fs::read_to_string(repo_root().join("docs/levee.schema.json")).unwrap_or_default();
    assert!(
        published.trim() == generated.trim(),
        "docs/levee.schema.json is stale: run `cargo run -p levee-cli -- schema > docs/levee.schema.json`"
    );
}

#[test]
fn resilience_keys_are_validated_and_every_problem_reported() {
    let yaml = format!(
        "{BASE}    circuit_breaker: {{ failure_rate: 2 }}
    queue: {{ size: 0, timeout: 1s }}
routes:
  - name: a
    match: {{ path_prefix: /a }}
    upstream: users
    retry: {{ on: [connect_fail] }}
    fallback: {{ status: 700 }}
  - name: b
    upstream: users
    stale_if_error: {{ max_entries: 0 }}
"
    );
    let joined = errors(&yaml).join("\n");
    for expected in [
        "failure_rate must be above 0 and at most 1",
        "queue.size must be from 1 to 1000000",
        "unknown retry condition `connect_fail` (did you mean `connect_failure`?)",
        "fallback status must be from 200 to 599",
        "max_entries must be from 1 to 1000000",
    ] {
        assert!(joined.contains(expected), "missing `{expected}` in:\n{joined}");
    }
}

#[test]
fn rate_limits_are_validated() {
    let yaml = format!(
        "{BASE}routes:
  - name: a
    match: {{ path_prefix: /a }}
    upstream: users
    rate_limit: {{ rate: 10/fortnight }}
  - name: b
    upstream: users
    rate_limit: {{ rate: 100/s, key: consumer }}
"
    );
    let joined = errors(&yaml).join("\n");
    assert!(
        joined.contains("invalid rate `10/fortnight`: expected N/s, N/min or N/h"),
        "{joined}"
    );
    assert!(
        joined.contains("key `consumer` needs the route to authenticate callers"),
        "{joined}"
    );
}

#[test]
fn tracing_settings_are_validated() {
    let yaml = format!(
        "{BASE}routes:\n  - name: users\n    upstream: users\ntracing:\n  otlp_endpoint: localhost:4318\n  sample_ratio: 1.5\n  queue: 0\n"
    );
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert!(
        errs[0].starts_with("levee.yaml:11:18: ") && errs[0].contains("not an http(s) URL"),
        "{errs:?}"
    );
    assert!(
        errs[1].starts_with("levee.yaml:12:17: ") && errs[1].contains("sample_ratio"),
        "{errs:?}"
    );
    assert!(
        errs[2].starts_with("levee.yaml:13:10: ") && errs[2].contains("tracing.queue"),
        "{errs:?}"
    );

    // A base URL gets the OTLP/HTTP traces path; a full URL is kept.
    for (given, used) in [
        ("http://127.0.0.1:4318", "http://127.0.0.1:4318/v1/traces"),
        (
            "https://otel.example.com/custom/path",
            "https://otel.example.com/custom/path",
        ),
    ] {
        let yaml = format!(
            "{BASE}routes:\n  - name: users\n    upstream: users\ntracing:\n  otlp_endpoint: {given}\n"
        );
        let config = levee::load_str(&yaml, "levee.yaml").unwrap();
        let tracing = config.tracing.unwrap();
        assert_eq!(tracing.endpoint.to_string(), used);
        assert_eq!((tracing.sample_ratio, tracing.parent_based), (1.0, true));
    }
}

#[test]
fn every_deployment_file_parses_and_the_configmap_config_passes_check() {
    use serde::Deserialize;
    let deploy = repo_root().join("deploy");
    let mut yaml_files = Vec::new();
    let mut dirs = vec![deploy];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                yaml_files.push(path);
            }
        }
    }
    assert!(!yaml_files.is_empty(), "deploy/ has YAML files");
    // The ConfigMap's config names its admin token variable; `check` needs it set.
    std::env::set_var("LEVEE_ADMIN_TOKEN", "test-token");
    let mut configs_checked = 0;
    for path in &yaml_files {
        let text = std::fs::read_to_string(path).unwrap();
        for (n, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let value = serde_yaml_ng::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{} document {n}: {e}", path.display()));
            if value.get("kind").and_then(|k| k.as_str()) != Some("ConfigMap") {
                continue;
            }
            let data = value.get("data").and_then(|d| d.as_mapping()).unwrap();
            for (key, embedded) in data {
                let (Some(key), Some(embedded)) = (key.as_str(), embedded.as_str()) else {
                    continue;
                };
                if key.ends_with(".yaml") {
                    levee::load_str(embedded, key)
                        .unwrap_or_else(|e| panic!("{} ConfigMap {key}:\n{e}", path.display()));
                    configs_checked += 1;
                }
            }
        }
    }
    assert!(configs_checked >= 1, "a ConfigMap with the gateway's config");
    // The Compose fleet's config (cluster mode) passes too, with its store URLs set.
    std::env::set_var("LEVEE_REDIS_URL", "redis://redis:6379/0");
    std::env::set_var(
        "LEVEE_POSTGRES_URL",
        "postgres://levee:levee-demo@postgres:5432/levee",
    );
    let compose = repo_root().join("deploy/compose/levee.yaml");
    let config = levee::load_str(&std::fs::read_to_string(&compose).unwrap(), "levee.yaml")
        .unwrap_or_else(|e| panic!("{}:\n{e}", compose.display()));
    let cluster = config.cluster.expect("a cluster block");
    assert!(cluster.redis.is_some() && cluster.postgres.is_some());
}

#[test]
fn llm_settings_are_validated() {
    let yaml = "listeners: [{ name: p, bind: 127.0.0.1:8080 }]
llm:
  providers:
    gemini: { kind: gemini, base_url: https://generativelanguage.googleapis.com }
    local: { kind: openai_compatible, base_url: not-a-url }
    claude: { kind: anthropic, base_url: https://api.anthropic.com }
  models:
    - name: smart
      strategy: fastest
      targets: [{ provider: nowhere, model: x }]
routes:
  - name: ai
    llm: true
    upstream: u
    retry: { attempts: 2 }
  - name: plain
";
    let errs = errors(yaml);
    let expect = [
        ("levee.yaml:4:13", "provider `gemini` needs `api_key_env`"),
        ("levee.yaml:5:49", "not an http(s) URL"),
        ("levee.yaml:6:13", "provider `claude` needs `api_key_env`"),
        ("levee.yaml:9:17", "unknown strategy `fastest`"),
        ("levee.yaml:10:29", "unknown provider `nowhere`"),
        ("levee.yaml:14:15", "not an upstream"),
        ("levee.yaml:15:12", "`retry` has no effect on an AI gateway route"),
        ("levee.yaml:16:9", "needs an `upstream` (or `llm: true`)"),
    ];
    for (position, text) in expect {
        assert!(
            errs.iter().any(|e| e.starts_with(position) && e.contains(text)),
            "{position} {text}: {errs:#?}"
        );
    }
}

#[test]
fn prompt_endpoints_need_a_valid_template_a_model_and_an_llm_route() {
    let yaml = "listeners: [{ name: p, bind: 127.0.0.1:8080 }]
upstreams: { web: { targets: [127.0.0.1:9000] } }
llm:
  providers: { local: { kind: openai_compatible, base_url: http://127.0.0.1:8000/v1 } }
  models: [{ name: smart, targets: [{ provider: local, model: m }] }]
  prompts:
    - { name: a, path: /prompts/a, model: smart, template: \"Hi {{name\" }
    - { name: b, path: /web/b, model: nope, template: \"Hi\" }
    - { name: c, path: /elsewhere, model: smart, template: \"Hi\" }
routes:
  - { name: ai, match: { path_prefix: /prompts }, llm: true }
  - { name: web, match: { path_prefix: /web }, upstream: web }
";
    let errs = errors(yaml);
    for text in [
        "never closed",
        "unknown model `nope`",
        "`/web/b` is taken by route `web`, which is not an AI gateway route",
        "no route takes `/elsewhere`",
    ] {
        assert!(errs.iter().any(|e| e.contains(text)), "{text}: {errs:#?}");
    }
}

#[test]
fn warnings_name_a_route_no_request_can_reach_and_an_open_admin() {
    let yaml = "listeners: [{ name: p, bind: 127.0.0.1:8080 }]
admin: { bind: 0.0.0.0:9901 }
upstreams:
  u: { targets: [127.0.0.1:1, 127.0.0.1:2] }
routes:
  - { name: query, match: { path: \"/search?q=x\" }, upstream: u }
";
    let config = levee::load_str(yaml, "levee.yaml").unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    for text in [
        "route `query` matches a path containing `?` or `#`",
        "the admin API listens beyond loopback without a token",
    ] {
        assert!(
            warnings
                .iter()
                .any(|w| w.starts_with("levee.yaml:") && w.contains(text)),
            "{text}: {warnings:#?}"
        );
    }
    assert_eq!(warnings.len(), 2, "{warnings:#?}");

    // An SLO of one consumer on a route without auth would count nothing.
    let yaml = "listeners: [{ name: p, bind: 127.0.0.1:8080 }]
upstreams:
  u: { targets: [127.0.0.1:1, 127.0.0.1:2] }
consumers:
  - { name: mobile, api_keys: [\"sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae\"] }
routes:
  - { name: open, upstream: u }
slos:
  - { name: mobile-open, route: open, consumer: mobile, objective: 99, sli: availability }
";
    let config = levee::load_str(yaml, "levee.yaml").unwrap();
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    assert!(
        warnings.iter().any(|w| w.starts_with("levee.yaml:9:49: ")
            && w.contains("route `open` has no auth, so no request names a consumer")),
        "{warnings:#?}"
    );
}

#[test]
fn canaries_are_validated() {
    let yaml = format!(
        "{BASE}  v2:\n    targets: [127.0.0.1:9002]\nroutes:\n  - name: users\n    upstream: users\n    canary: {{ upstream: v3, percent: 150 }}\n  - name: orders\n    match: {{ path_prefix: /orders }}\n    upstream: users\n    canary: {{ upstream: v2, percent: 10, rollback_if: {{ slo: users-availability, burn_rate_above: 10, window: 10m }} }}\nslos:\n  - {{ name: users-availability, route: users, objective: 99.9, sli: availability }}\n"
    );
    let errs = errors(&yaml);
    for text in [
        "percent must be from 0 to 100",
        "no upstream named `v3`",
        "`10m` is not one of 5m, 30m, 1h, 2h, 6h, 1d, 3d",
    ] {
        assert!(errs.iter().any(|e| e.contains(text)), "{text} not in {errs:#?}");
    }
    let yaml = format!(
        "{BASE}  v2:\n    targets: [127.0.0.1:9002]\nroutes:\n  - name: users\n    upstream: users\n  - name: orders\n    match: {{ path_prefix: /orders }}\n    upstream: users\n    canary: {{ upstream: v2, percent: 10, rollback_if: {{ slo: users-availability, burn_rate_above: 10 }} }}\nslos:\n  - {{ name: users-availability, route: users, objective: 99.9, sli: availability }}\n"
    );
    let errs = errors(&yaml);
    assert!(
        errs.iter()
            .any(|e| e.contains("SLO `users-availability` is on route `users`, not on this route")),
        "{errs:#?}"
    );
    // A valid canary adds the SLO that judges it, without alerts.
    let yaml = format!(
        "{BASE}  v2:\n    targets: [127.0.0.1:9002]\nroutes:\n  - name: users\n    upstream: users\n    canary: {{ upstream: v2, percent: 10, rollback_if: {{ slo: users-availability, burn_rate_above: 10 }} }}\nslos:\n  - {{ name: users-availability, route: users, objective: 99.9, sli: availability }}\n"
    );
    let config = levee::load_str(&yaml, "levee.yaml").unwrap();
    let derived = config
        .slos
        .iter()
        .find(|s| &*s.name == "users-availability-canary")
        .unwrap();
    assert_eq!(derived.upstream.as_deref(), Some("v2"));
    assert!(!derived.alerts);
    assert_eq!(config.routes[0].canary.as_ref().unwrap().share, 0.1);
}

/// Type errors no longer stop the check at the first: eight problems in five sections
/// (listeners, upstreams, routes, limits, slos), of both kinds (values serde cannot read,
/// and meanings validation refuses), all reported at their own line and column in one run.
#[test]
fn every_problem_in_the_file_is_reported_in_one_run() {
    let yaml = "listeners:
  - name: public
    bind: 127.0.0.1:8080
  - name: admin-ish
    bind: 127.0.0.1:99999
upstreams:
  users:
    targets: [127.0.0.1:9001]
    timeouts: { connect: 10 }
  orders:
    targets: [127.0.0.1:9002]
    retries: 3
routes:
  - name: users
    match: { path_prefix: /users }
    upstream: users
    retry: { attempts: many }
  - name: users
    match: { path_prefix: /orders }
    upstream: orders
  - name: ghost
    match: { path_prefix: /ghost }
    upstream: nowhere
limits:
  max_inflight: -1
slos:
  - name: users-availability
    route: users
    objective: high
    sli: availability
";
    let errs = errors(yaml);
    let expected = [
        ("levee.yaml:5:11:", "127.0.0.1:99999"),
        ("levee.yaml:9:26:", "duration `10` needs a unit"),
        ("levee.yaml:12:5:", "unknown key `retries`"),
        (
            "levee.yaml:17:24:",
            "routes[0].retry.attempts: invalid type: string \"many\"",
        ),
        ("levee.yaml:18:11:", "duplicate route name `users`"),
        ("levee.yaml:23:15:", "`nowhere`"),
        (
            "levee.yaml:25:17:",
            "limits.max_inflight: invalid value: integer `-1`",
        ),
        (
            "levee.yaml:29:16:",
            "slos[0].objective: invalid type: string \"high\"",
        ),
    ];
    assert_exactly(&errs, &expected);
}

/// Several bad values in one block, and a list item that must go whole: each reported, and
/// the items after a cut one still at their own lines.
#[test]
fn type_errors_in_one_block_and_list_items_are_all_reported() {
    let yaml = format!(
        "{BASE}    timeouts: {{ connect: 10, request: soon }}\n    pool: {{ max_idle_per_target: lots }}\nroutes:\n  - match: {{ path: /x }}\n    upstream: users\n  - name: b\n    match: {{ path: /b }}\n    upstream: nobody\n"
    );
    let errs = errors(&yaml);
    let expected = [
        ("levee.yaml:7:26:", "duration `10` needs a unit"),
        ("levee.yaml:7:39:", "invalid duration `soon`"),
        ("levee.yaml:8:34:", "invalid type: string \"lots\""),
        ("levee.yaml:10:", "routes[0]: missing field `name`"),
        ("levee.yaml:14:15:", "`nobody`"),
    ];
    assert_exactly(&errs, &expected);
}

/// `errs` holds, for each (position prefix, text), one error starting with the one and
/// containing the other, and nothing else.
fn assert_exactly(errs: &[String], expected: &[(&str, &str)]) {
    for (at, text) in expected {
        assert!(
            errs.iter().any(|e| e.starts_with(at) && e.contains(text)),
            "no `{at} ...{text}...` in:\n{}",
            errs.join("\n")
        );
    }
    assert_eq!(errs.len(), expected.len(), "nothing else:\n{}", errs.join("\n"));
}

/// What the salvage pass must not invent or lose: a number where a string is expected reads
/// as its text (as the normal read does), errors under a key read as the key it was meant to
/// be stay at their own place and path, and an error serde cannot give a path keeps its
/// position.
#[test]
fn the_salvage_pass_reports_only_what_is_wrong_and_where() {
    let yaml = format!(
        "{BASE}routes:\n  - name: v2\n    match: {{ path: /v2, headers: {{ x-version: 2, x-debug: true }} }}\n    upstream: users\n  - name: typo\n    mach: {{ path: /t, methods: 5 }}\n    upstreem: users\n"
    );
    let errs = errors(&yaml);
    assert_exactly(
        &errs,
        &[
            ("levee.yaml:12:5:", "unknown key `mach` (did you mean `match`?)"),
            (
                "levee.yaml:12:32:",
                "routes[1].mach.methods: invalid type: integer `5`",
            ),
            (
                "levee.yaml:13:5:",
                "unknown key `upstreem` (did you mean `upstream`?)",
            ),
        ],
    );
    let errs = errors(&format!(
        "{BASE}routes:\n  - name: r\n    upstream: users\n    1: x\n    retry: {{ attempts: x }}\n"
    ));
    assert!(errs[0].starts_with("levee.yaml:10:"), "{errs:?}");
}

#[test]
fn limits_are_validated_where_they_are_written() {
    let routes = "routes:\n  - name: users\n    upstream: users\n";
    let errs = errors(&format!(
        "{BASE}limits:\n  header_read_timeout: 0s\n  http2_keepalive_timeout: 0s\n{routes}"
    ));
    assert_eq!(
        errs,
        [
            "levee.yaml:8:24: limits.header_read_timeout must be above zero",
            "levee.yaml:9:28: limits.http2_keepalive_timeout must be above zero",
        ],
        "{errs:?}"
    );
    // `0s` turns the PINGs off; it is not an error.
    let config = levee::load_str(
        &format!("{BASE}limits:\n  http2_keepalive_interval: 0s\n{routes}"),
        "levee.yaml",
    )
    .unwrap();
    assert_eq!(config.limits.http2_keepalive_interval, None);
    let config = levee::load_str(&format!("{BASE}{routes}"), "levee.yaml").unwrap();
    assert_eq!(
        config.limits.http2_keepalive_interval,
        Some(std::time::Duration::from_secs(30))
    );
    assert_eq!(
        config.limits.http2_keepalive_timeout,
        std::time::Duration::from_secs(10)
    );
    assert_eq!(
        config.limits.http2_idle_timeout,
        Some(std::time::Duration::from_secs(300))
    );
    let config = levee::load_str(
        &format!("{BASE}limits:\n  http2_idle_timeout: 0s\n{routes}"),
        "levee.yaml",
    )
    .unwrap();
    assert_eq!(
        config.limits.http2_idle_timeout, None,
        "0s keeps idle connections"
    );
}

#[test]
fn upstream_tls_protocol_and_http2_are_validated_where_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("ca.pem");
    std::fs::write(&not_pem, "not a certificate").unwrap();
    let yaml = format!(
        "listeners: [{{ name: p, bind: 127.0.0.1:8080 }}]
upstreams:
  a:
    targets: [127.0.0.1:1]
    protocol: h2
  b:
    targets: [127.0.0.1:2]
    protocol: h2c
    tls: {{ sni: \"not a name\", ca_file: \"{}\", client_cert: c.pem }}
  c:
    targets: [127.0.0.1:3]
    http2: {{ max_concurrent_streams: 0, keepalive_timeout: 0s }}
routes:
  - {{ name: a, match: {{ path_prefix: /a }}, upstream: a }}
",
        not_pem.display()
    );
    let errs = errors(&yaml);
    let expected = [
        "levee.yaml:5:15: protocol h2 is HTTP/2 over TLS",
        "levee.yaml:8:15: protocol h2c is HTTP/2 in cleartext",
        "levee.yaml:9:17: invalid sni `not a name`",
        "levee.yaml:9:40: ",
        "levee.yaml:9:79: client_cert needs client_key",
        "levee.yaml:12:12: http2 settings apply only to `protocol: h2`, `h2c` or `auto`",
        "levee.yaml:12:38: max_concurrent_streams must be from 1 to 10000",
        "levee.yaml:12:60: keepalive_timeout must be above zero",
    ];
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    for (err, start) in errs.iter().zip(expected) {
        assert!(
            err.starts_with(start),
            "{err} should start with {start}; all: {errs:#?}"
        );
    }
    assert!(
        errs.iter().any(|e| e.contains("holds no certificate")),
        "{errs:#?}"
    );

    // The defaults, and the warnings for what is valid but risky.
    let config = levee::load_str(
        "listeners: [{ name: p, bind: 127.0.0.1:8080 }]
upstreams:
  s:
    targets: [127.0.0.1:1, 127.0.0.1:2]
    protocol: auto
    tls: { insecure_skip_verify: true }
  plain:
    targets: [127.0.0.1:3, 127.0.0.1:4]
    protocol: auto
routes:
  - { name: s, match: { path_prefix: /s }, upstream: s }
  - { name: plain, match: { path_prefix: /p }, upstream: plain }
",
        "levee.yaml",
    )
    .unwrap();
    let s = &config.upstreams[1];
    assert_eq!(s.protocol, levee::config::spec::UpstreamProtocol::Auto);
    assert!(s.tls.as_ref().unwrap().insecure_skip_verify);
    assert_eq!(s.http2.max_concurrent_streams, 100);
    assert_eq!(
        s.http2.keepalive_interval,
        Some(std::time::Duration::from_secs(30))
    );
    let warnings: Vec<String> = config.warnings.iter().map(|w| w.to_string()).collect();
    for text in [
        "levee.yaml:6:34: upstream `s` does not verify its targets' certificates",
        "levee.yaml:9:15: upstream `plain` has `protocol: auto` without `tls`",
    ] {
        assert!(
            warnings.iter().any(|w| w.starts_with(text)),
            "{text} in {warnings:#?}"
        );
    }
}

#[test]
fn grpc_health_checks_retries_and_slo_statuses_are_validated() {
    let yaml = "listeners: [{ name: p, bind: 127.0.0.1:8080 }]
upstreams:
  a:
    targets: [127.0.0.1:1]
    health_check: { kind: grpc }
  b:
    targets: [127.0.0.1:2]
    protocol: h2c
    health_check: { kind: grpc, path: /healthz }
  c:
    targets: [127.0.0.1:3]
    health_check: { kind: http }
routes:
  - name: a
    match: { path_prefix: /a }
    upstream: a
    retry: { on: [grpc:unavailable, grpc:ok, grpc:nope] }
slos:
  - { name: s, route: a, objective: 99.9, sli: availability, bad_grpc_statuses: [unavailable, teapot] }
";
    let errs = errors(yaml);
    let expected = [
        ("levee.yaml:5:27: ", "gRPC health checks need HTTP/2"),
        (
            "levee.yaml:9:39: ",
            "`path` is only used by health checks of kind http",
        ),
        ("levee.yaml:12:19: ", "a health check of kind http needs a `path`"),
        ("levee.yaml:17:37: ", "unknown gRPC status in `grpc:ok`"),
        ("levee.yaml:17:46: ", "unknown gRPC status in `grpc:nope`"),
        // The route was refused, so the SLO names a route that does not exist.
        ("levee.yaml:19:23: ", "no route named `a`"),
        ("levee.yaml:19:95: ", "`teapot` is not a gRPC error status"),
    ];
    assert_eq!(errs.len(), expected.len(), "{errs:#?}");
    for (err, (at, text)) in errs.iter().zip(expected) {
        assert!(
            err.starts_with(at) && err.contains(text),
            "{err} should be {at}{text}; all: {errs:#?}"
        );
    }
}

#[test]
fn http3_needs_a_tls_listener() {
    let errs = errors(
        "listeners: [{ name: p, bind: 127.0.0.1:8080, http3: true }]
upstreams: { u: { targets: [127.0.0.1:1] } }
routes: [{ name: r, upstream: u }]
",
    );
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(
        errs[0].starts_with("levee.yaml:1:53: http3 needs tls"),
        "{errs:#?}"
    );
}

#[test]
fn guardrails_are_validated_where_they_are_written() {
    let errs = errors(
        "listeners: [{ name: p, bind: 127.0.0.1:8080 }]
llm:
  providers: { p: { kind: openai_compatible, base_url: \"http://127.0.0.1:1/v1\" } }
  models: [{ name: m, targets: [{ provider: p, model: x }] }]
upstreams: { u: { targets: [127.0.0.1:1] } }
routes:
  - name: proxied
    match: { path_prefix: /p }
    upstream: u
    guardrails: [{ name: a, pii: [email] }]
  - name: ai
    llm: true
    guardrails:
      - { name: two, pii: [email], max_prompt_tokens: 5 }
      - { name: bad, deny: { patterns: [\"(unclosed\"] } }
      - { name: bad, deny: { words: [ok] } }
      - { name: hook, webhook: { url: \"ftp://x\" } }
      - { name: size, max_prompt_tokens: 9, on: [response] }
",
    );
    assert_exactly(
        &errs,
        &[
            ("levee.yaml:10:17", "guardrails check prompts and answers"),
            (
                "levee.yaml:14:9",
                "exactly one of `pii`, `deny`, `max_prompt_tokens` and `webhook`",
            ),
            ("levee.yaml:15:41", "not a valid pattern: unclosed group"),
            ("levee.yaml:16:17", "a second guardrail named `bad`"),
            ("levee.yaml:17:39", "an http:// or https:// URL"),
            ("levee.yaml:18:49", "`max_prompt_tokens` checks requests only"),
        ],
    );
}

#[test]
fn the_mcp_block_and_mcp_routes_are_validated_where_they_are_written() {
    let errs = errors(
        "listeners: [{ name: p, bind: 127.0.0.1:8080 }]
mcp:
  servers:
    good: { url: \"http://127.0.0.1:1/mcp\" }
    both: { url: \"http://127.0.0.1:1/mcp\", command: x }
    bad__name: { command: x }
    old: { url: \"http://127.0.0.1:1/sse\", transport: sse }
    slow: { command: x, rate_limit: fast }
  access:
    - { consumers: [a], servers: [nowhere], tools: [good_tool] }
routes:
  - { name: m, match: { path: /mcp }, mcp: true, mcp_servers: [good, missing] }
",
    );
    assert_exactly(
        &errs,
        &[
            (
                "levee.yaml:5:11",
                "needs exactly one of `url` (remote) and `command`",
            ),
            ("levee.yaml:6:16", "server name `bad__name`"),
            ("levee.yaml:8:37", "invalid rate `fast`"),
            ("levee.yaml:10:35", "no MCP server named `nowhere`"),
            ("levee.yaml:10:53", "`good_tool` is not `server__tool`"),
            ("levee.yaml:12:70", "no MCP server named `missing`"),
        ],
    );
}
