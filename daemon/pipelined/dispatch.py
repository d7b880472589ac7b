"""WorkerTraffic: the half of the supervisor that deals with workers.

    dispatch ──run──► worker        (queued task -> idle worker; prefetch to a busy one)
    worker ──done / start / skipped──► handle_worker_messages -> scheduler
    deadlines, memory limits, cancels ──► _kill_worker (whole tree) -> scheduler.lose
    SIGCHLD ──► reap_children -> worker_lost for a busy one, a fresh fork in its slot

A mixin of Supervisor (same state, same loop); kept apart so that each file
holds one concern. Prefetch in short: a busy worker whose current task is known
to be short gets its next task early (run flagged p) and announces when it really
starts it (done.next or start), so deadlines count from the real start; a
reservation can be asked back (skip + SIGUSR1) and the worker's answer decides,
atomically, whether it was dropped or started.
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
from pipeline_protocol.codec import substitute_refs

from .control import NOBLOCK
from .gates import WATCH_S, tree_rss_mb
from .pool import describe_exit
from .task import Task

if TYPE_CHECKING:
    from .supervisor import Supervisor  # noqa: F401

log = logging.getLogger("pipelined")

# Prefetch only behind tasks known to be short: a task queued behind a long one
# would wait for it while another worker may go idle.
PREFETCH_BEHIND_S = 0.005
RESIGNAL_S = 0.05  # an unanswered skip is signalled again this often


class WorkerTraffic:
    def handle_worker_messages(self, now: float, wall: float) -> None:
        recv = self.workers_sock.recv
        while True:
            # Two plain recvs and one zmq.Again at the end: cheaper than recv_multipart
            # and an EVENTS check per message (both allocate enums in pyzmq).
            try:
                ident = recv(NOBLOCK)
            except zmq.Again:
                return
            frames = [ident]
            while self.workers_sock.rcvmore:
                frames.append(recv(NOBLOCK))
            handle = self.pool.by_ident.get(frames[0])
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
            if kind == wm.DONE:
                self._on_done(handle, msg, now, wall)
            elif kind == wm.START:
                self._start_reserved(handle, msg.get("id"), now, wall)
            elif kind == wm.SKIPPED:
                self._on_skipped(handle, msg.get("id"), now, wall)
            elif kind == wm.HELLO and handle.state == "starting":
                self.pool.ready(handle)
                self.events.worker(handle.pid, handle.slot, "started")
                if not self.ready_sent and len(self.pool.idle) >= self.pool.size:
                    self.ready_sent = True
                    self.notify.ready(self.status_line())
            elif kind == wm.BYE:
                handle.state = "exiting"

    def _on_done(self, handle, msg: dict, now: float, wall: float) -> None:
        if handle.state != "busy" or handle.task_id != msg.get("id"):
            return  # we gave up on that attempt already (timeout, cancel)
        exec_s = float(msg.get("exec_s") or 0.0)
        task = self.scheduler.finish(msg["id"], msg["a"], msg.get("result"), msg.get("error"), exec_s, now, wall)
        if task is not None:
            label = task.function or task.command[0]
            prev = self.typical_s.get(label)
            self.typical_s[label] = exec_s if prev is None else prev + 0.2 * (exec_s - prev)
        handle.tasks_done += 1
        handle.task_id = None
        if task is not None and task.state is TaskState.FAILED:
            log.info("task %s: failed (%s)", task.task_id, (task.error or {}).get("type"))
        if msg.get("next") is not None:
            self._start_reserved(handle, msg["next"], now, wall)
        elif not handle.reserved:
            self._worker_free(handle)

    def _start_reserved(self, handle, task_id: Any, now: float, wall: float) -> None:
        """The worker started the prefetched task at the head of its reservations."""
        if not handle.reserved or handle.reserved[0] != task_id:
            log.error("worker %d started %r, which it was not given next; killing it", handle.pid, task_id)
            self._kill_worker(handle, "protocol error", FailureReason.WORKER_LOST, now, wall)
            return
        handle.reserved.popleft()
        why = handle.skips.pop(task_id, None)
        task = self.store.get(task_id)
        if task is None or task.state is not TaskState.QUEUED or task.reserved_by != handle.pid:
            # Cancelled while the run was in flight: it must not go on running.
            handle.state, handle.task_id = "busy", None
            self._kill_worker(handle, f"stale start of task {task_id}", FailureReason.WORKER_LOST, now, wall)
            return
        if why is not None:
            log.debug("task %s: started before the worker saw the skip (%s)", task_id, why)
        self.scheduler.start_reserved(task, now, wall)
        handle.state, handle.task_id = "busy", task_id
        if task.memory_limit_mb is not None and self.next_memory_check is None:
            self.next_memory_check = now + WATCH_S

    def _on_skipped(self, handle, task_id: Any, now: float, wall: float) -> None:
        log.debug("task %s: worker %d dropped it (%s)", task_id, handle.pid, handle.skips.get(task_id))
        if task_id not in handle.reserved:
            return
        handle.reserved.remove(task_id)
        handle.skips.pop(task_id, None)
        task = self.store.get(task_id)
        if task is not None and task.reserved_by == handle.pid:
            self.scheduler.unreserve(task)  # not when cancelled, or withdrawn already
        if handle.task_id is None and not handle.reserved:
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
            self.workers_sock.send_multipart([handle.ident, encode(msg)], NOBLOCK)
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
        for task in self.scheduler.expired(now):
            handle = self.pool.by_pid.get(task.worker_pid)
            late_ms = (now - task.deadline) * 1000 if task.deadline is not None else 0.0
            error = {"type": "Timeout", "message": f"task exceeded its {task.timeout_s:g}s timeout; its worker's process tree was killed", "traceback": None}
            if handle is not None and handle.task_id == task.task_id:
                self._kill_worker(handle, f"timeout of task {task.task_id}", FailureReason.TIMEOUT, now, wall, error)
            else:
                self.scheduler.lose(task.task_id, FailureReason.TIMEOUT, error, now, wall)
            log.info("task %s: timed out after %gs (killed %.1f ms past the deadline)", task.task_id, task.timeout_s, late_ms)

    def dispatch(self, now: float, wall: float) -> None:
        if self.draining:
            return
        sched = self.scheduler
        self.gate_hold = self.gate.closed_because(now) if sched.has_ready() else None
        if self.gate_hold is not None:
            return
        self.assign_idle_workers(now, wall)
        # top_priority() drops stale heap entries first: has_ready() may still see some.
        if self.config.prefetch and sched.top_priority() is not None:
            self.preempt_reservations()
            self.prefetch(now, wall)
        if sched.top_priority() is None and any(h.state == "idle" for h in self.pool.idle):
            if self.withdraw_stuck_reservations(now):
                self.assign_idle_workers(now, wall)
        else:
            self.withdraw_at = None

    def assign_idle_workers(self, now: float, wall: float) -> None:
        sched, limit = self.scheduler, self.config.concurrency
        while sched.has_ready() and len(sched.running) < limit:
            handle = self.pool.take_idle()
            if handle is None:
                return
            task = sched.next_ready()
            if task is None:
                self.pool.idle.appendleft(handle)
                return
            attempt = sched.start(task, handle.pid, now, wall)
            handle.state, handle.task_id = "busy", task.task_id
            if task.memory_limit_mb is not None and self.next_memory_check is None:
                self.next_memory_check = now + WATCH_S
            try:
                data = encode(self._run_message(task, attempt))
            except (TypeError, ValueError, KeyError) as exc:
                handle.state, handle.task_id = "idle", None
                self.pool.idle.appendleft(handle)
                sched.finish(task.task_id, attempt, None, {"type": "DispatchError", "message": f"cannot build the task's arguments: {exc}", "traceback": None}, 0.0, now, wall)
                continue
            try:
                self.workers_sock.send_multipart([handle.ident, data], NOBLOCK)
            except zmq.ZMQError as exc:  # the worker vanished between hello and now
                self._kill_worker(handle, f"unreachable ({exc})", FailureReason.WORKER_LOST, now, wall)

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
        """A worker is idle while a prefetched task waits behind a task that runs
        longer than usual: ask for the prefetched task back. The busy worker
        answers at once (skip + SIGUSR1, see _skip): either it drops the task
        ("skipped": it is queued again and goes to the idle worker) or it has
        just started it. Never both, so a task never runs twice."""
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
                # while SIGUSR1 is blocked and find nothing yet), so ask again shortly.
                again_at = handle.signalled_at + RESIGNAL_S
                if now >= again_at:
                    self._signal_skip(handle, now)
                    again_at = now + RESIGNAL_S
                self.withdraw_at = again_at if self.withdraw_at is None else min(self.withdraw_at, again_at)
            for task_id in handle.reserved:
                task = self.store.get(task_id)
                if task is not None and task.reserved_by == handle.pid and task_id not in handle.skips:
                    log.debug("task %s: withdrawn from worker %d, stuck behind %s", task_id, handle.pid, current.task_id)
                    self._skip(handle, task_id, "withdrawn")
                    withdrawn = True
        return withdrawn

    def _skip(self, handle, task_id: str, why: str) -> None:
        """Ask a worker to drop a prefetched task. SIGUSR1 makes a busy worker
        answer now, from between the bytecodes of the task it runs."""
        handle.skips[task_id] = why
        self._send_worker(handle, {"t": wm.SKIP, "id": task_id})
        if handle.task_id is not None:
            self._signal_skip(handle, time.monotonic())

    def _signal_skip(self, handle, now: float) -> None:
        handle.signalled_at = now
        try:
            os.kill(handle.pid, signal.SIGUSR1)
        except ProcessLookupError:
            pass

    def preempt_reservations(self) -> None:
        """Strict priority: a queued task that outranks a prefetched one takes its
        place. The worker is asked to drop the prefetched task; if it already
        started it, it simply runs (it was next anyway)."""
        top = self.scheduler.top_priority()
        if top is None:
            return
        for handle in self.pool.by_pid.values():
            for task_id in handle.reserved:
                task = self.store.get(task_id)
                if task is not None and task.priority < top and task_id not in handle.skips:
                    self._skip(handle, task_id, "preempted")

    def prefetch(self, now: float, wall: float) -> None:
        """Give a busy worker its next task now, so it starts the moment the
        current one ends instead of waiting a round trip for us.

        Only behind a task whose function usually takes under PREFETCH_BEHIND_S
        and has not run longer than that (a prefetched task cannot be taken back
        from a worker stuck in user code); only tasks of types without a
        concurrency limit; at most one per worker. Higher-priority arrivals
        displace prefetched tasks (preempt_reservations)."""
        sched = self.scheduler
        limit = self.config.max_tasks_per_worker
        for handle in self.pool.by_pid.values():
            if handle.state != "busy" or handle.task_id is None or handle.reserved or handle.skips or self.pool.surplus(handle):
                continue
            if limit and handle.tasks_done + 2 > limit:
                continue
            current = self.store.get(handle.task_id)
            typical = self.typical_s.get(current.function or current.command[0]) if current is not None else None
            if typical is None or typical > PREFETCH_BEHIND_S or now - current.deadline + current.timeout_s > PREFETCH_BEHIND_S:
                continue  # not known to be short, or already running long
            task = sched.next_ready()
            if task is None:
                return
            if task.task_type in sched.type_limits:
                sched.requeue(task)
                return
            attempt = sched.reserve(task, handle.pid)
            try:
                msg = self._run_message(task, attempt)
                msg["p"] = True
                self.workers_sock.send_multipart([handle.ident, encode(msg)], NOBLOCK)
            except (TypeError, ValueError, KeyError, zmq.ZMQError):
                sched.unreserve(task)  # dispatch proper will deal with it (or its worker)
                return
            handle.reserved.append(task.task_id)
            if not sched.has_ready():
                return

    def _run_message(self, task: Task, attempt: int) -> dict[str, Any]:
        msg: dict[str, Any] = {"t": wm.RUN, "id": task.task_id, "a": attempt}
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
        return msg
