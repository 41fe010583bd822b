#!/usr/bin/env bash
# What Levee's protocols cost, each against its peer in the same run (issue 19):
#
#   tls   Levee to its upstream over TLS against the same over cleartext (wrk -t2 -c64
#         through one Levee, two routes: /clear and /tls to the same nginx, on a plain and a
#         TLS port; Levee keeps its upstream connections, so this is the steady-state cost of
#         encrypting, not of handshakes)
#   h2    HTTP/2 clients (h2load, cleartext with prior knowledge) through nginx's http2 proxy
#         against through Levee, both in front of the same nginx origin
#   grpc  gRPC unary calls (crates/levee/examples/grpc_bench.rs: an echo server and a load
#         client with percentiles) directly, through nginx's grpc_pass and through Levee
#         (h2c upstream): direct says what a hop costs at all on this machine, nginx says
#         what a hop costs in a mature proxy
#
# Started on loopback:
#   127.0.0.1:18281  nginx origin, 200 "ok\n"           127.0.0.1:18282  the same over TLS
#   127.0.0.1:18283  nginx http2 proxy to 18281 (its own nginx, 2 workers, as Levee has)
#   127.0.0.1:18284  the gRPC echo server               127.0.0.1:18286  nginx grpc_pass to 18284
#   127.0.0.1:18285  Levee (admin 19906): /clear, /tls, /bench.Echo/, / (to 18281)
#
# Rounds alternate the two sides of each comparison; medians and ratios are printed and
# appended to the "Protocols" table of bench/RESULTS.md.
#
# Environment: ROUNDS (default 3), DURATION seconds (default 5), H2_CLIENTS (h2load -c,
# default 16), H2_STREAMS (h2load -m, default 10), GRPC_CONNS and GRPC_STREAMS (the gRPC
# load, default 4 and 8), LEVEE_BIN (default: build target/release/levee), GRPC_BENCH_BIN
# (default: build the grpc_bench example), KEEP_TMP=1 to keep configs and logs.
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
KEEP_TMP="${KEEP_TMP:-0}"
H2_CLIENTS="${H2_CLIENTS:-16}"
H2_STREAMS="${H2_STREAMS:-10}"
GRPC_CONNS="${GRPC_CONNS:-4}"
GRPC_STREAMS="${GRPC_STREAMS:-8}"
UP_PORT=18281 UP_TLS_PORT=18282 NGX_H2_PORT=18283 GRPC_PORT=18284 LEVEE_PORT=18285 NGX_GRPC_PORT=18286
LEVEE_ADMIN=19906

BENCH_NAME=protocols-bench
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer"

ensure_tools
command -v h2load >/dev/null || die "h2load is missing (apt-get install nghttp2-client)"
command -v openssl >/dev/null || die "openssl is missing"
ensure_levee
if [[ -z "${GRPC_BENCH_BIN:-}" ]]; then
  log "building the gRPC load client: cargo build --release --example grpc_bench -p levee"
  (cd "$REPO_ROOT" && cargo build --release --example grpc_bench -p levee)
  GRPC_BENCH_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/examples/grpc_bench"
fi
ports_free $UP_PORT $UP_TLS_PORT $NGX_H2_PORT $GRPC_PORT $LEVEE_PORT $NGX_GRPC_PORT $LEVEE_ADMIN
setup_tmp

# A leaf certificate (not a CA: webpki refuses a CA certificate as a server's), trusted
# directly through `tls.ca_file`.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
  -subj /CN=localhost -addext subjectAltName=DNS:localhost \
  -addext basicConstraints=critical,CA:FALSE -addext extendedKeyUsage=serverAuth \
  -keyout "$TMP/origin.key" -out "$TMP/origin.pem" 2>/dev/null
start_nginx_upstream $UP_PORT "
    server {
        listen 127.0.0.1:$UP_TLS_PORT ssl;
        ssl_certificate $TMP/origin.pem;
        ssl_certificate_key $TMP/origin.key;
        location / { return 200 \"ok\n\"; }
    }"
# The peer proxy is an nginx of its own with 2 workers, as Levee has 2 (the origin's single
# worker is the same for both).
mkdir -p "$TMP/nginx-h2"
cat >"$TMP/nginx-h2/nginx.conf" <<CONF
worker_processes 2;
pid $TMP/nginx-h2/nginx.pid;
error_log $TMP/nginx-h2/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000;
    http2_max_requests 1000000;
    upstream origin { server 127.0.0.1:$UP_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$NGX_H2_PORT http2;
        location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
    # The gRPC peer: cleartext HTTP/2 in (prior knowledge), h2c out, connections kept.
    upstream echo { server 127.0.0.1:$GRPC_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$NGX_GRPC_PORT http2;
        location / { grpc_pass grpc://echo; }
    }
}
CONF
start_bg "$TMP/nginx-h2/stdout.log" "$NGINX" -p "$TMP/nginx-h2/" -c "$TMP/nginx-h2/nginx.conf" -g 'daemon off;'
start_bg "$TMP/grpc-echo.log" "$GRPC_BENCH_BIN" echo "127.0.0.1:$GRPC_PORT"
cat >"$TMP/levee.yaml" <<EOF
listeners:
  - name: public
    bind: 127.0.0.1:$LEVEE_PORT
admin:
  bind: 127.0.0.1:$LEVEE_ADMIN
upstreams:
  clear:
    targets: [127.0.0.1:$UP_PORT]
  secure:
    targets: [127.0.0.1:$UP_TLS_PORT]
    tls: { ca_file: "$TMP/origin.pem", sni: localhost }
  grpc:
    targets: [127.0.0.1:$GRPC_PORT]
    protocol: h2c
routes:
  - { name: clear, match: { path_prefix: /clear }, upstream: clear }
  - { name: tls, match: { path_prefix: /tls }, upstream: secure }
  - { name: grpc, match: { path_prefix: /bench.Echo/ }, upstream: grpc }
  - { name: all, match: { path_prefix: / }, upstream: clear }
access_log: { enabled: false }
EOF
start_bg "$TMP/levee.log" "$LEVEE_BIN" run --config "$TMP/levee.yaml"
wait_http "http://127.0.0.1:$UP_PORT/"
for ((i = 0; i < 50; i++)); do port_open $NGX_H2_PORT && port_open $NGX_GRPC_PORT && break; sleep 0.1; done
wait_http "http://127.0.0.1:$LEVEE_PORT/clear"
curl -sf -o /dev/null "http://127.0.0.1:$LEVEE_PORT/tls" || die "Levee cannot reach the TLS origin"

# ---- tls: one Levee, /clear and /tls (wrk) ----
URL[clear]="http://127.0.0.1:$LEVEE_PORT/clear"
URL[tls]="http://127.0.0.1:$LEVEE_PORT/tls"
ab_rounds clear tls
summarize clear tls
tls_ratio="$ratio" tls_errors="$errors"
tls_clear="${M[clear,rps]}" tls_tls="${M[tls,rps]}"
tls_lat="${M[clear,p50]} / ${M[clear,p99]} vs ${M[tls,p50]} / ${M[tls,p99]}"

# ---- h2: h2load through nginx's http2 proxy and through Levee ----
# One h2load run against $2 for round $3, into H2RPS[$1,$3] and H2MEAN[$1,$3] (ms).
declare -A H2RPS H2MEAN H2FAIL
run_h2load() {
  local out="$TMP/h2load-$1-$3.txt"
  h2load -t2 -c"$H2_CLIENTS" -m"$H2_STREAMS" -D"$DURATION" "$2" >"$out" 2>&1 || die "h2load failed against $1"
  H2RPS[$1,$3]="$(awk '/^finished in/ { gsub(",", "", $4); print $4 }' "$out")"
  H2MEAN[$1,$3]="$(awk '/^time for request:/ { v = $6 + 0; if ($6 ~ /us$/) v /= 1000; if ($6 ~ /[^m]s$/ && $6 !~ /us$/) v *= 1000; print v }' "$out")"
  H2FAIL[$1,$3]="$(awk '/^requests:/ { print $10 + $12 }' "$out")"
}
h2_ratios=()
h2_errors=0
for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r/$ROUNDS: h2 nginx, h2 levee"
  run_h2load nginx "http://127.0.0.1:$NGX_H2_PORT/" "$r"
  run_h2load levee "http://127.0.0.1:$LEVEE_PORT/" "$r"
  h2_ratios+=("$(awk -v x="${H2RPS[levee,$r]}" -v y="${H2RPS[nginx,$r]}" 'BEGIN { printf "%.3f", x / y }')")
  h2_errors=$(( h2_errors + ${H2FAIL[nginx,$r]} + ${H2FAIL[levee,$r]} ))
  printf 'round %d: h2 nginx %s req/s (mean %s ms), levee %s req/s (mean %s ms), levee/nginx %s\n' \
    "$r" "${H2RPS[nginx,$r]}" "${H2MEAN[nginx,$r]}" "${H2RPS[levee,$r]}" "${H2MEAN[levee,$r]}" "${h2_ratios[-1]}"
done
h2_nginx="$(median '%.0f' $(for ((r = 1; r <= ROUNDS; r++)); do echo "${H2RPS[nginx,$r]}"; done))"
h2_levee="$(median '%.0f' $(for ((r = 1; r <= ROUNDS; r++)); do echo "${H2RPS[levee,$r]}"; done))"
h2_mean_nginx="$(median '%.3f' $(for ((r = 1; r <= ROUNDS; r++)); do echo "${H2MEAN[nginx,$r]}"; done))"
h2_mean_levee="$(median '%.3f' $(for ((r = 1; r <= ROUNDS; r++)); do echo "${H2MEAN[levee,$r]}"; done))"
h2_ratio="$(median '%.3f' "${h2_ratios[@]}")"

# ---- grpc: unary calls directly, through nginx's grpc_pass and through Levee ----
declare -A GRPS GP50 GP99 GERR
run_grpc() {
  local line
  line="$("$GRPC_BENCH_BIN" load "$2/bench.Echo/Unary" "$DURATION" "$GRPC_CONNS" "$GRPC_STREAMS")"
  echo "$line" >"$TMP/grpc-$1-$3.json"
  GRPS[$1,$3]="$(sed -E 's/.*"rps":([0-9.]+).*/\1/' <<<"$line")"
  GP50[$1,$3]="$(sed -E 's/.*"p50_ms":([0-9.]+).*/\1/' <<<"$line")"
  GP99[$1,$3]="$(sed -E 's/.*"p99_ms":([0-9.]+).*/\1/' <<<"$line")"
  GERR[$1,$3]="$(sed -E 's/.*"errors":([0-9]+).*/\1/' <<<"$line")"
}
grpc_ratios=()
grpc_nginx_ratios=()
grpc_errors=0
for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r/$ROUNDS: grpc direct, grpc nginx, grpc levee"
  run_grpc direct "http://127.0.0.1:$GRPC_PORT" "$r"
  run_grpc nginx "http://127.0.0.1:$NGX_GRPC_PORT" "$r"
  run_grpc levee "http://127.0.0.1:$LEVEE_PORT" "$r"
  grpc_ratios+=("$(awk -v x="${GRPS[levee,$r]}" -v y="${GRPS[direct,$r]}" 'BEGIN { printf "%.3f", x / y }')")
  grpc_nginx_ratios+=("$(awk -v x="${GRPS[levee,$r]}" -v y="${GRPS[nginx,$r]}" 'BEGIN { printf "%.3f", x / y }')")
  grpc_errors=$(( grpc_errors + ${GERR[direct,$r]} + ${GERR[nginx,$r]} + ${GERR[levee,$r]} ))
  printf 'round %d: grpc direct %s calls/s (p50 %s ms, p99 %s ms), nginx %s calls/s (p50 %s ms, p99 %s ms), levee %s calls/s (p50 %s ms, p99 %s ms), levee/direct %s, levee/nginx %s\n' \
    "$r" "${GRPS[direct,$r]}" "${GP50[direct,$r]}" "${GP99[direct,$r]}" "${GRPS[nginx,$r]}" "${GP50[nginx,$r]}" "${GP99[nginx,$r]}" \
    "${GRPS[levee,$r]}" "${GP50[levee,$r]}" "${GP99[levee,$r]}" "${grpc_ratios[-1]}" "${grpc_nginx_ratios[-1]}"
done
med() { local k="$1" s="$2" vals=() r; for ((r = 1; r <= ROUNDS; r++)); do eval "vals+=(\"\${$k[$s,$r]}\")"; done; median '%.3f' "${vals[@]}"; }
g_direct="$(median '%.0f' $(for ((r = 1; r <= ROUNDS; r++)); do echo "${GRPS[direct,$r]}"; done))"
g_levee="$(median '%.0f' $(for ((r = 1; r <= ROUNDS; r++)); do echo "${GRPS[levee,$r]}"; done))"
g_nginx="$(median '%.0f' $(for ((r = 1; r <= ROUNDS; r++)); do echo "${GRPS[nginx,$r]}"; done))"
g_lat="$(med GP50 direct) / $(med GP99 direct) vs $(med GP50 levee) / $(med GP99 levee)"
g_nginx_lat="$(med GP50 nginx) / $(med GP99 nginx)"
g_ratio="$(median '%.3f' "${grpc_ratios[@]}")"
g_nginx_ratio="$(median '%.3f' "${grpc_nginx_ratios[@]}")"

echo
echo "tls:  clear $tls_clear req/s, tls $tls_tls req/s, tls/clear $tls_ratio (p50 / p99 ms: $tls_lat)"
echo "h2:   nginx $h2_nginx req/s, levee $h2_levee req/s, levee/nginx $h2_ratio (mean ms: $h2_mean_nginx vs $h2_mean_levee)"
echo "grpc: direct $g_direct calls/s, nginx $g_nginx calls/s, levee $g_levee calls/s, levee/direct $g_ratio, levee/nginx $g_nginx_ratio (p50 / p99 ms: $g_lat; nginx $g_nginx_lat)"

cat >"$TMP/header.md" <<'EOF'
## Protocols

`bench/protocols.sh`: TLS to the upstream against cleartext through one Levee (wrk -t2 -c64);
HTTP/2 clients (h2load, cleartext prior knowledge) through nginx's http2 proxy against
through Levee; gRPC unary calls (crates/levee/examples/grpc_bench.rs) through Levee against
directly and, from 2026-12-04, against nginx's `grpc_pass` in the same run. Medians of ROUNDS
rounds; latencies p50 / p99 (h2load reports means only).

| date (UTC) | commit | machine | command | clear req/s | tls req/s | tls/clear | clear vs tls p50 / p99 ms | h2 nginx req/s | h2 levee req/s | h2 levee/nginx | h2 mean ms nginx / levee | grpc direct calls/s | grpc levee calls/s | grpc levee/direct | grpc direct vs levee p50 / p99 ms | errors | grpc nginx calls/s | grpc levee/nginx | grpc nginx p50 / p99 ms |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
EOF
row="| $(date -u '+%Y-%m-%d %H:%M') | $(commit_label) | $(machine_label) | \`ROUNDS=$ROUNDS DURATION=$DURATION bench/protocols.sh\` | $tls_clear | $tls_tls | $tls_ratio | $tls_lat | $h2_nginx | $h2_levee | $h2_ratio | $h2_mean_nginx / $h2_mean_levee | $g_direct | $g_levee | $g_ratio | $g_lat | $(( tls_errors + h2_errors + grpc_errors )) | $g_nginx | $g_nginx_ratio | $g_nginx_lat |"
append_row "$row" "<!-- protocols rows -->" "$TMP/header.md"
