"""Small helpers shared by the daemon tests (process inspection, waiting on task states)."""

from __future__ import annotations

import os
from pathlib import Path

import psutil

from .conftest import wait_for


def cmdline(pid: int) -> str:
    """The process title as `ps` shows it (setproctitle rewrites argv)."""
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def alive(pid: int) -> bool:
    """True if `pid` exists and is not a zombie."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def gone(pid: int) -> bool:
    """True once `pid` no longer exists at all: dead and reaped, not even a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def read_pid(path, timeout: float = 10.0) -> int:
    """Wait for a task to write its pid file and return the pid."""

    def read():
        try:
            text = Path(path).read_text().strip()
        except FileNotFoundError:
            return None
        return int(text) if text.isdigit() else None

    return wait_for(read, timeout, what=f"pid file {path}")


def wait_status(client, task_id: str, status: str, timeout: float = 10.0) -> dict:
    def check():
        rec = client.get(task_id)
        return rec if rec["status"] == status else None

    return wait_for(check, timeout, what=f"task {task_id} to be {status}")


def wait_idle_pool(client, n: int, timeout: float = 10.0, exclude: set[int] | frozenset[int] = frozenset()) -> list[dict]:
    """Wait until the pool has n idle workers (none of them in `exclude`) and return them."""

    def check():
        ws = client.workers()
        if len(ws) == n and all(w["state"] == "idle" for w in ws) and not ({w["pid"] for w in ws} & set(exclude)):
            return ws
        return None

    return wait_for(check, timeout, what=f"{n} idle workers")
