"""RQ + Redis: `rq worker-pool -n 2` (each worker forks a work horse per job)."""

from __future__ import annotations

import time
from typing import ClassVar

from redis import Redis
from rq import Queue
from rq.job import Dependency, Job
from rq.results import Result
from rq.worker import Worker

from bench.peers.base import WORKERS, Peer, bin_path, kill_tree

QUEUES = ["high", "default", "low"]  # a worker takes from the first non-empty one: RQ's priorities


class RQPeer(Peer):
    # A fork per job makes RQ ~50 tasks/s here: 20,000 tasks would take ~7 min a run. Rates
    # are comparable across sizes once startup is amortised; the table shows the n used.
    max_sizes: ClassVar[dict[str, int]] = {"throughput": 1_000, "latency": 500}
    notes: ClassVar[dict[str, str]] = {
        "throughput": "Queue.enqueue_many (one Redis pipeline per 1,000), then poll the FinishedJobRegistry count",
        "latency": "enqueue + job.latest_result(timeout=) (blocking XREAD)",
        "timeout": "enqueue(job_timeout=1): RQ takes whole seconds only, so 1 s, not 0.5 s; "
                   "SIGALRM in the work horse raises JobTimeoutException",
        "priority": "queues listened to in order high, default, low (RQ has no per-job priority)",
        "dag": "depends_on=root for each child, depends_on=Dependency(jobs=children) for the join "
               "(no result passing: the children and join get constants)",
        "durability": "kill -9 the worker pool and its horses, start a new pool",
    }

    def start(self, profile="default"):
        self.redis = Redis.from_url(self.ctx.redis_url)
        self.q = {name: Queue(name, connection=self.redis) for name in QUEUES}
        self.pool = self.spawn("rq-worker-pool", [bin_path("rq"), "worker-pool", "-n", str(WORKERS), "-u", self.ctx.redis_url,
                                                  "-q", *QUEUES])
        deadline = time.monotonic() + 60
        while Worker.count(connection=self.redis) < WORKERS:
            if time.monotonic() > deadline or self.pool.poll() is not None:
                raise RuntimeError("rq worker-pool did not start")
            time.sleep(0.05)

    def stop(self):
        super().stop()
        if getattr(self, "redis", None) is not None:
            self.redis.close()
            self.redis = None

    def call(self, fn, *args):
        return self.q["default"].enqueue(fn, *args)

    def get(self, job: Job, timeout):
        res = job.latest_result(timeout=max(1, int(timeout)))
        if res is None:
            raise TimeoutError("no result")
        if res.type != Result.Type.SUCCESSFUL:
            raise RuntimeError(res.exc_string)
        return res.return_value

    def call_timeout(self, fn, args, seconds):
        return self.q["default"].enqueue(fn, *args, job_timeout=max(1, round(seconds)))

    def timeout_seconds(self, seconds):
        return max(1, round(seconds))

    def wait_failure(self, job, cap):
        res = job.latest_result(timeout=int(cap))
        if res is None:
            return "no_answer"
        return "completed" if res.type == Result.Type.SUCCESSFUL else "failed"

    def call_priority(self, fn, args, high):
        return self.q["high" if high else "low"].enqueue(fn, *args)

    def enqueue_many(self, fn, argss, queue="default"):
        q = self.q[queue]
        jobs = []
        for i in range(0, len(argss), 1000):
            jobs += q.enqueue_many([Queue.prepare_data(fn, args) for args in argss[i:i + 1000]])
        return jobs

    def enqueue_records(self, path, n):
        from bench.peer_tasks import record

        self.enqueue_many(record, [(str(path), i) for i in range(n)])

    def kill_hard(self):
        n = kill_tree([self.pool.pid])
        self.procs.remove(self.pool)
        return f"kill -9 the worker pool and its workers/horses ({n} processes)"

    def throughput(self, n):
        from bench.peer_tasks import noop

        reg = self.q["default"].finished_job_registry
        before = reg.count
        t0 = time.perf_counter()
        self.enqueue_many(noop, [()] * n)
        deadline = time.monotonic() + 900
        while reg.count - before < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {reg.count - before} of {n} finished")
            time.sleep(0.01)
        return {"tasks_per_s": n / (time.perf_counter() - t0), "n": n}

    def dag(self, n):
        from bench.peer_tasks import dag_child, dag_join, dag_root

        q = self.q["default"]
        t0 = time.perf_counter()
        root = q.enqueue(dag_root)
        children = []
        for i in range(0, n, 1000):
            children += q.enqueue_many([Queue.prepare_data(dag_child, (1, j), depends_on=root) for j in range(i, min(n, i + 1000))])
        join = q.enqueue(dag_join, depends_on=Dependency(jobs=children))
        res = join.latest_result(timeout=600)
        dt = time.perf_counter() - t0
        if res is None or res.type != Result.Type.SUCCESSFUL:
            raise RuntimeError(f"join did not succeed: {res and res.exc_string}")
        return {"seconds": dt, "children": n}
