#!/usr/bin/env bash
# What the AI gateway adds to an LLM call, next to LiteLLM's proxy, in the same run.
#
# A mock OpenAI provider (nginx answering a recorded chat completion, and a recorded SSE
# stream, from memory) is called three ways at a fixed request rate, open loop
# (crates/levee/examples/llm_load.rs: latency from each request's scheduled start to its last
# byte):
#   direct   straight to the mock (the floor)
#   levee    through Levee (llm route, fallback model over the mock, usage and cost accounting)
#   litellm  through LiteLLM's proxy (pip install 'litellm[proxy]', in target/litellm-venv)
# for a whole answer and for a stream, at each rate in RATES. The added latency of a gateway
# is its percentile minus the direct one. Rows go to the "LLM gateway overhead" table of
# bench/RESULTS.md.
#
# Environment: RATES (default "100 1000"), RUN_SECONDS per run (default 10; not SECONDS,
# which bash keeps as its own clock and which read 0 here when unset), LEVEE_BIN, LOAD_BIN
# (default: built in release), LITELLM (path to the `litellm` command; default: installed in a
# virtualenv under target/), SKIP_LITELLM=1 to measure Levee alone, KEEP_TMP=1.
set -euo pipefail

RATES="${RATES:-100 1000}"
SECONDS_PER_RUN="${RUN_SECONDS:-10}"
KEEP_TMP="${KEEP_TMP:-0}"
MOCK_PORT=18281 LEVEE_PORT=18283 LEVEE_ADMIN=19983 LITELLM_PORT=18284

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
log() { printf '[llm-bench] %s\n' "$*" >&2; }
die() { printf '[llm-bench] ERROR: %s\n' "$*" >&2; exit 1; }

NGINX="$(command -v nginx || true)"
if [[ -z "$NGINX" && -x /usr/sbin/nginx ]]; then NGINX=/usr/sbin/nginx; fi
[[ -n "$NGINX" ]] || die "nginx not found (bench/run.sh installs it)"

if [[ -z "${LEVEE_BIN:-}" || -z "${LOAD_BIN:-}" ]]; then
  log "building: cargo build --release -p levee-cli, and the llm_load example"
  (cd "$REPO_ROOT" && cargo build --release -p levee-cli && cargo build --release --example llm_load -p levee)
fi
LEVEE_BIN="${LEVEE_BIN:-$TARGET_DIR/release/levee}"
LOAD_BIN="${LOAD_BIN:-$TARGET_DIR/release/examples/llm_load}"
if [[ "${SKIP_LITELLM:-0}" != 1 && -z "${LITELLM:-}" ]]; then
  VENV="$TARGET_DIR/litellm-venv"
  if [[ ! -x "$VENV/bin/litellm" ]]; then
    log "installing litellm[proxy] into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet 'litellm[proxy]'
  fi
  LITELLM="$VENV/bin/litellm"
fi

TMP="$(mktemp -d "${TMPDIR:-/tmp}/levee-llm-bench.XXXXXX")"
chmod 755 "$TMP"
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
start_bg() { local out="$1"; shift; setsid "$@" >>"$out" 2>&1 </dev/null & PIDS+=("$!"); LAST_PID=$!; }
wait_http() {
  local url="$1" deadline=$(( $(date +%s) + ${2:-10} ))
  while (( $(date +%s) < deadline )); do
    curl -s -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.2
  done
  die "$url did not answer in time"
}

COMPLETION='{"id":"chatcmpl-bench","object":"chat.completion","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29}}'
chunk() { printf 'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]}\\n\\n' "$1" "$2"; }
STREAM="$(chunk '{"role":"assistant","content":""}' null)$(chunk '{"content":"Hello"}' null)$(chunk '{"content":"!"}' null)$(chunk '{}' '"stop"')"'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1694268190,"model":"gpt-4o-2024-08-06","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"total_tokens":11}}\n\ndata: [DONE]\n\n'
mkdir -p "$TMP/nginx"
cat >"$TMP/nginx/nginx.conf" <<NGX
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$MOCK_PORT;
        location = /v1/chat/completions { default_type application/json; return 200 '$COMPLETION'; }
        location = /s/v1/chat/completions { default_type text/event-stream; return 200 "${STREAM//\"/\\\"}"; }
    }
}
NGX
start_bg "$TMP/nginx.log" "$NGINX" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -g 'daemon off;'

cat >"$TMP/levee.yaml" <<YAML
listeners: [{ name: public, bind: "127.0.0.1:$LEVEE_PORT" }]
admin: { bind: "127.0.0.1:$LEVEE_ADMIN" }
access_log: { enabled: false }
llm:
  providers:
    mock: { kind: openai_compatible, base_url: "http://127.0.0.1:$MOCK_PORT/v1" }
    mockstream: { kind: openai_compatible, base_url: "http://127.0.0.1:$MOCK_PORT/s/v1" }
  models:
    - { name: plain, targets: [{ provider: mock, model: gpt-4o }] }
    - { name: stream, targets: [{ provider: mockstream, model: gpt-4o }] }
routes:
  - { name: ai, match: { path_prefix: /v1 }, llm: true }
YAML
start_bg "$TMP/levee.log" "$LEVEE_BIN" run --config "$TMP/levee.yaml"
wait_http "http://127.0.0.1:$LEVEE_ADMIN/readyz"

PLAIN='{"model":"plain","messages":[{"role":"user","content":"Hi"}]}'
STREAMED='{"model":"stream","stream":true,"messages":[{"role":"user","content":"Hi"}]}'
declare -A URL=(
  [direct,plain]="http://127.0.0.1:$MOCK_PORT/v1/chat/completions"
  [direct,stream]="http://127.0.0.1:$MOCK_PORT/s/v1/chat/completions"
  [levee,plain]="http://127.0.0.1:$LEVEE_PORT/v1/chat/completions"
  [levee,stream]="http://127.0.0.1:$LEVEE_PORT/v1/chat/completions"
  [litellm,plain]="http://127.0.0.1:$LITELLM_PORT/v1/chat/completions"
  [litellm,stream]="http://127.0.0.1:$LITELLM_PORT/v1/chat/completions"
)
declare -A BODY=([plain]="$PLAIN" [stream]="$STREAMED")
declare -A OUT
measure() {
  local setup="$1" mode="$2" rate="$3" extra=()
  if [[ "$setup" == litellm ]]; then extra=("authorization: Bearer sk-bench-0123456789abcdef0123456789abcdef"); fi
  log "$setup $mode at $rate/s for ${SECONDS_PER_RUN}s"
  # A short warm-up at the same rate opens the connections.
  "$LOAD_BIN" "${URL[$setup,$mode]}" "$rate" 1 "${BODY[$mode]}" "${extra[@]}" >/dev/null
  OUT[$setup,$mode,$rate]="$("$LOAD_BIN" "${URL[$setup,$mode]}" "$rate" "$SECONDS_PER_RUN" "${BODY[$mode]}" "${extra[@]}")"
  echo "  ${OUT[$setup,$mode,$rate]}" >&2
}
field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }

SETUPS=(direct levee)
for rate in $RATES; do for mode in plain stream; do for s in direct levee; do measure "$s" "$mode" "$rate"; done; done; done
kill -TERM -- "-${PIDS[1]}" 2>/dev/null || true   # Levee idles out of LiteLLM's way

if [[ "${SKIP_LITELLM:-0}" != 1 ]]; then
  cat >"$TMP/litellm.yaml" <<YAML
model_list:
  - model_name: plain
    litellm_params: { model: openai/gpt-4o, api_base: "http://127.0.0.1:$MOCK_PORT/v1", api_key: sk-mock }
  - model_name: stream
    litellm_params: { model: openai/gpt-4o, api_base: "http://127.0.0.1:$MOCK_PORT/s/v1", api_key: sk-mock }
general_settings: { master_key: sk-bench-0123456789abcdef0123456789abcdef }
YAML
  start_bg "$TMP/litellm.log" env LITELLM_LOG=ERROR "$LITELLM" --config "$TMP/litellm.yaml" --host 127.0.0.1 --port "$LITELLM_PORT" --num_workers 1
  wait_http "http://127.0.0.1:$LITELLM_PORT/health/liveliness" 120
  SETUPS+=(litellm)
  for rate in $RATES; do for mode in plain stream; do measure litellm "$mode" "$rate"; done; done
fi

commit="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- . ':(exclude)bench/RESULTS.md' 2>/dev/null)" ]]; then commit+="-dirty"; fi
marker='<!-- llm rows end -->'
if ! grep -qF "$marker" "$RESULTS_FILE"; then
  awk -v marker="$marker" '
    /^## Runs/ && !done {
      print "## LLM gateway overhead (bench/llm.sh)"
      print ""
      print "Open-loop load at a fixed rate against a mock OpenAI provider (nginx answering a recorded"
      print "completion or SSE stream); latency from each request'"'"'s scheduled start to its last byte."
      print "Added = the gateway'"'"'s percentile minus direct'"'"'s in the same run. errors/missed: failed"
      print "requests, and requests not sent because 4096 were already in flight."
      print ""
      print "| date (UTC) | commit | machine | mode | rate/s | direct p50 / p99 ms | levee p50 / p99 ms | litellm p50 / p99 ms | levee added p99 ms | litellm added p99 ms | litellm/levee added p99 | errors (levee / litellm) |"
      print "|---|---|---|---|---|---|---|---|---|---|---|---|"
      print marker
      print ""
      done = 1
    }
    { print }' "$RESULTS_FILE" >"$TMP/results.md"
  cat "$TMP/results.md" >"$RESULTS_FILE"
fi
echo
for rate in $RATES; do
  for mode in plain stream; do
    d="${OUT[direct,$mode,$rate]}"; l="${OUT[levee,$mode,$rate]}"; m="${OUT[litellm,$mode,$rate]:-}"
    dp50="$(field "$d" p50_ms)"; dp99="$(field "$d" p99_ms)"
    lp50="$(field "$l" p50_ms)"; lp99="$(field "$l" p99_ms)"
    l_added="$(python3 -c "print(f'{$lp99-$dp99:.3f}')")"
    l_err="$(( $(field "$l" errors) + $(field "$l" missed) ))"
    if [[ -n "$m" ]]; then
      mp50="$(field "$m" p50_ms)"; mp99="$(field "$m" p99_ms)"
      m_added="$(python3 -c "print(f'{$mp99-$dp99:.3f}')")"
      ratio="$(python3 -c "a=$lp99-$dp99; b=$mp99-$dp99; print(f'{b/a:.0f}x' if a>0 else 'n/a')")"
      m_err="$(( $(field "$m" errors) + $(field "$m" missed) ))"
      mcell="$mp50 / $mp99"
    else
      m_added="-"; ratio="-"; m_err="-"; mcell="-"
    fi
    printf '%-6s %5s/s  direct %s/%s  levee %s/%s (+%s p99)  litellm %s (+%s p99, %s)\n' "$mode" "$rate" "$dp50" "$dp99" "$lp50" "$lp99" "$l_added" "$mcell" "$m_added" "$ratio"
    row="| $(date -u '+%Y-%m-%d %H:%M') | $commit | $(nproc) cores | $mode | $rate | $dp50 / $dp99 | $lp50 / $lp99 | $mcell | $l_added | $m_added | $ratio | $l_err / $m_err |"
    awk -v row="$row" -v marker="$marker" '$0 == marker { print row } { print }' "$RESULTS_FILE" >"$TMP/results.md"
    cat "$TMP/results.md" >"$RESULTS_FILE"
  done
done
log "rows added to bench/RESULTS.md"
