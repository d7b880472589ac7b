#!/usr/bin/env bash
# Install the MCP Inspector CLI into .ci/node: tests/test_mcp.py drives pipeline-mcp with it,
# as a client independent of the Python SDK. `make test` runs this before pytest.
# Never fails the build: without npm, or when the install fails, it says why, and the
# Inspector test is skipped with that reason (see .ci/node/install.log).
set -uo pipefail
cd "$(dirname "$0")/.."

INSPECTOR_VERSION=2.12.0  # runs on Node 20 (its engines field asks for 22; npm only warns)
PREFIX=.ci/node
PKG="$PREFIX/node_modules/@modelcontextprotocol/inspector/package.json"
LOG="$PREFIX/install.log"

if [ -x "$PREFIX/node_modules/.bin/mcp-inspector" ] && grep -q "\"version\": \"$INSPECTOR_VERSION\"" "$PKG" 2>/dev/null; then
  exit 0
fi
mkdir -p "$PREFIX"
if ! command -v npm >/dev/null; then
  echo "npm not found: cannot install @modelcontextprotocol/inspector@$INSPECTOR_VERSION" >"$LOG"
  echo "install-inspector: npm not found; the MCP Inspector test will be skipped" >&2
  exit 0
fi
echo "install-inspector: npm install @modelcontextprotocol/inspector@$INSPECTOR_VERSION into $PREFIX" >&2
if npm install --prefix "$PREFIX" --no-audit --no-fund --loglevel=error \
    "@modelcontextprotocol/inspector@$INSPECTOR_VERSION" >"$LOG" 2>&1; then
  exit 0
fi
echo "install-inspector: the install failed (see $LOG); the MCP Inspector test will be skipped" >&2
exit 0
