#!/usr/bin/env bash
# The main job, end to end: start a private pipelined, run the quality pipeline
# over a copy of a real codebase (default: this Python's standard library), say
# where the report is, stop the daemon. Exit status: the pipeline's.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${VENV:-.venv}
bin="$venv/bin"
demo=$(pwd)/.demo
rm -rf "$demo" && mkdir -p "$demo"
export PIPELINED_SOCKET="$demo/run/pipelined.sock"
if [ -n "${TARGET:-}" ] && [ ! -d "$TARGET" ]; then
  echo "make demo: TARGET=$TARGET is not a folder" >&2
  exit 2
fi

workers=()
[ -n "${WORKERS:-}" ] && workers=(--workers "$WORKERS")
"$bin/pipelined" --runtime-dir "$demo/run" --state-dir "$demo/state" "${workers[@]}" --log-level warning \
  2> "$demo/pipelined.log" &
daemon=$!
stop_daemon() {
  if kill -0 "$daemon" 2>/dev/null; then
    kill -TERM "$daemon" 2>/dev/null || true
    wait "$daemon" 2>/dev/null || true
  fi
}
trap stop_daemon EXIT

for _ in $(seq 1 150); do
  "$bin/pipelinectl" ping >/dev/null 2>&1 && break
  kill -0 "$daemon" 2>/dev/null || { echo "pipelined failed to start:"; cat "$demo/pipelined.log"; exit 1; }
  sleep 0.1
done
echo "pipelined is up ($("$bin/pipelinectl" --json status | "$bin/python" -c 'import json,sys; print(json.load(sys.stdin)["max_workers"])') workers, socket $PIPELINED_SOCKET)"

envs=()
# Tasks run in the pipeline's folder: hand them an absolute TARGET.
[ -n "${TARGET:-}" ] && envs=(--env "TARGET=$(realpath "$TARGET")")
set +e
"$bin/pipelinectl" run examples/quality/pipeline.toml "${envs[@]}"
status=$?
set -e
if [ -f examples/quality/.work/quality/report.md ]; then
  echo
  echo "Report: examples/quality/.work/quality/report.md (and report.json beside it)"
fi
exit $status
