#!/usr/bin/env bash
# Where Levee's time goes under load: a CPU profile of the gateway process while wrk drives
# it, drawn as a flame graph (SVG) under docs/perf/.
#
#   NAME=proxy-after bench/profile.sh                 # default config, access log to a file
#   NAME=obs-after CONFIG=full bench/profile.sh       # + call log and tracing of every request
#
# Started on loopback: nginx answering 200 "ok\n" on 127.0.0.1:18581, Levee on 18583 (admin
# 19583). wrk -t2 -c64 runs for DURATION + 2 seconds; `perf record` samples Levee at 999 Hz
# for DURATION seconds in the middle, with DWARF call graphs (the release build keeps no
# frame pointers). `perf script` is folded and drawn with inferno (`cargo install inferno`
# when missing). Prints the top functions by self time too.
#
# Environment: NAME (required: the SVG's name), CONFIG (`default` or `full`), DURATION
# (default 5), LEVEE_BIN (default: build target/release/levee), KEEP_TMP=1.
set -euo pipefail

NAME="${NAME:?NAME=the name of the flame graph file, without .svg}"
CONFIG="${CONFIG:-default}"
DURATION="${DURATION:-5}"
KEEP_TMP="${KEEP_TMP:-0}"
UP_PORT=18581 PORT=18583 ADMIN=19583
BENCH_NAME=profile
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
[[ "$NAME" =~ ^[A-Za-z0-9_.-]+$ ]] || die "NAME may hold letters, digits, '.', '_' and '-' only"
[[ "$CONFIG" == default || "$CONFIG" == full ]] || die "CONFIG must be default or full"

ensure_tools
command -v perf >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q linux-perf >/dev/null
if ! command -v inferno-flamegraph >/dev/null; then
  log "installing inferno (flame graphs)"
  cargo install --locked inferno >/dev/null 2>&1 || die "cannot install inferno"
fi
ensure_levee
ports_free $UP_PORT $PORT $ADMIN
setup_tmp
start_nginx_upstream $UP_PORT

{
  cat <<EOF
listeners:
  - name: public
    bind: 127.0.0.1:$PORT
admin:
  bind: 127.0.0.1:$ADMIN
upstreams:
  origin:
    targets: [127.0.0.1:$UP_PORT]
routes:
  - name: all
    match: { path_prefix: / }
    upstream: origin
EOF
  if [[ "$CONFIG" == full ]]; then
    echo "data_dir: $TMP/data"
    echo "tracing: { otlp_endpoint: 'http://127.0.0.1:$UP_PORT', sample_ratio: 1 }"
  fi
} >"$TMP/levee.yaml"
start_bg "$TMP/levee.log" "$LEVEE_BIN" run --config "$TMP/levee.yaml"
wait_http "http://127.0.0.1:$UP_PORT/"
wait_http "http://127.0.0.1:$PORT/"
PID="$(pgrep -f "run --config $TMP/levee.yaml" | head -1)"

wrk -t2 -c64 -d"$((DURATION + 2))s" "http://127.0.0.1:$PORT/" >"$TMP/wrk.txt" 2>&1 &
WRK=$!
sleep 1
perf record -F 999 --call-graph dwarf,16384 -p "$PID" -o "$TMP/perf.data" -- sleep "$DURATION" >"$TMP/perf.log" 2>&1 \
  || die "perf record failed: $(tail -3 "$TMP/perf.log")"
wait "$WRK" || true
log "wrk: $(awk '/^Requests\/sec:/ { print $2 " req/s" }' "$TMP/wrk.txt") (while profiled)"

mkdir -p "$REPO_ROOT/docs/perf"
perf script -i "$TMP/perf.data" 2>/dev/null >"$TMP/perf.txt"
inferno-collapse-perf <"$TMP/perf.txt" >"$TMP/folded.txt"
inferno-flamegraph --title "Levee $NAME ($CONFIG config, wrk -t2 -c64)" <"$TMP/folded.txt" >"$REPO_ROOT/docs/perf/$NAME.svg"
log "wrote docs/perf/$NAME.svg"
echo "top 25 by self time:"
perf report -i "$TMP/perf.data" --no-children --sort symbol --stdio 2>/dev/null \
  | awk '/^ +[0-9.]+%/ { sub(/[ -]+$/, ""); print }' | head -25
