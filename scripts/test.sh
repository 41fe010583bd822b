#!/usr/bin/env bash
# The one test command: installs what is missing, then runs every check CI runs.
#   scripts/test.sh
# Checks: cargo fmt --check, the module layers (scripts/check_layers.py), cargo clippy (all
# targets, warnings are errors; too_many_lines at 120 in clippy.toml), a short fuzz run
# of each cargo-fuzz target, and the whole test suite with cargo-nextest (falls back to cargo
# test if nextest cannot be installed).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n==> %s\n' "$*"; }

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null 2>&1 \
      || { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$@" >/dev/null; }
  else
    echo "cannot install $* (need root and apt-get); install it by hand" >&2
    return 1
  fi
}

log "tools"
for component in rustfmt clippy; do
  if ! rustup component list --installed 2>/dev/null | grep -q "^$component"; then
    rustup component add "$component"
  fi
done
# promtool lints the metrics exposition in the tests (Debian ships it in `prometheus`).
command -v promtool >/dev/null || apt_install prometheus
command -v promtool >/dev/null && promtool --version 2>&1 | head -1
# A real Alertmanager receives the SLO burn-rate alerts in the tests (Debian ships it as
# `prometheus-alertmanager`).
command -v prometheus-alertmanager >/dev/null || command -v alertmanager >/dev/null \
  || apt_install prometheus-alertmanager || true
# Cluster mode's tests start their own redis-server and PostgreSQL (initdb, pg_ctl).
command -v redis-server >/dev/null || apt_install redis-server
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_install postgresql
# The machine's own Redis and PostgreSQL services are never used: each test starts its own
# on a free port.
# Python tools the tests use (openapi-spec-validator checks the admin API's OpenAPI
# document), in a virtualenv of their own under target/.
VENV="$PWD/target/test-venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV" 2>/dev/null \
    || { apt_install python3-venv && python3 -m venv "$VENV"; } \
    || echo "cannot create a Python virtualenv"
fi
# ... the official OpenAI SDK drives the AI gateway as a real client would, and grpcio is
# the real gRPC server and client of the gRPC tests.
# The official MCP SDK is the MCP gateway's client and servers, its 1.x line (FastMCP): the
# protocol revisions Levee serves (2024-11-05 to 2025-11-25).
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import openapi_spec_validator, openai, grpc, grpc_health.v1, mcp.server.fastmcp' 2>/dev/null; then
  "$VENV/bin/pip" install --quiet 'openapi-spec-validator>=0.7' 'openai>=1.50' 'grpcio>=1.60' 'grpcio-health-checking>=1.60' 'mcp>=1.12,<2' \
    || echo "openapi-spec-validator, openai, grpcio or mcp could not be installed"
fi
# The dashboard's browser tests: Debian's Chromium, driven by Python Playwright. Playwright's
# own browser download is never used (it cannot work here): the tests launch /usr/bin/chromium.
command -v chromium >/dev/null || apt_install chromium || true
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import playwright.sync_api' 2>/dev/null; then
  "$VENV/bin/pip" install --quiet 'playwright>=1.40' || echo "playwright could not be installed"
fi
if [ -x "$VENV/bin/python" ]; then export LEVEE_TEST_PYTHON="$VENV/bin/python"; fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked cargo-nextest >/dev/null 2>&1 || echo "cargo-nextest unavailable; using cargo test"
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz >/dev/null 2>&1 || echo "cargo-fuzz could not be installed"
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "layers: imports point down the layers of docs/architecture.md, no cycle, no file over 800 lines"
python3 scripts/check_layers.py

log "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

log "fuzz (10 s per target; see fuzz/README.md for longer runs)"
if cargo fuzz --version >/dev/null 2>&1; then
  for target in config request_head; do
    # RUSTC_BOOTSTRAP lets the stable toolchain take cargo fuzz's sanitizer flags.
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$target" -- -max_total_time=10 2>&1 | tail -n 2
  done
elif [ -n "${CI:-}" ]; then
  echo "cargo fuzz is required in CI" >&2
  exit 1
else
  echo "cargo fuzz not installed: fuzzing skipped"
fi

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
  # nextest does not run doctests; run them first so nextest's summary closes the output.
  cargo test --workspace --doc --quiet
  cargo nextest run --workspace --profile ci
else
  cargo test --workspace
fi
