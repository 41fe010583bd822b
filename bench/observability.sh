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

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
log() { printf '[obs-bench] %s\n' "$*" >&2; }
die() { printf '[obs-bench] ERROR: %s\n' "$*" >&2; exit 1; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer"

find_nginx() {
  NGINX="$(command -v nginx || true)"
  if [[ -z "$NGINX" && -x /usr/sbin/nginx ]]; then NGINX=/usr/sbin/nginx; fi
}
find_nginx
if [[ -z "$NGINX" ]] || ! command -v wrk >/dev/null || ! command -v curl >/dev/null; then
  command -v apt-get >/dev/null || die "need nginx, wrk and curl (no apt-get here to install them)"
  sudo=(); if [[ $EUID -ne 0 ]]; then sudo=(sudo); fi
  log "installing nginx wrk curl"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx wrk curl >/dev/null
  # The package may start a system nginx on port 80: not ours, stop it.
  "${sudo[@]}" nginx -s quit 2>/dev/null || true
  find_nginx
fi
[[ -n "$NGINX" ]] && command -v wrk >/dev/null || die "nginx or wrk still missing"

if [[ -z "${LEVEE_BIN:-}" ]]; then
  log "building levee: cargo build --release -p levee-cli"
  (cd "$REPO_ROOT" && cargo build --release -p levee-cli)
  LEVEE_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/levee"
fi
[[ -x "$LEVEE_BIN" ]] || die "LEVEE_BIN '$LEVEE_BIN' is not executable"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $UP_PORT $OTLP_PORT $QUIET_PORT $QUIET_ADMIN $FULL_PORT $FULL_ADMIN; do
  if port_open "$p"; then die "127.0.0.1:$p is already in use"; fi
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/levee-obs-bench.XXXXXX")"
chmod 755 "$TMP"
PIDS=()
cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for ((i = 0; i < 50; i++)); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start_bg() { local out="$1"; shift; setsid "$@" >>"$out" 2>&1 </dev/null & PIDS+=("$!"); }

wait_http() {
  local url="$1" deadline=$(( $(date +%s) + 10 ))
  while (( $(date +%s) < deadline )); do
    curl -s -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.1
  done
  die "$url did not answer within 10 s"
}

mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    client_max_body_size 64m;
    keepalive_requests 100000;
    server { listen 127.0.0.1:$UP_PORT; location / { return 200 "ok\n"; } }
    server { listen 127.0.0.1:$OTLP_PORT; location / { return 200; } }
}
EOF
start_bg "$TMP/nginx/stdout.log" "$NGINX" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -g 'daemon off;'

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

declare -A URL=([quiet]="http://127.0.0.1:$QUIET_PORT/" [full]="http://127.0.0.1:$FULL_PORT/")
declare -A RPS P50 P99 ERR
ratios=()
run_wrk() {
  local out="$TMP/wrk-$1-$2.txt"
  wrk -t2 -c64 -d"${DURATION}s" --latency "${URL[$1]}" >"$out" 2>&1 || die "wrk failed against $1"
  RPS[$1,$2]="$(awk '/^Requests\/sec:/ { print $2 }' "$out")"
  P50[$1,$2]="$(awk '$1 == "50%" { v = $2 + 0; if ($2 ~ /us$/) v /= 1000; if ($2 ~ /[^m]s$/ && $2 !~ /us$/) v *= 1000; print v }' "$out")"
  P99[$1,$2]="$(awk '$1 == "99%" { v = $2 + 0; if ($2 ~ /us$/) v /= 1000; if ($2 ~ /[^m]s$/ && $2 !~ /us$/) v *= 1000; print v }' "$out")"
  ERR[$1,$2]="$(awk '/Non-2xx|Socket errors/ { n++ } END { print n + 0 }' "$out")"
}
median() { printf '%s\n' "${@:2}" | sort -g | awk -v f="$1" '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf f "\n", m }'; }

log "warming up"
for s in quiet full; do wrk -t2 -c64 -d1s "${URL[$s]}" >/dev/null 2>&1; done
for ((r = 1; r <= ROUNDS; r++)); do
  for s in quiet full; do log "round $r/$ROUNDS: $s"; run_wrk "$s" "$r"; done
  : >"$TMP/full.log"   # the access log; opened in append mode, so truncating is safe
  ratios+=("$(awk -v f="${RPS[full,$r]}" -v q="${RPS[quiet,$r]}" 'BEGIN { printf "%.3f", f / q }')")
  printf 'round %d: quiet %s req/s (p50 %s ms, p99 %s ms), full %s req/s (p50 %s ms, p99 %s ms), full/quiet %s\n' \
    "$r" "${RPS[quiet,$r]}" "${P50[quiet,$r]}" "${P99[quiet,$r]}" "${RPS[full,$r]}" "${P50[full,$r]}" "${P99[full,$r]}" "${ratios[-1]}"
done

metric() { curl -s "http://127.0.0.1:$FULL_ADMIN/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
sleep 2   # let the exporter's last batches leave before reading its counters
exported="$(metric levee_trace_spans_exported_total)"
dropped_q="$(metric 'levee_trace_spans_dropped_total{reason="queue_full"}')"
dropped_e="$(metric 'levee_trace_spans_dropped_total{reason="export_failed"}')"
calls_dropped="$(metric levee_calllog_dropped_total)"
log_dropped="$(metric levee_access_log_dropped_total)"
errors=0
for k in "${!ERR[@]}"; do errors=$(( errors + ${ERR[$k]} )); done

declare -A M
for s in quiet full; do
  v_rps=() v_p50=() v_p99=()
  for ((r = 1; r <= ROUNDS; r++)); do v_rps+=("${RPS[$s,$r]}"); v_p50+=("${P50[$s,$r]}"); v_p99+=("${P99[$s,$r]}"); done
  M[$s,rps]="$(median '%.0f' "${v_rps[@]}")"; M[$s,p50]="$(median '%.3f' "${v_p50[@]}")"; M[$s,p99]="$(median '%.3f' "${v_p99[@]}")"
done
ratio="$(median '%.3f' "${ratios[@]}")"
echo
echo "quiet: ${M[quiet,rps]} req/s p50 ${M[quiet,p50]} ms p99 ${M[quiet,p99]} ms"
echo "full:  ${M[full,rps]} req/s p50 ${M[full,p50]} ms p99 ${M[full,p99]} ms"
echo "full/quiet per round: ${ratios[*]}  median: $ratio  (cost: $(awk -v r="$ratio" 'BEGIN { printf "%.1f%%", (1 - r) * 100 }'))"
echo "spans exported $exported, dropped queue_full=$dropped_q export_failed=$dropped_e; call-log drops $calls_dropped; access-log drops $log_dropped; wrk error lines $errors"

commit="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- . ':(exclude)bench/RESULTS.md' 2>/dev/null)" ]]; then commit+="-dirty"; fi
machine="$(nproc) cores, $(uname -r)"
row="| $(date -u '+%Y-%m-%d %H:%M') | $commit | $machine | \`ROUNDS=$ROUNDS DURATION=$DURATION SAMPLE_RATIO=$SAMPLE_RATIO bench/observability.sh\` | ${M[quiet,rps]} | ${M[full,rps]} | ${M[quiet,p50]} / ${M[quiet,p99]} | ${M[full,p50]} / ${M[full,p99]} | $ratio | $exported | q=$dropped_q e=$dropped_e | $calls_dropped | $log_dropped |"
marker='<!-- observability rows end -->'
if ! grep -qF "$marker" "$RESULTS_FILE"; then
  # The section goes before "## Runs", whose table bench/run.sh appends to at the end of the file.
  awk -v marker="$marker" '
    /^## Runs/ && !done {
      print "## Observability cost (bench/observability.sh)"
      print ""
      print "Same Levee binary and load (`wrk -t2 -c64`), two configs: **quiet** (metrics only) and **full** (metrics,"
      print "JSON access log to a file, SQLite call log, tracing of every request exported over OTLP/HTTP). The ratio"
      print "is the median of per-round full/quiet req/s. Spans exported and the drop counters come from the full"
      print "gateway'"'"'s /metrics after the run: drops would mean work was skipped and the cost understated."
      print ""
      print "| date (UTC) | commit | machine | command | quiet req/s | full req/s | quiet p50 / p99 ms | full p50 / p99 ms | full/quiet | spans exported | spans dropped | call-log drops | access-log drops |"
      print "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
      print marker
      print ""
      done = 1
    }
    { print }' "$RESULTS_FILE" >"$TMP/results.md"
  cat "$TMP/results.md" >"$RESULTS_FILE"
fi
awk -v row="$row" -v marker="$marker" '$0 == marker { print row } { print }' "$RESULTS_FILE" >"$TMP/results.md"
cat "$TMP/results.md" >"$RESULTS_FILE"
log "row added to ${RESULTS_FILE#"$REPO_ROOT"/}"
