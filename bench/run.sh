#!/usr/bin/env bash
# Levee throughput/latency benchmark against nginx as a reverse proxy.
#
# Starts, all on loopback:
#   127.0.0.1:18081  nginx "upstream": answers every request with 200 "ok\n"
#   127.0.0.1:18082  nginx reverse proxy in front of 18081 (the baseline)
#   127.0.0.1:18084  bare hyper proxy in front of 18081 (crates/levee/examples/bare_proxy.rs:
#                    thread-per-core, no features: the HTTP stack alone)
#   127.0.0.1:18085  bare Pingora proxy in front of 18081 (bench/pingora-peer: Pingora's
#                    HTTP/1 stack and its upstream pool, 2 threads, no filters, no log)
#   127.0.0.1:18083  Levee in front of 18081 (config: bench/levee.yaml)
# then drives each with wrk for ROUNDS rounds and prints/records medians.
#
# Environment:
#   ROUNDS     number of measured rounds (default 3)
#   DURATION   seconds per wrk run (default 5)
#   LEVEE_BIN  path to a levee binary; if unset, `cargo build --release -p levee-cli`
#   BARE_BIN   path to a bare_proxy binary; if unset, `cargo build --release --example
#              bare_proxy -p levee` (when LEVEE_BIN is set, only if
#              target/release/examples/bare_proxy does not exist yet)
#   PINGORA_BIN path to a pingora-peer binary; if unset, `cargo build --release` of
#              bench/pingora-peer (its own workspace) into $CARGO_TARGET_DIR/pingora-peer
#   KEEP_TMP   if 1, keep the temp dir (configs, logs, raw wrk output) for inspection
#
# See bench/README.md.
set -euo pipefail

ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-5}"
KEEP_TMP="${KEEP_TMP:-0}"
WRK_THREADS=2
WRK_CONNS=64

UP_PORT=18081
NGX_PORT=18082
LEVEE_PORT=18083
LEVEE_ADMIN_PORT=19901   # must match bench/levee.yaml
BARE_PORT=18084
BARE_WORKERS=2
PINGORA_PORT=18085
SETUPS=(direct nginx bare pingora levee)

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
cd "$REPO_ROOT"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
# The "## Runs" table header; the row printf near the end must match it.
RUNS_HEADER='| date (UTC) | commit | machine | command | direct req/s | nginx req/s | bare req/s | levee req/s | nginx p50 / p99 ms | bare p50 / p99 ms | levee p50 / p99 ms | bare/nginx | levee/nginx | errors | pingora req/s | pingora p50 / p99 ms | pingora/nginx |'

log() { printf '[bench] %s\n' "$*" >&2; }
die() { printf '[bench] ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer (got '$ROUNDS')"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "DURATION must be a positive integer number of seconds (got '$DURATION')"

# ---------------------------------------------------------------- tools ----
find_nginx() {
  NGINX="$(command -v nginx || true)"
  # /usr/sbin is often not on a non-root user's PATH.
  if [[ -z "$NGINX" && -x /usr/sbin/nginx ]]; then NGINX=/usr/sbin/nginx; fi
}

install_tools() {
  local missing=()
  find_nginx
  [[ -n "$NGINX" ]] || missing+=(nginx)
  command -v wrk >/dev/null || missing+=(wrk)
  command -v curl >/dev/null || missing+=(curl)
  if ((${#missing[@]} == 0)); then return 0; fi

  command -v apt-get >/dev/null || die "missing tools: ${missing[*]} (no apt-get here: install them by hand)"
  local sudo=()
  if [[ $EUID -ne 0 ]]; then
    command -v sudo >/dev/null || die "missing tools: ${missing[*]}; need root or sudo to apt-get install them"
    sudo=(sudo)
  fi
  log "installing: ${missing[*]}"
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}"

  # The Debian package may start a system nginx on port 80; it is not ours
  # and would only compete for CPU, so stop it.
  if [[ " ${missing[*]} " == *" nginx "* ]] && pgrep -x nginx >/dev/null; then
    log "stopping the nginx service the package started"
    if command -v systemctl >/dev/null && "${sudo[@]}" systemctl stop nginx 2>/dev/null; then :
    else "${sudo[@]}" nginx -s quit 2>/dev/null || true
    fi
  fi
  find_nginx
  [[ -n "$NGINX" ]] || die "nginx still not found after install"
  command -v wrk >/dev/null || die "wrk still not found after install"
}

install_tools

# A RESULTS.md written by an older version of this script has fewer columns:
# say so now rather than after the run (the row is still appended).
results_header_stale() {
  [[ -f "$RESULTS_FILE" ]] && grep -q '^## Runs' "$RESULTS_FILE" && ! grep -qxF "$RUNS_HEADER" "$RESULTS_FILE"
}
if results_header_stale; then
  log "warning: the runs table header in ${RESULTS_FILE#"$REPO_ROOT"/} does not match this script's columns; update it to:"
  log "  $RUNS_HEADER"
fi

# ------------------------------------------------------- levee, bare ----
TARGET_DIR="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
LEVEE_BIN_FROM_ENV="${LEVEE_BIN:-}"
BARE_BIN_FROM_ENV="${BARE_BIN:-}"
BARE_DEFAULT="$TARGET_DIR/release/examples/bare_proxy"
build_bare() {
  command -v cargo >/dev/null || die "cargo not found: install Rust or set BARE_BIN"
  log "building the bare proxy: cargo build --release --example bare_proxy -p levee"
  cargo build --release --example bare_proxy -p levee
  BARE_BIN="$BARE_DEFAULT"
}
if [[ -z "$LEVEE_BIN_FROM_ENV" ]]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust or set LEVEE_BIN"
  log "building levee: cargo build --release -p levee-cli"
  cargo build --release -p levee-cli
  LEVEE_BIN="$TARGET_DIR/release/levee"
  if [[ -z "$BARE_BIN_FROM_ENV" ]]; then build_bare; fi
elif [[ -z "$BARE_BIN_FROM_ENV" ]]; then
  # Levee comes prebuilt: reuse an existing bare proxy build rather than compile.
  if [[ -x "$BARE_DEFAULT" ]]; then
    log "using existing ${BARE_DEFAULT#"$REPO_ROOT"/} (set BARE_BIN to choose another)"
    BARE_BIN="$BARE_DEFAULT"
  else
    build_bare
  fi
fi
PINGORA_BIN_FROM_ENV="${PINGORA_BIN:-}"
if [[ -z "$PINGORA_BIN_FROM_ENV" ]]; then
  command -v cargo >/dev/null || die "cargo not found: install Rust or set PINGORA_BIN"
  log "building the Pingora peer: cargo build --release --manifest-path bench/pingora-peer/Cargo.toml"
  CARGO_TARGET_DIR="$TARGET_DIR/pingora-peer" cargo build --release --locked \
    --manifest-path "$REPO_ROOT/bench/pingora-peer/Cargo.toml"
  PINGORA_BIN="$TARGET_DIR/pingora-peer/release/pingora-peer"
fi
[[ -x "$LEVEE_BIN" ]] || die "LEVEE_BIN '$LEVEE_BIN' is not an executable file"
[[ -x "$PINGORA_BIN" ]] || die "PINGORA_BIN '$PINGORA_BIN' is not an executable file"
[[ -x "$BARE_BIN" ]] || die "BARE_BIN '$BARE_BIN' is not an executable file"

# -------------------------------------------------------- preflight/tmp ----
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$UP_PORT" "$NGX_PORT" "$LEVEE_PORT" "$LEVEE_ADMIN_PORT" "$BARE_PORT" "$PINGORA_PORT"; do
  if port_open "$p"; then die "127.0.0.1:$p is already in use (a previous run still alive?)"; fi
done

TMP="$(mktemp -d "${TMPDIR:-/tmp}/levee-bench.XXXXXX")"
# When started as root, nginx workers run as an unprivileged user: let them
# traverse the dir (logs are opened by the master, temp dirs are chowned).
chmod 755 "$TMP"

PIDS=()
cleanup() {
  local rc=$? pid i
  trap - EXIT INT TERM
  # Each service was started with setsid, so its pid is also its process
  # group id: signal the whole group (nginx workers, wrapper children...).
  for pid in "${PIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for ((i = 0; i < 50; i++)); do
      kill -0 -- "-$pid" 2>/dev/null || kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  if [[ "$KEEP_TMP" == 1 ]]; then
    log "kept temp dir: $TMP"
  else
    rm -rf "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Start "$@" in its own session/process group, output appended to $LOGFILE.
# Sets STARTED_PID.
start_bg() {
  local logfile="$1"; shift
  setsid "$@" >>"$logfile" 2>&1 </dev/null &
  STARTED_PID=$!
  PIDS+=("$STARTED_PID")
}

# nginx -e (startup error log path) exists since 1.19.5; older builds lack it.
NGINX_E=()
if "$NGINX" -e "$TMP/probe.log" -v >/dev/null 2>&1; then NGINX_E=(-e); fi

# Write $dir/nginx.conf for an nginx instance. $1 = instance name,
# $2 = worker_processes, $3 = events+http body specific part (server blocks).
write_nginx_conf() {
  local name="$1" workers="$2" http_body="$3" dir="$TMP/$1"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
# generated by bench/run.sh ($name)
worker_processes $workers;
worker_rlimit_nofile 8192;
pid $dir/nginx.pid;
lock_file $dir/nginx.lock;
error_log $dir/error.log warn;
events {
    worker_connections 4096;
}
http {
    default_type text/plain;
    client_body_temp_path $dir/client_body_temp;
    proxy_temp_path $dir/proxy_temp;
    fastcgi_temp_path $dir/fastcgi_temp;
    uwsgi_temp_path $dir/uwsgi_temp;
    scgi_temp_path $dir/scgi_temp;
    keepalive_requests 100000;
    keepalive_timeout 75s;
$http_body
}
EOF
}

start_nginx() {
  local name="$1" dir="$TMP/$1"
  local -a e_opt=()
  if ((${#NGINX_E[@]})); then e_opt=(-e "$dir/error.log"); fi
  if ! "$NGINX" -t -q -p "$dir/" -c "$dir/nginx.conf" "${e_opt[@]}" >"$dir/configtest.log" 2>&1; then
    cat "$dir/configtest.log" >&2
    die "nginx config for '$name' is invalid ($dir/nginx.conf)"
  fi
  start_bg "$dir/stdout.log" "$NGINX" -p "$dir/" -c "$dir/nginx.conf" "${e_opt[@]}" -g 'daemon off;'
}

# Poll until http://127.0.0.1:$port/ answers, at most 10 s.
wait_port() {
  local name="$1" port="$2" pid="$3" logfile="$4"
  local deadline=$(( $(date +%s) + 10 ))
  while (( $(date +%s) < deadline )); do
    if curl -s -o /dev/null --connect-timeout 0.5 --max-time 1 "http://127.0.0.1:$port/"; then
      return 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
      log "--- last lines of $logfile ---"; tail -n 30 "$logfile" >&2 || true
      die "$name exited before answering on 127.0.0.1:$port"
    fi
    sleep 0.1
  done
  log "--- last lines of $logfile ---"; tail -n 30 "$logfile" >&2 || true
  die "$name did not answer on 127.0.0.1:$port within 10 s"
}

# The response must be the upstream's 200 "ok".
check_body() {
  local name="$1" url="$2" body
  body="$(curl -fsS --max-time 2 "$url")" || die "$name: request to $url failed"
  [[ "$body" == ok ]] || die "$name: $url answered '$body', expected 'ok' from the upstream"
}

# ------------------------------------------------------------- services ----
write_nginx_conf upstream 1 "
    access_log off;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / {
            return 200 \"ok\\n\";
        }
    }"

NGX_ACCESS_LOG="$TMP/nginx/access.log"
write_nginx_conf nginx 2 "
    log_format bench_json escape=json
        '{\"time\":\"\$time_iso8601\",\"remote\":\"\$remote_addr\",\"method\":\"\$request_method\",'
        '\"uri\":\"\$request_uri\",\"status\":\$status,\"bytes\":\$body_bytes_sent,'
        '\"duration\":\$request_time,\"upstream\":\"\$upstream_addr\",\"upstream_time\":\"\$upstream_response_time\"}';
    access_log $NGX_ACCESS_LOG bench_json buffer=64k;
    upstream up {
        server 127.0.0.1:$UP_PORT;
        keepalive 128;
    }
    server {
        listen 127.0.0.1:$NGX_PORT;
        location / {
            proxy_pass http://up;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"

start_nginx upstream
UP_PID=$STARTED_PID
wait_port "nginx upstream" "$UP_PORT" "$UP_PID" "$TMP/upstream/error.log"

start_nginx nginx
NGX_PID=$STARTED_PID
wait_port "nginx proxy" "$NGX_PORT" "$NGX_PID" "$TMP/nginx/error.log"

# The bare proxy logs nothing per request. Its BARE_* env toggles (auto h1/h2
# builder, header-read timeout, per-request timeout) are cleared so that it
# stays featureless whatever the caller's environment holds.
BARE_LOG="$TMP/bare.log"
: >"$BARE_LOG"
start_bg "$BARE_LOG" env -u BARE_AUTO -u BARE_HRT -u BARE_TIMEOUT \
  "$BARE_BIN" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UP_PORT" "$BARE_WORKERS"
BARE_PID=$STARTED_PID
wait_port "bare proxy" "$BARE_PORT" "$BARE_PID" "$BARE_LOG"

# Pingora logs nothing per request either (no logging filter is implemented).
PINGORA_LOG="$TMP/pingora.log"
: >"$PINGORA_LOG"
start_bg "$PINGORA_LOG" "$PINGORA_BIN" "127.0.0.1:$PINGORA_PORT" "127.0.0.1:$UP_PORT" "$BARE_WORKERS"
PINGORA_PID=$STARTED_PID
wait_port "pingora peer" "$PINGORA_PORT" "$PINGORA_PID" "$PINGORA_LOG"

LEVEE_LOG="$TMP/levee.log"   # Levee's access log goes to stdout, so here
: >"$LEVEE_LOG"
start_bg "$LEVEE_LOG" "$LEVEE_BIN" run --config "$REPO_ROOT/bench/levee.yaml"
LEVEE_PID=$STARTED_PID
wait_port "levee" "$LEVEE_PORT" "$LEVEE_PID" "$LEVEE_LOG"

declare -A URL=(
  [direct]="http://127.0.0.1:$UP_PORT/"
  [nginx]="http://127.0.0.1:$NGX_PORT/"
  [bare]="http://127.0.0.1:$BARE_PORT/"
  [pingora]="http://127.0.0.1:$PINGORA_PORT/"
  [levee]="http://127.0.0.1:$LEVEE_PORT/"
)
for s in "${SETUPS[@]}"; do check_body "$s" "${URL[$s]}"; done

# Keep the access logs from growing without bound: they are opened in append
# mode, so truncating them between runs is safe.
truncate_logs() { : >"$NGX_ACCESS_LOG"; : >"$LEVEE_LOG"; }

# ------------------------------------------------------------ measuring ----
# Prints "rps p50_ms p99_ms non2xx sock_errors requests sock_detail" for a wrk output file.
parse_wrk() {
  awk '
    function ms(v,   n, u) {
      n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
      if (u == "us") return n / 1000
      if (u == "ms") return n
      if (u == "s")  return n * 1000
      if (u == "m")  return n * 60000
      if (u == "h")  return n * 3600000
      return -1
    }
    /^Requests\/sec:/            { rps = $2 }
    $1 == "50%"                  { p50 = ms($2) }
    $1 == "99%"                  { p99 = ms($2) }
    / requests in /              { req = $1 }
    /Non-2xx or 3xx responses:/  { non = $NF }
    /Socket errors:/ {
      # Socket errors: connect 0, read 0, write 0, timeout 0
      detail = $0; sub(/^ *Socket errors: */, "", detail); gsub(/,/, "", detail)
      for (i = 4; i <= NF; i += 2) { v = $i; gsub(/,/, "", v); se += v }
    }
    END {
      if (rps == "" || p50 == "" || p99 == "" || p50 < 0 || p99 < 0) exit 1
      if (detail == "") detail = "-"
      gsub(/ /, "_", detail)
      printf "%s %.3f %.3f %d %d %s %s\n", rps, p50, p99, non + 0, se + 0, (req == "" ? 0 : req), detail
    }' "$1"
}

WRK_CMD="wrk -t$WRK_THREADS -c$WRK_CONNS -d${DURATION}s --latency"
declare -A RPS P50 P99 NON SOCK SOCKD REQ
RATIOS=() BARE_RATIOS=() PINGORA_RATIOS=()

run_wrk() {
  local setup="$1" round="$2" out="$TMP/wrk-$1-$2.txt" parsed
  if ! wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d"${DURATION}s" --latency "${URL[$setup]}" >"$out" 2>&1; then
    cat "$out" >&2
    die "wrk failed against $setup (${URL[$setup]})"
  fi
  parsed="$(parse_wrk "$out")" || { cat "$out" >&2; die "could not parse wrk output for $setup"; }
  read -r "RPS[$setup,$round]" "P50[$setup,$round]" "P99[$setup,$round]" \
          "NON[$setup,$round]" "SOCK[$setup,$round]" "REQ[$setup,$round]" "SOCKD[$setup,$round]" <<<"$parsed"
}

# median FORMAT VALUES...
median() {
  local fmt="$1"; shift
  printf '%s\n' "$@" | sort -g | awk -v fmt="$fmt" '
    { a[NR] = $1 }
    END {
      if (NR == 0) { print "n/a"; exit }
      m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
      printf fmt "\n", m
    }'
}

row() { printf '%-8s %12s %10s %10s %9s %9s %10s\n' "$@"; }

echo
echo "Levee benchmark: $ROUNDS round(s) of: $WRK_CMD URL"
echo "  direct  ${URL[direct]}   (nginx upstream, 1 worker)"
echo "  nginx   ${URL[nginx]}   (nginx proxy, 2 workers, keepalive to upstream, buffered access log)"
echo "  bare    ${URL[bare]}   ($BARE_BIN, $BARE_WORKERS workers, no features, no log)"
echo "  pingora ${URL[pingora]}   ($PINGORA_BIN, $BARE_WORKERS threads, no filters, no log)"
echo "  levee   ${URL[levee]}   ($LEVEE_BIN, access log to a file)"
echo "  $("$NGINX" -v 2>&1); $(wrk -v 2>&1 | head -n1 | awk '{print "wrk " $2}'); $(nproc) cores"
echo

log "warming up (1 s each)"
for s in "${SETUPS[@]}"; do
  wrk -t"$WRK_THREADS" -c"$WRK_CONNS" -d1s "${URL[$s]}" >/dev/null 2>&1 || die "wrk warm-up against $s failed"
done
truncate_logs

for ((r = 1; r <= ROUNDS; r++)); do
  for s in "${SETUPS[@]}"; do
    log "round $r/$ROUNDS: $s"
    run_wrk "$s" "$r"
    if [[ "$s" == levee ]]; then
      levee_lines="$(wc -l <"$LEVEE_LOG")"
    fi
    truncate_logs
  done
  RATIOS+=("$(awk -v l="${RPS[levee,$r]}" -v n="${RPS[nginx,$r]}" 'BEGIN { printf "%.3f", (n > 0 ? l / n : 0) }')")
  BARE_RATIOS+=("$(awk -v b="${RPS[bare,$r]}" -v n="${RPS[nginx,$r]}" 'BEGIN { printf "%.3f", (n > 0 ? b / n : 0) }')")
  PINGORA_RATIOS+=("$(awk -v b="${RPS[pingora,$r]}" -v n="${RPS[nginx,$r]}" 'BEGIN { printf "%.3f", (n > 0 ? b / n : 0) }')")

  echo "Round $r/$ROUNDS"
  row setup "req/s" "p50 ms" "p99 ms" "non-2xx" "sock err" requests
  for s in "${SETUPS[@]}"; do
    row "$s" "${RPS[$s,$r]}" "${P50[$s,$r]}" "${P99[$s,$r]}" "${NON[$s,$r]}" "${SOCK[$s,$r]}" "${REQ[$s,$r]}"
  done
  echo "bare/nginx req/s: ${BARE_RATIOS[$((r - 1))]}   pingora/nginx req/s: ${PINGORA_RATIOS[$((r - 1))]}   levee/nginx req/s: ${RATIOS[$((r - 1))]}   (levee log lines this round: $levee_lines)"
  echo
done

# -------------------------------------------------------------- summary ----
declare -A MED_RPS MED_P50 MED_P99 TOT_NON TOT_SOCK
for s in "${SETUPS[@]}"; do
  vals_rps=() vals_p50=() vals_p99=()
  TOT_NON[$s]=0 TOT_SOCK[$s]=0
  for ((r = 1; r <= ROUNDS; r++)); do
    vals_rps+=("${RPS[$s,$r]}"); vals_p50+=("${P50[$s,$r]}"); vals_p99+=("${P99[$s,$r]}")
    TOT_NON[$s]=$(( ${TOT_NON[$s]} + ${NON[$s,$r]} ))
    TOT_SOCK[$s]=$(( ${TOT_SOCK[$s]} + ${SOCK[$s,$r]} ))
  done
  MED_RPS[$s]="$(median '%.2f' "${vals_rps[@]}")"
  MED_P50[$s]="$(median '%.3f' "${vals_p50[@]}")"
  MED_P99[$s]="$(median '%.3f' "${vals_p99[@]}")"
done
MED_RATIO="$(median '%.3f' "${RATIOS[@]}")"
MED_BARE_RATIO="$(median '%.3f' "${BARE_RATIOS[@]}")"
MED_PINGORA_RATIO="$(median '%.3f' "${PINGORA_RATIOS[@]}")"

echo "Summary: medians over $ROUNDS round(s)"
row setup "req/s" "p50 ms" "p99 ms" "non-2xx" "sock err" ""
for s in "${SETUPS[@]}"; do
  row "$s" "${MED_RPS[$s]}" "${MED_P50[$s]}" "${MED_P99[$s]}" "${TOT_NON[$s]}" "${TOT_SOCK[$s]}" ""
done
echo "bare/nginx req/s per round: ${BARE_RATIOS[*]}   median: $MED_BARE_RATIO"
echo "pingora/nginx req/s per round: ${PINGORA_RATIOS[*]}   median: $MED_PINGORA_RATIO"
echo "levee/nginx req/s per round: ${RATIOS[*]}   median: $MED_RATIO"
echo

ERRORS=()
for s in "${SETUPS[@]}"; do
  if (( ${TOT_NON[$s]} > 0 || ${TOT_SOCK[$s]} > 0 )); then
    detail=""
    for ((r = 1; r <= ROUNDS; r++)); do
      if [[ "${SOCKD[$s,$r]}" != "-" ]]; then detail+=" r$r:${SOCKD[$s,$r]//_/ }"; fi
    done
    ERRORS+=("$s: ${TOT_NON[$s]} non-2xx, ${TOT_SOCK[$s]} socket errors${detail:+ (${detail# })}")
  fi
done

# -------------------------------------------------------------- RESULTS ----
md_escape() { local v="$1"; printf '%s' "${v//|/\\|}"; }

commit="unknown"
if git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
  commit="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo "no-commit")"
  # RESULTS.md itself is rewritten by every run: do not let it mark a build dirty.
  if [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- . ':(exclude)bench/RESULTS.md' 2>/dev/null)" ]]; then
    commit+="-dirty"
  fi
fi
cpu_model="$(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)"
machine="$(nproc) cores, $(uname -r), ${cpu_model:-unknown CPU}"
cmdline="ROUNDS=$ROUNDS DURATION=$DURATION"
if [[ -n "$LEVEE_BIN_FROM_ENV" ]]; then cmdline+=" LEVEE_BIN=$LEVEE_BIN_FROM_ENV"; fi
if [[ -n "$BARE_BIN_FROM_ENV" ]]; then cmdline+=" BARE_BIN=$BARE_BIN_FROM_ENV"; fi
if [[ -n "$PINGORA_BIN_FROM_ENV" ]]; then cmdline+=" PINGORA_BIN=$PINGORA_BIN_FROM_ENV"; fi
cmdline+=" bench/run.sh"
errors_cell="none"
if ((${#ERRORS[@]})); then
  errors_cell="${ERRORS[0]}"
  for e in "${ERRORS[@]:1}"; do errors_cell+="; $e"; done
fi

if [[ ! -f "$RESULTS_FILE" ]]; then
  cat >"$RESULTS_FILE" <<'EOF'
# Levee benchmark results

Each row is one run of `bench/run.sh` (see `bench/README.md`), appended by the
script. Every setup gets the same load: `wrk -t2 -c64 -d<DURATION>s --latency`
over keep-alive connections on loopback, against a 3-byte `ok\n` upstream.

Columns:

- **date (UTC)**: when the run finished.
- **commit**: `git` short hash of the tree measured; `-dirty` if it had
  uncommitted changes (changes to this file are ignored).
- **machine**: core count (`nproc`), kernel (`uname -r`), CPU model.
- **command**: how the script was invoked (env vars included).
- **direct / nginx / bare / levee req/s**: median over the rounds of wrk's
  `Requests/sec` against the upstream itself, the nginx proxy, the bare hyper
  proxy (`crates/levee/examples/bare_proxy.rs`: thread-per-core, no routing,
  logging, metrics or timeouts) and Levee.
- **nginx / bare / levee p50 / p99 ms**: median over the rounds of wrk's 50%
  and 99% latency lines, in milliseconds.
- **bare/nginx**: median of the per-round ratios of the bare proxy's req/s to
  nginx's: what the HTTP stack (hyper + tokio) alone achieves next to nginx.
- **levee/nginx**: median of the per-round ratios of Levee's req/s to nginx's
  (above 1 means Levee served more requests per second than nginx). The
  distance between bare/nginx and levee/nginx is what Levee's own features
  cost; the distance from bare/nginx to 1 is the HTTP stack's.
- **errors**: non-2xx responses and socket errors summed over the measured
  rounds, per setup; `none` if there were none (the script then exits 0).

Load generator, proxies and upstream all share the machine's cores, so only
compare rows from the same machine, and prefer the ratio to absolute numbers.

## Notes

Free text; `bench/run.sh` never edits anything above the `## Runs` heading.
EOF
fi
if ! grep -q '^## Runs' "$RESULTS_FILE"; then
  if [[ -n "$(tail -c1 "$RESULTS_FILE")" ]]; then echo >>"$RESULTS_FILE"; fi
  {
    printf '\n## Runs\n\n%s\n' "$RUNS_HEADER"
    # One |---| per column of the header.
    printf '%s\n' "$RUNS_HEADER" | awk -F'|' '{ s = "|"; for (i = 2; i < NF; i++) s = s "---|"; print s }'
  } >>"$RESULTS_FILE"
fi
if [[ -n "$(tail -c1 "$RESULTS_FILE")" ]]; then echo >>"$RESULTS_FILE"; fi
# shellcheck disable=SC2016  # the backticks are Markdown
printf '| %s | %s | %s | `%s` | %s | %s | %s | %s | %s / %s | %s / %s | %s / %s | %s | %s | %s | %s | %s / %s | %s |\n' \
  "$(date -u '+%Y-%m-%d %H:%M')" "$(md_escape "$commit")" "$(md_escape "$machine")" "$(md_escape "$cmdline")" \
  "${MED_RPS[direct]}" "${MED_RPS[nginx]}" "${MED_RPS[bare]}" "${MED_RPS[levee]}" \
  "${MED_P50[nginx]}" "${MED_P99[nginx]}" "${MED_P50[bare]}" "${MED_P99[bare]}" "${MED_P50[levee]}" "${MED_P99[levee]}" \
  "$MED_BARE_RATIO" "$MED_RATIO" "$(md_escape "$errors_cell")" \
  "${MED_RPS[pingora]}" "${MED_P50[pingora]}" "${MED_P99[pingora]}" "$MED_PINGORA_RATIO" >>"$RESULTS_FILE"
log "appended a row to ${RESULTS_FILE#"$REPO_ROOT"/}"
if results_header_stale; then
  log "warning: that row has more columns than the file's runs table header (see the warning at the start)"
fi

if ((${#ERRORS[@]})); then
  for e in "${ERRORS[@]}"; do log "errors: $e"; done
  die "some requests failed (see above); the numbers were recorded but are suspect"
fi
