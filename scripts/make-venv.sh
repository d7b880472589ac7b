#!/usr/bin/env bash
# Create the project's virtualenv. Debian splits venv/ensurepip into python3-venv:
# when it is missing and we are root, install it; otherwise say what to do.
set -euo pipefail
python=${1:-python3}
venv=${2:-.venv}
if ! command -v "$python" >/dev/null; then
  echo "make: $python not found; install Python 3.11 or newer (Debian: apt-get install python3)" >&2
  exit 2
fi
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "make: pipelined needs Python 3.11 or newer; $python is $("$python" -V 2>&1)" >&2
  exit 2
}
if [ -x "$venv/bin/python" ]; then
  exit 0
fi
if ! "$python" -m venv "$venv" 2>/dev/null; then
  rm -rf "$venv"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "make: installing python3-venv (Debian ships venv separately)" >&2
    ver=$("$python" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    apt-get update -qq && (apt-get install -y -qq "python${ver}-venv" || apt-get install -y -qq python3-venv) >/dev/null
    "$python" -m venv "$venv"
  else
    echo "make: '$python -m venv' failed; on Debian run: sudo apt-get install python3-venv" >&2
    exit 2
  fi
fi
