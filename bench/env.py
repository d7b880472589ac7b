"""The benchmark's own venv (.bench-venv/), machine info and package versions.

The runner must not depend on whatever venv it was started from: it (re)builds
.bench-venv from the pinned bench/requirements.txt plus pipelined (editable), then
re-execs itself inside it. Only the standard library may be imported here.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".bench-venv"
REQUIREMENTS = REPO / "bench" / "requirements.txt"
STAMP = VENV / ".bench-installed"  # hash of what was installed; stale -> reinstall
FAILED = VENV / ".bench-install-failures.json"
VENV_PY = VENV / "bin" / "python"

# Distribution names whose versions go into the JSON (the peers and what they ride on).
REPORTED = ["pipelined", "pyzmq", "msgpack", "loky", "pebble", "huey", "rq", "redis", "celery", "kombu", "billiard",
            "dask", "distributed", "dramatiq", "psutil"]


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def _wanted_hash() -> str:
    h = hashlib.sha256()
    for f in (REQUIREMENTS, REPO / "pyproject.toml"):
        h.update(f.read_bytes())
    h.update(sys.version.encode())
    return h.hexdigest()


INSTALL_LOG = VENV / "install.log"


def _pip(*args: str) -> int:
    # pip's output goes to a log (shown only if it fails): a normal install says nothing.
    cmd = [str(VENV_PY), "-m", "pip", "install", "--disable-pip-version-check", *args]
    with open(INSTALL_LOG, "a") as log:
        log.write(f"$ {' '.join(cmd)}\n")
        log.flush()
        rc = subprocess.call(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    if rc != 0:
        lines = INSTALL_LOG.read_text().splitlines()
        print("\n".join(["bench: pip failed:", *lines[-15:]]), file=sys.stderr)
    return rc


def ensure_venv() -> None:
    """Create/update .bench-venv when needed; if we are not running in it, re-exec there."""
    if not VENV_PY.exists():
        print(f"bench: creating {VENV.relative_to(REPO)}/", file=sys.stderr, flush=True)
        # Run venv with the base interpreter so a venv-inside-venv does not chain to the outer one.
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.check_call([base, "-m", "venv", str(VENV)])
    wanted = _wanted_hash()
    if not STAMP.exists() or STAMP.read_text() != wanted:
        print(f"bench: installing {REQUIREMENTS.relative_to(REPO)} and pipelined (editable) into {VENV.name}/",
              file=sys.stderr, flush=True)
        failures = _install()
        FAILED.write_text(json.dumps(failures))
        STAMP.write_text(wanted)
    if not in_venv():
        os.execv(str(VENV_PY), [str(VENV_PY), "-m", "bench", *sys.argv[1:]])


def _install() -> dict[str, str]:
    """Install everything; if the pinned set fails as a whole, go line by line so one
    broken peer does not take the others down (its session then reports the import error)."""
    failures: dict[str, str] = {}
    if _pip("-r", str(REQUIREMENTS)) != 0:
        for line in REQUIREMENTS.read_text().splitlines():
            req = line.split("#", 1)[0].strip()
            if req and _pip("--no-deps", req) != 0:
                failures[req] = "pip install failed"
    if _pip("-e", str(REPO)) != 0:
        failures["pipelined"] = "pip install -e . failed"
    return failures


def install_failures() -> dict[str, str]:
    try:
        return json.loads(FAILED.read_text())
    except (OSError, ValueError):
        return {}


def package_versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {}
    for name in REPORTED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine_info() -> dict[str, object]:
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
        cpu_model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu_model = platform.processor()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        # The lead edits pipelined while benchmarks run: say which files differed from the commit.
        "git_dirty_files": [f.strip() for f in _git("status", "--porcelain", "--", "daemon", "client", "protocol", "bench", ":(exclude)bench/results").splitlines()],
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10, check=False).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
