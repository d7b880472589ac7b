"""Shared by the in-process pools (ProcessPoolExecutor, multiprocessing.Pool, loky, pebble):
the pool and its queue live in the caller, so there is nothing to run on the side."""

from __future__ import annotations

import math
import time

from bench import peer_tasks
from bench.peers.base import WORKERS, Peer


def map_chunksize(n: int) -> int:
    # multiprocessing.Pool.map's own default (about 4 chunks per worker), used for every map API.
    return max(1, math.ceil(n / (4 * WORKERS)))


class InProcessPool(Peer):
    in_process_queue = True
    no_priority = "no priority feature (FIFO)"

    def throughput(self, n):
        chunksize = map_chunksize(n)
        t0 = time.perf_counter()
        done = sum(1 for _ in self.map(peer_tasks.noop, range(n), chunksize))
        dt = time.perf_counter() - t0
        assert done == n
        # Chunked map is not a per-task figure (a chunk is one message); also time one
        # submit per task, the way the task queues are measured, for the notes.
        t0 = time.perf_counter()
        handles = [self.call(peer_tasks.noop, i) for i in range(n)]
        for h in handles:
            self.get(h, 300)
        per_task = n / (time.perf_counter() - t0)
        return {"tasks_per_s": n / dt, "n": n, "chunksize": chunksize, "per_task_submit_per_s": per_task}

    def map(self, fn, items, chunksize):
        raise NotImplementedError
