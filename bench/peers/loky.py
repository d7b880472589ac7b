"""loky's reusable executor (2 workers)."""

from __future__ import annotations

from typing import ClassVar

from loky import get_reusable_executor

from bench.peers.base import WORKERS
from bench.peers.inprocess import InProcessPool


class LokyPeer(InProcessPool):
    no_timeout = "no per-task timeout (its timeout= is the idle-worker timeout)"
    notes: ClassVar[dict[str, str]] = {
        "throughput": "executor.submit per task, then future.result() of each; side figure: get_reusable_executor(2).map(chunksize=n/8)",
        "latency": "submit + future.result",
        "dag": "no dependency feature",
    }

    def start(self, profile="default"):
        self.ex = get_reusable_executor(max_workers=WORKERS, timeout=300)

    def stop(self):
        self.ex.shutdown(wait=True, kill_workers=True)

    def call(self, fn, *args):
        return self.ex.submit(fn, *args)

    def get(self, handle, timeout):
        return handle.result(timeout)

    def map(self, fn, items, chunksize):
        return self.ex.map(fn, items, chunksize=chunksize)
