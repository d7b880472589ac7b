"""Supervisor: the daemon's one loop, and the only owner of its state.

    clients ──DEALER──► [control ROUTER] ─┐
                                          │   ┌─────────────┐
    signals ──► [wakeup pipe] ────────────┼──►│ zmq.Poller  │ one blocking wait;
                                          │   │ timeout =   │ timeout = next deadline
    workers ──DEALER──► [worker ROUTER] ──┘   │ next due    │ (task timeout, retry
        ▲                                     └──────┬──────┘  backoff, wait timeout,
        │ run                                        ▼         drain grace)
        └──────────── dispatch ◄── each pass: handle_worker_messages → serve_requests
                                    → reap_children → enforce_deadlines
                                    → promote_backoffs → dispatch → answer_waiters
                                    → flush_store → send_replies → prune → show_title

Nothing blocks but the poll. Signal handlers do nothing themselves: Python
writes the signal number to the wakeup pipe, and the loop acts on it in order
with everything else (SIGCHLD -> reap, SIGTERM/SIGINT -> drain, SIGHUP -> reload).
A worker's death is therefore seen at once, not on a polling tick.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import time
from typing import Any

import zmq

from pipeline_protocol import ErrorCode, FailureReason, TaskState, error, ok
from pipeline_protocol.codec import MAX_FRAME_BYTES
from pipeline_protocol.paths import socket_path_in

from . import control, titles
from .config import Config, apply_log_level, log_level_number
from .dispatch import WorkerTraffic
from .events import EVENTS_SOCKET, EventBus
from .gates import ResourceGate
from .handlers import result_reply, wait_reply
from .http import HttpServer  # --http: /healthz, /status, /metrics in this loop
from .policy import Policy
from .pool import OWNER_TAG, WorkerPool, become_subreaper, kill_leftovers
from .scheduler import Scheduler
from .sdnotify import Notifier
from .store import TaskStore
from .task import Task
from .waiters import Waiter, Waiters

log = logging.getLogger("pipelined")

WORKER_SOCKET = "workers.sock"
COMMIT_DELAY_S = 0.005  # how long a state change may wait for company before it is written
COMMIT_BATCH = 2000
LONG_PASS_MEMORY_S = 1.0
TITLE_EVERY_S = 0.1  # process title and STATUS= are for people: ten updates a second is plenty
MAX_FAILED_PASSES = 50
FREEZE_EVERY = 10_000  # tasks accepted between two gc.freeze() calls
RESTART_KEYS = frozenset({"http", "socket_group", "journal", "journal_sync"})  # fixed at start
HANDLED_SIGNALS = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _noop_handler(signum: int, frame: Any) -> None:
    """Only there so Python writes the signal to the wakeup fd; the loop acts on it."""


class Supervisor(WorkerTraffic):
    def __init__(self, config: Config, runtime_dir: str, state_dir: str, store: TaskStore | None = None, restored: list[Task] | None = None):
        self.config = config
        self.runtime_dir = runtime_dir
        self.state_dir = state_dir
        self.socket_path = socket_path_in(runtime_dir)
        self.worker_socket_path = os.path.join(runtime_dir, WORKER_SOCKET)
        self.store = store if store is not None else TaskStore()
        self._restored = restored  # tasks read back from the journal, taken in at setup
        self.scheduler = Scheduler(
            self.store,
            default_timeout_s=config.default_task_timeout,
            default_max_retries=config.max_task_retries,
            default_backoff_s=config.default_retry_backoff,
            type_limits=config.type_limits(),
            enable_dependencies=config.enable_dependency_execution,
        )
        self.policy = Policy(config.allowed_functions, config.allow_commands)
        self.waiters = Waiters()
        self.pool = WorkerPool(config.max_workers, "ipc://" + self.worker_socket_path)
        self.started_mono = time.monotonic()
        self.draining = False
        self.drain_deadline: float | None = None
        self.last_frame_bytes = 0
        self._wakeup_r = self._wakeup_w = -1
        self._child_exited = False  # SIGCHLD seen since the last reap
        self.outbox: list[tuple[list[bytes], dict]] = []  # replies of this pass, sent after the flush
        self.dirty_since: float | None = None  # first uncommitted change (group commit)
        self.notify = Notifier()
        self.ready_sent = False
        self._shown: tuple = ()  # the counts the title and STATUS= last showed
        self._title_next = 0.0  # the title changes at most every TITLE_EVERY_S
        self.title_at: float | None = None  # a title update held back by that limit
        self.typical_s: dict[str, float] = {}  # function/command -> moving average of its run time
        self.gate = ResourceGate(config.max_cpu_percent, config.max_memory_percent, config.min_free_memory_mb, config.enable_resource_scheduling)
        self.gate_hold: str | None = None  # why dispatch is waiting on the resource gate, if it is
        self.next_memory_check: float | None = None  # set while a running task has memory_limit_mb
        self.long_pass_s = 0.0  # the longest recent pass of the loop, and when it was
        self.long_pass_at = 0.0
        self.withdraw_at: float | None = None  # when a prefetched task may be taken back for an idle worker
        self.stop_at: float | None = None  # when a worker still running a task cancelled in flight is killed
        self.next_prune = time.monotonic()
        self.config_path: str | None = None  # re-read on SIGHUP
        self.reload_config: Any = None  # callable returning a new Config (main.py sets it)
        self.http: HttpServer | None = None  # --http (off by default)
        self._frozen_at = 0  # len(store) at the last gc.freeze()

    # -- setup and teardown -----------------------------------------------------
    def _setup(self) -> None:
        if self.config.http:  # http: first, so a bind error (HttpBindError: exit 2) leaves nothing behind
            self.http = HttpServer(self.config.http, self)
        become_subreaper()
        self._wakeup_r, self._wakeup_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wakeup_w, warn_on_full_buffer=False)
        for sig in HANDLED_SIGNALS:
            signal.signal(sig, _noop_handler)
        self.ctx = zmq.Context(io_threads=1)
        self.control = control.bind_control(self.ctx, self.socket_path)
        self.workers_sock = self.ctx.socket(zmq.ROUTER)
        self.workers_sock.setsockopt(zmq.LINGER, 0)
        self.workers_sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # a send to a dead worker fails loudly
        self.workers_sock.setsockopt(zmq.MAXMSGSIZE, MAX_FRAME_BYTES + 4096)
        old = os.umask(0o077)  # only the daemon's user may play worker
        try:
            self.workers_sock.bind("ipc://" + self.worker_socket_path)
        finally:
            os.umask(old)
        self.events = EventBus(self.ctx, os.path.join(self.runtime_dir, EVENTS_SOCKET))
        self.scheduler.on_change = self.events.task_changed
        self.poller = zmq.Poller()
        self.poller.register(self.control, zmq.POLLIN)
        self.poller.register(self.events.sock, zmq.POLLIN)
        self.poller.register(self.workers_sock, zmq.POLLIN)
        self.poller.register(self._wakeup_r, zmq.POLLIN)
        if self.http is not None:  # http: its fd in the poller, its counters on on_change (before restore)
            self.http.attach(self.poller)
        self.restore()
        owner = os.path.realpath(self.runtime_dir)
        os.environ[OWNER_TAG] = owner  # before the first fork: every worker and task inherits it
        left = kill_leftovers(owner)
        if left:
            log.warning("killed %d process(es) left running by an earlier run of this daemon", left)
        self.pool.fill()

    def restore(self) -> None:
        tasks = self._restored if self._restored is not None else self.store.load()
        self._restored = None
        if not tasks:
            return
        now, wall = time.monotonic(), time.time()
        summary = self.scheduler.restore(tasks, now, wall)
        self.scheduler.take_ended()
        self.store.flush()
        log.info("journal: %d tasks restored (%d ended, %d resumed, %d interrupted attempts counted as lost)",
                 len(tasks), summary["ended"], summary["requeued"], summary["interrupted"])
        self.freeze_heap()

    def _teardown(self) -> None:
        for waiter in self.waiters.all():
            control.send_reply(self.control, waiter.envelope, error(ErrorCode.DRAINING, "pipelined stopped before the task ended", waiter.rid))
        self.pool.stop_all(grace_s=5.0)
        if self.http is not None:  # http
            self.http.close()
        self.store.close()
        self.control.close(linger=0)
        self.events.close()
        self.workers_sock.close(linger=0)
        self.ctx.term()
        for path in (self.socket_path, self.worker_socket_path):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
        self.notify.close()
        signal.set_wakeup_fd(-1)
        os.close(self._wakeup_r)
        os.close(self._wakeup_w)

    def run(self) -> int:
        self._setup()
        log.info("pipelined %d: listening on %s with %d workers", os.getpid(), self.socket_path, self.pool.size)
        try:
            self._loop()
        finally:
            self._teardown()
        log.info("pipelined %d: stopped", os.getpid())
        return 0

    # -- the loop ---------------------------------------------------------------
    def _loop(self) -> None:
        failures = 0
        while True:
            ready = dict(self.poller.poll(self._poll_timeout_ms()))
            try:
                if self._pass(ready):
                    return
                failures = 0
            except Exception:
                # A bug of ours must not take every task down with it: log, go on.
                # Failing pass after pass means the state is broken: stop, and let
                # the supervisor of the daemon (systemd) restart it from the journal.
                failures += 1
                log.exception("internal error in the supervisor loop (%d in a row)", failures)
                if failures >= MAX_FAILED_PASSES:
                    raise

    def _pass(self, ready: dict) -> bool:
        """One pass of the loop's steps; True when the daemon may stop."""
        now, wall = time.monotonic(), time.time()
        if self._wakeup_r in ready:
            self.handle_signals()
        if self.workers_sock in ready:
            self.handle_worker_messages(now, wall)
        if self.control in ready:
            control.serve_pending(self, self.control, self.outbox)
        if self.events.sock in ready:
            self.events.handle_subscriptions()
        if self.http is not None:  # http: accept, read, answer, expire (never blocks)
            self.http.handle(ready, now)
        if self._child_exited:
            self.reap_children(now, wall)
        self.enforce_deadlines(now, wall)
        if self.next_memory_check is not None and now >= self.next_memory_check:
            self.watch_memory(now, wall)
        self.scheduler.promote_due(now)
        self.answer_waiters(now)
        if self.outbox:
            self.commit(now)  # every reply leaves after the state it reports is on disk
            self.send_replies()
        self.dispatch(now, wall)
        self.commit_if_due(now)
        if not ready:
            self.store.checkpoint(idle=True)  # a pass woken by a timer alone: a quiet moment
        if now >= self.next_prune:
            self.prune(now, wall)
        self.notify.watchdog(now)
        self.show_title(now)
        if len(self.store) >= self._frozen_at + FREEZE_EVERY:
            self.freeze_heap()
        self._time_pass(now)
        return self.draining and self.finish_drain(now, wall)

    def freeze_heap(self) -> None:
        """Keep accepted tasks out of the cyclic GC's full collections.

        A full collection walks every tracked object: ~1 s with a million tasks
        queued, during which nothing is dispatched or answered, and the bigger the
        queue the later and longer the next one. Tasks hold no reference cycles
        (refcounting frees a pruned one, frozen or not), so they are moved to the
        permanent generation (gc.freeze: O(1)) as the store grows. A young
        collection first, so that what little cyclic garbage exists is not frozen.
        """
        gc.collect(1)
        gc.freeze()
        self._frozen_at = len(self.store)

    def _time_pass(self, now: float) -> None:
        """Remember the longest pass of about the last second (prefetch sizes
        workers' reserves to outlast it)."""
        took = time.monotonic() - now
        if took >= self.long_pass_s or now - self.long_pass_at > LONG_PASS_MEMORY_S:
            self.long_pass_s, self.long_pass_at = took, now

    def commit(self, now: float) -> None:
        self.store.flush()
        self.dirty_since = None
        self.store.checkpoint(idle=False)

    def commit_if_due(self, now: float) -> None:
        """Group commit: changes no reply waits for (starts, ends) are written
        together, at most COMMIT_DELAY_S after the first of them."""
        if not self.store.dirty_count():
            return
        if self.dirty_since is None:
            self.dirty_since = now
        if now - self.dirty_since >= COMMIT_DELAY_S or self.store.dirty_count() >= COMMIT_BATCH:
            self.commit(now)

    def _poll_timeout_ms(self) -> int | None:
        commit_at = None if self.dirty_since is None else self.dirty_since + COMMIT_DELAY_S
        gate_at = self.gate.next_check() if self.gate_hold else None
        http_at = self.http.next_deadline() if self.http is not None else None  # http: a slow client's budget
        timers = (self.scheduler.next_wakeup(), self.waiters.next_deadline(), self.drain_deadline, self.next_prune,
                  commit_at, self.notify.next_watchdog, gate_at, self.next_memory_check, self.withdraw_at, self.stop_at, self.title_at, http_at)
        due = [t for t in timers if t is not None]
        if not due:
            return None
        # Round up: waking a hair early would only spin until the deadline.
        return max(0, math.ceil((min(due) - time.monotonic()) * 1000))

    # -- steps ------------------------------------------------------------------
    def handle_signals(self) -> None:
        try:
            data = os.read(self._wakeup_r, 512)
        except BlockingIOError:
            return
        for signum in set(data):
            if signum == signal.SIGCHLD:
                self._child_exited = True
            elif signum in (signal.SIGTERM, signal.SIGINT):
                self.begin_drain(f"{signal.Signals(signum).name} received")
            elif signum == signal.SIGHUP:
                self.reload()

    def answer_waiters(self, now: float) -> None:
        ended = self.scheduler.take_ended()
        if ended and self.waiters.count:
            for waiter in self.waiters.on_ended(ended):
                self._answer(waiter, timed_out=False)
        for waiter in self.waiters.expired(now):
            self._answer(waiter, timed_out=True)

    def _answer(self, waiter: Waiter, timed_out: bool) -> None:
        if waiter.kind == "result":
            fields = result_reply(self, waiter.task_ids[0])
        else:
            fields = wait_reply(self, waiter.task_ids, timed_out)
        self.outbox.append((waiter.envelope, ok(waiter.rid, **fields)))

    def send_replies(self) -> None:
        outbox, self.outbox = self.outbox, []
        for envelope, reply in outbox:
            control.send_reply(self.control, envelope, reply)

    def prune(self, now: float, wall: float) -> None:
        """Forget ended tasks older than result_ttl_s (retention)."""
        ttl = self.config.result_ttl_s
        gone = self.store.prune(wall - ttl)
        if gone:
            self.store.flush()
            log.info("retention: pruned %d tasks that ended more than %gs ago", len(gone), ttl)
        self.next_prune = now + min(max(ttl / 4, 0.05), 60.0)

    def status_line(self) -> str:
        counts = self.scheduler.counts
        return f"{self.pool.size} workers, {counts[TaskState.QUEUED]} queued, {counts[TaskState.RUNNING]} running"

    def show_title(self, now: float) -> None:
        counts = self.scheduler.counts
        key = (self.pool.size, counts[TaskState.QUEUED], counts[TaskState.RUNNING], counts[TaskState.COMPLETED], counts[TaskState.FAILED])
        if key == self._shown:
            self.title_at = None
            return  # most passes change none of these: no strings built
        if now < self._title_next:
            self.title_at = self._title_next  # under load, a few updates a second; the last one is never skipped
            return
        self._shown, self._title_next, self.title_at = key, now + TITLE_EVERY_S, None
        line = self.status_line()
        titles.set_title(f"pipelined: supervisor [{line}]")
        if self.notify.enabled:
            counts = self.scheduler.counts
            self.notify.status(f"{line}, {counts[TaskState.COMPLETED]} completed, {counts[TaskState.FAILED]} failed")

    # -- reload -----------------------------------------------------------------
    def reload(self) -> None:
        """SIGHUP: re-read the configuration and apply what can change live.

        A bad file is logged and changes nothing. Live: worker count, concurrency,
        per-type limits, timeouts/retries defaults for new tasks, policy,
        retention, grace, gates. The runtime and state dirs need a restart.
        """
        if self.reload_config is None:
            log.info("SIGHUP: no configuration source to reload")
            return
        self.notify.reloading()
        try:
            new = self.reload_config()
        except Exception as exc:  # ConfigError, or anything a bad file provokes
            log.error("SIGHUP: configuration rejected, keeping the old one: %s", exc)
            self.notify.reloaded(self.status_line())
            return
        old, self.config = self.config, new
        if log_level_number(new.log_level) < logging.getLogger().getEffectiveLevel():
            apply_log_level(new.log_level)  # more verbose now: in time to log this reload
        sched = self.scheduler
        sched.default_timeout_s = new.default_task_timeout
        sched.default_max_retries = new.max_task_retries
        sched.default_backoff_s = new.default_retry_backoff
        sched.enable_dependencies = new.enable_dependency_execution
        sched.set_type_limits(new.type_limits())
        self.policy = Policy(new.allowed_functions, new.allow_commands)
        self.gate.configure(new.max_cpu_percent, new.max_memory_percent, new.min_free_memory_mb, new.enable_resource_scheduling)
        self.pool.resize(new.max_workers)
        self.pool.fill()
        self.next_prune = time.monotonic()
        changed = sorted(k for k, v in new.effective().items() if old.effective().get(k) != v)
        needs_restart = [k for k in changed if k in RESTART_KEYS]
        live = [k for k in changed if k not in RESTART_KEYS]
        log.info("SIGHUP: configuration reloaded (%s)", ", ".join(live) or "nothing changed")
        if needs_restart:
            log.warning("SIGHUP: %s changed but take effect only after a restart", ", ".join(needs_restart))
        apply_log_level(new.log_level)  # quieter now: after saying what changed
        self.notify.reloaded(self.status_line())

    # -- cancel, drain ----------------------------------------------------------
    def cancel_task(self, task: Task) -> bool:
        now, wall = time.monotonic(), time.time()
        if task.state is TaskState.QUEUED and task.reserved_by is not None:
            # Prefetched: ask its worker to drop it; if it started meanwhile, it is killed.
            handle = self.pool.by_pid.get(task.reserved_by)
            if handle is not None and task.task_id in handle.reserved:
                self._skip(handle, [task.task_id], "cancel")
        if task.state is not TaskState.RUNNING:
            return self.scheduler.cancel(task, now, wall)
        handle = self.pool.by_pid.get(task.worker_pid)
        if handle is not None and handle.task_id == task.task_id:
            if handle.reserved and task.task_type not in self.scheduler.type_limits:
                self.stop_running(handle, now)  # its next task's start may be on its way
            else:  # nothing can follow it on this worker: kill now, its type slot frees now
                self.pool.kill(handle, f"cancel of task {task.task_id}")
                handle.task_id = None
                self._release_reserved(handle)
        self.scheduler.cancel_running(task, now, wall)
        return True

    def begin_drain(self, why: str, grace_s: float | None = None) -> None:
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        deadline = time.monotonic() + grace
        if self.draining and self.drain_deadline is not None and self.drain_deadline <= deadline:
            return
        if not self.draining:
            self.notify.stopping(f"draining: {why}")
            for handle in self.pool.by_pid.values():  # prefetched tasks go back to the queue
                ids = [task_id for task_id in handle.reserved if task_id not in handle.skips]
                if ids:
                    self._skip(handle, ids, "drain")
        self.draining = True
        self.drain_deadline = deadline
        log.info("draining (%s): no new tasks; %d running get %gs to finish", why, len(self.scheduler.running), grace)

    def finish_drain(self, now: float, wall: float) -> bool:
        """True when the loop may stop: nothing runs, or the grace period is over."""
        reserved = any(h.reserved for h in self.pool.by_pid.values())
        if (self.scheduler.running or reserved) and now < self.drain_deadline:
            return False
        interrupted = {"type": "Interrupted", "message": "pipelined stopped while the task ran", "traceback": None}
        for handle in list(self.pool.by_pid.values()):
            if handle.state == "busy" or handle.reserved:
                self._kill_worker(handle, "shutdown", FailureReason.WORKER_LOST, now, wall, interrupted)
        for task in list(self.scheduler.running.values()):  # a worker already gone
            self.scheduler.lose(task.task_id, FailureReason.WORKER_LOST, interrupted, now, wall)
        self.answer_waiters(now)
        self.store.flush()
        self.send_replies()
        return True

    # -- views ------------------------------------------------------------------
    def resource_status(self) -> dict[str, Any]:
        usage = self.gate.sample(time.monotonic())
        cfg = self.config
        return {
            "limits": {
                "max_cpu_percent": cfg.max_cpu_percent,
                "max_memory_percent": cfg.max_memory_percent,
                "max_concurrent_tasks": cfg.concurrency,
                "min_free_memory_mb": cfg.min_free_memory_mb,
                "enable_resource_scheduling": cfg.enable_resource_scheduling,
            },
            "current": {
                "concurrent_tasks": len(self.scheduler.running),
                "cpu_percent": usage.cpu_percent,
                "memory_percent": usage.memory_percent,
                "memory_available_mb": round(usage.memory_available_mb, 1),
                "last_usage_check": usage.sampled_at,
            },
            "gate": self.gate_hold,
        }
