#!/usr/bin/env bash
# Memory and file descriptors under a steady load, and across many reloads: does Levee grow?
#
# Started on loopback:
#   127.0.0.1:18381  nginx upstream answering 200 "ok\n"
#   127.0.0.1:18383  Levee (admin 19383), default config plus a JSON access log to a file
# Phases:
#   idle    RSS after start, before any request (target: under 30 MB)
#   soak    a fixed rate (h2load --h1, CONNS connections x RATE requests/s each) for DURATION
#           seconds; RSS and open fds sampled every 10 s. Growth = last sample against the
#           sample at 60 s (target: within 5%)
#   reload  RELOADS reloads through the admin API (the file rewritten each time, one route
#           changed) under the same load; RSS before and after (target: within 5%)
# The samples are printed as a table; the summary is appended to the "Soak" table of
# bench/RESULTS.md.
#
# Environment: DURATION seconds (default 600), CONNS (default 16), RATE per connection
# (default 250, so 4,000 requests/s), RELOADS (default 1000), LEVEE_BIN (default: build
# target/release/levee), KEEP_TMP=1 to keep configs and logs.
set -euo pipefail

DURATION="${DURATION:-600}"
CONNS="${CONNS:-16}"
RATE="${RATE:-250}"
RELOADS="${RELOADS:-1000}"
KEEP_TMP="${KEEP_TMP:-0}"
UP_PORT=18381 PORT=18383 ADMIN=19383

BENCH_NAME=soak-bench
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
RESULTS_FILE="$REPO_ROOT/bench/RESULTS.md"
# shellcheck source=bench/lib.sh
source "$SCRIPT_DIR/lib.sh"
for v in DURATION CONNS RATE RELOADS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
(( DURATION >= 70 )) || die "DURATION must be at least 70 s (growth is measured from the sample at 60 s)"

ensure_tools
if ! command -v h2load >/dev/null; then
  log "installing nghttp2-client (h2load, for a fixed request rate)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q nghttp2-client >/dev/null || die "cannot install h2load"
fi
ensure_levee
ports_free $UP_PORT $PORT $ADMIN
setup_tmp
start_nginx_upstream $UP_PORT

config() {
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
    match: { path_prefix: /$1 }
    upstream: origin
  - name: rest
    match: { path_prefix: / }
    upstream: origin
EOF
}
config v0 >"$TMP/levee.yaml"
start_bg "$TMP/levee.log" "$LEVEE_BIN" run --config "$TMP/levee.yaml"
wait_http "http://127.0.0.1:$UP_PORT/"
wait_http "http://127.0.0.1:$ADMIN/healthz"
PID="$(pgrep -f "run --config $TMP/levee.yaml" | head -1)"
[[ -n "$PID" ]] || die "levee is not running"
rss_mib() { awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$PID/status"; }
fds() { find "/proc/$PID/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }

sleep 2
idle_rss="$(rss_mib)"
log "idle RSS: $idle_rss MiB"

load() {
  h2load --h1 -c "$CONNS" --rps "$RATE" -D "$1" "http://127.0.0.1:$PORT/soak" >"$2" 2>&1
}
log "soak: $CONNS connections x $RATE requests/s for $DURATION s"
load "$DURATION" "$TMP/h2load-soak.txt" &
LOAD_PID=$!
echo "| t (s) | RSS MiB | open fds |"
echo "|---|---|---|"
declare -a samples
rss60=""
for ((t = 10; t <= DURATION; t += 10)); do
  sleep 10
  r="$(rss_mib)" f="$(fds)"
  samples+=("$t:$r:$f")
  echo "| $t | $r | $f |"
  if (( t == 60 )); then rss60="$r"; fi
  # The access log is emptied now and then (append mode, so truncating is safe): its file
  # must not fill the disk on a long soak.
  : >"$TMP/levee.log"
done
wait "$LOAD_PID" || die "h2load failed"
rss_end="$(rss_mib)"
fds_end="$(fds)"
soak_requests="$(awk '/^requests:/ { print $2 }' "$TMP/h2load-soak.txt")"
soak_failed="$(awk '/^requests:/ { for (i = 1; i <= NF; i++) if ($(i + 1) == "failed,") print $i }' "$TMP/h2load-soak.txt")"
soak_2xx="$(awk '/^status codes:/ { print $3 }' "$TMP/h2load-soak.txt")"
growth="$(awk -v a="$rss60" -v b="$rss_end" 'BEGIN { printf "%+.1f%%", (b - a) / a * 100 }')"
echo "soak: RSS $rss60 MiB at 60 s, $rss_end MiB at the end ($growth); fds at the end $fds_end; requests $soak_requests, 2xx $soak_2xx, failed ${soak_failed:-0}"

log "reloads: $RELOADS under load"
reload_time=$(( RELOADS / 20 + 30 ))
load "$reload_time" "$TMP/h2load-reload.txt" &
LOAD_PID=$!
sleep 3
rss_before="$(rss_mib)"
started=$(date +%s.%N)
for ((i = 1; i <= RELOADS; i++)); do
  config "v$i" >"$TMP/levee.yaml.next"
  mv "$TMP/levee.yaml.next" "$TMP/levee.yaml"
  code="$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$ADMIN/api/v1/config/reload")"
  [[ "$code" == 200 ]] || die "reload $i answered $code"
done
elapsed="$(awk -v s="$started" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')"
sleep 2
rss_after="$(rss_mib)"
fds_after="$(fds)"
kill "$LOAD_PID" 2>/dev/null || true
wait "$LOAD_PID" 2>/dev/null || true
reload_growth="$(awk -v a="$rss_before" -v b="$rss_after" 'BEGIN { printf "%+.1f%%", (b - a) / a * 100 }')"
echo "reloads: $RELOADS in $elapsed s; RSS $rss_before -> $rss_after MiB ($reload_growth); fds $fds_after"

cat >"$TMP/header.md" <<'HEAD'
## Soak (bench/soak.sh)

One Levee (default config, JSON access log to a file) under a fixed rate (`h2load --h1`, CONNS
connections x RATE requests/s) for DURATION seconds, RSS and open fds sampled every 10 s; growth is
the last sample against the one at 60 s (target: within 5%). Then RELOADS reloads under the same load,
RSS before and after (target: within 5%). Idle RSS is before the first request (target: under 30 MB).

| date (UTC) | commit | machine | command | idle RSS MiB | RSS at 60 s / end MiB | soak growth | fds at end | requests (failed) | reloads: RSS before / after MiB | reload growth |
|---|---|---|---|---|---|---|---|---|---|---|
HEAD
row="| $(date -u '+%Y-%m-%d %H:%M') | $(commit_label) | $(machine_label) | \`DURATION=$DURATION CONNS=$CONNS RATE=$RATE RELOADS=$RELOADS bench/soak.sh\` | $idle_rss | $rss60 / $rss_end | $growth | $fds_end | $soak_requests (${soak_failed:-0}) | $rss_before / $rss_after | $reload_growth |"
append_row "$row" '<!-- soak rows end -->' "$TMP/header.md"
