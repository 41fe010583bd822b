#!/usr/bin/env bash
# What counting SLOs costs on the request path: the same Levee binary, the same load, two
# configs that differ only in `slos` (an availability and a latency SLO on the one route,
# saved to a data_dir) and `alerting` (evaluated every second).
#
# Started on loopback:
#   127.0.0.1:18281  nginx upstream answering 200 "ok\n"
#   127.0.0.1:18283  Levee "plain" (admin 19283)
#   127.0.0.1:18285  Levee "slo"   (admin 19285)
# Rounds alternate plain/slo with wrk -t2 -c64; medians and the slo/plain ratio are printed
# and appended to the "SLO counting cost" table of bench/RESULTS.md, with the events the SLO
# gateway counted (so a run that counted nothing cannot pass for a cheap one).
#
# Environment: ROUNDS (default 5), DURATION seconds (default 5), LEVEE_BIN (default: build
# target/release/levee), KEEP_TMP=1 to keep configs and logs.
set -euo pipefail

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-5}"
KEEP_TMP="${KEEP_TMP:-0}"
UP_PORT=18281 PLAIN_PORT=18283 PLAIN_ADMIN=19283 SLO_PORT=18285 SLO_ADMIN=19285
BENCH_NAME=slo-bench
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer"

ensure_tools
ensure_levee
ports_free $UP_PORT $PLAIN_PORT $PLAIN_ADMIN $SLO_PORT $SLO_ADMIN
setup_tmp
start_nginx_upstream $UP_PORT

common() {
  cat <<CONF
listeners:
  - name: public
    bind: 127.0.0.1:$1
admin:
  bind: 127.0.0.1:$2
access_log: { enabled: false }
upstreams:
  origin:
    targets: [127.0.0.1:$UP_PORT]
routes:
  - name: all
    match: { path_prefix: / }
    upstream: origin
CONF
}
common $PLAIN_PORT $PLAIN_ADMIN >"$TMP/plain.yaml"
{
  common $SLO_PORT $SLO_ADMIN
  cat <<CONF
data_dir: $TMP/data
call_log: { enabled: false }
slos:
  - { name: all-availability, route: all, objective: 99.9, window: 30d, sli: availability }
  - { name: all-latency, route: all, objective: 99, window: 30d, sli: { latency_below: 100ms } }
alerting: { evaluation_interval: 1s }
CONF
} >"$TMP/slo.yaml"
start_bg "$TMP/plain.log" "$LEVEE_BIN" run --config "$TMP/plain.yaml"
start_bg "$TMP/slo.log" "$LEVEE_BIN" run --config "$TMP/slo.yaml"
for p in $UP_PORT $PLAIN_PORT $SLO_PORT; do wait_http "http://127.0.0.1:$p/"; done

URL[plain]="http://127.0.0.1:$PLAIN_PORT/"
URL[slo]="http://127.0.0.1:$SLO_PORT/"
ab_rounds plain slo
sleep 2   # one more evaluation before reading the counters
counted="$(curl -s "http://127.0.0.1:$SLO_ADMIN/metrics" | awk '$1 ~ /^levee_slo_requests_total\{slo="all-availability"/ { n += $2 } END { print n + 0 }')"
summarize plain slo
echo "events counted by all-availability: $counted; wrk error lines: $errors"

cat >"$TMP/header.md" <<'HEAD'
## SLO counting cost (bench/slo.sh)

Same Levee binary and load (`wrk -t2 -c64`), two configs that differ only in two SLOs on the
route (availability and latency, saved to a data_dir, alerts evaluated every second). The
ratio is the median of per-round slo/plain req/s; "counted" is what the SLO gateway's
`levee_slo_requests_total` says it counted.

| date (UTC) | commit | machine | command | plain req/s | slo req/s | plain p50 / p99 ms | slo p50 / p99 ms | slo/plain | counted | wrk errors |
|---|---|---|---|---|---|---|---|---|---|---|
HEAD
row="| $(date -u '+%Y-%m-%d %H:%M') | $(commit_label) | $(machine_label) | \`ROUNDS=$ROUNDS DURATION=$DURATION bench/slo.sh\` | ${M[plain,rps]} | ${M[slo,rps]} | ${M[plain,p50]} / ${M[plain,p99]} | ${M[slo,p50]} / ${M[slo,p99]} | $ratio | $counted | $errors |"
append_row "$row" '<!-- slo rows end -->' "$TMP/header.md"
