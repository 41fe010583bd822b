#!/usr/bin/env bash
# What an open dashboard costs the data plane (issue 17: less than 1% throughput with the
# overview open). One Levee, one config, the same load (wrk -t2 -c64); each round runs it
# twice: **idle** (nobody polls the admin API) and **polled** (TABS emulated dashboard tabs,
# each fetching what the overview page fetches, `GET /api/v1/overview`, every POLL seconds,
# with curl, for the whole wrk run). The ratio is the median of the per-round polled/idle
# req/s; a row is appended to the "Dashboard polling cost" table of bench/RESULTS.md.
#
# Started on loopback: 127.0.0.1:18281 nginx upstream answering 200 "ok\n", 127.0.0.1:18283
# Levee (admin 19983).
#
# Environment: ROUNDS (default 5), DURATION seconds (default 10), POLL seconds between a
# tab's fetches (default 5, the dashboard's refresh), TABS (default 1), LEVEE_BIN (default:
# build target/release/levee), KEEP_TMP=1 to keep configs and logs.
set -euo pipefail

ROUNDS="${ROUNDS:-5}"
DURATION="${DURATION:-10}"
POLL="${POLL:-5}"
TABS="${TABS:-1}"
KEEP_TMP="${KEEP_TMP:-0}"
UP_PORT=18281 GW_PORT=18283 GW_ADMIN=19983

BENCH_NAME=dashboard-bench
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
for v in ROUNDS DURATION POLL TABS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done

ensure_tools
ensure_levee
ports_free $UP_PORT $GW_PORT $GW_ADMIN
setup_tmp
start_nginx_upstream $UP_PORT

cat >"$TMP/levee.yaml" <<EOF
listeners:
  - name: public
    bind: 127.0.0.1:$GW_PORT
admin:
  bind: 127.0.0.1:$GW_ADMIN
access_log: { enabled: false }
upstreams:
  origin:
    targets: [127.0.0.1:$UP_PORT]
routes:
  - name: all
    match: { path_prefix: / }
    upstream: origin
EOF
start_bg "$TMP/levee.log" "$LEVEE_BIN" run --config "$TMP/levee.yaml"
for p in $UP_PORT $GW_PORT; do wait_http "http://127.0.0.1:$p/"; done
wait_http "http://127.0.0.1:$GW_ADMIN/api/v1/overview"

# One emulated tab: the overview's fetch every POLL seconds, for at most SECONDS seconds.
polls=0
tab() {
  local until=$((SECONDS + $1)) n=0
  while ((SECONDS < until)); do
    curl -s -o /dev/null "http://127.0.0.1:$GW_ADMIN/api/v1/overview" && n=$((n + 1))
    sleep "$POLL"
  done
  echo "$n" >>"$TMP/polls.txt"
}

URL[idle]="http://127.0.0.1:$GW_PORT/"
URL[polled]="http://127.0.0.1:$GW_PORT/"
log "warming up"
wrk -t2 -c64 -d1s "${URL[idle]}" >/dev/null 2>&1
for ((r = 1; r <= ROUNDS; r++)); do
  log "round $r/$ROUNDS: idle"
  run_wrk idle "$r"
  log "round $r/$ROUNDS: polled ($TABS tab(s), every ${POLL}s)"
  tabs=()
  for ((t = 0; t < TABS; t++)); do tab "$DURATION" & tabs+=("$!"); done
  run_wrk polled "$r"
  wait "${tabs[@]}"
  ratios+=("$(awk -v x="${RPS[polled,$r]}" -v y="${RPS[idle,$r]}" 'BEGIN { printf "%.3f", x / y }')")
  printf 'round %d: idle %s req/s (p99 %s ms), polled %s req/s (p99 %s ms), polled/idle %s\n' \
    "$r" "${RPS[idle,$r]}" "${P99[idle,$r]}" "${RPS[polled,$r]}" "${P99[polled,$r]}" "${ratios[-1]}"
done
polls="$(awk '{ n += $1 } END { print n + 0 }' "$TMP/polls.txt")"
bytes="$(curl -s "http://127.0.0.1:$GW_ADMIN/api/v1/overview" | wc -c)"
summarize idle polled
echo "overview fetches during the polled runs: $polls (answer: $bytes bytes); wrk error lines: $errors"

cat >"$TMP/header.md" <<'HEAD'
## Dashboard polling cost (bench/dashboard.sh)

One Levee and one load (`wrk -t2 -c64`, access log off), run twice per round: **idle** (no one
polls the admin API) and **polled** (TABS emulated dashboard tabs fetching `GET /api/v1/overview`,
what the overview page reads, every POLL seconds during the run). The ratio is the median of the
per-round polled/idle req/s; the target (issue 17) is a cost under 1%.

| date (UTC) | commit | machine | command | idle req/s | polled req/s | idle p50 / p99 ms | polled p50 / p99 ms | polled/idle (per round) | overview fetches | wrk errors |
|---|---|---|---|---|---|---|---|---|---|---|
HEAD
row="| $(date -u '+%Y-%m-%d %H:%M') | $(commit_label) | $(machine_label) | \`ROUNDS=$ROUNDS DURATION=$DURATION POLL=$POLL TABS=$TABS bench/dashboard.sh\` | ${M[idle,rps]} | ${M[polled,rps]} | ${M[idle,p50]} / ${M[idle,p99]} | ${M[polled,p50]} / ${M[polled,p99]} | $ratio (${ratios[*]}) | $polls | $errors |"
append_row "$row" '<!-- dashboard rows end -->' "$TMP/header.md"
