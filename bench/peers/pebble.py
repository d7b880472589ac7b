"""pebble.ProcessPool(2): has a per-task timeout (the worker process is stopped)."""

from __future__ import annotations

import concurrent.futures as cf
from typing import ClassVar

from pebble import ProcessPool

from bench.peers.base import WORKERS
from bench.peers.inprocess import InProcessPool


class PebblePeer(InProcessPool):
    notes: ClassVar[dict[str, str]] = {
        "throughput": "ProcessPool.submit(fn, None) per task, then future.result() of each; side figure: ProcessPool.map(chunksize=n/8)",
        "latency": "submit(fn, None) + future.result",
        "timeout": "submit(fn, 0.5): pebble stops the worker process and starts another",
        "dag": "no dependency feature",
    }

    def start(self, profile="default"):
        self.pool = ProcessPool(max_workers=WORKERS)

    def stop(self):
        self.pool.stop()
        self.pool.join(10)

    def call(self, fn, *args):
        return self.pool.submit(fn, None, *args)

    def get(self, handle, timeout):
        return handle.result(timeout)

    def call_timeout(self, fn, args, seconds):
        return self.pool.submit(fn, seconds, *args)

    def wait_failure(self, handle, cap):
        try:
            handle.result(cap)
            return "completed"
        except cf.TimeoutError:
            # pebble reports its own timeout as TimeoutError too; tell it from ours by done().
            return "failed" if handle.done() else "no_answer"
        except Exception:  # noqa: BLE001 - whatever pebble raises for a killed task
            return "failed"

    def map(self, fn, items, chunksize):
        return self.pool.map(fn, items, chunksize=chunksize).result()
