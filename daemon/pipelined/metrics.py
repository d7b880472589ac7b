"""Metrics: what `/metrics` shows, in Prometheus text format (prometheus_client).

    scheduler._set_state ──on_change──► TaskMetrics.task_changed   (hot path: a few dict ops)
                                          │ counts by state/type/priority, attempts,
                                          │ retries, ends; durations -> Histogram
    GET /metrics ──► generate_latest ──► SupervisorCollector.collect  (scrape time: O(types))
                                          reads scheduler, pool, gate, TaskMetrics

Owns the names (all `pipelined_`), their labels and help texts. Only the
daemon imports this module, and only when `http` is configured, so neither
the client package nor a daemon without `--http` needs prometheus_client, and
a daemon without `--http` pays nothing per task.

Label cardinality: `task_type` is chosen by clients; keep the set of types
small, as any Prometheus label. Counters count from the daemon's start
(restored tasks that had ended before are in `pipelined_tasks` only).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from pipeline_protocol import END_STATES, TaskState

from . import __version__
from .task import Task

if TYPE_CHECKING:
    from .supervisor import Supervisor

PREFIX = "pipelined"
DURATION_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, float("inf"))
WORKER_STATES = ("starting", "idle", "busy", "exiting", "killed")
PRIORITIES = ("high", "medium", "low")
# The resource gate's reasons name the config key that closed it (gates.ResourceGate.closed_because).
GATE_KEYS = ("max_cpu_percent", "max_memory_percent", "min_free_memory_mb")


class TaskMetrics:
    """Counts kept up to date from every task state change (the scheduler's on_change)."""

    def __init__(self, registry: CollectorRegistry):
        self.durations = Histogram(f"{PREFIX}_task_duration_seconds", "Run time of task attempts, by task type and how the attempt ended",
                                   ["task_type", "outcome"], buckets=DURATION_BUCKETS_S, registry=registry)
        self._duration_children: dict[tuple[str, str], object] = {}
        self.live: dict[str, TaskState] = {}  # unfinished task id -> the state we last counted it in
        self.by_state_type: dict[tuple[TaskState, str], int] = {}  # unfinished tasks
        self.attempts: dict[str, int] = {}  # task_type -> attempts started
        self.retries: dict[tuple[str, str], int] = {}  # (task_type, reason of the failed attempt) -> retries scheduled
        self.ended: dict[tuple[str, str, str], int] = {}  # (state, task_type, reason) -> tasks ended

    def chain(self, first: Callable[[Task], None] | None) -> Callable[[Task], None]:
        """An on_change hook that calls `first` (the event bus), then counts."""
        count = self.task_changed
        if first is None:
            return count

        def both(task: Task) -> None:
            first(task)
            count(task)

        return both

    def task_changed(self, task: Task) -> None:
        new, old, ttype = task.state, self.live.get(task.task_id), task.task_type
        if old is new:
            return
        counts = self.by_state_type
        if old is not None:
            counts[(old, ttype)] -= 1
            if old is TaskState.RUNNING:
                self._attempt_ended(task, new)
        if new is TaskState.RUNNING:
            self.attempts[ttype] = self.attempts.get(ttype, 0) + 1
        if new in END_STATES:
            self.live.pop(task.task_id, None)
            key = (new.value, ttype, task.reason or "")
            self.ended[key] = self.ended.get(key, 0) + 1
        else:
            self.live[task.task_id] = new
            counts[(new, ttype)] = counts.get((new, ttype), 0) + 1

    def _attempt_ended(self, task: Task, new: TaskState) -> None:
        if new is TaskState.COMPLETED:
            outcome = "completed"
        elif new is TaskState.CANCELLED:
            outcome = "cancelled"
        else:
            outcome = "failed"
            if new is TaskState.PENDING:  # failed, and retried after its backoff
                key = (task.task_type, task.reason or "error")
                self.retries[key] = self.retries.get(key, 0) + 1
        child = self._duration_children.get((task.task_type, outcome))
        if child is None:
            child = self._duration_children[(task.task_type, outcome)] = self.durations.labels(task.task_type, outcome)
        child.observe(task.execution_time or 0.0)


class SupervisorCollector(Collector):
    """Reads the supervisor's state at scrape time (in the loop: nothing else runs meanwhile)."""

    def __init__(self, sup: Supervisor, tasks: TaskMetrics):
        self.sup = sup
        self.tasks = tasks

    def collect(self) -> Iterator:
        yield from self._daemon()
        yield from self._tasks()
        yield from self._workers()
        yield from self._gates()

    def _daemon(self) -> Iterator:
        sup = self.sup
        info = GaugeMetricFamily(f"{PREFIX}_info", "The daemon's version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily(f"{PREFIX}_uptime_seconds", "Seconds since the daemon started", value=time.monotonic() - sup.started_mono)
        yield GaugeMetricFamily(f"{PREFIX}_draining", "1 while the daemon drains (starts no new tasks)", value=1 if sup.draining else 0)
        yield GaugeMetricFamily(f"{PREFIX}_event_subscribers", "Topics subscribed on the event socket (0: nobody watches)", value=sup.events.subscribers)
        yield GaugeMetricFamily(f"{PREFIX}_parked_requests", "wait/result requests parked until their tasks end", value=sup.waiters.count)

    def _tasks(self) -> Iterator:
        sched, t = self.sup.scheduler, self.tasks
        by_state = GaugeMetricFamily(f"{PREFIX}_tasks", "Tasks the daemon holds, by state (ended ones until retention prunes them)", labels=["state"])
        for state in TaskState:
            by_state.add_metric([state.value], sched.counts[state])
        yield by_state
        unfinished = GaugeMetricFamily(f"{PREFIX}_tasks_unfinished", "Pending, queued and running tasks, by state and task type",
                                       labels=["state", "task_type"])
        for (state, ttype), n in sorted(t.by_state_type.items(), key=lambda kv: (kv[0][0].value, kv[0][1])):
            unfinished.add_metric([state.value, ttype], n)  # zeros too: a series, once seen, stays
        yield unfinished
        depth = GaugeMetricFamily(f"{PREFIX}_queue_depth", "Queued (ready) tasks, by priority bucket (high >= 10, low <= -10)", labels=["priority"])
        for prio in PRIORITIES:
            depth.add_metric([prio], sched.queued_by_bucket[prio])
        yield depth
        ended = CounterMetricFamily(f"{PREFIX}_tasks_ended", "Tasks that ended since the daemon started, by final state, task type and failure reason",
                                    labels=["state", "task_type", "reason"])
        for (state, ttype, reason), n in sorted(t.ended.items()):
            ended.add_metric([state, ttype, reason], n)
        yield ended
        attempts = CounterMetricFamily(f"{PREFIX}_task_attempts", "Task attempts started, by task type", labels=["task_type"])
        for ttype, n in sorted(t.attempts.items()):
            attempts.add_metric([ttype], n)
        yield attempts
        retries = CounterMetricFamily(f"{PREFIX}_task_retries", "Failed attempts that were retried, by task type and the attempt's failure reason",
                                      labels=["task_type", "reason"])
        for (ttype, reason), n in sorted(t.retries.items()):
            retries.add_metric([ttype, reason], n)
        yield retries

    def _workers(self) -> Iterator:
        pool = self.sup.pool
        counts = pool.counts()
        workers = GaugeMetricFamily(f"{PREFIX}_workers", "Worker processes, by state", labels=["state"])
        for state in sorted(set(WORKER_STATES) | set(counts)):
            workers.add_metric([state], counts.get(state, 0))
        yield workers
        yield GaugeMetricFamily(f"{PREFIX}_workers_configured", "The pool size (max_workers)", value=pool.size)
        yield CounterMetricFamily(f"{PREFIX}_worker_forks", "Worker processes forked", value=pool.forks)
        kills = CounterMetricFamily(f"{PREFIX}_worker_kills", "Worker process trees killed, by reason", labels=["reason"])
        for reason, n in sorted(pool.kills_by_reason.items()):
            kills.add_metric([reason], n)
        yield kills

    def _gates(self) -> Iterator:
        sup, sched = self.sup, self.sup.scheduler
        hold = sup.gate_hold or ""
        closed = GaugeMetricFamily(f"{PREFIX}_gate_closed", "1 while the resource gate holds dispatch back, by the limit that closed it", labels=["gate"])
        for key in GATE_KEYS:
            closed.add_metric([key], 1 if key in hold else 0)
        yield closed
        held = GaugeMetricFamily(f"{PREFIX}_tasks_held", "Queued tasks a gate holds back now: the resource gate, or their task type's max_concurrent",
                                 labels=["gate", "task_type"])
        if hold:
            gate = next((k for k in GATE_KEYS if k in hold), "resource")
            for (state, ttype), n in sorted(self.tasks.by_state_type.items(), key=lambda kv: kv[0][1]):
                if state is TaskState.QUEUED and n:
                    held.add_metric([gate, ttype], n)
        else:
            for ttype, limit in sorted(sched.type_limits.items()):
                n = self.tasks.by_state_type.get((TaskState.QUEUED, ttype), 0)
                if n and sched.running_by_type.get(ttype, 0) >= limit:
                    held.add_metric(["max_concurrent", ttype], n)
        yield held


def make_registry(sup: Supervisor) -> tuple[CollectorRegistry, TaskMetrics]:
    disable_created_metrics()  # no *_created series: they double the output and no dashboard reads them
    registry = CollectorRegistry()
    tasks = TaskMetrics(registry)
    registry.register(SupervisorCollector(sup, tasks))
    ProcessCollector(namespace=PREFIX, registry=registry)  # the supervisor's own CPU, memory, open fds
    return registry, tasks
