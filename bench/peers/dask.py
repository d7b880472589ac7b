"""Dask distributed: LocalCluster(n_workers=2, threads_per_worker=1, processes=True).

The scheduler runs inside the caller's process (LocalCluster's default); the workers are
processes, each under a nanny that restarts it if it dies.
"""

from __future__ import annotations

import os
import time
from typing import ClassVar

from distributed import Client, LocalCluster, wait

from bench import peer_tasks
from bench.peers.base import WORKERS, Peer


class DaskPeer(Peer):
    no_timeout = "no per-task timeout (future.result(timeout=) only stops waiting)"
    max_sizes: ClassVar[dict[str, int]] = {"throughput": 5_000}  # keeps the whole suite within ~20 min; rate, not size, is compared
    notes: ClassVar[dict[str, str]] = {
        "throughput": "client.map(noop, range(n)), then distributed.wait",
        "latency": "client.submit(pure=False) + future.result",
        "priority": "client.submit(..., priority=10 / -10) (higher first)",
        "dag": "futures: submit(root); submit(child, root_future, i); submit(join, [child futures])",
        "durability": "kill -9 both worker processes (their nannies restart them; the scheduler, in the "
                      "caller's process and in memory, is not killed: killing it would lose everything)",
    }

    def start(self, profile="default"):
        self.cluster = LocalCluster(n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None,
                                    silence_logs=40)
        self.client = Client(self.cluster)
        self.client.wait_for_workers(WORKERS, timeout=60)

    def stop(self):
        self.client.close()
        self.cluster.close()

    def call(self, fn, *args):
        return self.client.submit(fn, *args, pure=False)

    def get(self, fut, timeout):
        return fut.result(timeout)

    def call_priority(self, fn, args, high):
        return self.client.submit(fn, *args, pure=False, priority=10 if high else -10)

    def enqueue_records(self, path, n):
        self.futures = self.client.map(peer_tasks.record, [str(path)] * n, range(n), pure=False)

    def kill_hard(self):
        pids = list(self.client.run(os.getpid).values())
        for pid in pids:
            os.kill(pid, 9)
        return f"kill -9 the {len(pids)} worker processes (nannies and scheduler untouched)"

    def restart_after_kill(self):
        pass  # the nannies restart the workers; the scheduler reschedules their tasks

    def throughput(self, n):
        t0 = time.perf_counter()
        futs = self.client.map(peer_tasks.noop, range(n))
        wait(futs, timeout=900)
        dt = time.perf_counter() - t0
        failed = sum(1 for f in futs if f.status != "finished")
        del futs
        if failed:
            raise RuntimeError(f"{failed} of {n} tasks did not finish")
        return {"tasks_per_s": n / dt, "n": n}

    def dag(self, n):
        c = self.client
        t0 = time.perf_counter()
        root = c.submit(peer_tasks.dag_root, pure=False)
        children = [c.submit(peer_tasks.dag_child, root, i, pure=False) for i in range(n)]
        join = c.submit(peer_tasks.dag_join, children, pure=False)
        got = join.result(300)
        dt = time.perf_counter() - t0
        if got != n:
            raise RuntimeError(f"join returned {got!r}, expected {n}")
        return {"seconds": dt, "children": n}
