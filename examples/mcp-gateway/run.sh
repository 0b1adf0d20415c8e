#!/usr/bin/env bash
# Builds the gateway, creates the Python client's virtualenv (the official MCP
# SDK from PyPI, in target/mcp-venv), and runs the waves: ours beside the naive
# build. Exit 1 if a wave of ours fails.
#
#   bash examples/mcp-gateway/run.sh            # waves of 14, 28, 42 clients, --compare
#   bash examples/mcp-gateway/run.sh --ci       # one short wave, both builds
#   bash examples/mcp-gateway/run.sh -- ARGS    # driver.py arguments instead
set -euo pipefail
cd "$(dirname "$0")/../.."
MCP_SDK_VERSION=2.3.0
tdir=${CARGO_TARGET_DIR:-target}
venv=$tdir/mcp-venv

driver_args=(--compare --waves 14,28,42)
case "${1:-}" in
  --ci) driver_args=(--compare --waves 14) ;;
  --) shift; driver_args=("$@") ;;
  "") ;;
  *) echo "usage: run.sh [--ci | -- DRIVER_ARGS]" >&2; exit 2 ;;
esac

cargo build --quiet -p mcp-gateway
if ! "$venv/bin/python" -c "import mcp, sys; sys.exit(0 if mcp.__version__ == '$MCP_SDK_VERSION' else 1)" 2>/dev/null \
  && ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('mcp') == '$MCP_SDK_VERSION' else 1)" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "mcp==$MCP_SDK_VERSION"
fi
exec "$venv/bin/python" examples/mcp-gateway/driver.py \
  --gateway "$tdir/debug/mcp-gateway" --upstream "$tdir/debug/mcp-upstream" "${driver_args[@]}"
