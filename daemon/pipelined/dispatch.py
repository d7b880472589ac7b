"""WorkerTraffic: the half of the supervisor that deals with workers.

    dispatch ──run {items}──► worker   (queued tasks -> idle worker; prefetch to a busy one)
    worker ──done {items} / start / skipped──► handle_worker_messages -> scheduler
    deadlines, memory limits, cancels ──► _kill_worker (whole tree) -> scheduler.lose
    SIGCHLD ──► reap_children -> worker_lost for a busy one, a fresh fork in its slot

A mixin of Supervisor (same state, same loop); kept apart so that each file
holds one concern.

Prefetch, and why: every message between two processes costs a wake-up of
ZeroMQ's I/O threads on both sides, which on a small machine costs more than a
short task itself. So a worker running short tasks is kept a couple of
milliseconds of work ahead: a run message carries several tasks, and the
worker sends their ends back in batches (worker_messages). Tasks handed out
early stay `queued` ("reserved") until the worker reports their real start, so
deadlines count from the real start. A reservation can be asked back (skip +
SIGUSR1); the worker's answer decides, atomically, whether it was dropped or
started, so a task never runs twice.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import zmq

from pipeline_protocol import FailureReason, TaskState, decode, encode
from pipeline_protocol import worker_messages as wm
from pipeline_protocol.codec import encode_with_items, substitute_refs

from .control import NOBLOCK, send_frames
from .gates import WATCH_S, tree_rss_mb
from .pool import describe_exit
from .task import Task

if TYPE_CHECKING:
    from .supervisor import Supervisor  # noqa: F401

log = logging.getLogger("pipelined")

EVENTS = int(zmq.EVENTS)
POLLIN = int(zmq.POLLIN)
RCVMORE = int(zmq.RCVMORE)
# Tasks go behind another only when it is known to take under PREFETCH_BEHIND_S:
# a task queued behind a long one would wait for it while another worker may go idle.
PREFETCH_BEHIND_S = 0.005
PREFETCH_WINDOW_S = 0.002  # how much known work a worker is given ahead of it, at least
PREFETCH_WINDOW_MAX_S = 0.02  # ... and at most, when our own passes run long (big batches)
PREFETCH_MAX = 128  # tasks reserved for one worker, at most
REFILL_MAX = 32  # tasks added to one worker per pass: reserves grow over passes, in dealt order
PREFETCH_MIN_COST_S = 0.00005  # what a task costs at least, overheads included
PREFETCH_MIN_TIMEOUT_S = 1.0  # shorter timeouts are never reserved (their deadlines must be exact)
STALE_GRACE_S = 0.05  # how long a cancelled task that runs may take to end before its worker is killed
RESIGNAL_S = 0.05  # an unanswered skip is signalled again this often


class _Fill:
    """One worker's run message of this pass: maybe a task to start now, then the
    reserved tasks dealt to it."""

    __slots__ = ("handle", "items", "room", "budget", "added")

    def __init__(self, handle, first: bytes | None):
        self.handle = handle
        self.items: list[bytes] = [] if first is None else [first]
        self.room = 0  # reserved tasks it may still take
        self.budget = 0.0  # seconds of known work it may still take
        self.added = 0

    def send(self, traffic: WorkerTraffic, now: float, wall: float) -> None:
        if not self.items:
            return
        handle = self.handle
        if self.added:
            handle.depth = len(handle.reserved)
        try:
            send_frames(traffic.workers_sock, [handle.ident], encode_with_items({"t": wm.RUN}, self.items))
        except zmq.ZMQError as exc:
            if len(self.items) > self.added:  # it was to start a task: the worker is unreachable
                traffic._kill_worker(handle, f"unreachable ({exc})", FailureReason.WORKER_LOST, now, wall)
            else:
                traffic._release_reserved_tail(handle, self.added)  # dispatch proper will deal with the worker


class WorkerTraffic:
    def handle_worker_messages(self, now: float, wall: float) -> None:
        sock = self.workers_sock
        recv, getsockopt = sock.recv, sock.getsockopt
        by_ident = self.pool.by_ident
        while getsockopt(EVENTS) & POLLIN:
            frames = [recv(NOBLOCK)]
            while getsockopt(RCVMORE):
                frames.append(recv(NOBLOCK))
            handle = by_ident.get(frames[0])
            if handle is None or len(frames) != 2:
                continue  # a worker already reaped, or not one of ours
            try:
                msg = decode(frames[1])
                kind = msg["t"]
            except (ValueError, KeyError, TypeError):
                log.error("worker %d sent an undecodable message; killing it", handle.pid)
                self._kill_worker(handle, "protocol error", FailureReason.WORKER_LOST, now, wall)
                continue
            if handle.state == "killed":
                continue  # its last words; we already gave up on its tasks
            try:
                if kind == wm.DONE:
                    self._on_done(handle, msg, now, wall)
                elif kind == wm.START:
                    self._start_reserved(handle, msg["id"], msg.get("s"), now, wall)
                elif kind == wm.SKIPPED:
                    self._on_skipped(handle, msg["ids"])
                elif kind == wm.HELLO and handle.state == "starting":
                    self.pool.ready(handle)
                    self.events.worker(handle.pid, handle.slot, "started")
                    if not self.ready_sent and len(self.pool.idle) >= self.pool.size:
                        self.ready_sent = True
                        self.notify.ready(self.status_line())
                elif kind == wm.BYE:
                    handle.state = "exiting"
            except (KeyError, TypeError, ValueError) as exc:
                log.error("worker %d sent a malformed %r message (%s); killing it", handle.pid, kind, exc)
                self._kill_worker(handle, "protocol error", FailureReason.WORKER_LOST, now, wall)

    def _on_done(self, handle, msg: dict, now: float, wall: float) -> None:
        """Ends of tasks, in the order the worker ran them. An item may end a
        reserved task whose start was not reported yet: it started at item["s"]."""
        finish, typical = self.scheduler.finish, self.typical_s
        for item in msg["items"]:
            tid = item["id"]
            if handle.task_id is None and handle.reserved and handle.reserved[0] == tid:
                if not self._start_reserved(handle, tid, item.get("s"), now, wall, ended=True):
                    return
            if handle.state != "busy" or handle.task_id != tid:
                continue  # we gave up on that attempt already (timeout, cancel)
            exec_s = float(item.get("exec_s") or 0.0)
            # Ends may be reported late (batched): record when the task really ended.
            started = item.get("s")
            ended = min(now, started + exec_s) if isinstance(started, float) else now
            task = finish(tid, item["a"], item.get("result"), item.get("error"), exec_s, ended, wall - (now - ended))
            if task is not None:
                label = task.function or task.command[0]
                prev = typical.get(label)
                typical[label] = exec_s if prev is None else prev + 0.2 * (exec_s - prev)
                if task.state is TaskState.FAILED:
                    log.info("task %s: failed (%s)", tid, (task.error or {}).get("type"))
            handle.tasks_done += 1
            handle.task_id = handle.stop_at = None
        if msg.get("next") is not None:
            self._start_reserved(handle, msg["next"], msg.get("ns"), now, wall)
        elif handle.task_id is None and not handle.reserved and handle.state == "busy":
            self._worker_free(handle)

    def _start_reserved(self, handle, task_id: Any, started: float | None, now: float, wall: float, ended: bool = False) -> bool:
        """The worker started the prefetched task at the head of its reservations,
        at `started` (monotonic, reported by the worker); `ended`: its end comes in
        the same message. False if the worker was killed."""
        if not handle.reserved or handle.reserved[0] != task_id or handle.task_id is not None:
            log.error("worker %d started %r, which it was not given next (running %r, next reserved %r); killing it",
                      handle.pid, task_id, handle.task_id, handle.reserved[0] if handle.reserved else None)
            self._kill_worker(handle, "protocol error", FailureReason.WORKER_LOST, now, wall)
            return False
        handle.reserved.popleft()
        why = handle.skips.pop(task_id, None)
        handle.state, handle.task_id = "busy", task_id
        task = self.store.get(task_id)
        if task is None or task.state is not TaskState.QUEUED or task.reserved_by != handle.pid:
            # Cancelled (or withdrawn) while its run was in flight. Its end, when it
            # comes, is ignored (the attempt is no longer running); if it is running
            # now, it must not go on (stop_running). Never a kill here: the ends after
            # it in this message, or on their way, are real results.
            if not ended:
                self.stop_running(handle, now)
            return True
        if why is not None:
            log.debug("task %s: started before the worker saw the skip (%s)", task_id, why)
        # The same clock in every process; never trust a start in the future.
        started = now if not isinstance(started, float) or started > now else started
        self.scheduler.start_reserved(task, started, wall - (now - started))
        if task.memory_limit_mb is not None and self.next_memory_check is None:
            self.next_memory_check = now + WATCH_S
        return True

    def _on_skipped(self, handle, task_ids: list) -> None:
        for task_id in task_ids:
            log.debug("task %s: worker %d dropped it (%s)", task_id, handle.pid, handle.skips.get(task_id))
            if task_id not in handle.reserved:
                continue
            handle.reserved.remove(task_id)
            handle.skips.pop(task_id, None)
            task = self.store.get(task_id)
            if task is not None and task.reserved_by == handle.pid:
                self.scheduler.unreserve(task)  # not when cancelled, or withdrawn already
        if handle.task_id is None and not handle.reserved and handle.state == "busy":
            self._worker_free(handle)

    def _worker_free(self, handle) -> None:
        """Nothing running, nothing reserved: recycle the worker, or make it idle."""
        limit = self.config.max_tasks_per_worker
        if (limit and handle.tasks_done >= limit) or self.pool.surplus(handle):
            handle.state = "exiting"  # recycled or shrunk: a clean exit, told apart from a crash by this state
            self._send_worker(handle, {"t": wm.EXIT, "reason": "recycle"})
        else:
            self.pool.ready(handle)

    def _send_worker(self, handle, msg: dict) -> bool:
        try:
            send_frames(self.workers_sock, [handle.ident], encode(msg))
            return True
        except zmq.ZMQError as exc:
            log.warning("worker %d: cannot send (%s)", handle.pid, exc)
            return False

    def _release_worker(self, handle, reason: FailureReason, error: dict, now: float, wall: float) -> None:
        """The worker is gone or going: its running task fails with `reason` (and is
        retried as its budget allows), its reservations go back to the queue."""
        task_id, handle.task_id = handle.task_id, None
        if task_id is not None:
            self.scheduler.lose(task_id, reason, error, now, wall)  # no-op if it already ended
        self._release_reserved(handle)

    def _release_reserved(self, handle) -> None:
        for task_id in handle.reserved:
            task = self.store.get(task_id)
            if task is not None:
                self.scheduler.unreserve(task)
        handle.reserved.clear()
        handle.skips.clear()

    def _kill_worker(self, handle, why: str, reason: FailureReason, now: float, wall: float, error: dict | None = None) -> None:
        """Kill the worker's tree; its running task fails with `reason`, reservations go back."""
        self.pool.kill(handle, why)
        self._release_worker(handle, reason, error or {"type": "WorkerLost", "message": f"worker {handle.pid} killed ({why})", "traceback": None}, now, wall)

    def reap_children(self, now: float, wall: float) -> None:
        self._child_exited = False
        # A worker's last words (its result) may still sit in the socket: read them first.
        self.handle_worker_messages(now, wall)
        for handle, status in self.pool.reap():
            how = describe_exit(status)
            self.events.worker(handle.pid, handle.slot, "exited", f"{how} ({handle.kill_reason or handle.state})")
            if handle.state == "busy":
                log.warning("worker %d (slot %d): %s while running task %s", handle.pid, handle.slot, how, handle.task_id)
                lost = {"type": "WorkerLost", "message": f"worker {handle.pid} {how} while running the task", "traceback": None}
                self._release_worker(handle, FailureReason.WORKER_LOST, lost, now, wall)
            elif handle.state not in ("killed", "exiting"):
                log.warning("worker %d (slot %d): %s while %s", handle.pid, handle.slot, how, handle.state)
            if not self.draining and not self.pool.surplus(handle):
                self.pool.spawn(handle.slot)

    def enforce_deadlines(self, now: float, wall: float) -> None:
        if self.stop_at is not None and now >= self.stop_at:
            self._stop_stale_runs(now, wall)
        for task in self.scheduler.expired(now):
            handle = self.pool.by_pid.get(task.worker_pid)
            late_ms = (now - task.deadline) * 1000 if task.deadline is not None else 0.0
            error = {"type": "Timeout", "message": f"task exceeded its {task.timeout_s:g}s timeout; its worker's process tree was killed", "traceback": None}
            if handle is not None and handle.task_id == task.task_id:
                self._kill_worker(handle, f"timeout of task {task.task_id}", FailureReason.TIMEOUT, now, wall, error)
            else:
                self.scheduler.lose(task.task_id, FailureReason.TIMEOUT, error, now, wall)
            log.info("task %s: timed out after %gs (killed %.1f ms past the deadline)", task.task_id, task.timeout_s, late_ms)

    def stop_running(self, handle, now: float) -> None:
        """The task `handle` runs was cancelled, and its worker holds (or held)
        reserved tasks: kill it unless the task ends within STALE_GRACE_S. Not at
        once: a short task has often ended already and the worker started the next
        one, whose start is on its way to us; a kill now would lose that one (it
        would run again). The grace counts against max_concurrent_tasks (dispatch)."""
        handle.stop_at = now + STALE_GRACE_S
        self.stop_at = handle.stop_at if self.stop_at is None else min(self.stop_at, handle.stop_at)

    def _stop_stale_runs(self, now: float, wall: float) -> None:
        """Kill the workers still running a cancelled task past their grace."""
        self.handle_worker_messages(now, wall)  # an end that just came clears its grace
        self.stop_at = None
        for handle in list(self.pool.by_pid.values()):
            if handle.stop_at is None or handle.state != "busy":
                continue
            if now >= handle.stop_at:
                handle.stop_at = None
                self._kill_worker(handle, f"cancel of task {handle.task_id}", FailureReason.WORKER_LOST, now, wall)
            else:
                self.stop_at = handle.stop_at if self.stop_at is None else min(self.stop_at, handle.stop_at)

    def dispatch(self, now: float, wall: float) -> None:
        if self.draining:
            return
        sched = self.scheduler
        self.gate_hold = self.gate.closed_because(now) if sched.has_ready() else None
        if self.gate_hold is not None:
            return
        fills = self.assign_idle_workers(now, wall)
        # top_priority() drops stale heap entries first: has_ready() may still see some.
        if self.config.prefetch and sched.top_priority() is not None:
            self.preempt_reservations()
            fills += self.refills(now, {f.handle.pid for f in fills})
            self._deal(fills, now)
        for fill in fills:
            fill.send(self, now, wall)
        if sched.top_priority() is None and any(h.state == "idle" for h in self.pool.idle):
            if self.withdraw_stuck_reservations(now):
                for fill in self.assign_idle_workers(now, wall):
                    fill.send(self, now, wall)
        else:
            self.withdraw_at = None

    def assign_idle_workers(self, now: float, wall: float) -> list[_Fill]:
        """Start a queued task on each idle worker. Returns their fills: the run
        message each gets, to which prefetch may add the tasks that follow."""
        sched, limit = self.scheduler, self.config.concurrency
        if self.stop_at is not None:  # a cancelled task still running in its grace counts
            limit -= sum(1 for h in self.pool.by_pid.values() if h.stop_at is not None)
        fills: list[_Fill] = []
        while sched.has_ready() and len(sched.running) < limit:
            handle = self.pool.take_idle()
            if handle is None:
                break
            task = sched.next_ready()
            if task is None:
                self.pool.idle.appendleft(handle)
                break
            attempt = sched.start(task, handle.pid, now, wall)
            handle.state, handle.task_id = "busy", task.task_id
            if task.memory_limit_mb is not None and self.next_memory_check is None:
                self.next_memory_check = now + WATCH_S
            try:
                item = encode(self._run_item(task, attempt))
            except (TypeError, ValueError, KeyError) as exc:
                handle.state, handle.task_id = "idle", None
                self.pool.idle.appendleft(handle)
                sched.finish(task.task_id, attempt, None, {"type": "DispatchError", "message": f"cannot build the task's arguments: {exc}", "traceback": None}, 0.0, now, wall)
                continue
            fill = _Fill(handle, item)
            if self.config.prefetch and self._known_short(task):
                # A worker just back from idle starts with a small reserve: the others
                # may free up in a moment and should find the queue's next tasks.
                self._open(fill, PREFETCH_WINDOW_S)
            fills.append(fill)
        return fills

    def refills(self, now: float, skip: set[int]) -> list[_Fill]:
        """Busy workers whose reserves run low, opened for more work.

        Only behind a task known to be short that has not run long; only tasks
        of types without a concurrency limit; never past max_tasks_per_worker.
        Higher-priority arrivals displace reserved tasks (preempt_reservations)."""
        fills = []
        # Enough work to last a worker through our longest recent pass: while we
        # validate a batch of thousands, nobody refills it.
        budget = min(PREFETCH_WINDOW_MAX_S, max(PREFETCH_WINDOW_S, 1.5 * self.long_pass_s))
        for handle in self.pool.by_pid.values():
            if handle.pid in skip or handle.state != "busy" or handle.skips or len(handle.reserved) > handle.depth // 2 or self.pool.surplus(handle):
                continue
            if handle.stop_at is not None:
                continue  # it runs a cancelled task, and may be killed any moment
            # What it runs: its current task, or the reserved one it started without telling us yet.
            tid = handle.task_id if handle.task_id is not None else (handle.reserved[0] if handle.reserved else None)
            current = self.store.get(tid) if tid is not None else None
            if current is None or not self._known_short(current):
                continue
            if handle.task_id is not None and now - current.deadline + current.timeout_s > PREFETCH_BEHIND_S:
                continue  # already running long
            fill = _Fill(handle, None)
            self._open(fill, budget)
            if fill.room > 0:
                fills.append(fill)
        return fills

    def _open(self, fill: _Fill, budget: float) -> None:
        """Let `fill` take up to `budget` seconds of known work, within its worker's limits."""
        handle = fill.handle
        if handle.reserved:
            last = self.store.get(handle.reserved[-1])
            if last is None or not self._known_short(last):
                return  # nothing goes behind a task that is not known to be short
        room = min(REFILL_MAX, PREFETCH_MAX - len(handle.reserved))
        limit = self.config.max_tasks_per_worker
        if limit:
            room = min(room, limit - handle.tasks_done - 1 - len(handle.reserved))
        fill.room, fill.budget = room, budget

    def _deal(self, fills: list[_Fill], now: float) -> None:
        """Reserve queued tasks for the open fills, one each in turn, like cards:
        workers running side by side then start the queue's tasks in about the
        order they were queued (FIFO within a priority), not in blocks."""
        sched = self.scheduler
        open_fills = [f for f in fills if f.room > 0 and f.budget > 0]
        while open_fills and sched.has_ready():
            for fill in list(open_fills):
                task = sched.next_ready()
                if task is None:
                    return
                if task.task_type in sched.type_limits or task.timeout_s < PREFETCH_MIN_TIMEOUT_S:
                    sched.requeue(task)
                    return  # dispatch proper gives it to a worker of its own
                handle = fill.handle
                attempt = sched.reserve(task, handle.pid)
                try:
                    fill.items.append(encode(self._run_item(task, attempt, prefetched=True)))
                except (TypeError, ValueError, KeyError):
                    sched.unreserve(task)  # dispatch proper will fail it with the reason
                    return
                handle.floor = task.priority if not handle.reserved else min(handle.floor, task.priority)
                handle.reserved.append(task.task_id)
                fill.added += 1
                fill.room -= 1
                typical = self.typical_s.get(task.function or task.command[0])
                if typical is None or typical > PREFETCH_BEHIND_S:
                    fill.room = 0  # nothing goes behind a task that is not known to be short
                else:
                    fill.budget -= max(typical, PREFETCH_MIN_COST_S)
                if fill.room <= 0 or fill.budget <= 0:
                    open_fills.remove(fill)

    def _release_reserved_tail(self, handle, n: int) -> None:
        """Reservations that never left (a failed send) go back to the queue."""
        for _ in range(n):
            task = self.store.get(handle.reserved.pop())
            if task is not None:
                self.scheduler.unreserve(task)

    def _known_short(self, task: Task) -> bool:
        typical = self.typical_s.get(task.function or task.command[0])
        return typical is not None and typical <= PREFETCH_BEHIND_S and task.timeout_s >= PREFETCH_MIN_TIMEOUT_S

    def watch_memory(self, now: float, wall: float) -> None:
        """Kill the tree of any running task over its memory_limit_mb."""
        watched = False
        for handle in list(self.pool.by_pid.values()):
            task = self.store.get(handle.task_id) if handle.state == "busy" and handle.task_id else None
            if task is None or task.memory_limit_mb is None:
                continue
            watched = True
            rss_mb = tree_rss_mb(handle.pid)
            if rss_mb > task.memory_limit_mb:
                error = {"type": "MemoryLimit", "message": f"the task used {rss_mb:.0f} MB (worker and children); its memory_limit_mb is {task.memory_limit_mb:g}", "traceback": None}
                log.info("task %s: %s", task.task_id, error["message"])
                self._kill_worker(handle, f"memory limit of task {task.task_id}", FailureReason.MEMORY_LIMIT, now, wall, error)
        self.next_memory_check = now + WATCH_S if watched else None

    def withdraw_stuck_reservations(self, now: float) -> bool:
        """A worker is idle while reserved tasks wait behind a task that runs
        longer than usual: ask for them back. The busy worker answers at once
        (skip + SIGUSR1, see _skip): it drops each one that has not started
        ("skipped": it is queued again and goes to the idle worker) or has just
        started it. Never both, so a task never runs twice."""
        withdrawn = False
        self.withdraw_at = None
        for handle in self.pool.by_pid.values():
            current = self.store.get(handle.task_id) if handle.task_id else None
            if current is None or not handle.reserved or current.deadline is None:
                continue
            overdue_at = current.deadline - current.timeout_s + PREFETCH_BEHIND_S
            if now <= overdue_at:
                # Not overdue yet: look again then, the idle worker may still be idle.
                self.withdraw_at = overdue_at if self.withdraw_at is None else min(self.withdraw_at, overdue_at)
                continue
            if handle.skips:
                # Asked already and no answer yet: a signal can be missed (it may land
                # before the worker can answer and find nothing yet), so ask again shortly.
                again_at = handle.signalled_at + RESIGNAL_S
                if now >= again_at:
                    self._signal(handle, now)
                    again_at = now + RESIGNAL_S
                self.withdraw_at = again_at if self.withdraw_at is None else min(self.withdraw_at, again_at)
            ids = [tid for tid in handle.reserved if tid not in handle.skips and self._reserved_here(handle, tid)]
            if ids:
                log.debug("tasks %s: withdrawn from worker %d, stuck behind %s", ids, handle.pid, current.task_id)
                self._skip(handle, ids, "withdrawn")
                withdrawn = True
        return withdrawn

    def _reserved_here(self, handle, task_id: str) -> bool:
        task = self.store.get(task_id)
        return task is not None and task.reserved_by == handle.pid

    def _skip(self, handle, task_ids: list[str], why: str) -> None:
        """Ask a worker to drop prefetched tasks. SIGUSR1 makes a busy worker
        answer now, from between the bytecodes of the task it runs."""
        for task_id in task_ids:
            handle.skips[task_id] = why
        self._send_worker(handle, {"t": wm.SKIP, "ids": task_ids})
        self._signal(handle, time.monotonic())

    def _signal(self, handle, now: float) -> None:
        handle.signalled_at = now
        try:
            os.kill(handle.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass

    def preempt_reservations(self) -> None:
        """Strict priority: a queued task that outranks a reserved one takes its
        place. The worker is asked to drop the reserved task; if it already
        started it, it simply runs (it was next anyway)."""
        top = self.scheduler.top_priority()
        if top is None:
            return
        for handle in self.pool.by_pid.values():
            if not handle.reserved or handle.floor >= top:
                continue  # nothing reserved here ranks below the queue's best
            ids = []
            for task_id in handle.reserved:
                task = self.store.get(task_id)
                if task is not None and task.priority < top and task_id not in handle.skips:
                    ids.append(task_id)
            if ids:
                self._skip(handle, ids, "preempted")
            handle.floor = top  # what stays outranks nothing queued now

    def _run_item(self, task: Task, attempt: int, prefetched: bool = False) -> dict[str, Any]:
        msg: dict[str, Any] = {"id": task.task_id, "a": attempt}
        if task.function is not None:
            msg["f"] = task.function
            if task.has_refs:
                results = self.scheduler.results_of(task)
                msg["args"] = substitute_refs(task.args, results)
                msg["kwargs"] = substitute_refs(task.kwargs, results)
            else:
                msg["args"], msg["kwargs"] = task.args, task.kwargs
        else:
            msg["c"] = task.command
        if task.cwd is not None:
            msg["cwd"] = task.cwd
        if task.env is not None:
            msg["env"] = task.env
        if prefetched:
            msg["p"] = True
        return msg
