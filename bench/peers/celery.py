"""Celery + Redis: one prefork worker, concurrency 2."""

from __future__ import annotations

import time
from typing import ClassVar

from celery import chain, chord, group
from celery.exceptions import TimeoutError as CeleryTimeout

from bench.peer_apps.celery_app import make_app
from bench.peers.base import WORKERS, Peer, bin_path, kill_tree


class CeleryPeer(Peer):
    max_sizes: ClassVar[dict[str, int]] = {"throughput": 2_000}  # keeps the whole suite within ~20 min; rate, not size, is compared
    notes: ClassVar[dict[str, str]] = {
        "throughput": "group(noop.s() x n).apply_async(), then GroupResult.join_native()",
        "latency": "delay() + AsyncResult.get() (Redis result backend)",
        "timeout": "apply_async(time_limit=0.5): the prefork pool kills the child process",
        "priority": "apply_async(priority=9 / 0) with priority_steps 0-9, queue_order_strategy=priority, "
                    "worker_prefetch_multiplier=1, task_acks_late (Celery's Redis recipe; this workload only)",
        "dag": "chain(root.s(), chord([child.s(i)...], join.s()))",
        "durability": "kill -9 the worker (main + pool children), start a new one; default acks (early)",
    }

    def profile(self, workload):
        return "priority" if workload == "priority" else "default"

    def start(self, profile="default"):
        env = {"BENCH_CELERY_PROFILE": profile}  # BENCH_REDIS_URL comes from the runner
        self.app = make_app(profile)
        self.t = self.app.tasks
        self._profile = profile
        self.worker = self.spawn("celery-worker", [
            bin_path("celery"), "-A", "bench.peer_apps.celery_app", "worker", "--pool", "prefork",
            "--concurrency", str(WORKERS), "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-n", f"bench-{time.monotonic_ns()}@%h"], env=env)
        self.get(self.call_name("noop"), 60)  # ready once a task round-trips

    def stop(self):
        super().stop()
        if getattr(self, "app", None) is not None:
            self.app.close()
            self.app = None

    def call_name(self, name, *args, **options):
        return self.t[f"bench.{name}"].apply_async(args, **options)

    def call(self, fn, *args):
        return self.call_name(fn.__name__, *args)

    def get(self, handle, timeout):
        return handle.get(timeout=timeout)

    def call_timeout(self, fn, args, seconds):
        return self.call_name(fn.__name__, *args, time_limit=seconds)

    def wait_failure(self, handle, cap):
        try:
            handle.get(timeout=cap)
            return "completed"
        except CeleryTimeout:
            return "no_answer"
        except Exception:  # noqa: BLE001 - TimeLimitExceeded and friends, re-raised from the backend
            return "failed"

    def call_priority(self, fn, args, high):
        # Redis transport: 0 is the highest priority.
        return self.call_name(fn.__name__, *args, priority=0 if high else 9)

    def enqueue_records(self, path, n):
        group(self.t["bench.record"].s(str(path), i) for i in range(n)).apply_async()

    def kill_hard(self):
        n = kill_tree([self.worker.pid])
        self.procs.remove(self.worker)
        return f"kill -9 the worker and its pool ({n} processes)"

    def restart_after_kill(self):
        self.start(self._profile)

    def throughput(self, n):
        noop = self.t["bench.noop"]
        t0 = time.perf_counter()
        res = group(noop.s() for _ in range(n)).apply_async()
        res.join_native(timeout=600)
        dt = time.perf_counter() - t0
        return {"tasks_per_s": n / dt, "n": n}

    def dag(self, n):
        t = self.t
        t0 = time.perf_counter()
        res = chain(t["bench.dag_root"].s(), chord([t["bench.dag_child"].s(i) for i in range(n)], t["bench.dag_join"].s())).apply_async()
        got = res.get(timeout=300)
        dt = time.perf_counter() - t0
        if got != n:
            raise RuntimeError(f"join returned {got!r}, expected {n}")
        return {"seconds": dt, "children": n}
