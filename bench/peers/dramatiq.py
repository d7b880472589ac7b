"""Dramatiq + Redis: `dramatiq bench.peer_apps.dramatiq_app --processes 2 --threads 1`."""

from __future__ import annotations

import time
from typing import ClassVar

from dramatiq import group
from dramatiq.results import ResultFailure, ResultTimeout
from redis.exceptions import TimeoutError as RedisTimeout

from bench.peer_apps import dramatiq_app as app
from bench.peers.base import WORKERS, Peer, bin_path, kill_tree


class DramatiqPeer(Peer):
    max_sizes: ClassVar[dict[str, int]] = {"throughput": 5_000}  # keeps the whole suite within ~20 min; rate, not size, is compared
    notes: ClassVar[dict[str, str]] = {
        "throughput": "group(noop.message() x n).run(), then group.wait() (Results middleware, Redis backend)",
        "latency": "send() + message.get_result(block=True)",
        "timeout": "send_with_options(time_limit=500 ms): the TimeLimit middleware raises an exception in the "
                   "worker thread, which a blocking time.sleep() does not see",
        "priority": "two actors with actor priority 100 / 0 (lower first; orders only messages a worker has "
                    "already prefetched)",
        "dag": "partial: group(children).add_completion_callback(join) (GroupCallbacks middleware) for "
               "children -> join; no fan-out from one task, so the caller waits for root, then runs the group",
        "durability": "kill -9 the dramatiq main process and its worker processes, start new ones; messages a "
                      "dead worker had taken are requeued only after the broker's heartbeat timeout (60 s)",
    }

    def start(self, profile="default"):
        self.main = self.spawn("dramatiq", [bin_path("dramatiq"), "bench.peer_apps.dramatiq_app", "--processes", str(WORKERS),
                                            "--threads", "1"])
        self.get(self.call_name("noop"), 60)

    def call_name(self, name, *args, **options):
        return getattr(app, name).send_with_options(args=args, **options)

    def call(self, fn, *args):
        return self.call_name(fn.__name__, *args)

    def get(self, msg, timeout):
        # Block in slices of 1 s: a longer BRPOPLPUSH can outlast the Redis client's socket timeout.
        deadline = time.monotonic() + timeout
        while True:
            try:
                return msg.get_result(block=True, timeout=1000)
            except (ResultTimeout, RedisTimeout):
                if time.monotonic() > deadline:
                    raise ResultTimeout(msg) from None

    def call_timeout(self, fn, args, seconds):
        return self.call_name(fn.__name__, *args, time_limit=int(seconds * 1000))

    def wait_failure(self, msg, cap):
        try:
            self.get(msg, cap)
            return "completed"
        except ResultTimeout:
            return "no_answer"
        except ResultFailure:
            return "failed"

    def call_priority(self, fn, args, high):
        return self.call_name(fn.__name__ + ("__high" if high else ""), *args)

    def enqueue_records(self, path, n):
        group(app.record.message(str(path), i) for i in range(n)).run()

    def kill_hard(self):
        n = kill_tree([self.main.pid])
        self.procs.remove(self.main)
        return f"kill -9 dramatiq and its worker processes ({n} processes)"

    def throughput(self, n):
        t0 = time.perf_counter()
        g = group(app.noop.message() for _ in range(n)).run()
        g.wait(timeout=900_000)
        return {"tasks_per_s": n / (time.perf_counter() - t0), "n": n}

    def dag(self, n):
        t0 = time.perf_counter()
        root = self.get(app.dag_root.send(), 60)
        join = app.dag_join.message()
        children = group(app.dag_child.message(root, i) for i in range(n))
        children.add_completion_callback(join)
        children.run()
        self.get(join, 300)
        return {"seconds": time.perf_counter() - t0, "children": n, "partial": True}
