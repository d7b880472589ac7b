"""WorkerPool: forking, killing and reaping the worker processes.

    supervisor (child subreaper)
      ├── worker 0   pgid = own pid ── task's children (same group)
      ├── worker 1                     └── setsid grandchild (own group, still a descendant)
      └── ...

Each worker is forked straight from the supervisor and immediately makes itself
clean (worker.py): own process group, fresh signal handlers, inherited fds
closed, fresh ZeroMQ context. The supervisor is a child subreaper, so anything a
task leaves behind is re-parented to it and reaped by the same waitpid(-1) that
reaps workers: no zombie survives a pass of the loop.

A hard kill freezes the worker's group (SIGSTOP, so nothing forks while we
look), collects every descendant, including ones that left the group with
setsid, and SIGKILLs them all.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import time
from collections import deque

import psutil

from .worker import TASK_TAG, worker_main

log = logging.getLogger("pipelined.pool")

PR_SET_CHILD_SUBREAPER = 36


class WorkerHandle:
    """The supervisor's view of one worker process."""

    __slots__ = ("slot", "pid", "ident", "state", "task_id", "attempt", "tasks_done", "started_at", "kill_reason", "reserved", "skips", "signalled_at", "stop_at", "depth", "floor")

    def __init__(self, slot: int, pid: int):
        self.slot = slot
        self.pid = pid
        self.ident = b"%d" % pid  # its DEALER identity on the worker socket
        self.state = "starting"  # starting -> idle <-> busy; exiting | killed
        self.task_id: str | None = None
        self.attempt = 0
        self.tasks_done = 0
        self.started_at = time.time()
        self.kill_reason: str | None = None
        self.reserved: deque[str] = deque()  # prefetched task ids, sent but not started
        self.skips: dict[str, str] = {}  # reserved task id -> why we asked the worker to drop it
        self.signalled_at = 0.0  # monotonic time of our last SIGUSR1 (a skip) to it
        self.stop_at: float | None = None  # it runs a task cancelled in flight: killed if still at it then
        self.depth = 0  # reservations after the last refill: refilled at half
        self.floor = 0  # lowest priority among its reservations (preemption check)

    def info(self) -> dict:
        return {
            "slot": self.slot,
            "pid": self.pid,
            "state": self.state,
            "task_id": self.task_id,
            "prefetched": list(self.reserved),
            "tasks_done": self.tasks_done,
            "started_at": self.started_at,
            "uptime_s": round(time.time() - self.started_at, 3),
        }


def become_subreaper() -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def describe_exit(status: int) -> str:
    """'exit code 3' / 'killed by SIGSEGV' for a waitpid status."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            return f"killed by {signal.Signals(sig).name}"
        except ValueError:
            return f"killed by signal {sig}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"status {status}"


def _descendants(pid: int) -> list[int]:
    try:
        return [p.pid for p in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _signal(pid: int, sig: int, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tagged_strays(task_id: str, exclude: set[int]) -> set[int]:
    """Our descendants outside every worker tree that carry the task's tag.

    A double-forked daemon of a task is re-parented to us (the subreaper) and
    is no longer below its worker; its inherited environment still names the task.
    """
    found = set()
    try:
        candidates = psutil.Process().children(recursive=True)
    except psutil.Error:
        return found
    for proc in candidates:
        if proc.pid in exclude:
            continue
        try:
            if proc.environ().get(TASK_TAG) == task_id:
                found.add(proc.pid)
        except psutil.Error:
            continue
    return found


OWNER_TAG = "PIPELINED_RUNTIME_DIR"  # in the environment of every worker and task process


def kill_leftovers(owner: str) -> int:
    """SIGKILL the processes an earlier run of this daemon left: those whose
    environment carries our runtime dir (one daemon per runtime dir: the lock).
    A task's setsid descendants outlive a kill -9 of the supervisor; its workers
    die with it (PDEATHSIG), and this catches what they had started."""
    me, uid, killed = os.getpid(), os.getuid(), 0
    for proc in psutil.process_iter(["uids"]):
        try:
            uids = proc.info["uids"]  # None when psutil may not read it
            if proc.pid == me or uids is None or uids.real != uid or proc.environ().get(OWNER_TAG) != owner:
                continue
            proc.kill()
            killed += 1
        except psutil.Error:
            continue
    return killed


def kill_tree(pid: int, task_id: str | None = None, workers: set[int] | frozenset[int] = frozenset()) -> int:
    """SIGKILL a worker, its process group and every descendant; returns how many."""
    _signal(pid, signal.SIGSTOP, group=True)
    seen: set[int] = set()
    for _ in range(3):  # freeze, look again: catches what forked while we looked
        found = set(_descendants(pid)) - seen
        if not found:
            break
        for child in found:
            _signal(child, signal.SIGSTOP)
        seen |= found
    if task_id is not None:
        for stray in _tagged_strays(task_id, {pid, *seen, *workers}):
            _signal(stray, signal.SIGSTOP)
            seen.add(stray)
    _signal(pid, signal.SIGKILL, group=True)
    _signal(pid, signal.SIGKILL)
    for child in seen:
        _signal(child, signal.SIGKILL)
        _signal(child, signal.SIGCONT)  # a stopped process dies of SIGKILL anyway; be sure
    return 1 + len(seen)


def kill_kind(why: str) -> str:
    """The label of a kill for metrics: 'timeout of task 3f2a' -> 'timeout',
    'unreachable (Host unreachable)' -> 'unreachable', 'pool shrunk' -> 'pool_shrunk'."""
    return why.split(" of task", 1)[0].split(" (", 1)[0].strip().replace(" ", "_") or "other"


class ProcessSampler:
    """RSS and CPU % of worker trees for the `workers` op: cheap and non-blocking.

    psutil.Process objects are cached by pid, so cpu_percent(interval=None)
    measures the CPU used since the previous call on the same object (the
    first sample of a process is 0.0) and nothing ever sleeps. One scan of
    the process table per call finds every worker's descendants at once.
    """

    def __init__(self) -> None:
        self._procs: dict[int, psutil.Process] = {}

    def _proc(self, pid: int) -> psutil.Process | None:
        proc = self._procs.get(pid)
        if proc is None:
            try:
                proc = self._procs[pid] = psutil.Process(pid)
            except psutil.Error:
                return None
        return proc

    def sample(self, pids: list[int]) -> dict[int, dict[str, float]]:
        """{pid: {"rss_mb", "cpu_percent"}} for each pid, its descendants included."""
        trees = self._trees(pids)
        seen: set[int] = set()
        out = {}
        for pid in pids:
            rss = cpu = 0.0
            for member in trees.get(pid, [pid]):
                seen.add(member)
                proc = self._proc(member)
                if proc is None:
                    continue
                try:
                    with proc.oneshot():
                        rss += proc.memory_info().rss
                        cpu += proc.cpu_percent(interval=None)
                except psutil.Error:
                    self._procs.pop(member, None)
            out[pid] = {"rss_mb": round(rss / 1048576, 1), "cpu_percent": round(cpu, 1)}
        for gone in set(self._procs) - seen:  # forget exited processes (pids get reused)
            del self._procs[gone]
        return out

    @staticmethod
    def _trees(pids: list[int]) -> dict[int, list[int]]:
        """Each pid with its descendants, from one pass over the process table."""
        children: dict[int, list[int]] = {}
        for pid, ppid in _ppid_map().items():
            children.setdefault(ppid, []).append(pid)
        trees = {}
        for pid in pids:
            members, stack = [], [pid]
            while stack:
                p = stack.pop()
                members.append(p)
                stack.extend(children.get(p, ()))
            trees[pid] = members
        return trees


def _ppid_map() -> dict[int, int]:
    """{pid: parent pid} for every process: /proc/*/stat read directly (a few
    microseconds a process; psutil.process_iter costs ten times more)."""
    out: dict[int, int] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return {p.pid: p.info["ppid"] for p in psutil.process_iter(["ppid"]) if p.info.get("ppid") is not None}
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                data = fh.read()
            # "pid (comm) S ppid ...": comm may hold spaces and parentheses, so split after the last ")".
            out[int(name)] = int(data[data.rfind(b")") + 2:].split(None, 2)[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


class WorkerPool:
    def __init__(self, size: int, endpoint: str):
        self.size = size
        self.endpoint = endpoint
        self.parent_pid = os.getpid()
        self.by_pid: dict[int, WorkerHandle] = {}
        self.by_ident: dict[bytes, WorkerHandle] = {}
        self.idle: deque[WorkerHandle] = deque()
        self.forks = 0
        self.kills = 0
        self.kills_by_reason: dict[str, int] = {}  # kill_kind(why) -> count, for /metrics
        self.sampler = ProcessSampler()  # RSS / CPU % for the workers op

    # -- life -------------------------------------------------------------
    def spawn(self, slot: int) -> WorkerHandle:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # child: never returns
            worker_main(slot, self.endpoint, self.parent_pid)
        try:
            os.setpgid(pid, pid)  # also done in the child; whoever runs first wins the race
        except OSError:
            pass
        handle = WorkerHandle(slot, pid)
        self.by_pid[pid] = handle
        self.by_ident[handle.ident] = handle
        self.forks += 1
        return handle

    def free_slots(self) -> list[int]:
        used = {h.slot for h in self.by_pid.values()}
        return [s for s in range(self.size) if s not in used]

    def fill(self) -> list[WorkerHandle]:
        return [self.spawn(slot) for slot in self.free_slots()]

    def ready(self, handle: WorkerHandle) -> None:
        """A worker said hello or finished a task: it can take work."""
        handle.state = "idle"
        handle.task_id = None
        self.idle.append(handle)

    def take_idle(self) -> WorkerHandle | None:
        while self.idle:
            handle = self.idle.popleft()
            if handle.state == "idle" and handle.pid in self.by_pid:
                return handle
        return None

    def kill(self, handle: WorkerHandle, why: str) -> None:
        task_id = handle.task_id if handle.state == "busy" else None
        handle.state = "killed"
        handle.kill_reason = why
        self.kills += 1
        kind = kill_kind(why)
        self.kills_by_reason[kind] = self.kills_by_reason.get(kind, 0) + 1
        n = kill_tree(handle.pid, task_id, set(self.by_pid))
        log.info("worker %d (slot %d): killed for %s (%d processes)", handle.pid, handle.slot, why, n)

    def reap(self) -> list[tuple[WorkerHandle, int]]:
        """Collect every exited child; returns the workers among them with their status.

        Strays (a task's orphaned descendants, re-parented to us as subreaper) are
        reaped and forgotten.
        """
        gone = []
        while True:
            try:  # look before reaping: a worker's group id stays its own until then
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if info is None:
                break
            pid = info.si_pid
            if pid in self.by_pid:
                # Whatever its tasks left in its process group (a command's background
                # job) goes with it, even when it exited cleanly (recycled, shrunk).
                _signal(pid, signal.SIGKILL, group=True)
            pid, status = os.waitpid(pid, 0)
            handle = self.by_pid.pop(pid, None)
            if handle is None:
                continue
            self.by_ident.pop(handle.ident, None)
            gone.append((handle, status))
        return gone

    def resize(self, size: int) -> None:
        """Change the pool size: new slots fill on the next pass; surplus idle
        workers leave now, busy ones when their task ends (see retire_surplus)."""
        self.size = size
        for handle in list(self.by_pid.values()):
            if handle.slot >= size and handle.state in ("idle", "starting"):
                self.kill(handle, "pool shrunk")

    def surplus(self, handle: WorkerHandle) -> bool:
        return handle.slot >= self.size

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for h in self.by_pid.values():
            out[h.state] = out.get(h.state, 0) + 1
        return out

    def stop_all(self, grace_s: float) -> None:
        """Kill every worker tree and reap them, waiting up to grace_s for the reaping.
        Then every other descendant: strays of earlier tasks (double-forked, or
        out of their worker's group) that were re-parented to us, the subreaper."""
        for handle in list(self.by_pid.values()):
            if handle.state != "killed":
                self.kill(handle, "shutdown")
        strays = set(_descendants(os.getpid())) - set(self.by_pid)
        for pid in strays:
            _signal(pid, signal.SIGKILL)
        if strays:
            log.info("killed %d leftover process(es) of earlier tasks", len(strays))
        deadline = time.monotonic() + grace_s
        while self.by_pid and time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                time.sleep(0.005)
                continue
            handle = self.by_pid.pop(pid, None)
            if handle is not None:
                self.by_ident.pop(handle.ident, None)
        self.reap()
