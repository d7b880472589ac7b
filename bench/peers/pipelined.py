"""pipelined: a private daemon (2 workers) on a temporary socket, driven by pipeline_client."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from bench import peer_tasks, procs
from bench.peers.base import WORKERS, Peer, kill_tree, python
from bench.workloads import latency_summary
from pipeline_client import Client, Ref, TaskFailed
from pipeline_client.errors import PipelineError

BATCH = 1_000


def fname(fn: Callable[..., Any]) -> str:
    return f"{fn.__module__}:{fn.__name__}"


class Pipelined(Peer):
    extra: tuple[str, ...] = ()
    notes: ClassVar[dict[str, str]] = {
        "throughput": f"submit_many in batches of {BATCH:,} (each task its own id, record and result), then Client.wait(ids); side figure: one Client.submit per task, then Client.wait(ids)",
        "latency": "Client.call (submit and wait in one exchange); then Client.submit + Client.result (two exchanges)",
        "timeout": "timeout=0.5, max_retries=0 (kills the worker's process group)",
        "priority": 'priority="low" / "high"',
        "dag": "one submit_many batch: root, children args=[Ref(root), i], join args=[[Ref(child)...]]",
        "durability": "kill -9 daemon + workers, restart on the same state dir (journal)",
    }

    def __init__(self, ctx):
        super().__init__(ctx)
        self.dir = ctx.tmp / "pipelined"
        self.socket = str(self.dir / "run" / "pipelined.sock")
        self.daemon = None
        self.client: Client | None = None

    def start(self, profile: str = "default") -> None:
        cmd = [python(), "-m", "pipelined", "--runtime-dir", str(self.dir / "run"), "--state-dir", str(self.dir / "state"),
               "--workers", str(WORKERS), "--log-level", "warning", *self.extra]
        self.daemon = self.spawn("pipelined", cmd)
        deadline = time.monotonic() + 30
        while True:  # ready = every worker idle, as bench/daemon.py waits
            try:
                with Client(self.socket, timeout=1) as c:
                    if sum(w["state"] == "idle" for w in c.workers()) >= WORKERS:
                        break
            except PipelineError:
                pass
            if time.monotonic() > deadline or self.daemon.poll() is not None:
                raise RuntimeError(f"pipelined did not start (log: {self.ctx.tmp / 'pipelined.log'})")
            time.sleep(0.02)
        self.client = Client(self.socket, timeout=60)

    def stop(self) -> None:
        if self.client:
            self.client.close()
            self.client = None
        super().stop()  # SIGTERM: the daemon stops its workers

    # -- primitives ---------------------------------------------------------------------------
    def call(self, fn, *args):
        return self.client.submit(fname(fn), args=list(args), max_retries=0)

    def get(self, handle, timeout):
        return self.client.result(handle, timeout=timeout)

    def call_timeout(self, fn, args, seconds):
        return self.client.submit(fname(fn), args=list(args), timeout=seconds, max_retries=0)

    def wait_failure(self, handle, cap):
        try:
            self.client.result(handle, timeout=cap)
            return "completed"
        except TaskFailed:
            return "failed"
        except TimeoutError:
            return "no_answer"

    def call_priority(self, fn, args, high):
        return self.client.submit(fname(fn), args=list(args), priority="high" if high else "low", max_retries=0)

    def enqueue_records(self, path: Path, n: int) -> None:
        fn = fname(peer_tasks.record)
        for i in range(0, n, BATCH):
            self.client.submit_many([{"function": fn, "args": [str(path), j]} for j in range(i, min(n, i + BATCH))])

    def kill_hard(self) -> str:
        n = kill_tree([self.daemon.pid])
        self.client.close()
        self.client = None
        self.procs.remove(self.daemon)
        procs.stop(self.daemon)  # reap it
        return f"kill -9 daemon + its workers ({n} processes)"

    # -- workloads ----------------------------------------------------------------------------
    def latency(self, n):
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            self.client.call(fname(peer_tasks.noop), max_retries=0, wait_timeout=30)
            samples.append(time.perf_counter() - t0)
        out = latency_summary(samples)
        two = super().latency(n)  # Client.submit + Client.result: two exchanges
        out.update(submit_result_p50_us=two["p50_us"], submit_result_p99_us=two["p99_us"])
        return out

    side_figures = True  # the pair sessions (run next to each peer, for the ratios) skip them

    def throughput(self, n):
        task = {"function": fname(peer_tasks.noop), "max_retries": 0}
        t0 = time.perf_counter()
        ids: list[str] = []
        for i in range(0, n, BATCH):
            ids += self.client.submit_many([task] * min(BATCH, n - i))
        _all_completed(self.client.wait(ids, timeout=600), n)
        out = {"tasks_per_s": n / (time.perf_counter() - t0), "n": n}
        if self.side_figures:
            # One Client.submit request per task, each waiting for its acceptance (on disk).
            t0 = time.perf_counter()
            ids = [self.client.submit(fname(peer_tasks.noop), max_retries=0) for _ in range(n)]
            _all_completed(self.client.wait(ids, timeout=600), n)
            out["per_task_submit_per_s"] = n / (time.perf_counter() - t0)
        return out

    def dag(self, n):
        p = f"dag-{uuid.uuid4().hex[:8]}"
        root, children, join = f"{p}-root", [f"{p}-{i}" for i in range(n)], f"{p}-join"
        tasks = [{"task_id": root, "function": fname(peer_tasks.dag_root), "max_retries": 0}]
        tasks += [{"task_id": c, "function": fname(peer_tasks.dag_child), "args": [Ref(root), i], "max_retries": 0}
                  for i, c in enumerate(children)]
        tasks.append({"task_id": join, "function": fname(peer_tasks.dag_join), "args": [[Ref(c) for c in children]],
                      "max_retries": 0})
        t0 = time.perf_counter()
        self.client.submit_many(tasks)
        got = self.client.result(join, timeout=300)
        dt = time.perf_counter() - t0
        if got != n:
            raise RuntimeError(f"join returned {got!r}, expected {n}")
        return {"seconds": dt, "children": n}


def _all_completed(reply: dict, n: int) -> None:
    """A throughput figure counts only tasks that ended `completed`."""
    done = sum(1 for rec in reply.get("tasks", []) if rec.get("status") == "completed")
    if reply.get("timed_out") or reply.get("pending") or done != n:
        raise RuntimeError(f"{done} of {n} tasks completed ({len(reply.get('pending') or [])} still pending)")


class PipelinedPair(Pipelined):
    """The same daemon, A and B only, run right before each peer: the ratios compare
    figures measured minutes apart at most, so machine drift hits both."""

    side_figures = False


class PipelinedVolatile(Pipelined):
    extra = ("--volatile",)
    notes: ClassVar[dict[str, str]] = {**Pipelined.notes, "durability": "kill -9 daemon + workers, restart (--volatile: no journal)"}
