"""multiprocessing.Pool(2) (fork)."""

from __future__ import annotations

import multiprocessing
from typing import ClassVar

from bench.peers.base import WORKERS
from bench.peers.inprocess import InProcessPool


class MultiprocessingPoolPeer(InProcessPool):
    no_timeout = "no per-task timeout (AsyncResult.get(timeout=) only stops waiting)"
    notes: ClassVar[dict[str, str]] = {
        "throughput": "Pool.apply_async per task, then get() of each; side figure: Pool.map (its default chunksize, n/8)",
        "latency": "apply_async + get",
        "dag": "no dependency feature",
    }

    def start(self, profile="default"):
        self.pool = multiprocessing.Pool(WORKERS)

    def stop(self):
        self.pool.terminate()
        self.pool.join()

    def call(self, fn, *args):
        return self.pool.apply_async(fn, args)

    def get(self, handle, timeout):
        return handle.get(timeout)

    def map(self, fn, items, chunksize):
        return self.pool.map(fn, items, chunksize=chunksize)
