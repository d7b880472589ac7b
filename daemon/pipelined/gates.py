"""Resource gates and the memory watch: psutil, sampled on timers, never blocking.

ResourceGate — with enable_resource_scheduling on, dispatch waits while system
CPU % > max_cpu_percent, memory % > max_memory_percent, or available memory <
min_free_memory_mb. Usage is sampled at most every SAMPLE_S (cpu_percent with
interval=None: the CPU since the previous sample, no sleeping) and cached.

MemoryWatch — a running task with memory_limit_mb has its worker's RSS, its
children included, sampled every WATCH_S; over the limit the supervisor kills
the tree and the task fails with reason `memory_limit`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import psutil

SAMPLE_S = 0.5
WATCH_S = 0.05  # 500 MB/s of growth overshoots a limit by ~25 MB at most


@dataclass
class Usage:
    cpu_percent: float = 0.0
    memory_percent: float = 0.0
    memory_available_mb: float = 0.0
    sampled_at: float | None = None  # wall clock, for display


class ResourceGate:
    def __init__(self, max_cpu_percent: float, max_memory_percent: float, min_free_memory_mb: float, enabled: bool):
        self.configure(max_cpu_percent, max_memory_percent, min_free_memory_mb, enabled)
        self.usage = Usage()
        self.next_sample = 0.0
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    def configure(self, max_cpu_percent: float, max_memory_percent: float, min_free_memory_mb: float, enabled: bool) -> None:
        self.max_cpu_percent = max_cpu_percent
        self.max_memory_percent = max_memory_percent
        self.min_free_memory_mb = min_free_memory_mb
        self.enabled = enabled

    def sample(self, now: float) -> Usage:
        if now >= self.next_sample:
            mem = psutil.virtual_memory()
            self.usage = Usage(psutil.cpu_percent(interval=None), mem.percent, mem.available / 1048576, time.time())
            self.next_sample = now + SAMPLE_S
        return self.usage

    def closed_because(self, now: float) -> str | None:
        """Why dispatch must wait now, or None when the gate is open."""
        if not self.enabled:
            return None
        u = self.sample(now)
        if u.cpu_percent > self.max_cpu_percent:
            return f"resource gate: cpu {u.cpu_percent:.0f}% > max_cpu_percent {self.max_cpu_percent:g}%"
        if u.memory_percent > self.max_memory_percent:
            return f"resource gate: memory {u.memory_percent:.0f}% > max_memory_percent {self.max_memory_percent:g}%"
        if u.memory_available_mb < self.min_free_memory_mb:
            return f"resource gate: {u.memory_available_mb:.0f} MB available < min_free_memory_mb {self.min_free_memory_mb:g}"
        return None

    def next_check(self) -> float | None:
        return self.next_sample if self.enabled else None


def tree_rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, in MB (0 if it is gone)."""
    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            continue
    return total / 1048576
