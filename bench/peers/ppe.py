"""concurrent.futures.ProcessPoolExecutor(2) (default start method: fork on Linux, Python 3.11)."""

from __future__ import annotations

import concurrent.futures as cf
from typing import ClassVar

from bench.peers.base import WORKERS
from bench.peers.inprocess import InProcessPool


class ProcessPoolExecutorPeer(InProcessPool):
    no_timeout = "no per-task timeout (future.result(timeout=) only stops waiting)"
    notes: ClassVar[dict[str, str]] = {
        "throughput": "executor.submit per task, then future.result() of each; side figure: executor.map(chunksize=n/8)",
        "latency": "submit + future.result",
        "dag": "no dependency feature",
    }

    def start(self, profile="default"):
        self.ex = cf.ProcessPoolExecutor(WORKERS)

    def stop(self):
        self.ex.shutdown(wait=True, cancel_futures=True)

    def call(self, fn, *args):
        return self.ex.submit(fn, *args)

    def get(self, handle, timeout):
        return handle.result(timeout)

    def map(self, fn, items, chunksize):
        return self.ex.map(fn, items, chunksize=chunksize)
