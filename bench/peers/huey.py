"""Huey: SqliteHuey, its consumer with 2 worker processes (`-k process -w 2`)."""

from __future__ import annotations

import os
import time
from typing import ClassVar

from huey import group
from huey.exceptions import ResultTimeout, TaskException

from bench.peers.base import WORKERS, Peer, bin_path, kill_tree

# The consumer polls SQLite: -d is the first poll interval (default 0.1 s), -m the cap it
# backs off to (default 10 s). Defaults would put ~0.1-10 s into every idle->busy step.
POLL = ["-d", "0.01", "-m", "0.1"]
# Result.get polls too (from 0.05 s, backing off): poll every 2 ms instead.
GET = {"blocking": True, "backoff": 1.0, "max_delay": 0.002}


class HueyPeer(Peer):
    max_sizes: ClassVar[dict[str, int]] = {"throughput": 5_000}  # keeps the whole suite within ~20 min; rate, not size, is compared
    notes: ClassVar[dict[str, str]] = {
        "throughput": "task.map(range(n)) (one SQLite insert each), then poll the result store size",
        "latency": "task() + Result.get(blocking=True, max_delay=0.002); consumer -d 0.01 -m 0.1",
        "timeout": "task(..., timeout=0.5): SIGALRM in the worker process raises TaskTimeout in the task",
        "priority": "task(..., priority=10 / 0) (higher first)",
        "dag": "partial: chord (group([...]).then(join)) for children -> join; no fan-out from one task, "
               "so the caller waits for root, then enqueues the chord",
        "durability": "kill -9 the consumer and its worker processes, start a new consumer on the same SQLite file",
    }

    def start(self, profile="default"):
        db = str(self.ctx.tmp / "huey.db")
        os.environ["BENCH_HUEY_DB"] = db  # read by bench.peer_apps.huey_app, here and in the consumer
        from bench.peer_apps import huey_app

        self.app = huey_app
        self.huey = huey_app.huey
        self.consumer = self.spawn("huey-consumer", [bin_path("huey_consumer"), "bench.peer_apps.huey_app.huey", "-k", "process",
                                                     "-w", str(WORKERS), *POLL, "-q"], env={"BENCH_HUEY_DB": db})
        self.get(self.app.noop(), 60)

    def call(self, fn, *args):
        return getattr(self.app, fn.__name__)(*args)

    def get(self, res, timeout):
        return res.get(timeout=timeout, **GET)

    def call_timeout(self, fn, args, seconds):
        return getattr(self.app, fn.__name__)(*args, timeout=seconds)

    def wait_failure(self, res, cap):
        try:
            res.get(timeout=cap, **GET)
            return "completed"
        except ResultTimeout:
            return "no_answer"
        except TaskException:
            return "failed"

    def call_priority(self, fn, args, high):
        return getattr(self.app, fn.__name__)(*args, priority=10 if high else 0)

    def enqueue_records(self, path, n):
        self.app.record.map([(str(path), i) for i in range(n)])

    def kill_hard(self):
        n = kill_tree([self.consumer.pid])
        self.procs.remove(self.consumer)
        return f"kill -9 the consumer and its workers ({n} processes)"

    def throughput(self, n):
        store = self.huey.storage
        before = store.result_store_size()
        t0 = time.perf_counter()
        results = self.app.noop.map(range(n))
        deadline = time.monotonic() + 900
        while store.result_store_size() - before < n:
            if time.monotonic() > deadline:
                raise RuntimeError("not all tasks finished")
            time.sleep(0.01)
        dt = time.perf_counter() - t0
        results.get(timeout=60, **GET)  # error results count in the store too: raises TaskException
        store.flush_results()
        return {"tasks_per_s": n / dt, "n": n}

    def dag(self, n):
        a = self.app
        t0 = time.perf_counter()
        root = a.dag_root().get(timeout=60, **GET)
        res = self.huey.enqueue(group([a.dag_child.s(root, i) for i in range(n)]).then(a.dag_join))
        got = res.get(timeout=300, **GET)
        dt = time.perf_counter() - t0
        if got != n:
            raise RuntimeError(f"join returned {got!r}, expected {n}")
        return {"seconds": dt, "children": n, "partial": True}
