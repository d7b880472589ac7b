"""The client library: unreachable daemons, errors, submit_many, AsyncClient, Executor,
and where the socket is looked for."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipeline_client import AsyncClient, Client, DaemonUnreachable, Executor, PipelineError, RequestError, TaskCancelled, TaskFailed
from tests import tasks

from .conftest import REPO, wait_for
from .helpers import wait_status


# -- unreachable ----------------------------------------------------------------------------
def _stale_socket(path) -> str:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays; nobody listens
    return str(path)


@pytest.mark.parametrize("make", [AsyncClient, Client, Executor], ids=["AsyncClient", "Client", "Executor"])
def test_no_socket_file(tmp_path, make):
    path = str(tmp_path / "nothing-here.sock")
    t0 = time.monotonic()
    with pytest.raises(DaemonUnreachable) as ei:
        make(path)
    assert time.monotonic() - t0 < 5
    assert path in str(ei.value)
    assert ei.value.socket_path == path
    assert "no socket" in str(ei.value)


def test_stale_socket_file(tmp_path):
    path = _stale_socket(tmp_path / "stale.sock")
    with pytest.raises(DaemonUnreachable) as ei:
        Client(path)
    assert path in str(ei.value)
    assert "listening" in str(ei.value)


def test_path_that_is_not_a_socket(tmp_path):
    path = tmp_path / "regular-file"
    path.write_text("hi")
    with pytest.raises(DaemonUnreachable) as ei:
        Client(str(path))
    assert str(path) in str(ei.value)
    assert "not a socket" in str(ei.value)
    with pytest.raises(DaemonUnreachable) as ei:
        Client(str(tmp_path))  # a directory
    assert str(tmp_path) in str(ei.value)


def test_unreachable_is_a_pipeline_error(tmp_path):
    with pytest.raises(PipelineError):
        Client(str(tmp_path / "x.sock"))


def test_no_reply_in_time_then_late_reply_is_dropped(daemon):
    with Client(daemon.socket, timeout=0.5) as c:
        assert c.ping()["pong"]
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            t0 = time.monotonic()
            with pytest.raises(DaemonUnreachable) as ei:
                c.status()
            assert 0.4 <= time.monotonic() - t0 < 5
            assert daemon.socket in str(ei.value)
            assert "no reply" in str(ei.value)
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        # the late status reply arrives first; the client must skip it and return the ping
        reply = c.ping()
        assert reply["pong"] is True and "max_workers" not in reply


WAIT_FOREVER = """
import sys
from pipeline_client import Client, DaemonUnreachable
c = Client(sys.argv[1])
print("waiting", flush=True)
try:
    c.result(sys.argv[2])
except DaemonUnreachable as exc:
    print("unreachable:", exc, flush=True)
    sys.exit(3)
sys.exit(0)
"""


def test_wait_without_timeout_notices_a_dead_daemon(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    tid = d.client.submit("tests.tasks:wait_for_file", args=[str(tmp_path / "gate")])
    wait_status(d.client, tid, "running")
    waiter = subprocess.Popen([sys.executable, "-c", WAIT_FOREVER, d.socket, tid], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert waiter.stdout.readline().strip() == "waiting"
        d.client.ping()
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait(5)
        try:
            code = waiter.wait(5)
        except subprocess.TimeoutExpired:
            code = None
        assert code == 3, "the waiting client never noticed that the daemon died"
        assert d.socket in waiter.stdout.read()
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()


WAIT_RESULT = """
import sys
from pipeline_client import Client
c = Client(sys.argv[1])
print("waiting", flush=True)
print("result:", c.result(sys.argv[2]), flush=True)
"""


def test_wait_without_timeout_survives_a_daemon_restart(make_daemon, tmp_path):
    """The daemon is killed and started again while a client waits on a task: the
    journal keeps the task, and the client re-sends its wait to the new daemon."""
    d = make_daemon(workers=1)
    gate = tmp_path / "gate"
    tid = d.client.submit("tests.tasks:wait_for_file", args=[str(gate)])
    wait_status(d.client, tid, "running")
    waiter = subprocess.Popen([sys.executable, "-c", WAIT_RESULT, d.socket, tid], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert waiter.stdout.readline().strip() == "waiting"
        d.client.ping()
        d._client.close()
        d._client = None
        os.kill(d.pid, signal.SIGKILL)
        d.proc.wait(5)
        d.start()
        gate.write_text("")
        assert waiter.wait(20) == 0
        assert "result: True" in waiter.stdout.read()
    finally:
        if waiter.poll() is None:
            waiter.kill()
            waiter.wait()


# -- errors -----------------------------------------------------------------------------------
def test_task_failed_carries_reason_error_and_record(daemon):
    c = daemon.client
    tid = c.submit("tests.tasks:fail", args=["nope"], max_retries=0)
    with pytest.raises(TaskFailed) as ei:
        c.result(tid, timeout=10)
    exc = ei.value
    assert exc.task_id == tid
    assert exc.status == "failed"
    assert exc.reason == "error"
    assert exc.error["message"] == "nope"
    assert "ValueError" in exc.error["type"]
    assert "tests/tasks.py" in exc.traceback
    assert exc.record["task_id"] == tid
    assert tid in str(exc) and "nope" in str(exc)
    assert not isinstance(exc, TaskCancelled)


def test_task_cancelled_is_a_task_failed(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    blocker = c.submit("tests.tasks:wait_for_file", args=[str(tmp_path / "gate")])
    queued = c.submit("tests.tasks:noop")
    c.cancel(queued)
    with pytest.raises(TaskCancelled) as ei:
        c.result(queued, timeout=5)
    assert isinstance(ei.value, TaskFailed)
    assert ei.value.status == "cancelled"
    (tmp_path / "gate").write_text("")
    c.result(blocker, timeout=10)


def test_request_error_has_code_and_details(daemon):
    with pytest.raises(RequestError) as ei:
        daemon.client.get("ghost")
    assert ei.value.code == "unknown_task"
    assert ei.value.details == {"task_id": "ghost"}
    assert "[unknown_task]" in str(ei.value)


def test_bad_arguments_fail_on_the_client_side(daemon):
    c = daemon.client
    with pytest.raises(ValueError):
        c.submit(lambda: 1)
    with pytest.raises(TypeError):
        c.submit("tests.tasks:noop", colour="red")
    with pytest.raises(TypeError):
        c.submit_command("echo hi")
    with pytest.raises(TypeError):
        c.submit("tests.tasks:echo", args=[object()])
    assert c.status()["performance_metrics"]["total_tasks"] == 0


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0], ids=["nan", "inf", "negative"])
def test_timeouts_must_be_finite_seconds(daemon, bad):
    # nan used to crash inside request() (int(nan)); inf went to the daemon, which refused it.
    c = daemon.client
    tid = c.submit("tests.tasks:square", args=[3])
    for attempt in (lambda: c.wait(tid, timeout=bad), lambda: c.result(tid, timeout=bad),
                    lambda: c.call("tests.tasks:square", args=[2], wait_timeout=bad), lambda: Client(daemon.socket, timeout=bad)):
        with pytest.raises(ValueError, match=r"timeout must be a finite number of seconds >= 0"):
            attempt()
    assert c.result(tid, timeout=10) == 9  # the client is still usable
    assert c.status()["performance_metrics"]["total_tasks"] == 1  # call() sent nothing

    async def main():
        with pytest.raises(ValueError, match="finite"):
            AsyncClient(daemon.socket, timeout=bad)
        async with AsyncClient(daemon.socket) as ac:
            with pytest.raises(ValueError, match="finite"):
                await ac.wait([tid], timeout=bad)
            with pytest.raises(ValueError, match="finite"):
                await ac.result(tid, timeout=bad)

    asyncio.run(main())


def test_submit_accepts_an_importable_callable(daemon):
    c = daemon.client
    tid = c.submit(tasks.square, args=[8])
    assert c.get(tid)["function"] == "tests.tasks:square"
    assert c.result(tid, timeout=10) == 64


# -- submit_many ---------------------------------------------------------------------------------
def test_submit_many_returns_ids_in_order(daemon):
    c = daemon.client
    specs = []
    for i in range(60):
        spec = {"function": "tests.tasks:square", "args": [i]}
        if i % 3 == 0:
            spec["task_id"] = f"explicit-{59 - i}"
        specs.append(spec)
    ids = c.submit_many(specs)
    assert len(ids) == 60 and len(set(ids)) == 60
    for i, tid in enumerate(ids):
        if i % 3 == 0:
            assert tid == f"explicit-{59 - i}"
    results = c.wait(ids, timeout=20)
    assert not results["timed_out"]
    for i, tid in enumerate(ids):
        assert c.get(tid)["result"] == i * i


def test_submit_many_is_atomic(daemon):
    c = daemon.client
    before = c.status()["performance_metrics"]["total_tasks"]
    specs = [{"task_id": f"good-{i}", "function": "tests.tasks:noop"} for i in range(20)]
    specs.insert(10, {"task_id": "bad", "function": "tests.tasks:noop", "priority": "whenever"})
    with pytest.raises(RequestError) as ei:
        c.submit_many(specs)
    assert ei.value.code == "invalid_request"
    assert "bad" in ei.value.message and "priority" in ei.value.message
    assert c.status()["performance_metrics"]["total_tasks"] == before
    for i in (0, 10, 19):
        with pytest.raises(RequestError):
            c.get(f"good-{i}")
    # the same batch without the bad task goes in whole
    del specs[10]
    assert c.submit_many(specs) == [f"good-{i}" for i in range(20)]


def test_submit_many_atomic_on_dependency_errors(daemon):
    c = daemon.client
    with pytest.raises(RequestError) as ei:
        c.submit_many([
            {"task_id": "p", "function": "tests.tasks:noop"},
            {"task_id": "q", "function": "tests.tasks:noop", "dependencies": ["p", "missing"]},
        ])
    assert ei.value.code == "unknown_dependency"
    with pytest.raises(RequestError):
        c.get("p")


# -- AsyncClient -----------------------------------------------------------------------------------
def test_async_client(daemon, tmp_path):
    async def main():
        async with AsyncClient(daemon.socket) as ac:
            assert (await ac.ping())["pid"] == daemon.pid
            tid = await ac.submit("tests.tasks:square", args=[9])
            assert await ac.result(tid, timeout=10) == 81
            reply = await ac.wait([tid], timeout=5)
            assert reply["tasks"][0]["result"] == 81
            assert (await ac.get(tid))["status"] == "completed"

            ids = await ac.submit_many([{"function": "tests.tasks:add", "args": [i, 1]} for i in range(40)])
            results = await asyncio.gather(*(ac.result(i, timeout=20) for i in ids))
            assert results == [i + 1 for i in range(40)]

            # a parked wait does not hold up other requests on the same client
            blocker = await ac.submit("tests.tasks:wait_for_file", args=[str(tmp_path / "gate")])
            parked = asyncio.ensure_future(ac.result(blocker, timeout=20))
            status = await ac.status()
            assert status["running_tasks"] + status["pending_tasks"] >= 1
            assert not parked.done()
            (tmp_path / "gate").write_text("")
            assert await parked is True

            bad = await ac.submit("tests.tasks:fail", max_retries=0)
            with pytest.raises(TaskFailed) as ei:
                await ac.result(bad, timeout=10)
            assert ei.value.reason == "error"
            with pytest.raises(RequestError) as ei:
                await ac.get("ghost")
            assert ei.value.code == "unknown_task"
            slow = await ac.submit("tests.tasks:sleep", args=[30])
            with pytest.raises(TimeoutError):
                await ac.result(slow, timeout=0.1)
            assert (await ac.cancel(slow))["cancelled"] == [slow]
            qs = await ac.queue_status()
            assert "queue_size" in qs
            assert len(await ac.workers()) == 2

    asyncio.run(main())


def test_async_client_usable_across_event_loops(daemon):
    async def one(n):
        async with AsyncClient(daemon.socket) as ac:
            return await ac.result(await ac.submit("tests.tasks:square", args=[n]), timeout=10)

    assert asyncio.run(one(3)) == 9
    assert asyncio.run(one(4)) == 16


# -- Executor ----------------------------------------------------------------------------------
def test_executor_map_submit_and_errors(daemon):
    with Executor(daemon.socket, max_retries=0) as ex:
        assert isinstance(ex, cf.Executor)
        assert list(ex.map(tasks.square, range(25))) == [i * i for i in range(25)]
        fut = ex.submit(tasks.add, 2, b=40)
        assert fut.result(timeout=10) == 42
        bad = ex.submit(tasks.fail, "from executor")
        exc = bad.exception(timeout=10)
        assert isinstance(exc, TaskFailed)
        assert exc.reason == "error"
        assert exc.error["message"] == "from executor"
        futs = [ex.submit("tests.tasks:square", i) for i in range(30)]
        _, not_done = cf.wait(futs, timeout=20)
        assert not not_done
        assert sorted(f.result() for f in futs) == sorted(i * i for i in range(30))


def test_executor_task_options_apply(daemon):
    with Executor(daemon.socket, timeout=0.3, max_retries=0) as ex:
        fut = ex.submit(tasks.sleep, 30)
        exc = fut.exception(timeout=20)
        assert isinstance(exc, TaskFailed)
        assert exc.reason == "timeout"


def test_executor_shutdown_waits(daemon):
    ex = Executor(daemon.socket)
    futs = [ex.submit(tasks.sleep, 0.3) for _ in range(3)]
    ex.shutdown(wait=True)
    assert all(f.done() for f in futs)
    assert [f.result() for f in futs] == [0.3, 0.3, 0.3]
    with pytest.raises(RuntimeError):
        ex.submit(tasks.noop)



@pytest.mark.timeout(20)  # a hang here is the cancel_futures race above
def test_executor_shutdown_cancel_futures_spares_running_task(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    ex = Executor(d.socket)
    running = ex.submit(tasks.wait_for_file, str(tmp_path / "gate"))
    queued = [ex.submit(tasks.noop) for _ in range(3)]
    wait_for(lambda: any(t["status"] == "running" for t in c.list()), 10, what="the first task to run")
    try:
        ex.shutdown(wait=False, cancel_futures=True)
        assert all(f.cancelled() for f in queued)
        assert not running.cancelled()
    finally:
        (tmp_path / "gate").write_text("")  # let the running one end, so shutdown can finish
        ex.shutdown(wait=True)
    assert running.result(timeout=10) is True
    assert sorted(t["status"] for t in c.list()) == ["cancelled"] * 3 + ["completed"]


@pytest.mark.timeout(20)  # a hang here is the cancel_futures race above
def test_executor_shutdown_cancel_futures_cancels_queued(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    ex = Executor(d.socket)
    blocker = c.submit("tests.tasks:wait_for_file", args=[str(tmp_path / "gate")])  # not the executor's
    wait_status(c, blocker, "running")
    queued = [ex.submit(tasks.noop) for _ in range(3)]
    ex.shutdown(wait=True, cancel_futures=True)
    assert all(f.cancelled() for f in queued)
    assert [t["status"] for t in c.list()][1:] == ["cancelled"] * 3
    (tmp_path / "gate").write_text("")
    assert c.result(blocker, timeout=10) is True


@pytest.mark.timeout(30)
def test_executor_cancel_futures_race_does_not_hang(make_daemon, tmp_path, monkeypatch):
    import pipeline_client.executor as executor_module

    d = make_daemon(workers=1)
    c = d.client
    blocker = c.submit("tests.tasks:wait_for_file", args=[str(tmp_path / "gate")])  # keeps the executor's task queued
    wait_status(c, blocker, "running")
    try:
        hung = _race_cancel_futures(d, tmp_path, monkeypatch, executor_module)
    finally:
        (tmp_path / "gate").write_text("")
    c.result(blocker, timeout=10)
    assert not hung, "shutdown(cancel_futures=True) blocked forever"


def _race_cancel_futures(d, tmp_path, monkeypatch, executor_module) -> bool:
    ex = Executor(d.socket)
    fut = ex.submit(tasks.noop)
    original_resolve = executor_module.Executor._resolve
    original_cancel = type(fut).cancel

    def late_resolve(self, record):  # the collector sees the record only after cancel() returned True
        wait_for(lambda: fut.cancelled(), 5, what="the future to be cancelled")
        original_resolve(self, record)

    def cancel_then_let_collector_exit(self):
        ok = original_cancel(self)
        ex._collector.join(5)  # it resolved the record, found no futures left, and left
        # ZeroMQ's reaper thread tears the closed inproc pipe down asynchronously; there is
        # no event to wait on for that, so give it a moment (this forces the race, it does
        # not synchronise the test).
        time.sleep(0.3)
        return ok

    monkeypatch.setattr(executor_module.Executor, "_resolve", late_resolve)
    monkeypatch.setattr(type(fut), "cancel", cancel_then_let_collector_exit)
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
    stopper.start()
    stopper.join(3)  # without the bug, shutdown returns in milliseconds
    hung = stopper.is_alive()  # if so, it stays blocked: a daemon thread, abandoned at exit
    assert fut.cancelled()
    return hung


def test_executor_future_cancel(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    with Executor(d.socket) as ex:
        running = ex.submit(tasks.wait_for_file, str(tmp_path / "gate"))
        wait_for(lambda: any(t["status"] == "running" for t in c.list()), 10, what="the first task to run")
        queued = ex.submit(tasks.noop)
        assert queued.cancel() is True
        assert queued.cancelled()
        assert running.cancel() is False  # it started: too late, as for any concurrent.futures future
        (tmp_path / "gate").write_text("")
        assert running.result(timeout=10) is True
    assert [t["status"] for t in c.list()] == ["completed", "cancelled"]


@pytest.mark.timeout(20)
def test_executor_shutdown_twice(daemon):
    with Executor(daemon.socket) as ex:
        assert ex.submit(tasks.square, 3).result(timeout=10) == 9
        ex.shutdown(wait=True)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(tasks.noop)


def test_executor_with_many_tasks_in_flight(daemon):
    with Executor(daemon.socket) as ex:
        futs = [ex.submit(tasks.add, i, i) for i in range(300)]
        assert [f.result(timeout=30) for f in futs] == [2 * i for i in range(300)]


# -- where the socket is -----------------------------------------------------------------------------
def test_pipelined_socket_env_is_respected(daemon, monkeypatch):
    monkeypatch.setenv("PIPELINED_SOCKET", daemon.socket)
    with Client() as c:
        assert c.socket_path == daemon.socket
        assert c.ping()["pid"] == daemon.pid

    async def ping():
        async with AsyncClient() as ac:
            return (await ac.ping())["pid"]

    assert asyncio.run(ping()) == daemon.pid
    with Executor() as ex:
        assert ex.submit(tasks.square, 5).result(timeout=10) == 25


def test_explicit_ipc_endpoint_accepted(daemon):
    with Client("ipc://" + daemon.socket) as c:
        assert c.ping()["pid"] == daemon.pid



def test_pipelined_socket_env_with_ipc_prefix(daemon, monkeypatch):
    monkeypatch.setenv("PIPELINED_SOCKET", "ipc://" + daemon.socket)
    with Client() as c:
        assert c.ping()["pid"] == daemon.pid


def test_pipelined_socket_env_pointing_nowhere(tmp_path, monkeypatch):
    path = str(tmp_path / "elsewhere.sock")
    monkeypatch.setenv("PIPELINED_SOCKET", path)
    with pytest.raises(DaemonUnreachable) as ei:
        Client()
    assert path in str(ei.value)


def test_runtime_dir_rule_when_no_socket_env(daemon, monkeypatch):
    monkeypatch.delenv("PIPELINED_SOCKET", raising=False)
    monkeypatch.setenv("PIPELINED_RUNTIME_DIR", str(daemon.runtime_dir))
    with Client() as c:
        assert c.ping()["pid"] == daemon.pid


def test_explicit_socket_wins_over_env(daemon, monkeypatch, tmp_path):
    monkeypatch.setenv("PIPELINED_SOCKET", str(tmp_path / "wrong.sock"))
    with Client(daemon.socket) as c:
        assert c.ping()["pid"] == daemon.pid


# -- pipelinectl, the minimal part of this issue --------------------------------------------------------
def _ctl(*args, env=None):
    cmd = [sys.executable, "-c", "import sys; from pipeline_client.cli import main; sys.exit(main())", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=30, env=env, check=False)


def test_pipelinectl_ping_and_status(daemon):
    proc = _ctl("--socket", daemon.socket, "ping")
    assert proc.returncode == 0, proc.stderr
    assert daemon.socket in proc.stdout
    proc = _ctl("--socket", daemon.socket, "--json", "status")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["max_workers"] == 2


def test_pipelinectl_unreachable_exit_3(tmp_path):
    path = str(tmp_path / "none.sock")
    proc = _ctl("--socket", path, "ping")
    assert proc.returncode == 3
    assert path in proc.stderr
    assert "Traceback" not in proc.stderr


def test_pipelinectl_wait_exit_code(daemon):
    c = daemon.client
    good = c.submit("tests.tasks:noop")
    bad = c.submit("tests.tasks:fail", max_retries=0)
    c.wait([good, bad], timeout=10)
    assert _ctl("--socket", daemon.socket, "wait", good).returncode == 0
    assert _ctl("--socket", daemon.socket, "wait", bad).returncode == 1
    wait_status(c, bad, "failed")
