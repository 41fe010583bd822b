# Helpers shared by the A/B benchmark scripts (bench/observability.sh, bench/slo.sh):
# tools, a temp dir cleaned up on exit, background processes in their own process groups,
# readiness waits, one wrk run parsed into RPS/P50/P99/ERR, and medians.
# Source it after setting BENCH_NAME, REPO_ROOT and KEEP_TMP.

log() { printf '[%s] %s\n' "$BENCH_NAME" "$*" >&2; }
die() { printf '[%s] ERROR: %s\n' "$BENCH_NAME" "$*" >&2; exit 1; }

find_nginx() {
  NGINX="$(command -v nginx || true)"
  # /usr/sbin is often not on a non-root user's PATH.
  if [[ -z "$NGINX" && -x /usr/sbin/nginx ]]; then NGINX=/usr/sbin/nginx; fi
}

# nginx, wrk and curl, installed with apt-get when missing.
ensure_tools() {
  find_nginx
  if [[ -z "$NGINX" ]] || ! command -v wrk >/dev/null || ! command -v curl >/dev/null; then
    command -v apt-get >/dev/null || die "need nginx, wrk and curl (no apt-get here to install them)"
    local sudo=()
    if [[ $EUID -ne 0 ]]; then sudo=(sudo); fi
    log "installing nginx wrk curl"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y nginx wrk curl >/dev/null
    # The package may start a system nginx on port 80: not ours, stop it.
    "${sudo[@]}" nginx -s quit 2>/dev/null || true
    find_nginx
  fi
  [[ -n "$NGINX" ]] && command -v wrk >/dev/null || die "nginx or wrk still missing"
}

# LEVEE_BIN, built in release mode unless given.
ensure_levee() {
  if [[ -z "${LEVEE_BIN:-}" ]]; then
    log "building levee: cargo build --release -p levee-cli"
    (cd "$REPO_ROOT" && cargo build --release -p levee-cli)
    LEVEE_BIN="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/levee"
  fi
  [[ -x "$LEVEE_BIN" ]] || die "LEVEE_BIN '$LEVEE_BIN' is not executable"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
ports_free() {
  local p
  for p in "$@"; do
    if port_open "$p"; then die "127.0.0.1:$p is already in use"; fi
  done
}

# TMP, removed on exit (unless KEEP_TMP=1) after stopping every process start_bg started.
setup_tmp() {
  TMP="$(mktemp -d "${TMPDIR:-/tmp}/levee-$BENCH_NAME.XXXXXX")"
  chmod 755 "$TMP"
  PIDS=()
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
}
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
start_bg() { local out="$1"; shift; setsid "$@" >>"$out" 2>&1 </dev/null & PIDS+=("$!"); }

wait_http() {
  local url="$1" deadline=$(( $(date +%s) + 10 ))
  while (( $(date +%s) < deadline )); do
    curl -s -o /dev/null --max-time 1 "$url" && return 0
    sleep 0.1
  done
  die "$url did not answer within 10 s"
}

# nginx on 127.0.0.1:$1 answering 200 "ok\n" to everything (the upstream); more `server`
# blocks may follow as extra arguments.
start_nginx_upstream() {
  local port="$1"; shift
  mkdir -p "$TMP/nginx"
  cat >"$TMP/nginx/nginx.conf" <<CONF
worker_processes 1;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $TMP/nginx/body;
    client_max_body_size 64m;
    keepalive_requests 100000;
    server { listen 127.0.0.1:$port; location / { return 200 "ok\n"; } }
    $*
}
CONF
  start_bg "$TMP/nginx/stdout.log" "$NGINX" -p "$TMP/nginx/" -c "$TMP/nginx/nginx.conf" -g 'daemon off;'
}

# One `wrk -t2 -c64` run against ${URL[$1]} for round $2, parsed into RPS/P50/P99/ERR[$1,$2].
# ${HEADER[$1]}, when set, is sent with every request (`wrk -H`); ${SCRIPT[$1]}, when set, is
# wrk's Lua script (`wrk -s`).
declare -A URL HEADER SCRIPT RPS P50 P99 ERR
wrk_args() {
  if [[ -n "${HEADER[$1]:-}" ]]; then printf '%s\0' -H "${HEADER[$1]}"; fi
  if [[ -n "${SCRIPT[$1]:-}" ]]; then printf '%s\0' -s "${SCRIPT[$1]}"; fi
}
run_wrk() {
  local out="$TMP/wrk-$1-$2.txt" extra=()
  mapfile -d '' extra < <(wrk_args "$1")
  wrk -t2 -c64 -d"${DURATION}s" --latency "${extra[@]}" "${URL[$1]}" >"$out" 2>&1 || die "wrk failed against $1"
  RPS[$1,$2]="$(awk '/^Requests\/sec:/ { print $2 }' "$out")"
  P50[$1,$2]="$(awk '$1 == "50%" { v = $2 + 0; if ($2 ~ /us$/) v /= 1000; if ($2 ~ /[^m]s$/ && $2 !~ /us$/) v *= 1000; print v }' "$out")"
  P99[$1,$2]="$(awk '$1 == "99%" { v = $2 + 0; if ($2 ~ /us$/) v /= 1000; if ($2 ~ /[^m]s$/ && $2 !~ /us$/) v *= 1000; print v }' "$out")"
  ERR[$1,$2]="$(awk '/Non-2xx|Socket errors/ { n++ } END { print n + 0 }' "$out")"
}

# ab_rounds A B [COMMAND]: a 1 s warm-up of each, then ROUNDS rounds of A then B (COMMAND
# runs after each round), appending each round's B/A req/s ratio to `ratios`.
ratios=()
ab_rounds() {
  local a="$1" b="$2" after="${3:-}" s r extra
  log "warming up"
  for s in "$a" "$b"; do
    extra=()
    mapfile -d '' extra < <(wrk_args "$s")
    wrk -t2 -c64 -d1s "${extra[@]}" "${URL[$s]}" >/dev/null 2>&1
  done
  for ((r = 1; r <= ROUNDS; r++)); do
    for s in "$a" "$b"; do log "round $r/$ROUNDS: $s"; run_wrk "$s" "$r"; done
    if [[ -n "$after" ]]; then eval "$after"; fi
    ratios+=("$(awk -v x="${RPS[$b,$r]}" -v y="${RPS[$a,$r]}" 'BEGIN { printf "%.3f", x / y }')")
    printf 'round %d: %s %s req/s (p50 %s ms, p99 %s ms), %s %s req/s (p50 %s ms, p99 %s ms), %s/%s %s\n' \
      "$r" "$a" "${RPS[$a,$r]}" "${P50[$a,$r]}" "${P99[$a,$r]}" "$b" "${RPS[$b,$r]}" "${P50[$b,$r]}" "${P99[$b,$r]}" "$b" "$a" "${ratios[-1]}"
  done
}

# summarize A B: medians over ROUNDS of A's and B's req/s, p50 and p99 into M[setup,rps|p50|p99],
# the median of the per-round B/A ratios (in `ratios`) into `ratio`, the wrk error lines into
# `errors`; prints the two lines and the ratio.
declare -A M
summarize() {
  local s r v_rps v_p50 v_p99 k
  for s in "$1" "$2"; do
    v_rps=() v_p50=() v_p99=()
    for ((r = 1; r <= ROUNDS; r++)); do v_rps+=("${RPS[$s,$r]}"); v_p50+=("${P50[$s,$r]}"); v_p99+=("${P99[$s,$r]}"); done
    M[$s,rps]="$(median '%.0f' "${v_rps[@]}")"; M[$s,p50]="$(median '%.3f' "${v_p50[@]}")"; M[$s,p99]="$(median '%.3f' "${v_p99[@]}")"
  done
  ratio="$(median '%.3f' "${ratios[@]}")"
  errors=0
  for k in "${!ERR[@]}"; do errors=$(( errors + ${ERR[$k]} )); done
  echo
  printf '%-6s %s req/s p50 %s ms p99 %s ms\n' "$1:" "${M[$1,rps]}" "${M[$1,p50]}" "${M[$1,p99]}"
  printf '%-6s %s req/s p50 %s ms p99 %s ms\n' "$2:" "${M[$2,rps]}" "${M[$2,p50]}" "${M[$2,p99]}"
  echo "$2/$1 per round: ${ratios[*]}  median: $ratio  (cost: $(awk -v r="$ratio" 'BEGIN { printf "%.1f%%", (1 - r) * 100 }'))"
}

# median FORMAT VALUES...
median() { printf '%s\n' "${@:2}" | sort -g | awk -v f="$1" '{ a[NR] = $1 } END { m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2; printf f "\n", m }'; }

# The commit measured ("-dirty" with local changes outside bench/RESULTS.md) and the machine.
commit_label() {
  local commit
  commit="$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if [[ -n "$(git -C "$REPO_ROOT" status --porcelain -- . ':(exclude)bench/RESULTS.md' 2>/dev/null)" ]]; then commit+="-dirty"; fi
  printf '%s' "$commit"
}
machine_label() { printf '%s cores, %s' "$(nproc)" "$(uname -r)"; }

# Appends ROW to the table ending in MARKER in bench/RESULTS.md, creating the section (the
# lines of HEADER_FILE) before "## Runs" when it is not there yet.
append_row() {
  local row="$1" marker="$2" header_file="$3"
  if ! grep -qF "$marker" "$RESULTS_FILE"; then
    awk -v marker="$marker" -v header="$header_file" '
      /^## Runs$/ && !done {
        while ((getline line < header) > 0) print line
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
}
