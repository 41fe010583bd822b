#!/usr/bin/env bash
# What a fleet-wide rate limit costs one replica: the same Levee binary twice, side by side,
# with a rate limit on every request: once counted in the process (no `cluster` block), once
# counted in Redis (`cluster.redis`, one Lua GCRA call per allowed request). The limit is set
# far above the load, so every request is allowed and every request of the fleet side asks
# Redis: the worst case. Rounds of `wrk -t2 -c64` alternate between the two, PAIRS times, so
# each pair sees the same machine; the script prints the fleet/local ratio of req/s and the
# p99 of each.
#
#   bench/cluster.sh            (builds target/release/levee if missing)
#
# Environment: LEVEE (binary, default target/release/levee), PAIRS (default 6), DURATION
# (seconds per round, default 5), CLIENTS (default 1: every request on one key, the client
# address; N > 1: the limit is keyed by an `x-client` header that wrk sets to one of N values
# at random, so requests spread over N keys and fewer of them share a Redis call). Ports: 18081 origin (nginx), 18091 local, 18092 fleet,
# admin 19921/19922, redis 16399. Redis, nginx and wrk share the 2 cores with Levee.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$SCRIPT_DIR")"
LEVEE="${LEVEE:-$ROOT/target/release/levee}"
PAIRS="${PAIRS:-6}"
CLIENTS="${CLIENTS:-1}"
DURATION="${DURATION:-5}"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
command -v wrk >/dev/null || { echo "wrk not found (bench/run.sh installs it)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server not found" >&2; exit 1; }
[ -x "$LEVEE" ] || (cd "$ROOT" && cargo build --release -p levee-cli)

dir="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$NGINX" -c "$dir/origin.conf" -s stop 2>/dev/null || true
  if [ -n "${KEEP_TMP:-}" ]; then echo "kept $dir"; else rm -rf "$dir"; fi
}
trap cleanup EXIT

cat >"$dir/origin.conf" <<EOF
worker_processes 1;
pid $dir/origin.pid;
error_log $dir/origin.err;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:18081; keepalive_requests 1000000;
  location / { return 200 "ok\n"; } } }
EOF
"$NGINX" -c "$dir/origin.conf" -g 'daemon on;'
redis-server --port 16399 --bind 127.0.0.1 --save "" --appendonly no >"$dir/redis.log" 2>&1 & pids+=($!)

config() { # port admin_port cluster_block
  cat <<EOF
listeners: [{ name: public, bind: "127.0.0.1:$1" }]
admin: { bind: "127.0.0.1:$2" }
upstreams: { origin: { targets: ["127.0.0.1:18081"] } }
routes:
  - name: all
    match: { path_prefix: / }
    upstream: origin
    rate_limit: { rate: 10000000/s, burst: 1000000, key: $LIMIT_KEY }
$3
EOF
}
if [ "$CLIENTS" -gt 1 ]; then
  LIMIT_KEY="header:x-client"
  cat >"$dir/clients.lua" <<EOF
math.randomseed(42)
request = function()
  wrk.headers["x-client"] = "client-" .. math.random(1, $CLIENTS)
  return wrk.format(nil)
end
EOF
  WRK_SCRIPT=(-s "$dir/clients.lua")
else
  LIMIT_KEY="ip"
  WRK_SCRIPT=()
fi
config 18091 19921 "" >"$dir/local.yaml"
config 18092 19922 'cluster: { node_id: bench, redis: { url: "redis://127.0.0.1:16399/0" } }' >"$dir/fleet.yaml"
"$LEVEE" run --config "$dir/local.yaml" >"$dir/local.log" 2>&1 & pids+=($!)
"$LEVEE" run --config "$dir/fleet.yaml" >"$dir/fleet.log" 2>&1 & pids+=($!)
for port in 18091 18092; do
  for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done
# The fleet side must really be asking Redis.
for _ in $(seq 1 50); do
  curl -sf http://127.0.0.1:19922/api/v1/cluster | grep -q '"redis":true' && break; sleep 0.1
done

for i in $(seq 1 "$PAIRS"); do
  for side in local fleet; do
    port=$([ "$side" = local ] && echo 18091 || echo 18092)
    wrk -t2 -c64 -d"${DURATION}s" --latency "${WRK_SCRIPT[@]}" "http://127.0.0.1:$port/" \
      | awk -v i="$i" -v side="$side" '/Requests\/sec/{rps=$2} / 99%/{p99=$2} /Non-2xx/{err+=$NF} /Socket errors/{gsub(",","");err+=$4+$6+$8+$10} END{print i, side, rps+0, p99, err+0}'
  done
done | tee "$dir/pairs.txt"
calls=$(curl -sf http://127.0.0.1:19922/metrics | awk '/^levee_cluster_store_seconds_count\{store="redis"\}/{print $2}')
fallbacks=$(curl -sf http://127.0.0.1:19922/metrics | awk '/^levee_cluster_fallback_total\{component="rate_limit"\}/{print $2}')
echo "fleet side: $calls Redis calls, $fallbacks local fallbacks"

python3 - "$dir/pairs.txt" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
def ms(text):
    return float(text[:-2]) / 1000 if text.endswith("us") else float(text[:-2]) if text.endswith("ms") else float(text[:-1]) * 1000
rps = {s: [float(r[2]) for r in rows if r[1] == s] for s in ("local", "fleet")}
p99 = {s: [ms(r[3]) for r in rows if r[1] == s] for s in ("local", "fleet")}
errors = sum(int(r[4]) for r in rows)
ratios = [f / l for f, l in zip(rps["fleet"], rps["local"])]
print(f"req/s median: local {statistics.median(rps['local']):.0f}, fleet {statistics.median(rps['fleet']):.0f}")
print("fleet/local per pair: " + " ".join(f"{r:.3f}" for r in ratios))
print(f"fleet/local median {statistics.median(ratios):.3f} (target >= 0.9)")
print(f"p99 ms median: local {statistics.median(p99['local']):.2f}, fleet {statistics.median(p99['fleet']):.2f}, "
      f"added {statistics.median(p99['fleet']) - statistics.median(p99['local']):.2f}")
print(f"non-2xx responses and socket errors: {errors}")
EOF
