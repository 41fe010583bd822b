#!/usr/bin/env bash
# What the size of the route table costs a request, and what reloading a large one costs.
#
# Started on loopback:
#   127.0.0.1:18281  nginx upstream answering 200 "ok\n"
#   127.0.0.1:18283  Levee "small": 10 routes (path prefixes /svc-0 .. /svc-9)      (admin 19283)
#   127.0.0.1:18285  Levee "large": 10,000 routes (/svc-0 .. /svc-9999)            (admin 19285)
# Each request goes to the LAST route of its table (/svc-9/item, /svc-9999/item): the worst
# case for a table walked in order. Rounds alternate small/large with wrk -t2 -c64; the ratio
# large/small is the routing cost of 10,000 routes (target: at least 0.95).
#
# Then, while wrk loads "large" for DURATION seconds, its config file is rewritten (one
# route's prefix changed) and POST /api/v1/config/reload is timed with curl, RELOADS times:
# the median and the worst (the answer comes once every worker serves the new config) and
# the non-2xx answers wrk saw during the reloads (target: none, and reloads under 100 ms).
#
# Environment: ROUNDS (default 5), DURATION seconds (default 5), RELOADS (default 10),
# LEVEE_BIN (default: build target/release/levee), KEEP_TMP=1 to keep configs and logs.
set -euo pipefail

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-5}"
RELOADS="${RELOADS:-10}"
KEEP_TMP="${KEEP_TMP:-0}"
UP_PORT=18281 SMALL_PORT=18283 SMALL_ADMIN=19283 LARGE_PORT=18285 LARGE_ADMIN=19285

BENCH_NAME=routes-bench
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
for v in ROUNDS DURATION RELOADS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done

ensure_tools
ensure_levee
ports_free $UP_PORT $SMALL_PORT $SMALL_ADMIN $LARGE_PORT $LARGE_ADMIN
setup_tmp
start_nginx_upstream $UP_PORT

# config PORT ADMIN ROUTES [RENAMED]: ROUTES prefix routes to one upstream; with RENAMED,
# route 0's prefix is /renamed-RENAMED (a change a reload must apply).
config() {
  local port="$1" admin="$2" routes="$3" renamed="${4:-}"
  cat <<EOF
listeners:
  - name: public
    bind: 127.0.0.1:$port
admin:
  bind: 127.0.0.1:$admin
access_log: { enabled: false }
upstreams:
  origin:
    targets: [127.0.0.1:$UP_PORT]
routes:
EOF
  awk -v n="$routes" -v renamed="$renamed" 'BEGIN {
    for (i = 0; i < n; i++) {
      prefix = (i == 0 && renamed != "") ? "/renamed-" renamed : "/svc-" i
      printf "  - { name: r%d, match: { path_prefix: %s }, upstream: origin }\n", i, prefix
    }
  }'
}
config $SMALL_PORT $SMALL_ADMIN 10 >"$TMP/small.yaml"
config $LARGE_PORT $LARGE_ADMIN 10000 >"$TMP/large.yaml"
start_bg "$TMP/small.log" "$LEVEE_BIN" run --config "$TMP/small.yaml"
start_bg "$TMP/large.log" "$LEVEE_BIN" run --config "$TMP/large.yaml"
wait_http "http://127.0.0.1:$UP_PORT/"
wait_http "http://127.0.0.1:$SMALL_PORT/svc-9/item"
wait_http "http://127.0.0.1:$LARGE_PORT/svc-9999/item"
for url in "http://127.0.0.1:$SMALL_PORT/svc-9/item" "http://127.0.0.1:$LARGE_PORT/svc-9999/item"; do
  code="$(curl -s -o /dev/null -w '%{http_code}' "$url")"
  [[ "$code" == 200 ]] || die "$url answered $code, not 200"
done

URL[small]="http://127.0.0.1:$SMALL_PORT/svc-9/item"
URL[large]="http://127.0.0.1:$LARGE_PORT/svc-9999/item"
ab_rounds small large
summarize small large

# Reloads of the large table under load.
log "reloading the 10,000-route config $RELOADS times under load"
wrk -t2 -c64 -d"$((DURATION + 5))s" --latency "${URL[large]}" >"$TMP/wrk-reloads.txt" 2>&1 &
WRK_PID=$!
sleep 1
times=()
for ((i = 1; i <= RELOADS; i++)); do
  config $LARGE_PORT $LARGE_ADMIN 10000 "$i" >"$TMP/large.yaml.next"
  mv "$TMP/large.yaml.next" "$TMP/large.yaml"
  answer="$(curl -s -o "$TMP/reload-$i.json" -w '%{http_code} %{time_total}' -X POST "http://127.0.0.1:$LARGE_ADMIN/api/v1/config/reload")"
  [[ "${answer%% *}" == 200 ]] || die "reload $i answered ${answer%% *}: $(cat "$TMP/reload-$i.json")"
  times+=("$(awk -v t="${answer#* }" 'BEGIN { printf "%.1f", t * 1000 }')")
  sleep 0.3
done
wait "$WRK_PID" || die "wrk failed during the reloads"
reload_median="$(median '%.1f' "${times[@]}")"
reload_max="$(printf '%s\n' "${times[@]}" | sort -g | tail -1)"
non2xx="$(awk '/Non-2xx/ { print $NF }' "$TMP/wrk-reloads.txt")"
socket_errors="$(awk '/Socket errors/ { print }' "$TMP/wrk-reloads.txt")"
renamed="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$LARGE_PORT/renamed-$RELOADS/x")"
[[ "$renamed" == 200 ]] || die "the last reload's route is not served (answered $renamed)"
echo "reloads of 10,000 routes under load: median ${reload_median} ms, worst ${reload_max} ms (${times[*]}); non-2xx during them: ${non2xx:-0}; ${socket_errors:-no socket errors}"
rss_kb="$(awk '/^VmRSS/ { print $2 }' "/proc/$(pgrep -f "run --config $TMP/large.yaml" | head -1)/status" 2>/dev/null || echo 0)"

cat >"$TMP/header.md" <<'HEAD'
## Routing at scale (bench/routes.sh)

Two gateways, the same load (`wrk -t2 -c64`, access log off), each request for the last route of its
table: **small** has 10 path-prefix routes, **large** 10,000. The ratio is the median of per-round
large/small req/s (target: at least 0.95). Then `RELOADS` reloads of the 10,000-route file (one route
changed each time) under load: the median and worst `POST /api/v1/config/reload` time (target: under
100 ms) and the non-2xx answers meanwhile (target: none).

| date (UTC) | commit | machine | command | small req/s | large req/s | small p50 / p99 ms | large p50 / p99 ms | large/small | reload median / worst ms | non-2xx during reloads | large RSS MiB |
|---|---|---|---|---|---|---|---|---|---|---|---|
HEAD
row="| $(date -u '+%Y-%m-%d %H:%M') | $(commit_label) | $(machine_label) | \`ROUNDS=$ROUNDS DURATION=$DURATION RELOADS=$RELOADS bench/routes.sh\` | ${M[small,rps]} | ${M[large,rps]} | ${M[small,p50]} / ${M[small,p99]} | ${M[large,p50]} / ${M[large,p99]} | $ratio | $reload_median / $reload_max | ${non2xx:-0} | $(( rss_kb / 1024 )) |"
append_row "$row" '<!-- routes rows end -->' "$TMP/header.md"
