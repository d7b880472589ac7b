"""The six workloads (A-F): names, sizes, and the small helpers their measurements share.

Workload logic that is the same for every peer (latency, hard timeout, priority,
durability) lives in bench/peers/base.py on top of a few per-peer primitives; throughput
and DAG are peer-specific because they use each peer's batch / dependency API.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

# Column order of the report; also the order a session runs them in: the ones that may
# leave a peer damaged (C kills or strands a worker, F kill -9s) come last.
WORKLOADS = {
    "throughput": "A. throughput",
    "latency": "B. latency",
    "priority": "D. priority",
    "dag": "E. DAG",
    "timeout": "C. hard timeout",
    "durability": "F. durability",
}
REPORT_ORDER = ["throughput", "latency", "timeout", "priority", "dag", "durability"]

TIMEOUT_S = 0.5  # C: the task's hard timeout
TIMEOUT_CAP_S = 5.0  # C: how long we wait for a peer to report the failure at all
BLOCKER_S = 1.0  # D: how long the two blockers keep both workers busy
DURABILITY_QUIET_S = 5.0  # F: after restart, stop waiting once nothing completed for this long
DURABILITY_CAP_S = 120.0  # F: ... or after this long in all


@dataclass
class Sizes:
    throughput: int = 20_000
    latency: int = 1_000
    priority: int = 200
    dag: int = 1_000
    durability: int = 1_000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(throughput=2_000, latency=100, priority=200, dag=100, durability=200)

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class NoFeature(Exception):
    """The peer has no such feature: a result, not an error."""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def latency_summary(samples: list[float]) -> dict[str, float]:
    return {"p50_us": statistics.median(samples) * 1e6, "p99_us": pct(samples, 0.99) * 1e6, "n": len(samples)}


def lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


def wait_lines(path: Path, count: int, timeout: float, keep=lambda line: True) -> list[str]:
    """Poll a file the tasks append to until `count` kept lines are there (or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        got = [line for line in lines(path) if keep(line)]
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.01)


def wait_quiet(path: Path, target: int, quiet: float, cap: float) -> set[str]:
    """F: wait until `target` distinct lines, or no new one for `quiet` s, or `cap` s."""
    start = last_change = time.monotonic()
    seen: set[str] = set()
    while True:
        now_seen = set(lines(path))
        if len(now_seen) != len(seen):
            seen, last_change = now_seen, time.monotonic()
        now = time.monotonic()
        if len(seen) >= target or now - last_change > quiet or now - start > cap:
            return seen
        time.sleep(0.05)
