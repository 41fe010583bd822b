#!/usr/bin/env bash
# What the MCP gateway adds to a tool call: `tools/call` straight to an MCP server and
# through Levee, at the same fixed rates, in the same run.
#
# The server is the official MCP Python SDK's FastMCP (crates/levee/tests/fixtures/mcp/
# server.py, Streamable HTTP without sessions, JSON answers), so the same single POST is
# served either way. The load is open loop (crates/levee/examples/llm_load.rs: latency from
# each request's scheduled start to its whole answer, so a stalled server shows). The added
# latency is Levee's percentile minus the direct one. Rows go to the "MCP gateway overhead"
# table of bench/RESULTS.md.
#
# Environment: RATES (default "50 200"), RUN_SECONDS per run (default 10), LEVEE_BIN,
# LOAD_BIN (default: built in release), PYTHON (default: the test virtualenv's, with the
# SDK: scripts/test.sh installs it), LEVEE_WORKERS (Levee's `workers`; default auto, one
# per core), KEEP_TMP=1.
set -euo pipefail

RATES="${RATES:-50 200}"
SECONDS_PER_RUN="${RUN_SECONDS:-10}"
KEEP_TMP="${KEEP_TMP:-0}"
MCP_PORT=18381 LEVEE_PORT=18383 LEVEE_ADMIN=19383

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
PYTHON="${PYTHON:-$TARGET_DIR/test-venv/bin/python}"
log() { printf '[mcp-bench] %s\n' "$*" >&2; }
die() { printf '[mcp-bench] ERROR: %s\n' "$*" >&2; exit 1; }

"$PYTHON" -c 'import mcp.server.fastmcp' 2>/dev/null \
  || die "$PYTHON has no MCP SDK: run scripts/test.sh once, or pip install 'mcp>=1.12,<2'"
if [[ -z "${LEVEE_BIN:-}" || -z "${LOAD_BIN:-}" ]]; then
  log "building: cargo build --release -p levee-cli, and the llm_load example"
  (cd "$REPO_ROOT" && cargo build --release -p levee-cli && cargo build --release --example llm_load -p levee)
fi
LEVEE_BIN="${LEVEE_BIN:-$TARGET_DIR/release/levee}"
LOAD_BIN="${LOAD_BIN:-$TARGET_DIR/release/examples/llm_load}"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/levee-mcp-bench.XXXXXX")"
PIDS=()
cleanup() {
  local rc=$? pid
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  sleep 0.5
  for pid in "${PIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  if [[ "$KEEP_TMP" == 1 ]]; then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
start_bg() { local out="$1"; shift; setsid "$@" >>"$out" 2>&1 </dev/null & PIDS+=("$!"); }
wait_port() {
  local port="$1" deadline=$(( $(date +%s) + 20 ))
  while (( $(date +%s) < deadline )); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && return 0
    sleep 0.2
  done
  die "port $port did not open in time"
}

start_bg "$TMP/server.log" "$PYTHON" "$REPO_ROOT/crates/levee/tests/fixtures/mcp/server.py" weather http "$MCP_PORT" stateless
wait_port "$MCP_PORT"
cat >"$TMP/levee.yaml" <<YAML
listeners: [{ name: public, bind: "127.0.0.1:$LEVEE_PORT" }]
admin: { bind: "127.0.0.1:$LEVEE_ADMIN" }
access_log: { enabled: false }
workers: ${LEVEE_WORKERS:-auto}
mcp:
  servers:
    weather: { url: "http://127.0.0.1:$MCP_PORT/mcp" }
routes:
  - { name: tools, match: { path: /mcp }, mcp: true }
YAML
start_bg "$TMP/levee.log" "$LEVEE_BIN" run --config "$TMP/levee.yaml"
wait_port "$LEVEE_ADMIN"

declare -A URL=([direct]="http://127.0.0.1:$MCP_PORT/mcp" [levee]="http://127.0.0.1:$LEVEE_PORT/mcp")
DIRECT_CALL='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"forecast","arguments":{"city":"Oslo"}}}'
LEVEE_CALL='{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"weather__forecast","arguments":{"city":"Oslo"}}}'
declare -A BODY=([direct]="$DIRECT_CALL" [levee]="$LEVEE_CALL")
declare -A OUT
measure() {
  local setup="$1" rate="$2"
  log "$setup at $rate/s for ${SECONDS_PER_RUN}s"
  "$LOAD_BIN" "${URL[$setup]}" "$rate" 1 "${BODY[$setup]}" "accept: application/json, text/event-stream" >/dev/null
  OUT[$setup,$rate]="$("$LOAD_BIN" "${URL[$setup]}" "$rate" "$SECONDS_PER_RUN" "${BODY[$setup]}" "accept: application/json, text/event-stream")"
  echo "  ${OUT[$setup,$rate]}" >&2
}
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
# Both answers must be the tool's result, not an error, or the figures mean nothing.
for setup in direct levee; do
  answer="$(curl -s -X POST "${URL[$setup]}" -H 'content-type: application/json' -H 'accept: application/json, text/event-stream' -d "${BODY[$setup]}")"
  [[ "$answer" == *"Sunny in Oslo"* ]] || die "$setup answered: $answer"
done
for rate in $RATES; do for setup in direct levee; do measure "$setup" "$rate"; done; done

commit="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- . ':(exclude)bench/RESULTS.md' 2>/dev/null)" ]]; then commit+="-dirty"; fi
marker='<!-- mcp rows end -->'
if ! grep -qF "$marker" "$RESULTS_FILE"; then
  awk -v marker="$marker" '
    /^## Runs/ && !done {
      print "## MCP gateway overhead (bench/mcp.sh)"
      print ""
      print "Open-loop `tools/call` at a fixed rate to the MCP SDK'"'"'s FastMCP server (Streamable HTTP,"
      print "JSON answers) directly and through Levee'"'"'s MCP endpoint; latency from each request'"'"'s"
      print "scheduled start to its whole answer. Added = Levee'"'"'s percentile minus direct'"'"'s."
      print ""
      print "| date (UTC) | commit | machine | rate/s | direct p50 / p99 ms | levee p50 / p99 ms | added p50 / p99 ms | errors (direct / levee) |"
      print "|---|---|---|---|---|---|---|---|"
      print marker
      print ""
      done = 1
    }
    { print }' "$RESULTS_FILE" >"$TMP/results.md"
  cat "$TMP/results.md" >"$RESULTS_FILE"
fi
for rate in $RATES; do
  d="${OUT[direct,$rate]}"; l="${OUT[levee,$rate]}"
  dp50="$(field "$d" p50_ms)"; dp99="$(field "$d" p99_ms)"; lp50="$(field "$l" p50_ms)"; lp99="$(field "$l" p99_ms)"
  added="$(python3 -c "print(f'{$lp50-$dp50:.3f} / {$lp99-$dp99:.3f}')")"
  d_err="$(( $(field "$d" errors) + $(field "$d" missed) ))"; l_err="$(( $(field "$l" errors) + $(field "$l" missed) ))"
  printf '%5s/s  direct %s/%s  levee %s/%s  added %s\n' "$rate" "$dp50" "$dp99" "$lp50" "$lp99" "$added"
  row="| $(date -u '+%Y-%m-%d %H:%M') | $commit | $(nproc) cores, workers ${LEVEE_WORKERS:-auto} | $rate | $dp50 / $dp99 | $lp50 / $lp99 | $added | $d_err / $l_err |"
  awk -v row="$row" -v marker="$marker" '$0 == marker { print row } { print }' "$RESULTS_FILE" >"$TMP/results.md"
  cat "$TMP/results.md" >"$RESULTS_FILE"
done
