"""Task functions shared by every peer (plain module-level functions).

Peers' worker processes import this module by name (`bench.peer_tasks`), so it must stay
importable from the repo root with nothing but the standard library. Facts the runner needs
(start times, pids, completions) are appended to files: that works the same whether a peer
returns results, drops them, or its worker is killed mid-task.
"""

from __future__ import annotations

import os
import subprocess
import time

DURABILITY_TASK_S = 0.01  # long enough that 1,000 tasks are still queued when we kill


def noop(*_args):
    return None


def _append(path: str, line: str) -> None:
    # One short O_APPEND write per line: lines from concurrent workers do not interleave.
    with open(path, "a") as f:
        f.write(line + "\n")


def hang(path: str) -> None:
    """C. Start a grandchild (same process group), say who we are, then sleep "forever"."""
    started = time.time()  # first thing: the deadline is counted from here
    child = subprocess.Popen(["sleep", "60"])
    _append(path, f"start {os.getpid()} {child.pid} {started:.6f}")
    try:
        time.sleep(3600)
    finally:
        # Reached only if the peer stops the task by raising into it (not if it kills the process).
        _append(path, f"exit {os.getpid()} {time.time():.6f}")


def blocker(path: str, seconds: float) -> None:
    """D. Keep a worker busy; say when it started."""
    _append(path, f"B {time.time():.6f}")
    time.sleep(seconds)


def stamp(path: str, tag: str) -> None:
    """D. Record when this task started."""
    _append(path, f"{tag} {time.time():.6f}")


def dag_root() -> int:
    return 1


def dag_child(root: int, i: int) -> int:
    return root + i


def dag_join(values=None) -> int:
    return len(values) if values is not None else 0


def record(path: str, i: int) -> None:
    """F. A short task that leaves proof it completed."""
    time.sleep(DURABILITY_TASK_S)
    _append(path, str(i))
