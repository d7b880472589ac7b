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
        # The headline is one submit per task: every task a future of its own, as the
        # task queues measure it. Chunked map sends n/8 calls per message (one pickle,
        # one result list): a different thing, kept as a side figure.
        t0 = time.perf_counter()
        handles = [self.call(peer_tasks.noop, i) for i in range(n)]
        for h in handles:
            self.get(h, 300)
        per_task = n / (time.perf_counter() - t0)
        chunksize = map_chunksize(n)
        t0 = time.perf_counter()
        done = sum(1 for _ in self.map(peer_tasks.noop, range(n), chunksize))
        dt = time.perf_counter() - t0
        assert done == n
        return {"tasks_per_s": per_task, "n": n, "chunksize": chunksize, "map_per_s": n / dt}

    def map(self, fn, items, chunksize):
        raise NotImplementedError
