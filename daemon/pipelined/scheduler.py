"""Scheduler: which task runs next, and what each outcome means.

A pure data structure: no I/O, no processes, no clock of its own. Every method
that depends on time takes `now` (monotonic seconds) and `wall` (epoch seconds,
for display only), so tests step time by hand.

    submit ──► pending ──(deps completed)──► queued ──start──► running
                  ▲                                               │
                  └──── backoff timer ◄── failed attempt, retries left
    running ──finish──► completed | failed(error/timeout/worker_lost/memory_limit)
    any end but completed ──► dependents fail at once: upstream_failed (recursive)

Ready tasks sit in one heap per task type, ordered by (-priority, seq): strict
priority, FIFO within a priority. next_ready() takes the best head among the
types that have room, so a type at its concurrency limit never blocks the
others, and its tasks are not touched until it has room again (no parking:
the cost of a pick does not grow with the number of tasks held back).
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Callable, Iterable
from typing import Any

from pipeline_protocol import END_STATES, ErrorCode, FailureReason, ProtocolError, TaskState
from pipeline_protocol.tasks import validate_task_spec

from .store import TaskStore
from .task import Task

BACKOFF_CAP_S = 300.0
DEAD_ENTRIES_SLACK = 1024  # stale deadline entries tolerated before the heap is rebuilt (amortized O(1))


class Scheduler:
    def __init__(
        self,
        store: TaskStore,
        *,
        default_timeout_s: float = 300.0,
        default_max_retries: int = 3,
        default_backoff_s: float = 0.5,
        type_limits: dict[str, int] | None = None,
        enable_dependencies: bool = True,
    ):
        self.store = store
        self.default_timeout_s = default_timeout_s
        self.default_max_retries = default_max_retries
        self.default_backoff_s = default_backoff_s
        self.type_limits: dict[str, int] = dict(type_limits or {})
        self.enable_dependencies = enable_dependencies
        self._seq = itertools.count()
        self._ready: dict[str, list[tuple[int, int, Task]]] = {}  # task_type -> heap of (-priority, seq, task)
        self._ready_entries = 0  # heap entries over all types (stale ones included)
        self._backoffs: list[tuple[float, int, int, Task]] = []  # (when, seq, attempt, task)
        self._deadlines: list[tuple[float, int, int, Task]] = []  # (deadline, seq, attempt, task)
        self._dependents: dict[str, list[Task]] = {}
        self.running: dict[str, Task] = {}
        self.running_by_type: dict[str, int] = {}
        self.counts: dict[TaskState, int] = {s: 0 for s in TaskState}
        self.queued_by_bucket: dict[str, int] = {"high": 0, "medium": 0, "low": 0}  # kept per change: no scans
        self.ended: list[Task] = []  # ended since the owner last took them (take_ended)
        self.total_execution_s = 0.0
        self.on_change: Callable[[Task], None] | None = None  # event hook (watch, metrics)

    # -- submit -----------------------------------------------------------
    def submit(self, specs: Iterable[Any], now: float, wall: float) -> list[str]:
        """Validate a batch as a whole and accept it, or raise and change nothing."""
        normalized = [validate_task_spec(spec) for spec in specs]
        if not normalized:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, "submit needs at least one task")
        batch_ids: dict[str, dict] = {}
        unnamed = sum(1 for spec in normalized if spec["task_id"] is None)
        fresh = os.urandom(8 * unnamed).hex() if unnamed else ""  # one system call for the batch's new ids
        at = 0
        for spec in normalized:
            if spec["task_id"] is None:
                spec["task_id"] = fresh[at : at + 16]
                at += 16
            tid = spec["task_id"]
            if tid in batch_ids or tid in self.store:
                raise ProtocolError(ErrorCode.DUPLICATE_TASK, f"task id {tid!r} is already taken", {"task_id": tid})
            batch_ids[tid] = spec
        for spec in normalized:
            for dep in spec["dependencies"]:
                if dep not in batch_ids and dep not in self.store:
                    raise ProtocolError(
                        ErrorCode.UNKNOWN_DEPENDENCY,
                        f"task {spec['task_id']!r} depends on unknown task {dep!r}",
                        {"task_id": spec["task_id"], "dependency": dep},
                    )
        if not self.enable_dependencies and any(spec["dependencies"] for spec in normalized):
            raise ProtocolError(ErrorCode.NOT_PERMITTED, "dependency execution is disabled (enable_dependency_execution = false)")
        _check_acyclic(batch_ids)

        tasks = []
        for spec in normalized:
            if spec["timeout"] is None:
                spec["timeout"] = self.default_timeout_s
            if spec["max_retries"] is None:
                spec["max_retries"] = self.default_max_retries
            if spec["retry_backoff"] is None:
                spec["retry_backoff"] = self.default_backoff_s
            task = Task(spec, next(self._seq), wall)
            self.store.add(task)
            self.counts[TaskState.PENDING] += 1
            tasks.append(task)
            if self.on_change is not None:
                self.on_change(task)
        for task in tasks:
            self._link(task, now, wall)
        return [t.task_id for t in tasks]

    def _link(self, task: Task, now: float, wall: float) -> None:
        """Hook a new task to its dependencies; queue it if none is outstanding."""
        for dep_id in task.dependencies:
            dep = self.store.get(dep_id)
            if dep is None:
                continue  # completed and pruned by retention before a restart
            dep.pending_dependents += 1  # retention keeps it while we may need its result
            if dep.state is TaskState.COMPLETED:
                continue
            if dep.state in END_STATES:
                self._end(task, TaskState.FAILED, now, wall, FailureReason.UPSTREAM_FAILED, _upstream_error(dep))
                return
            task.unmet += 1
            self._dependents.setdefault(dep_id, []).append(task)
        if task.unmet == 0:
            self._queue(task)

    def restore(self, tasks: list[Task], now: float, wall: float) -> dict[str, int]:
        """Take back the tasks a journal kept across a restart.

        Ended tasks are kept as they were (results stay readable, dependents can
        resolve against them). An attempt that was running when the daemon died
        counts as lost (`worker_lost`) and is retried as its budget allows; every
        other unfinished task is linked to its dependencies again and queued when
        they are all completed.
        """
        tasks = sorted(tasks, key=lambda t: t.seq)
        self.store.restore(tasks)
        for task in tasks:
            self.counts[task.state] += 1
            if task.state is TaskState.QUEUED:
                self.queued_by_bucket[task.bucket] += 1
        if tasks:
            self._seq = itertools.count(tasks[-1].seq + 1)
        summary = {"ended": 0, "requeued": 0, "interrupted": 0}
        for task in tasks:
            if task.state in END_STATES:
                summary["ended"] += 1
                continue
            if task.state is TaskState.RUNNING:
                summary["interrupted"] += 1
                self.running[task.task_id] = task  # so that lose() can release it
                self.running_by_type[task.task_type] = self.running_by_type.get(task.task_type, 0) + 1
                self.lose(task.task_id, FailureReason.WORKER_LOST, {"type": "Interrupted", "message": "pipelined stopped while this attempt ran", "traceback": None}, now, wall)
                continue
            summary["requeued"] += 1
            self._set_state(task, TaskState.PENDING)
            task.unmet = 0
            self._link(task, now, wall)
        return summary

    # -- state changes ----------------------------------------------------
    def _set_state(self, task: Task, state: TaskState) -> None:
        old = task.state
        self.counts[old] -= 1
        self.counts[state] += 1
        if old is TaskState.QUEUED:
            self.queued_by_bucket[task.bucket] -= 1
        if state is TaskState.QUEUED:
            self.queued_by_bucket[task.bucket] += 1
        task.state = state
        self.store.moved(task, old)
        self.store.changed(task)
        if self.on_change is not None:
            self.on_change(task)

    def _queue(self, task: Task) -> None:
        self._set_state(task, TaskState.QUEUED)
        self._push_ready(task)

    def _push_ready(self, task: Task) -> None:
        heap = self._ready.get(task.task_type)
        if heap is None:
            heap = self._ready[task.task_type] = []
        heapq.heappush(heap, (-task.priority, task.seq, task))
        self._ready_entries += 1

    def _end(self, task: Task, state: TaskState, now: float, wall: float, reason: FailureReason | None = None, error: dict | None = None) -> None:
        """End `task`, then fail every dependent that can no longer run (iteratively:
        a chain of a million tasks must not hit the recursion limit)."""
        stack = [(task, state, reason, error)]
        while stack:
            t, st, why, err = stack.pop()
            if t.state in END_STATES:
                continue
            t.reason = why.value if why is not None else None
            if err is not None or st is not TaskState.COMPLETED:
                t.error = err
            t.end_time = wall
            t.hold = None
            self._set_state(t, st)
            self.store.ended(t)
            self.ended.append(t)
            for dep_id in t.dependencies:
                dep = self.store.get(dep_id)
                if dep is not None and dep.pending_dependents > 0:
                    dep.pending_dependents -= 1
                    if dep.pending_dependents == 0 and dep.state in END_STATES:
                        self.store.released(dep)  # retention may take it now
            for dependent in self._dependents.pop(t.task_id, ()):
                if dependent.state in END_STATES:
                    continue
                if st is TaskState.COMPLETED:
                    dependent.unmet -= 1
                    if dependent.unmet == 0 and dependent.state is TaskState.PENDING and dependent.attempt == 0:
                        self._queue(dependent)
                else:
                    stack.append((dependent, TaskState.FAILED, FailureReason.UPSTREAM_FAILED, _upstream_error(t)))

    def set_type_limits(self, limits: dict[str, int]) -> None:
        """New per-type limits (reload): next_ready() reads them on its next pick."""
        self.type_limits = dict(limits)

    # -- dispatch ---------------------------------------------------------
    def has_ready(self) -> bool:
        """Any heap entry left (stale ones and types at their limit included)."""
        return self._ready_entries > 0

    def _best(self) -> list[tuple[int, int, Task]] | None:
        """The heap whose head is the best task of a type with room (stale heads
        dropped first), or None. Costs one look per task type with ready tasks."""
        best = None
        for ttype in list(self._ready):
            heap = self._ready[ttype]
            while heap and (heap[0][2].state is not TaskState.QUEUED or heap[0][2].reserved_by is not None):
                heapq.heappop(heap)  # cancelled or ended while queued, or a stale entry of a reserved task
                self._ready_entries -= 1
            if not heap:
                del self._ready[ttype]
                continue
            limit = self.type_limits.get(ttype)
            if limit is not None and self.running_by_type.get(ttype, 0) >= limit:
                heap[0][2].hold = f"task_type {ttype} at its limit of {limit}"
                continue
            if best is None or heap[0] < best[0]:
                best = heap
        return best

    def top_priority(self) -> int | None:
        """Priority of the best queued task that could be dispatched now."""
        heap = self._best()
        return -heap[0][0] if heap is not None else None

    def next_ready(self) -> Task | None:
        """Pop the highest-priority queued task whose type has room, or None."""
        heap = self._best()
        if heap is None:
            return None
        task = heapq.heappop(heap)[2]
        self._ready_entries -= 1
        task.hold = None
        return task

    def requeue(self, task: Task) -> None:
        """Put back a task taken by next_ready() that could not be used."""
        self._push_ready(task)

    def reserve(self, task: Task, worker_pid: int) -> int:
        """Hand a queued task to a busy worker to start after its current one
        (prefetch). It stays `queued` until start_reserved; returns the attempt."""
        task.attempt += 1
        task.worker_pid = task.reserved_by = worker_pid
        return task.attempt

    def unreserve(self, task: Task) -> None:
        """A prefetched task that never started goes back to the queue, no attempt spent."""
        if task.state is TaskState.QUEUED and task.reserved_by is not None:
            task.attempt -= 1
            task.reserved_by = None
            self.requeue(task)

    def start(self, task: Task, worker_pid: int, now: float, wall: float) -> int:
        """Mark `task` running on `worker_pid`; returns the attempt number."""
        task.attempt += 1
        task.worker_pid = worker_pid
        return self.start_reserved(task, now, wall)

    def start_reserved(self, task: Task, now: float, wall: float) -> int:
        """The worker holding `task` (reserve) started it: its deadline counts from now."""
        task.reserved_by = None
        task.start_time = wall
        task.end_time = None
        task.deadline = now + task.timeout_s
        self.running[task.task_id] = task
        self.running_by_type[task.task_type] = self.running_by_type.get(task.task_type, 0) + 1
        heapq.heappush(self._deadlines, (task.deadline, task.seq, task.attempt, task))
        if len(self._deadlines) > 2 * len(self.running) + DEAD_ENTRIES_SLACK:
            # Ended attempts' entries leave the heap only from its top: behind one long
            # running task they would pile up (one per task started meanwhile).
            self._deadlines = [e for e in self._deadlines if _is_live(e)]
            heapq.heapify(self._deadlines)
        self._set_state(task, TaskState.RUNNING)
        return task.attempt

    def _release(self, task: Task, now: float) -> None:
        del self.running[task.task_id]
        left = self.running_by_type[task.task_type] - 1
        self.running_by_type[task.task_type] = left
        task.deadline = None

    def finish(self, task_id: str, attempt: int, result: Any, error: dict | None, exec_s: float, now: float, wall: float) -> Task | None:
        """A worker reported the end of an attempt (error None: success).

        Stale reports (an attempt already given up on) are ignored.
        """
        task = self.running.get(task_id)
        if task is None or task.attempt != attempt:
            return None
        self._release(task, now)
        task.execution_time = exec_s
        self.total_execution_s += exec_s
        task.result = result  # a failed command keeps its exit code and output tails
        if error is None:
            task.error = None
            self._end(task, TaskState.COMPLETED, now, wall)
        else:
            self._fail_attempt(task, FailureReason.ERROR, error, now, wall)
        return task

    def lose(self, task_id: str, reason: FailureReason, error: dict, now: float, wall: float) -> Task | None:
        """The running attempt of `task_id` died (timeout, worker lost, memory limit)."""
        task = self.running.get(task_id)
        if task is None:
            return None
        self._release(task, now)
        if task.start_time is not None:
            task.execution_time = max(0.0, wall - task.start_time)
        self._fail_attempt(task, reason, error, now, wall)
        return task

    def _fail_attempt(self, task: Task, reason: FailureReason, error: dict, now: float, wall: float) -> None:
        if task.retry_count < task.max_retries:
            task.retry_count += 1
            task.error = error
            task.reason = reason.value  # the last attempt's reason, while it waits to retry
            task.end_time = wall
            backoff = min(task.retry_backoff_s * 2 ** (task.retry_count - 1), BACKOFF_CAP_S)
            self._set_state(task, TaskState.PENDING)
            heapq.heappush(self._backoffs, (now + backoff, task.seq, task.attempt, task))
        else:
            self._end(task, TaskState.FAILED, now, wall, reason, error)

    # -- cancel -----------------------------------------------------------
    def cancel(self, task: Task, now: float, wall: float) -> bool:
        """Cancel a task that is not running; False if it had already ended."""
        if task.state in END_STATES:
            return False
        if task.state is TaskState.RUNNING:
            raise RuntimeError("a running task is cancelled by killing its worker: use cancel_running")
        self._end(task, TaskState.CANCELLED, now, wall, None, {"type": "Cancelled", "message": "cancelled by request"})
        return True

    def cancel_running(self, task: Task, now: float, wall: float) -> None:
        """Its worker was killed for a cancel: end it `cancelled`, no retry."""
        self._release(task, now)
        if task.start_time is not None:
            task.execution_time = max(0.0, wall - task.start_time)
        self._end(task, TaskState.CANCELLED, now, wall, None, {"type": "Cancelled", "message": "cancelled while running; its worker was killed"})

    # -- time -------------------------------------------------------------
    def expired(self, now: float) -> list[Task]:
        """Running tasks whose deadline has passed."""
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, attempt, task = heapq.heappop(self._deadlines)
            if task.state is TaskState.RUNNING and task.attempt == attempt:
                out.append(task)
        return out

    def promote_due(self, now: float) -> int:
        """Queue tasks whose retry backoff is over."""
        n = 0
        while self._backoffs and self._backoffs[0][0] <= now:
            _, _, attempt, task = heapq.heappop(self._backoffs)
            if task.state is TaskState.PENDING and task.attempt == attempt:
                self._queue(task)
                n += 1
        return n

    def next_wakeup(self) -> float | None:
        """The earliest monotonic time at which something is due, or None."""
        times = []
        while self._deadlines and not _is_live(self._deadlines[0]):
            heapq.heappop(self._deadlines)  # the attempt ended: its deadline is moot
        if self._deadlines:
            times.append(self._deadlines[0][0])
        if self._backoffs:
            times.append(self._backoffs[0][0])
        return min(times) if times else None

    def take_ended(self) -> list[Task]:
        ended, self.ended = self.ended, []
        return ended

    # -- views ------------------------------------------------------------
    def queued_by_priority(self) -> dict[str, int]:
        """The seed's queue counts: {"HIGH": n, "MEDIUM": n, "LOW": n}."""
        return {bucket.upper(): n for bucket, n in self.queued_by_bucket.items()}

    def results_of(self, task: Task) -> dict[str, Any]:
        """Results of a task's dependencies, for Ref substitution at dispatch.

        KeyError when one is gone (pruned by retention while this task waited)."""
        out = {}
        for dep_id in task.dependencies:
            dep = self.store.get(dep_id)
            if dep is None:
                raise KeyError(f"the result of dependency {dep_id} is gone (pruned after result_ttl_s)")
            out[dep_id] = dep.result
        return out


def _is_live(entry: tuple[float, int, int, Task]) -> bool:
    task = entry[3]
    return task.state is TaskState.RUNNING and task.attempt == entry[2]


def _upstream_error(dep: Task) -> dict[str, Any]:
    why = f" ({dep.reason})" if dep.reason else ""
    return {"type": "UpstreamFailed", "message": f"dependency {dep.task_id} ended {dep.state.value}{why}"}


def _check_acyclic(batch: dict[str, dict]) -> None:
    """Reject a cycle inside the batch (tasks already accepted cannot depend on new ones)."""
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(batch, WHITE)
    for root, spec in batch.items():
        if color[root] != WHITE or not spec["dependencies"]:
            continue  # most tasks of a batch have no dependencies: nothing to walk
        path = [root]
        iters = [iter(batch[root]["dependencies"])]
        color[root] = GREY
        while iters:
            nxt = next(iters[-1], None)
            if nxt is None:
                color[path.pop()] = BLACK
                iters.pop()
                continue
            if nxt not in batch:
                continue
            if color[nxt] == GREY:
                cycle = path[path.index(nxt):] + [nxt]
                raise ProtocolError(
                    ErrorCode.DEPENDENCY_CYCLE,
                    "dependency cycle: " + " -> ".join(cycle),
                    {"cycle": cycle},
                )
            if color[nxt] == WHITE:
                color[nxt] = GREY
                path.append(nxt)
                iters.append(iter(batch[nxt]["dependencies"]))
