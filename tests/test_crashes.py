"""The crash matrix: every way a task can die pins its status and reason, the pool
refills, and the next task still runs. Also retries after crashes, the supervisor
dying under its workers, and how close to its deadline a timeout lands."""

from __future__ import annotations

import ctypes
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

from pipeline_client import TaskFailed

from .conftest import wait_for
from .helpers import alive, gone, read_pid, wait_idle_pool, wait_status

PR_SET_CHILD_SUBREAPER = 36

# (id, function, args, timeout, status, reason, error type or None, words in the message, worker dies)
MATRIX = [
    ("raise", "tests.tasks:fail", ["kaboom"], None, "failed", "error", "ValueError", ["kaboom"], False),
    ("sys_exit", "tests.tasks:exit_with", [3], None, "failed", "error", "SystemExit", ["3"], False),
    ("os_exit", "tests.tasks:hard_exit", [7], None, "failed", "worker_lost", "WorkerLost", ["exit code", "7"], True),
    ("sigsegv", "tests.tasks:segfault", [], None, "failed", "worker_lost", "WorkerLost", ["SIGSEGV"], True),
    ("sigkill_self", "tests.tasks:kill_self", [], None, "failed", "worker_lost", "WorkerLost", ["SIGKILL"], True),
    ("past_timeout", "tests.tasks:sleep", [300], 0.3, "failed", "timeout", "Timeout", ["timeout"], True),
]


def _check_pool_refilled(c, n, before, victim, worker_dies):
    if worker_dies:
        wait_for(lambda: gone(victim), 5, what=f"worker {victim} to be reaped")
        workers = wait_idle_pool(c, n, exclude={victim})
        pids = {w["pid"] for w in workers}
        assert len(pids - before) == 1, "exactly one new worker replaces the lost one"
        assert pids & before == before - {victim}
    else:
        workers = wait_idle_pool(c, n)
        assert {w["pid"] for w in workers} == before, "a task that merely raised must not cost a worker"
    assert c.result(c.submit("tests.tasks:square", args=[11]), timeout=10) == 121
    assert len(c.workers()) == n


@pytest.mark.parametrize("case", MATRIX, ids=[m[0] for m in MATRIX])
def test_crash_matrix(make_daemon, case):
    _, function, args, timeout, status, reason, err_type, words, worker_dies = case
    d = make_daemon(workers=2)
    c = d.client
    before = {w["pid"] for w in wait_idle_pool(c, 2)}
    tid = c.submit(function, args=args, timeout=timeout, max_retries=0)
    reply = c.wait([tid], timeout=20)
    assert not reply["timed_out"]
    rec = reply["tasks"][0]
    assert rec["status"] == status
    assert rec["reason"] == reason
    assert err_type in rec["error"]["type"]
    for word in words:
        assert word in rec["error"]["message"], rec["error"]
    assert rec["retry_count"] == 0
    assert rec["worker_pid"] in before
    with pytest.raises(TaskFailed) as ei:
        c.result(tid, timeout=1)
    assert ei.value.reason == reason
    _check_pool_refilled(c, 2, before, rec["worker_pid"], worker_dies)
    st = c.status()
    assert st["failed_tasks"] == 1 and st["completed_tasks"] == 1


@pytest.mark.parametrize("new_session", [False, True], ids=["grandchild_in_group", "setsid_grandchild"])
def test_timeout_kills_grandchildren(make_daemon, tmp_path, new_session):
    d = make_daemon(workers=2)
    c = d.client
    before = {w["pid"] for w in wait_idle_pool(c, 2)}
    pidfile = str(tmp_path / "grandchild.pid")
    tid = c.submit("tests.tasks:spawn_grandchild", args=[pidfile, new_session], timeout=1.0, max_retries=0)
    grandchild = read_pid(pidfile)
    assert alive(grandchild)
    if new_session:
        assert os.getsid(grandchild) == grandchild  # it really left the worker's session and group
    else:
        assert os.getpgid(grandchild) == c.get(tid)["worker_pid"]
    rec = c.wait([tid], timeout=20)["tasks"][0]
    assert (rec["status"], rec["reason"]) == ("failed", "timeout")
    wait_for(lambda: gone(grandchild), 5, what=f"grandchild {grandchild} to be dead and reaped")
    _check_pool_refilled(c, 2, before, rec["worker_pid"], True)



def test_timeout_kills_double_forked_descendant(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    pidfile = str(tmp_path / "daemonized.pid")
    tid = c.submit("tests.tasks:spawn_daemonized", args=[pidfile], timeout=1.0, max_retries=0)
    stray = read_pid(pidfile)
    try:
        rec = c.wait([tid], timeout=20)["tasks"][0]
        assert rec["reason"] == "timeout"
        d.remember_descendants()
        assert wait_for_quietly(lambda: gone(stray), 1.5), f"descendant {stray} survived the timeout"
    finally:
        try:
            os.kill(stray, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_for_quietly(predicate, timeout):
    try:
        return wait_for(predicate, timeout)
    except AssertionError:
        return False


@pytest.mark.parametrize("how", ["exit", "segv", "kill", "hang"])
def test_retry_after_crash_runs_second_attempt(make_daemon, tmp_path, how):
    d = make_daemon(workers=2)
    c = d.client
    marker = str(tmp_path / "crashed")
    tid = c.submit("tests.tasks:crash_once", args=[marker, how], max_retries=1, retry_backoff=0.01, timeout=1.0 if how == "hang" else 30)
    assert c.result(tid, timeout=20) == "second attempt"
    rec = c.get(tid)
    assert rec["retry_count"] == 1
    assert rec["status"] == "completed"
    assert os.path.exists(marker)
    wait_idle_pool(c, 2)


def test_crash_without_retries_left_is_final(make_daemon):
    d = make_daemon(workers=1)
    c = d.client
    tid = c.submit("tests.tasks:hard_exit", args=[1], max_retries=2, retry_backoff=0.01)
    rec = c.wait([tid], timeout=20)["tasks"][0]
    assert (rec["status"], rec["reason"], rec["retry_count"]) == ("failed", "worker_lost", 2)
    wait_idle_pool(c, 1)
    assert c.status()["performance_metrics"]["worker_forks"] >= 4  # 1 at start + 3 replacements


def test_dependents_of_crashed_task_fail_upstream(make_daemon):
    d = make_daemon(workers=2)
    c = d.client
    c.submit_many([
        {"task_id": "crash", "function": "tests.tasks:segfault", "max_retries": 0},
        {"task_id": "after", "function": "tests.tasks:noop", "dependencies": ["crash"]},
    ])
    rec = c.wait(["after"], timeout=20)["tasks"][0]
    assert (rec["status"], rec["reason"]) == ("failed", "upstream_failed")


def test_idle_worker_killed_from_outside_is_replaced(make_daemon):
    d = make_daemon(workers=2)
    c = d.client
    before = {w["pid"] for w in wait_idle_pool(c, 2)}
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: gone(victim), 5, what="the killed idle worker to be reaped")
    after = {w["pid"] for w in wait_idle_pool(c, 2, exclude={victim})}
    assert len(after - before) == 1
    assert c.result(c.submit("tests.tasks:square", args=[4]), timeout=10) == 16
    assert c.status()["failed_tasks"] == 0


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_busy_worker_killed_from_outside(make_daemon, tmp_path, sig):
    d = make_daemon(workers=1)
    c = d.client
    tid = c.submit("tests.tasks:wait_for_file", args=[str(tmp_path / "gate")], max_retries=0)
    worker = wait_status(c, tid, "running")["worker_pid"]
    os.kill(worker, sig)
    rec = c.wait([tid], timeout=10)["tasks"][0]
    assert (rec["status"], rec["reason"]) == ("failed", "worker_lost")
    assert sig.name in rec["error"]["message"] or "SIGKILL" in rec["error"]["message"]
    wait_idle_pool(c, 1, exclude={worker})


def test_stopped_worker_still_times_out(make_daemon):
    d = make_daemon(workers=1)
    c = d.client
    tid = c.submit("tests.tasks:sleep", args=[300], timeout=0.5, max_retries=0)
    worker = wait_status(c, tid, "running")["worker_pid"]
    os.kill(worker, signal.SIGSTOP)  # a frozen worker cannot cooperate with anything
    rec = c.wait([tid], timeout=10)["tasks"][0]
    assert (rec["status"], rec["reason"]) == ("failed", "timeout")
    wait_for(lambda: gone(worker), 5, what="the stopped worker to be killed and reaped")
    wait_idle_pool(c, 1, exclude={worker})


# -- the supervisor dies -----------------------------------------------------------------------------
def _set_subreaper(on: bool) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1 if on else 0, 0, 0, 0)


def _exited(pid: int) -> bool:
    """Reap `pid` if it is our (adopted) child; True once it has exited."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return True
    except ChildProcessError:
        pass  # not our child: look at it from outside
    return not alive(pid)


@pytest.mark.timeout(60)
def test_supervisor_sigkill_takes_workers_along(make_daemon, tmp_path):
    # Orphans are adopted by the nearest subreaper. Make it this test process, so the
    # workers' exit can be observed (and reaped) here instead of depending on PID 1.
    _set_subreaper(True)
    try:
        d = make_daemon(workers=3)
        c = d.client
        wait_idle_pool(c, 3)
        cmd_id = c.submit_command(["sleep", "300"])
        fn_pidfile = str(tmp_path / "child.pid")
        fn_id = c.submit("tests.tasks:command_child_pid", args=[fn_pidfile])
        cmd_worker = wait_status(c, cmd_id, "running")["worker_pid"]
        fn_worker = wait_status(c, fn_id, "running")["worker_pid"]
        fn_child = read_pid(fn_pidfile)

        def sleep_child():
            kids = [p for p in psutil.Process(cmd_worker).children() if p.name() == "sleep"]
            return kids[0].pid if kids else None

        cmd_child = wait_for(sleep_child, 10, what="the command task's sleep process")
        workers = set(d.worker_pids())
        assert {cmd_worker, fn_worker} <= workers and len(workers) == 3
        watched = workers | {cmd_child, fn_child}
        d.remember_descendants()

        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait(5)
        t0 = time.monotonic()
        wait_for(lambda: all(_exited(pid) for pid in watched), 1.5, what=f"workers and task children {sorted(watched)} to exit")
        assert time.monotonic() - t0 < 1.5
        for pid in watched:
            assert not alive(pid)
    finally:
        for pid in list(locals().get("watched", ())):
            _exited(pid)
        _set_subreaper(False)


# -- hard kill accuracy ---------------------------------------------------------------------------------
@pytest.mark.parametrize("timeout_s", [0.5, 1.0])
def test_timeout_lands_near_its_deadline(make_daemon, timeout_s):
    d = make_daemon(workers=1)
    c = d.client
    tid = c.submit("tests.tasks:sleep", args=[300], timeout=timeout_s, max_retries=0)
    rec = c.wait([tid], timeout=20)["tasks"][0]
    assert (rec["status"], rec["reason"]) == ("failed", "timeout")
    took = rec["end_time"] - rec["start_time"]
    assert timeout_s - 0.01 <= took <= timeout_s + 0.3, took
    assert rec["execution_time"] == pytest.approx(took, abs=0.05)


def test_timeout_of_command_task_kills_the_command(make_daemon):
    d = make_daemon(workers=1)
    c = d.client
    tid = c.submit_command(["sleep", "301"], timeout=0.5, max_retries=0)
    worker = wait_status(c, tid, "running")["worker_pid"]

    def child():
        try:
            kids = psutil.Process(worker).children()
        except psutil.NoSuchProcess:
            return None
        return kids[0].pid if kids else None

    sleeper = wait_for(child, 5, what="the command's process")
    rec = c.wait([tid], timeout=20)["tasks"][0]
    assert (rec["status"], rec["reason"]) == ("failed", "timeout")
    wait_for(lambda: gone(sleeper), 5, what="the timed-out command to be killed and reaped")
    wait_idle_pool(c, 1, exclude={worker})


# -- a prefetched task behind a task that dies ---------------------------------------------------
def _prefetch_setup(make_daemon, tmp_path):
    """One worker that has learnt tests.tasks:hold_then is short, now held busy by it
    with the next task prefetched behind it. Returns (daemon, held id, prefetched id, paths)."""
    d = make_daemon(workers=1)
    c = d.client
    mode, go, order = str(tmp_path / "mode"), str(tmp_path / "go"), str(tmp_path / "order")
    warm = c.submit_many([{"function": "tests.tasks:hold_then", "args": [mode, go]} for _ in range(10)])
    c.wait(warm, timeout=10)
    Path(mode).touch()
    held, nxt = c.submit_many([
        {"task_id": "held", "function": "tests.tasks:hold_then", "args": [mode, go, "exit"], "timeout": 2.0, "max_retries": 0},
        {"task_id": "next", "function": "tests.tasks:record", "args": [order, "next"], "max_retries": 0},
    ])
    wait_for(lambda: c.workers()[0].get("prefetched") == [nxt], 5, what="the next task to be prefetched")
    assert c.get(nxt)["status"] == "queued"
    return d, held, nxt, go, order


@pytest.mark.parametrize("how", ["crash", "timeout", "cancel_running"])
def test_prefetched_task_survives_the_death_of_the_task_ahead(make_daemon, tmp_path, how):
    d, held, nxt, go, order = _prefetch_setup(make_daemon, tmp_path)
    c = d.client
    worker = c.get(held)["worker_pid"]
    if how == "crash":
        Path(go).touch()
    elif how == "cancel_running":
        assert c.cancel(held)["cancelled"] == [held]
    rec = c.wait([held], timeout=10)["tasks"][0]
    expected = {"crash": ("failed", "worker_lost"), "timeout": ("failed", "timeout"), "cancel_running": ("cancelled", None)}[how]
    assert (rec["status"], rec["reason"]) == expected
    after = c.wait([nxt], timeout=10)["tasks"][0]
    assert after["status"] == "completed"
    assert after["retry_count"] == 0  # no attempt was spent on the lost reservation
    assert after["worker_pid"] != worker
    assert Path(order).read_text().split() == ["next"]  # it ran exactly once
    wait_idle_pool(c, 1, exclude={worker})


def test_cancel_of_a_prefetched_task(make_daemon, tmp_path):
    d, held, nxt, _, order = _prefetch_setup(make_daemon, tmp_path)
    c = d.client
    assert c.cancel(nxt)["cancelled"] == [nxt]
    assert c.get(nxt)["status"] == "cancelled"
    rec = c.wait([held], timeout=10)["tasks"][0]  # the held task times out (2 s): it never got its go
    assert rec["reason"] == "timeout"
    wait_idle_pool(c, 1)
    assert not os.path.exists(order)  # the cancelled prefetched task never ran
    assert c.get(nxt)["status"] == "cancelled"


def test_higher_priority_task_displaces_a_prefetched_one(make_daemon, tmp_path):
    d, held, nxt, go, order = _prefetch_setup(make_daemon, tmp_path)
    c = d.client
    wait_for(lambda: os.path.exists(go + ".started"), 5, what="the held task to really start")
    high = c.submit("tests.tasks:record", args=[order, "high"], priority="high", task_id="high")
    wait_for(lambda: c.workers()[0].get("prefetched") != [nxt], 5, what="the prefetched task to be taken back")
    Path(go).touch()  # the held task ends (it crashes, which changes nothing here)
    c.wait([held, high, nxt], timeout=10)
    assert Path(order).read_text().split() == ["high", "next"]
    assert c.get(nxt)["retry_count"] == 0


def test_task_resetting_sigusr1_does_not_poison_the_worker(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    assert c.result(c.submit("tests.tasks:reset_usr1"), timeout=10) is True
    mode, go, order = str(tmp_path / "mode"), str(tmp_path / "go"), str(tmp_path / "order")
    c.wait(c.submit_many([{"function": "tests.tasks:hold_then", "args": [mode, go]} for _ in range(10)]), timeout=10)
    Path(mode).touch()
    held, nxt = c.submit_many([
        {"task_id": "held", "function": "tests.tasks:hold_then", "args": [mode, go], "max_retries": 0, "timeout": 10},
        {"task_id": "next", "function": "tests.tasks:record", "args": [order, "next"], "max_retries": 0},
    ])
    wait_for(lambda: c.workers()[0].get("prefetched") == [nxt], 5, what="the next task to be prefetched")
    wait_for(lambda: os.path.exists(go + ".started"), 5, what="the held task to really start")
    c.submit("tests.tasks:record", args=[order, "high"], priority="high", task_id="high")
    wait_for(lambda: c.workers() and c.workers()[0].get("prefetched") != [nxt], 5, what="the prefetched task to be taken back")
    Path(go).touch()
    rec = c.wait([held, "high", nxt], timeout=10)
    by_id = {t["task_id"]: t for t in rec["tasks"]}
    assert (by_id[held]["status"], by_id[held]["reason"]) == ("completed", None), by_id[held]["error"]
    assert Path(order).read_text().split() == ["high", "next"]


def test_memory_limit(make_daemon):
    d = make_daemon(workers=2)
    c = d.client
    before = {w["pid"] for w in wait_idle_pool(c, 2)}
    tid = c.submit("tests.tasks:big_alloc", args=[300, 30], memory_limit_mb=150, max_retries=0, timeout=60)
    rec = c.wait([tid], timeout=30)["tasks"][0]
    assert (rec["status"], rec["reason"]) == ("failed", "memory_limit")
    assert "150" in rec["error"]["message"]
    _check_pool_refilled(c, 2, before, rec["worker_pid"], True)
    small = c.submit("tests.tasks:big_alloc", args=[20, 0], memory_limit_mb=150)
    assert c.result(small, timeout=20) == 20 * 1024 * 1024


def _signal_pending(pid: int, sig: int) -> bool:
    """Is `sig` pending for the (stopped) process? /proc shows process-directed ones as ShdPnd."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("ShdPnd:", "SigPnd:")) and int(line.split()[1], 16) & (1 << (sig - 1)):
            return True
    return False


def test_skip_signalled_before_the_task_starts_is_not_lost(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    mode, go, order = str(tmp_path / "mode"), str(tmp_path / "go"), str(tmp_path / "order")
    c.wait(c.submit_many([{"function": "tests.tasks:hold_then", "args": [mode, go]} for _ in range(10)]), timeout=10)
    Path(mode).touch()
    worker = wait_idle_pool(c, 1)[0]["pid"]
    os.kill(worker, signal.SIGSTOP)  # the worker gets everything below only once it runs again
    try:
        held, nxt = c.submit_many([
            {"task_id": "held", "function": "tests.tasks:hold_then", "args": [mode, go], "max_retries": 0, "timeout": 20},
            {"task_id": "next", "function": "tests.tasks:record", "args": [order, "next"], "max_retries": 0},
        ])
        wait_for(lambda: c.workers()[0].get("prefetched") == [nxt], 5, what="the next task to be prefetched")
        c.submit("tests.tasks:record", args=[order, "high"], priority="high", task_id="high")  # skip + SIGUSR1
        wait_for(lambda: _signal_pending(worker, signal.SIGUSR1), 5, what="the supervisor's SIGUSR1 to be pending")
    finally:
        os.kill(worker, signal.SIGCONT)
    try:
        taken_back = wait_for_quietly(lambda: c.workers()[0].get("prefetched") != [nxt], 3)
    finally:
        Path(go).touch()
    c.wait([held, "high", nxt], timeout=20)
    assert Path(order).read_text().split() == ["high", "next"]  # strict priority holds either way
    assert taken_back, "the prefetched task stayed reserved behind the running task"
