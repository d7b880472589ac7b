"""Hygiene: many kills and re-forks leak nothing (fds, zombies, processes), and an idle
supervisor sleeps in its poll instead of spinning."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import psutil
import pytest

from .conftest import wait_for
from .helpers import alive, wait_idle_pool, wait_status

STORM_TASKS = 1000
# A sleep argument nobody else uses (other test runs may share the machine), to find strays in ps.
SLEEP_MARK = f"300.{uuid.uuid4().int % 10**9:09d}"


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def zombie_children(pid: int) -> list[int]:
    out = []
    for p in psutil.Process(pid).children():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return out


def stray_sleeps() -> list[str]:
    ps = subprocess.run(["ps", "-eo", "pid,stat,args"], capture_output=True, text=True, check=True).stdout
    return [line for line in ps.splitlines() if f"sleep {SLEEP_MARK}" in line]


def cpu_s(pid: int) -> float:
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


@pytest.mark.timeout(120)
def test_thousand_kills_leak_nothing(make_daemon):
    workers = 4
    d = make_daemon(workers=workers)
    c = d.client
    start_pids = {w["pid"] for w in wait_idle_pool(c, workers)}
    c.ping()
    fds_before = fd_count(d.pid)
    forks_before = c.status()["performance_metrics"]["worker_forks"]

    tasks = []
    for i in range(STORM_TASKS):
        if i % 2:
            tasks.append({"command": ["sleep", SLEEP_MARK], "timeout": 0.02, "max_retries": 0})
        else:
            tasks.append({"function": "tests.tasks:sleep", "args": [300], "timeout": 0.02, "max_retries": 0})
    t0 = time.monotonic()
    ids = c.submit_many(tasks)
    reply = c.wait(ids, timeout=90)
    elapsed = time.monotonic() - t0
    assert not reply["timed_out"], f"{len(reply['pending'])} tasks still pending after 90 s"
    reasons = {(t["status"], t["reason"]) for t in reply["tasks"]}
    assert reasons == {("failed", "timeout")}
    assert len(reply["tasks"]) == STORM_TASKS

    final = wait_idle_pool(c, workers, timeout=10)
    assert len(final) == workers
    assert not ({w["pid"] for w in final} & start_pids)
    st = c.status()
    assert st["performance_metrics"]["worker_forks"] - forks_before == STORM_TASKS
    assert st["failed_tasks"] == STORM_TASKS
    assert st["workers"] == {"idle": workers}

    # the kernel side settles asynchronously (ZeroMQ closes dead peers' fds on its own thread)
    wait_for(lambda: fd_count(d.pid) <= fds_before + 2, 10,
             what=f"supervisor fds back to {fds_before} (now {fd_count(d.pid)}: {sorted(os.listdir(f'/proc/{d.pid}/fd'))})")
    assert len(psutil.Process(d.pid).children()) == workers
    wait_for(lambda: not zombie_children(d.pid), 5, what="no zombie children")
    wait_for(lambda: not stray_sleeps(), 5, what=f"no stray sleeps: {stray_sleeps()}")
    # and it still works
    assert c.result(c.submit("tests.tasks:square", args=[12]), timeout=10) == 144
    print(f"{STORM_TASKS} kills and re-forks in {elapsed:.1f}s")


def test_cancel_storm_leaks_nothing(make_daemon):
    d = make_daemon(workers=2)
    c = d.client
    wait_idle_pool(c, 2)
    c.ping()
    fds_before = fd_count(d.pid)
    for _ in range(50):
        tid = c.submit_command(["sleep", SLEEP_MARK])
        wait_status(c, tid, "running")
        assert c.cancel(tid)["cancelled"] == [tid]
    wait_idle_pool(c, 2)
    assert {t["status"] for t in c.list()} == {"cancelled"}
    wait_for(lambda: fd_count(d.pid) <= fds_before + 2, 10, what="fds back to the start level")
    wait_for(lambda: not zombie_children(d.pid), 5, what="no zombie children")
    wait_for(lambda: not stray_sleeps(), 5, what="no stray sleeps")


def _idle_cpu(pid: int, seconds: float = 1.0) -> float:
    before = cpu_s(pid)
    time.sleep(seconds)  # measuring what happens while nothing does: the sleep is the point
    return cpu_s(pid) - before


def test_idle_supervisor_does_not_spin(daemon):
    c = daemon.client
    wait_idle_pool(c, 2)
    used = _idle_cpu(daemon.pid)
    assert used < 0.05, f"idle supervisor used {used:.3f}s CPU in 1s"
    for pid in daemon.worker_pids():
        assert _idle_cpu(pid, 0.3) < 0.03


def test_supervisor_idle_with_running_task_and_parked_wait(daemon, tmp_path):
    """Far deadlines (a 1-hour timeout, a 1-hour wait) must not make the loop tick."""
    c = daemon.client
    tid = c.submit("tests.tasks:wait_for_file", args=[str(tmp_path / "gate"), 3600], timeout=3600)
    wait_status(c, tid, "running")
    from pipeline_client import Client

    with Client(daemon.socket) as waiter:
        from pipeline_protocol import encode

        waiter._sock.send_multipart([b"", encode({"v": 1, "op": "wait", "rid": 1, "task_ids": [tid], "timeout": 3600})])
        c.ping()
        used = _idle_cpu(daemon.pid)
        assert used < 0.05, f"supervisor used {used:.3f}s CPU in 1s with only far deadlines"
        Path(tmp_path / "gate").touch()
        assert c.result(tid, timeout=10) is True


def _bg_pid(pidfile: Path) -> int:
    wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), 10, what="the background job's pid")
    return int(pidfile.read_text())


@pytest.mark.timeout(60)
def test_a_recycled_workers_group_leftovers_die_with_it(make_daemon, tmp_path):
    """A command's background job stays in its worker's process group after the
    command ends; a worker that exits cleanly (recycled) takes it along."""
    d = make_daemon(workers=1, args=("--max-tasks-per-worker", "1"))
    c = d.client
    pidfile = tmp_path / "bg.pid"
    worker = c.workers()[0]["pid"]
    tid = c.submit_command(["sh", "-c", f"sleep 313 >/dev/null 2>&1 & echo $! > {pidfile}"], max_retries=0)
    assert c.result(tid, timeout=20)["exit_code"] == 0
    bg = _bg_pid(pidfile)
    wait_for(lambda: worker not in [w["pid"] for w in c.workers()], 10, what="the worker to be recycled")
    wait_for(lambda: not alive(bg), 10, what="the background job to die with its worker")


@pytest.mark.timeout(60)
def test_shutdown_kills_strays_that_escaped_their_worker_without_a_trace(make_daemon, tmp_path):
    """setsid + an empty environment: out of the worker's group and without the task
    tag, re-parented to the supervisor (the subreaper). Shutdown leaves nothing."""
    d = make_daemon(workers=1)
    c = d.client
    pidfile = tmp_path / "stray.pid"
    tid = c.submit_command(["sh", "-c", f"setsid env -i sleep 314 >/dev/null 2>&1 & echo $! > {pidfile}"], max_retries=0)
    assert c.result(tid, timeout=20)["exit_code"] == 0
    stray = _bg_pid(pidfile)
    wait_for(lambda: alive(stray) and psutil.Process(stray).ppid() == d.proc.pid, 10, what="the stray to be re-parented to the supervisor")
    d.stop()
    wait_for(lambda: not alive(stray), 10, what="the stray to be killed at shutdown")


@pytest.mark.timeout(60)
def test_restart_after_kill_9_kills_what_the_dead_daemons_tasks_left(make_daemon, tmp_path):
    """A task's setsid grandchild outlives a kill -9 of the supervisor (its workers
    die with it, the grandchild is in its own session): the next start on the same
    runtime dir finds it by the environment it inherited and kills it."""
    d = make_daemon(workers=1)
    pidfile = tmp_path / "escaped.pid"
    d.client.submit_command(["sh", "-c", f"setsid sleep 315 >/dev/null 2>&1 & echo $! > {pidfile}; sleep 300"], max_retries=0)
    escaped = _bg_pid(pidfile)
    d.proc.kill()
    d.proc.wait(10)
    time.sleep(0.5)
    assert alive(escaped)  # nothing else would ever stop it
    d.start(wait=False)
    d.wait_ready(idle=False)
    wait_for(lambda: not alive(escaped), 10, what="the restarted daemon to kill the escaped grandchild")
    assert "left running by an earlier run" in d.log()
