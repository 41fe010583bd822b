#!/usr/bin/env bash
# Paired A/B of two Levee binaries on the same load: which one is faster, beyond the noise?
#
# On a shared 2-core VM, throughput drifts by 20-30% between minutes, so comparing two runs
# of bench/run.sh taken minutes apart says little about a change. This script starts both
# binaries side by side (same config, different ports) in front of one nginx origin and
# alternates `wrk -t2 -c64` between them, PAIRS times, so each pair of rounds sees the same
# machine. It prints each pair and the median and mean of the new/old ratios of req/s, and
# the median p99 of each side.
#
#   OLD=/path/to/levee-before NEW=/path/to/levee-after bench/ab.sh
#
# Environment: OLD, NEW (required), PAIRS (default 8), DURATION (seconds, default 5),
# CLIENT (`h1`, the default: wrk -t2 -c64; `h2`: h2load -t2 -c16 -m10 over cleartext HTTP/2
# with prior knowledge, which reports no percentiles, so p99 is left out).
# Ports: 18081 (origin), 18093 (old), 18083 (new), admin 19911 and 19901.
set -euo pipefail

OLD="${OLD:?OLD=path to the levee binary before the change}"
NEW="${NEW:?NEW=path to the levee binary after the change}"
PAIRS="${PAIRS:-8}"
DURATION="${DURATION:-5}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
command -v wrk >/dev/null || { echo "wrk not found (bench/run.sh installs it)" >&2; exit 1; }

dir="$(mktemp -d)"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  "$NGINX" -c "$dir/origin.conf" -s stop 2>/dev/null || true
  rm -rf "$dir"
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
sed 's/18083/18093/; s/19901/19911/' "$SCRIPT_DIR/levee.yaml" >"$dir/old.yaml"
cp "$SCRIPT_DIR/levee.yaml" "$dir/new.yaml"
"$OLD" run --config "$dir/old.yaml" >"$dir/old.log" 2>&1 & pids+=($!)
"$NEW" run --config "$dir/new.yaml" >"$dir/new.log" 2>&1 & pids+=($!)
for port in 18093 18083; do
  for _ in $(seq 1 50); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done

for i in $(seq 1 "$PAIRS"); do
  for side in old new; do
    port=$([ "$side" = old ] && echo 18093 || echo 18083)
    if [ "${CLIENT:-h1}" = h2 ]; then
      h2load -t2 -c16 -m10 -D"$DURATION" "http://127.0.0.1:$port/" \
        | awk -v i="$i" -v side="$side" '/^finished in/{gsub(",", "", $4); rps=$4} END{print i, side, rps, "-"}'
    else
      wrk -t2 -c64 -d"${DURATION}s" --latency "http://127.0.0.1:$port/" \
        | awk -v i="$i" -v side="$side" '/Requests\/sec/{rps=$2} / 99%/{p99=$2} END{print i, side, rps, p99}'
    fi
  done
done | tee "$dir/pairs.txt"

python3 - "$dir/pairs.txt" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]) if line.strip()]
rps = {s: [float(r[2]) for r in rows if r[1] == s] for s in ("old", "new")}
def ms(text):
    return float(text[:-2]) / 1000 if text.endswith("us") else float(text[:-2]) if text.endswith("ms") else float(text[:-1]) * 1000
p99 = {s: [ms(r[3]) for r in rows if r[1] == s and r[3] != "-"] for s in ("old", "new")}
ratios = [n / o for n, o in zip(rps["new"], rps["old"])]
print(f"req/s median: old {statistics.median(rps['old']):.0f}, new {statistics.median(rps['new']):.0f}")
print("new/old per pair: " + " ".join(f"{r:.3f}" for r in ratios))
print(f"new/old median {statistics.median(ratios):.3f}, mean {statistics.mean(ratios):.3f}")
if p99["old"] and p99["new"]:
    print(f"p99 ms median: old {statistics.median(p99['old']):.2f}, new {statistics.median(p99['new']):.2f}")
EOF
