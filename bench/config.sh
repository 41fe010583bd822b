#!/usr/bin/env bash
# How long `levee check` and a hot reload take as the route count grows.
#
# For each size in SIZES (default "1000 10000 100000") bench/gen_config.py writes a config
# with that many routes (mixed host, prefix, exact, template, method and header matches),
# one upstream per ten routes and one consumer per hundred. Then:
#   check     `levee check` on the file, REPEAT times (default 3): the median wall time
#   broken    the same with its last route naming an unknown upstream: the median wall time,
#             and the error must name the last line (so a fast answer cannot be a wrong one)
#   reload    a gateway is started with the file on 127.0.0.1:18481 (admin 19481); the file
#             is rewritten with one route changed and POST /api/v1/config/reload is timed
#             with curl, REPEAT times: the median (the reply comes once every worker serves
#             the new config), and its RSS afterwards
# The medians are printed and appended to the "Config check and reload" table of
# bench/RESULTS.md.
#
# Environment: SIZES, REPEAT, LEVEE_BIN (default: build target/release/levee), KEEP_TMP=1.
set -euo pipefail

SIZES="${SIZES:-1000 10000 100000}"
REPEAT="${REPEAT:-3}"
KEEP_TMP="${KEEP_TMP:-0}"
PORT=18481 ADMIN=19481
BENCH_NAME=config-bench
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
[[ "$REPEAT" =~ ^[1-9][0-9]*$ ]] || die "REPEAT must be a positive integer"
command -v curl >/dev/null || die "need curl"
command -v python3 >/dev/null || die "need python3"

ensure_levee
ports_free $PORT $ADMIN
setup_tmp

# Seconds (3 decimals) that "$@" takes; its output goes to $TMP/last.out and .err.
timed() {
  local start end
  start="$(date +%s.%N)"
  "$@" >"$TMP/last.out" 2>"$TMP/last.err" || true
  end="$(date +%s.%N)"
  awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }'
}

# gen SIZE FILE [--broken-last]: the config, with the listener and admin on our ports.
gen() { python3 "$SCRIPT_DIR/gen_config.py" "$1" --listen $PORT --admin $ADMIN "${@:3}" >"$2"; }

rows=()
for size in $SIZES; do
  [[ "$size" =~ ^[1-9][0-9]*$ ]] || die "SIZES must be positive integers"
  file="$TMP/levee-$size.yaml" broken="$TMP/broken-$size.yaml"
  gen "$size" "$file"
  gen "$size" "$broken" --broken-last
  lines="$(wc -l <"$broken")"
  checks=() brokens=() reloads=()
  for ((i = 1; i <= REPEAT; i++)); do
    checks+=("$(timed "$LEVEE_BIN" check --config "$file")")
    grep -q ": ok (" "$TMP/last.out" || die "$size routes: check failed: $(head -3 "$TMP/last.err")"
    brokens+=("$(timed "$LEVEE_BIN" check --config "$broken")")
    grep -q "^$broken:$lines:.*no-such-upstream" "$TMP/last.err" \
      || die "$size routes: the broken last route was not reported at line $lines: $(head -3 "$TMP/last.err")"
  done
  start_bg "$TMP/run-$size.log" "$LEVEE_BIN" run --config "$file"
  gateway_pid="${PIDS[-1]}"
  deadline=$(( $(date +%s) + 120 ))
  until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$ADMIN/readyz"; do
    (( $(date +%s) < deadline )) || die "$size routes: the gateway did not get ready in 120 s"
    sleep 0.2
  done
  for ((i = 1; i <= REPEAT; i++)); do
    # One route changes each time, so every reload has something to apply.
    sed -i "s|path_prefix: /tenants/0/items/3\(-[0-9]*\)\? |path_prefix: /tenants/0/items/3-$i |" "$file"
    reloads+=("$(timed curl -sf -X POST "http://127.0.0.1:$ADMIN/api/v1/config/reload")")
    grep -q '"version"' "$TMP/last.out" || die "$size routes: reload failed: $(cat "$TMP/last.out" "$TMP/last.err")"
  done
  rss_kb="$(awk '/^VmRSS/ { print $2 }' "/proc/$gateway_pid/status" 2>/dev/null || echo 0)"
  kill -TERM -- "-$gateway_pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 -- "-$gateway_pid" 2>/dev/null || break; sleep 0.1; done
  check_s="$(median '%.3f' "${checks[@]}")" broken_s="$(median '%.3f' "${brokens[@]}")" reload_s="$(median '%.3f' "${reloads[@]}")"
  printf '%7d routes: check %s s (%s), broken %s s (%s), reload %s s (%s), RSS after reloads %d MiB\n' \
    "$size" "$check_s" "${checks[*]}" "$broken_s" "${brokens[*]}" "$reload_s" "${reloads[*]}" $(( rss_kb / 1024 ))
  rows+=("| $(date -u '+%Y-%m-%d %H:%M') | $(commit_label) | $(machine_label) | \`SIZES=\"$SIZES\" REPEAT=$REPEAT bench/config.sh\` | $size | $(( size / 10 )) | $check_s | $broken_s | $reload_s | $(( rss_kb / 1024 )) |")
done

header="$TMP/header.md"
cat >"$header" <<'HEADER'
## Config check and reload (bench/config.sh)

`levee check` on a generated config (bench/gen_config.py: routes of every match kind, one upstream per
ten routes, one consumer per hundred), on the same file with its last route broken (the error must
name the last line), and `POST /api/v1/config/reload` of a running gateway after one route changed
(answered once every worker serves the new config). Medians of REPEAT runs, wall time in seconds;
RSS of the gateway after the reloads.

| date (UTC) | commit | machine | command | routes | upstreams | check s | broken check s | reload s | RSS MiB |
|---|---|---|---|---|---|---|---|---|---|
HEADER
for row in "${rows[@]}"; do append_row "$row" "<!-- config-bench rows above -->" "$header"; done
