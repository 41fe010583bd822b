#!/usr/bin/env bash
# What Levee's observability costs: the same Levee binary, the same load, two configs.
#
#   quiet  metrics only (they cannot be turned off): no access log, no call log, no tracing
#   full   metrics + JSON access log (to a file) + SQLite call log + OpenTelemetry tracing
#          (every request by default: SAMPLE_RATIO=1) exported over OTLP/HTTP
#
# Started on loopback:
#   127.0.0.1:18181  nginx upstream answering 200 "ok\n"
#   127.0.0.1:18189  nginx standing in for the OTLP collector: answers every POST 200
#                    (it does not decode spans; Levee's side of the export, encoding and
#                    posting every batch, is the same as with a real collector)
#   127.0.0.1:18183  Levee "quiet" (admin 19903)
#   127.0.0.1:18185  Levee "full"  (admin 19905)
# Rounds alternate quiet/full with wrk -t2 -c64; medians and the full/quiet ratio are printed
# and appended to the "Observability cost" table of bench/RESULTS.md, with the spans exported
# and anything dropped (a drop would mean part of the work was skipped, so the cost shown would
# be too low).
#
# Environment: ROUNDS (default 5), DURATION seconds (default 5), SAMPLE_RATIO (the full
# config's tracing.sample_ratio, default 1), LEVEE_BIN (default: build target/release/levee),
# KEEP_TMP=1 to keep configs and logs.
set -euo pipefail

ROUNDS="${ROUNDS:-5}"
SAMPLE_RATIO="${SAMPLE_RATIO:-1}"
DURATION="${DURATION:-5}"
KEEP_TMP="${KEEP_TMP:-0}"
UP_PORT=18181 OTLP_PORT=18189 QUIET_PORT=18183 QUIET_ADMIN=19903 FULL_PORT=18185 FULL_ADMIN=19905

BENCH_NAME=obs-bench
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer"

ensure_tools
ensure_levee
ports_free $UP_PORT $OTLP_PORT $QUIET_PORT $QUIET_ADMIN $FULL_PORT $FULL_ADMIN
setup_tmp
start_nginx_upstream $UP_PORT "server { listen 127.0.0.1:$OTLP_PORT; location / { return 200; } }"

common() {
  cat <<EOF
listeners:
  - name: public
    bind: 127.0.0.1:$1
admin:
  bind: 127.0.0.1:$2
upstreams:
  origin:
    targets: [127.0.0.1:$UP_PORT]
routes:
  - name: all
    match: { path_prefix: / }
    upstream: origin
EOF
}
{ common $QUIET_PORT $QUIET_ADMIN; echo "access_log: { enabled: false }"; } >"$TMP/quiet.yaml"
{
  common $FULL_PORT $FULL_ADMIN
  echo "data_dir: $TMP/data"
  echo "tracing: { otlp_endpoint: 'http://127.0.0.1:$OTLP_PORT', sample_ratio: $SAMPLE_RATIO }"
} >"$TMP/full.yaml"
start_bg "$TMP/quiet.log" "$LEVEE_BIN" run --config "$TMP/quiet.yaml"
start_bg "$TMP/full.log" "$LEVEE_BIN" run --config "$TMP/full.yaml"
for p in $UP_PORT $QUIET_PORT $FULL_PORT; do wait_http "http://127.0.0.1:$p/"; done

URL[quiet]="http://127.0.0.1:$QUIET_PORT/"
URL[full]="http://127.0.0.1:$FULL_PORT/"
# After each round the access log is emptied (opened in append mode, so truncating is safe).
ab_rounds quiet full ': >"$TMP/full.log"'

metric() { curl -s "http://127.0.0.1:$FULL_ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
sleep 2   # let the exporter's last batches leave before reading its counters
exported="$(metric levee_trace_spans_exported_total)"
dropped_q="$(metric 'levee_trace_spans_dropped_total{reason="queue_full"}')"
dropped_e="$(metric 'levee_trace_spans_dropped_total{reason="export_failed"}')"
calls_dropped="$(metric levee_calllog_dropped_total)"
log_dropped="$(metric levee_access_log_dropped_total)"
summarize quiet full
echo "spans exported $exported, dropped queue_full=$dropped_q export_failed=$dropped_e; call-log drops $calls_dropped; access-log drops $log_dropped; wrk error lines $errors"

cat >"$TMP/header.md" <<'HEAD'
## Observability cost (bench/observability.sh)

Same Levee binary and load (`wrk -t2 -c64`), two configs: **quiet** (metrics only) and **full** (metrics,
JSON access log to a file, SQLite call log, tracing of every request exported over OTLP/HTTP). The ratio
is the median of per-round full/quiet req/s. Spans exported and the drop counters come from the full
gateway's /metrics after the run: drops would mean work was skipped and the cost understated.

| date (UTC) | commit | machine | command | quiet req/s | full req/s | quiet p50 / p99 ms | full p50 / p99 ms | full/quiet | spans exported | spans dropped | call-log drops | access-log drops |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
HEAD
row="| $(date -u '+%Y-%m-%d %H:%M') | $(commit_label) | $(machine_label) | \`ROUNDS=$ROUNDS DURATION=$DURATION SAMPLE_RATIO=$SAMPLE_RATIO bench/observability.sh\` | ${M[quiet,rps]} | ${M[full,rps]} | ${M[quiet,p50]} / ${M[quiet,p99]} | ${M[full,p50]} / ${M[full,p99]} | $ratio | $exported | q=$dropped_q e=$dropped_e | $calls_dropped | $log_dropped |"
append_row "$row" '<!-- observability rows end -->' "$TMP/header.md"
