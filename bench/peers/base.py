"""What every peer provides, and the workloads that are written once on top of it.

A peer implements a few primitives (start/stop, call/get, and where it has the feature:
call_timeout, call_priority, kill_hard/restart_after_kill) plus its own throughput() and
dag(), since those use peer-specific batch and dependency APIs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil

from bench import peer_tasks, procs
from bench.workloads import (
    BLOCKER_S,
    DURABILITY_CAP_S,
    DURABILITY_QUIET_S,
    TIMEOUT_CAP_S,
    TIMEOUT_S,
    NoFeature,
    latency_summary,
    lines,
    wait_lines,
    wait_quiet,
)

REPO = Path(__file__).resolve().parent.parent.parent
WORKERS = 2


@dataclass
class Context:
    tmp: Path  # this session's scratch dir (task output files, logs, sqlite files)
    redis_url: str | None
    env: dict[str, str] = field(default_factory=dict)  # for processes we spawn: PYTHONPATH, marker


class Peer:
    notes: ClassVar[dict[str, str]] = {}  # per workload: API and options used, or why there is no such feature
    no_timeout: str | None = None  # set -> C is "no such feature" with this note
    no_priority: str | None = None
    in_process_queue = False  # F: the queue lives in the caller; a kill -9 of it loses what is not done
    max_sizes: ClassVar[dict[str, int]] = {}  # caps for peers too slow for the full sizes in a ~20 min suite

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.procs: list[subprocess.Popen] = []
        self._files = 0

    # -- lifecycle ----------------------------------------------------------------------
    def start(self, profile: str = "default") -> None:
        raise NotImplementedError

    def stop(self) -> None:
        for p in self.procs:
            procs.stop(p)
        self.procs.clear()

    def profile(self, workload: str) -> str:
        """Workloads that need the peer started differently name another profile."""
        return "default"

    def spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        p = procs.spawn(cmd, env={**self.ctx.env, **(env or {})}, cwd=REPO, log=self.ctx.tmp / f"{name}.log")
        self.procs.append(p)
        return p

    def tmpfile(self, stem: str) -> Path:
        self._files += 1
        return self.ctx.tmp / f"{stem}-{self._files}.txt"

    # -- primitives -----------------------------------------------------------------------
    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        raise NotImplementedError

    def get(self, handle: Any, timeout: float) -> Any:
        raise NotImplementedError

    def call_timeout(self, fn: Callable[..., Any], args: tuple, seconds: float) -> Any:
        raise NoFeature(self.no_timeout or "no per-task timeout")

    def timeout_seconds(self, seconds: float) -> float:
        """The timeout the peer can actually set (RQ: whole seconds only)."""
        return seconds

    def wait_failure(self, handle: Any, cap: float) -> str:
        """'failed' once the caller sees the task fail, 'completed', or 'no_answer' after cap s."""
        raise NotImplementedError

    def call_priority(self, fn: Callable[..., Any], args: tuple, high: bool) -> Any:
        raise NoFeature(self.no_priority or "no priority feature")

    def enqueue_records(self, path: Path, n: int) -> None:
        for i in range(n):
            self.call(peer_tasks.record, str(path), i)

    def kill_hard(self) -> str:
        """kill -9 whatever holds the queue / runs the tasks; say what was killed."""
        raise NotImplementedError

    def restart_after_kill(self) -> None:
        self.start()

    def warm(self) -> None:
        for _ in range(20):
            self.get(self.call(peer_tasks.noop), 30)

    # -- workloads --------------------------------------------------------------------------
    def throughput(self, n: int) -> dict[str, Any]:
        raise NotImplementedError

    def dag(self, n: int) -> dict[str, Any]:
        raise NoFeature("no dependency feature")

    def latency(self, n: int) -> dict[str, Any]:
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.get(self.call(peer_tasks.noop), 30)
            samples.append(time.perf_counter() - t0)
        return latency_summary(samples)

    def timeout(self) -> dict[str, Any]:
        path = self.tmpfile("hang")
        seconds = self.timeout_seconds(TIMEOUT_S)
        handle = self.call_timeout(peer_tasks.hang, (str(path),), seconds)
        outcome = self.wait_failure(handle, TIMEOUT_CAP_S)
        seen = time.time()
        start = wait_lines(path, 1, 5, keep=lambda line: line.startswith("start"))
        if not start:
            raise RuntimeError(f"the task never started (outcome {outcome})")
        _, pid, gpid, t_start = start[0].split()
        time.sleep(0.2)  # give a peer that kills asynchronously a moment before we look
        exited = any(line.startswith("exit") for line in lines(path))
        worker_dead = not procs.alive(int(pid))
        how = "exception raised in the task" if exited else "worker process killed" if worker_dead else "still running"
        survived = procs.alive(int(gpid))
        try:
            self.get(self.call(peer_tasks.noop), 10)
            healthy = True
        except Exception:  # noqa: BLE001 - any failure of the follow-up no-op means "not healthy"
            healthy = False
        procs.kill_pid(int(gpid))
        if how == "still running":
            procs.kill_pid(int(pid))  # don't leave it hogging a worker (and the peer's shutdown)
        return {
            "outcome": outcome,  # what the caller saw
            "killed": worker_dead or exited,
            "how": how,
            "late_ms": (seen - float(t_start) - seconds) * 1e3 if outcome == "failed" else None,
            "timeout_s": seconds,
            "healthy": healthy,
            "grandchild_survived": survived,
        }

    def priority(self, n: int) -> dict[str, Any]:
        if self.no_priority:
            raise NoFeature(self.no_priority)
        path = self.tmpfile("prio")
        keep = []  # some peers (Dask) cancel a task whose handle is dropped
        for _ in range(WORKERS):
            keep.append(self.call_priority(peer_tasks.blocker, (str(path), BLOCKER_S), high=False))
        if len(wait_lines(path, WORKERS, 30, keep=lambda line: line.startswith("B "))) < WORKERS:
            raise RuntimeError("the blockers did not start")
        t0 = time.monotonic()
        for i in range(n):
            keep.append(self.call_priority(peer_tasks.stamp, (str(path), f"L{i}"), high=False))
        keep.append(self.call_priority(peer_tasks.stamp, (str(path), "H"), high=True))
        submit_s = time.monotonic() - t0
        got = wait_lines(path, n + 1, 120, keep=lambda line: not line.startswith("B "))
        order = [tag for tag, _ in sorted((line.split() for line in got), key=lambda x: float(x[1]))]
        if "H" not in order:
            raise RuntimeError(f"the high-priority task did not run ({len(got)} of {n + 1} ran)")
        return {"position": order.index("H"), "of": n + 1, "submit_s": submit_s,
                "valid": submit_s < BLOCKER_S}  # else workers freed up before the high one was in

    def durability(self, n: int) -> dict[str, Any]:
        if self.in_process_queue:
            return {"status": "lost", "of": n,
                    "note": "the queue lives in the caller's process: a kill -9 of it loses every unfinished task"}
        path = self.tmpfile("durable")
        t0 = time.monotonic()
        self.enqueue_records(path, n)
        enqueue_s = time.monotonic() - t0
        wait_lines(path, max(1, min(50, n // 10)), 60)  # some done, some running, most still queued
        killed = self.kill_hard()
        at_kill = len(set(lines(path)))
        t1 = time.monotonic()
        self.restart_after_kill()
        done = wait_quiet(path, n, DURABILITY_QUIET_S, DURABILITY_CAP_S)
        all_lines = lines(path)
        return {"completed": len(done & {str(i) for i in range(n)}), "of": n, "done_at_kill": at_kill,
                "ran_twice": len(all_lines) - len(set(all_lines)), "killed": killed, "enqueue_s": enqueue_s,
                "recovery_s": time.monotonic() - t1}


def kill_tree(pids: list[int]) -> int:
    """SIGKILL these processes and all their descendants at once; return how many."""
    victims: list[psutil.Process] = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            victims += [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(victims, timeout=5)
    return len(victims)


def python() -> str:
    return sys.executable


def bin_path(name: str) -> str:
    """A console script of the venv we run in (rq, celery, huey_consumer, dramatiq)."""
    return os.path.join(os.path.dirname(sys.executable), name)
