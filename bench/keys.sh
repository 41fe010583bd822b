#!/usr/bin/env bash
# Stored keys at scale (issue 16): with KEYS (default 100,000) keys in the management store,
# how long the gateway takes to start, and whether proxying with a stored key is slower than
# with SMALL (default 10) keys in the same config.
#
# 1. Seeds two data_dirs the same way: a gateway is started on each once, makes a team
#    `bench`, a consumer `bench-client` and a key through the admin API (the key's secret is
#    the one wrk sends), and is stopped; then bench/seed_keys.py adds the other keys to its
#    SQLite store in one transaction, as the API would have written them (own random secret
#    and digest, own version, 100 keys per consumer).
# 2. Startup: STARTS times (default 5), alternating the two stores, `levee run` is launched
#    and polled every 10 ms until `/readyz` answers 200 and then until a request carrying
#    the last seeded key (the highest version: accepted only once every row is loaded) is
#    proxied with 200. Median and max of both times, per store.
# 3. Throughput: both gateways run side by side in front of one nginx origin (`auth:
#    api_key` route, access log and call log off); PAIRS rounds (default 3) of
#    `wrk -t2 -c64 -d${DURATION}s` with `Authorization: Bearer <the API-made key>`, small
#    then large. Per round and median req/s, p50, p99 and the large/small ratio; each
#    gateway's peak RSS at start (VmHWM) and RSS after the rounds. With SPREAD=N (N > 1)
#    each request picks one of N stored keys at random instead (a wrk Lua script with a table
#    of N entries on both sides; the small store's has its SMALL keys repeated), so the large
#    store's lookups are spread over its table rather than hitting one cached entry.
# The figures are printed and a row is added to the "Stored keys at scale" table of
# bench/RESULTS.md. A build (cargo, rustc) seen running during a measurement is noted in the
# row: the machine is then shared and the numbers are suspect.
#
# Started on loopback: 127.0.0.1:18581 nginx origin; 18583 (admin 19583) the SMALL store;
# 18585 (admin 19585) the KEYS store.
#
# Environment: KEYS, SMALL, STARTS, PAIRS, DURATION (seconds per wrk run, default 10),
# SPREAD (default 1), LEVEE_BIN (default: `cargo build --release -p levee-cli`, under
# `flock $CARGO_LOCK` when flock exists; CARGO_LOCK defaults to /tmp/levee-cargo.lock),
# HOLD_CARGO_LOCK (default 1: after the build, the measurements hold $CARGO_LOCK, waiting up
# to 30 min for it, so that builds that take the same lock wait instead of sharing the
# cores; 0 to skip), KEEP_TMP=1 to keep the stores, configs and logs.
set -euo pipefail

KEYS="${KEYS:-100000}"
SMALL="${SMALL:-10}"
STARTS="${STARTS:-5}"
PAIRS="${PAIRS:-3}"
DURATION="${DURATION:-10}"
SPREAD="${SPREAD:-1}"
KEEP_TMP="${KEEP_TMP:-0}"
CARGO_LOCK="${CARGO_LOCK:-/tmp/levee-cargo.lock}"
HOLD_CARGO_LOCK="${HOLD_CARGO_LOCK:-1}"
UP_PORT=18581
declare -A PORT=([small]=18583 [large]=18585) ADMIN=([small]=19583 [large]=19585)
BENCH_NAME=keys-bench
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
for v in KEYS SMALL STARTS PAIRS DURATION SPREAD; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
ROUNDS="$PAIRS"   # lib.sh's ab_rounds and summarize count rounds
command -v curl >/dev/null || die "need curl"
command -v python3 >/dev/null || die "need python3"
declare -A SIZE=([small]="$SMALL" [large]="$KEYS")

ensure_tools
LEVEE_BIN_FROM_ENV="${LEVEE_BIN:-}"
if [[ -z "${LEVEE_BIN:-}" ]]; then
  lock=()
  if command -v flock >/dev/null; then lock=(flock "$CARGO_LOCK"); fi
  log "building levee: ${lock[*]} cargo build --release -p levee-cli"
  (cd "$REPO_ROOT" && "${lock[@]}" cargo build --release -p levee-cli)
  LEVEE_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/levee"
fi
ensure_levee
if [[ "$HOLD_CARGO_LOCK" == 1 ]] && command -v flock >/dev/null; then
  exec {LOCK_FD}>>"$CARGO_LOCK"
  log "taking $CARGO_LOCK for the measurements (waiting for a build that holds it)"
  flock -w 1800 "$LOCK_FD" || die "$CARGO_LOCK still held after 30 min"
fi
ports_free $UP_PORT "${PORT[@]}" "${ADMIN[@]}"
setup_tmp
start_nginx_upstream $UP_PORT
wait_http "http://127.0.0.1:$UP_PORT/"

LEVEE_BENCH_ADMIN_TOKEN="$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')"
export LEVEE_BENCH_ADMIN_TOKEN

# Whether a build or test run shares the machine right now; counted per measurement.
BUSY=0 MEASURED=0
note_load() {
  MEASURED=$((MEASURED + 1))
  local name busy=0
  for name in cargo rustc cc ld ld.lld mold; do pgrep -x "$name" >/dev/null && busy=1; done
  if ((busy)); then
    BUSY=$((BUSY + 1))
    log "warning: a build (cargo/rustc/linker) is running during this measurement"
  fi
}

# `auth: api_key` is refused without a consumer with a key in the config file (validation
# does not count stored keys), so the config names one, with the digest of a random secret
# nobody sends.
CONFIG_DIGEST="$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')"

# The config of store $1 (small or large).
conf() {
  cat <<CONF
listeners:
  - name: public
    bind: 127.0.0.1:${PORT[$1]}
admin:
  bind: 127.0.0.1:${ADMIN[$1]}
  token_env: LEVEE_BENCH_ADMIN_TOKEN
data_dir: $TMP/data-$1
access_log: { enabled: false }
call_log: { enabled: false }
consumers:
  - name: bench-config
    api_keys: ["sha256:$CONFIG_DIGEST"]
upstreams:
  origin:
    targets: [127.0.0.1:$UP_PORT]
routes:
  - name: all
    match: { path_prefix: / }
    upstream: origin
    auth: api_key
CONF
}

# Stops the gateway whose process group is $1 (TERM, KILL after 10 s) and forgets it.
stop_bg() {
  local pid="$1" i kept=() p
  kill -TERM -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [[ "$p" == "$pid" ]] || kept+=("$p"); done
  PIDS=("${kept[@]}")
}

# The HTTP status of GET $1, with the bearer $2 when given ("000" if nothing answered).
status() {
  local auth=()
  if [[ -n "${2:-}" ]]; then auth=(-H "Authorization: Bearer $2"); fi
  curl -s -o /dev/null -w '%{http_code}' --max-time 1 "${auth[@]}" "$1" || true
}

api() {
  curl -s --max-time 10 -X "$1" -H "Authorization: Bearer $LEVEE_BENCH_ADMIN_TOKEN" \
    -H 'content-type: application/json' "http://127.0.0.1:${ADMIN[$3]}$2" --data-binary "$4"
}

# ------------------------------------------------------------------ seed ----
declare -A SECRET LAST
for s in small large; do
  mkdir -p "$TMP/data-$s"
  conf "$s" >"$TMP/$s.yaml"
  start_bg "$TMP/seed-$s.log" "$LEVEE_BIN" run --config "$TMP/$s.yaml"
  pid="${PIDS[-1]}"
  wait_http "http://127.0.0.1:${ADMIN[$s]}/readyz"
  api POST /api/v1/teams "$s" '{"name":"bench"}' >"$TMP/seed-$s.team.json"
  api POST /api/v1/consumers "$s" '{"name":"bench-client","team":"bench"}' >"$TMP/seed-$s.consumer.json"
  api POST /api/v1/keys "$s" '{"consumer":"bench-client","name":"bench-known"}' >"$TMP/seed-$s.key.json"
  SECRET[$s]="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["key"])' "$TMP/seed-$s.key.json" 2>/dev/null)" \
    || die "$s: the API did not make the key: $(cat "$TMP/seed-$s".*.json)"
  stop_bg "$pid"
  log "seeding $s: ${SIZE[$s]} keys"
  python3 "$SCRIPT_DIR/seed_keys.py" "$TMP/data-$s/management.sqlite3" "${SIZE[$s]}" "$TMP/sample-$s.txt" "$SPREAD" >&2
  # With SMALL=1 no key is added: the API-made key is also the last one.
  LAST[$s]="$(head -n 1 "$TMP/sample-$s.txt" 2>/dev/null || echo "${SECRET[$s]}")"
  # The keys SPREAD sends: the API-made one and SPREAD - 1 of the seeded ones.
  { echo "${SECRET[$s]}"; head -n $((SPREAD - 1)) "$TMP/sample-$s.txt" 2>/dev/null || true; } >"$TMP/keys-$s.txt"
  # Repeated up to SPREAD lines (the small store has fewer keys), so that wrk's Lua table is
  # as long on both sides.
  awk -v n="$SPREAD" '{ k[NR] = $0 } END { for (i = 0; i < n; i++) print k[i % NR + 1] }' "$TMP/keys-$s.txt" >"$TMP/spread-$s.txt"
done
log "store sizes: small $(du -h "$TMP/data-small/management.sqlite3" | cut -f1), large $(du -h "$TMP/data-large/management.sqlite3" | cut -f1)"

# --------------------------------------------------------------- startup ----
# One start of store $1: appends to READY[$1] and KEYED[$1] (seconds), and the statuses the
# keyed request got before its 200 to EARLY[$1].
declare -A READY KEYED EARLY PEAK
startup() {
  local s="$1" t0 now ready="" code pid deadline
  t0="${EPOCHREALTIME/./}"
  deadline=$((t0 + 30000000))
  start_bg "$TMP/start-$s.log" "$LEVEE_BIN" run --config "$TMP/$s.yaml"
  pid="${PIDS[-1]}"
  while :; do
    now="${EPOCHREALTIME/./}"
    ((now < deadline)) || die "$s: not serving the stored key within 30 s (log: $(tail -3 "$TMP/start-$s.log"))"
    kill -0 "$pid" 2>/dev/null || die "$s: the gateway exited: $(tail -3 "$TMP/start-$s.log")"
    if [[ -z "$ready" && "$(status "http://127.0.0.1:${ADMIN[$s]}/readyz")" == 200 ]]; then
      ready=$(( ${EPOCHREALTIME/./} - t0 ))
    fi
    if [[ -n "$ready" ]]; then
      code="$(status "http://127.0.0.1:${PORT[$s]}/" "${LAST[$s]}")"
      if [[ "$code" == 200 ]]; then break; fi
      if [[ "$code" != 000 ]]; then EARLY[$s]+=" $code"; fi
    fi
    sleep 0.01
  done
  now="${EPOCHREALTIME/./}"
  READY[$s]+=" $(awk -v us="$ready" 'BEGIN { printf "%.3f", us / 1e6 }')"
  KEYED[$s]+=" $(awk -v us="$((now - t0))" 'BEGIN { printf "%.3f", us / 1e6 }')"
  PEAK[$s]="$(awk '/^VmHWM/ { printf "%.0f", $2 / 1024 }' "/proc/$pid/status" 2>/dev/null || echo "?")"
  stop_bg "$pid"
}
for ((i = 1; i <= STARTS; i++)); do
  for s in small large; do
    note_load
    startup "$s"
    log "start $i/$STARTS $s (${SIZE[$s]} keys): ready ${READY[$s]##* } s, stored key accepted ${KEYED[$s]##* } s"
  done
done
declare -A ST
for s in small large; do
  # shellcheck disable=SC2086  # the lists are space-separated numbers
  {
    ST[$s,ready_med]="$(median '%.3f' ${READY[$s]})"
    ST[$s,keyed_med]="$(median '%.3f' ${KEYED[$s]})"
    ST[$s,keyed_max]="$(printf '%s\n' ${KEYED[$s]} | sort -g | tail -1)"
  }
  if [[ -n "${EARLY[$s]:-}" ]]; then log "warning: $s answered${EARLY[$s]} to the stored key before 200 (served before its keys were loaded?)"; fi
done

# ------------------------------------------------------------ throughput ----
declare -A GW_PID
for s in small large; do
  start_bg "$TMP/run-$s.log" "$LEVEE_BIN" run --config "$TMP/$s.yaml"
  GW_PID[$s]="${PIDS[-1]}"
done
for s in small large; do
  wait_http "http://127.0.0.1:${ADMIN[$s]}/readyz"
  for ((i = 0; i < 100; i++)); do [[ "$(status "http://127.0.0.1:${PORT[$s]}/" "${SECRET[$s]}")" == 200 ]] && break; sleep 0.1; done
  [[ "$(status "http://127.0.0.1:${PORT[$s]}/" "${SECRET[$s]}")" == 200 ]] || die "$s: the API-made key is not accepted"
  code="$(status "http://127.0.0.1:${PORT[$s]}/")"
  [[ "$code" == 401 ]] || die "$s: a request without a key got $code, not 401"
  code="$(status "http://127.0.0.1:${PORT[$s]}/" "lv_$(od -An -tx1 -N32 /dev/urandom | tr -d ' \n')")"
  [[ "$code" == 401 ]] || die "$s: an unknown key got $code, not 401"
  URL[$s]="http://127.0.0.1:${PORT[$s]}/"
  if ((SPREAD > 1)); then
    while read -r k; do
      [[ "$(status "http://127.0.0.1:${PORT[$s]}/" "$k")" == 200 ]] || die "$s: a stored key of the spread set is refused"
    done < <(head -n 20 "$TMP/spread-$s.txt")
    cat >"$TMP/spread-$s.lua" <<LUA
local keys = {}
for line in io.lines("$TMP/spread-$s.txt") do keys[#keys + 1] = "Bearer " .. line end
local n = #keys
request = function()
  return wrk.format(nil, nil, { ["Authorization"] = keys[math.random(n)] })
end
LUA
    SCRIPT[$s]="$TMP/spread-$s.lua"
  else
    HEADER[$s]="Authorization: Bearer ${SECRET[$s]}"
  fi
done
SENT="$(wc -l <"$TMP/keys-small.txt") / $(wc -l <"$TMP/keys-large.txt")"
if ((SPREAD == 1)); then SENT="1 / 1"; fi
ab_rounds small large note_load
declare -A RSS
for s in small large; do
  RSS[$s]="$(awk '/^VmRSS/ { printf "%.0f", $2 / 1024 }' "/proc/${GW_PID[$s]}/status" 2>/dev/null || echo "?")"
done
summarize small large

echo
printf '%-6s %7s keys: ready median %s s; stored key accepted median %s s, max %s s (of %s starts: %s)\n' \
  small "$SMALL" "${ST[small,ready_med]}" "${ST[small,keyed_med]}" "${ST[small,keyed_max]}" "$STARTS" "${KEYED[small]# }"
printf '%-6s %7s keys: ready median %s s; stored key accepted median %s s, max %s s (of %s starts: %s)\n' \
  large "$KEYS" "${ST[large,ready_med]}" "${ST[large,keyed_med]}" "${ST[large,keyed_max]}" "$STARTS" "${KEYED[large]# }"
echo "keys sent (small / large): $SENT"
echo "RSS MiB: peak at start (VmHWM) small ${PEAK[small]}, large ${PEAK[large]}; after the wrk rounds small ${RSS[small]}, large ${RSS[large]}"
load="quiet"
if ((BUSY > 0)); then load="build running in $BUSY of $MEASURED measurements"; fi
echo "load: $load; wrk error lines: $errors"

cat >"$TMP/header.md" <<'HEAD'
## Stored keys at scale (bench/keys.sh)

The same Levee binary and config (`auth: api_key` route, access log and call log off, store
under `data_dir`) with two management stores: SMALL keys (10) and KEYS keys (100,000), made
by the API and bench/seed_keys.py alike. **start** is the time from launching `levee run`
to a request with the last key written being proxied with 200 (median / max of the
starts). Throughput: `wrk -t2 -c64` with stored keys as the bearer (**keys sent**: how many
distinct keys the requests pick from at random, `SPREAD`), rounds alternating small then
large; **large/small** is the median of the per-round req/s ratios. **peak RSS** is each
gateway's VmHWM at start, **RSS** its VmRSS after the rounds. **load** says whether a build
(cargo, rustc, a linker) was running at a measurement.

| date (UTC) | commit | machine | command | start small med / max s | start large med / max s | keys sent | small req/s | large req/s | small p50 / p99 ms | large p50 / p99 ms | large/small (per round) | peak RSS small / large MiB | RSS small / large MiB | load | wrk errors |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
HEAD
cmdline="KEYS=$KEYS SMALL=$SMALL STARTS=$STARTS PAIRS=$PAIRS DURATION=$DURATION SPREAD=$SPREAD"
if [[ -n "$LEVEE_BIN_FROM_ENV" ]]; then cmdline+=" LEVEE_BIN=$LEVEE_BIN_FROM_ENV"; fi
cmdline+=" bench/keys.sh"
row="| $(date -u '+%Y-%m-%d %H:%M') | $(commit_label) | $(machine_label) | \`$cmdline\` | ${ST[small,keyed_med]} / ${ST[small,keyed_max]} | ${ST[large,keyed_med]} / ${ST[large,keyed_max]} | $SENT | ${M[small,rps]} | ${M[large,rps]} | ${M[small,p50]} / ${M[small,p99]} | ${M[large,p50]} / ${M[large,p99]} | $ratio (${ratios[*]}) | ${PEAK[small]} / ${PEAK[large]} | ${RSS[small]} / ${RSS[large]} | $load | $errors |"
append_row "$row" '<!-- keys rows end -->' "$TMP/header.md"
if ((errors > 0)); then die "wrk saw non-2xx responses or socket errors (the row is recorded, the numbers are suspect)"; fi
