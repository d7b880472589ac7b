"""End-to-end tests against real daemons: every control op, scheduling seen from outside,
command and function tasks, errors from user code, size limits, titles, sockets."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from pipeline_client import Client, Ref, RequestError, TaskCancelled, TaskFailed
from pipeline_client.errors import DaemonUnreachable
from pipeline_protocol import decode, encode
from pipeline_protocol.codec import MAX_PAYLOAD_BYTES

from .conftest import REPO, wait_for
from .helpers import alive, cmdline, gone, wait_idle_pool, wait_status
from .test_cli import ctl

SEED_RECORD_FIELDS = {
    "task_id", "status", "result", "error", "reason", "execution_time", "start_time", "end_time",
    "retry_count", "priority", "dependencies", "task_type", "worker_pid",
}
SEED_STATUS_FIELDS = {
    "max_workers", "max_concurrent_tasks", "pending_tasks", "running_tasks", "completed_tasks",
    "failed_tasks", "performance_metrics",
}


def gate(tmp_path, name="gate"):
    return str(tmp_path / name)


def total_tasks(c) -> int:
    return c.status()["performance_metrics"]["total_tasks"]


# -- ping, submit, get ------------------------------------------------------------------
def test_ping(daemon):
    reply = daemon.client.ping()
    assert reply["ok"] is True and reply["pong"] is True
    assert reply["pid"] == daemon.pid
    assert isinstance(reply["version"], str) and reply["version"]


def test_submit_single_get_and_record_fields(daemon):
    c = daemon.client
    tid = c.submit("tests.tasks:square", args=[7], task_id="sq", priority="high", task_type="math")
    assert tid == "sq"
    assert c.result(tid, timeout=10) == 49
    rec = c.get(tid)
    assert SEED_RECORD_FIELDS <= set(rec)
    assert rec["status"] == "completed"
    assert rec["result"] == 49
    assert rec["error"] is None and rec["reason"] is None
    assert rec["retry_count"] == 0
    assert rec["priority"] == 10
    assert rec["task_type"] == "math"
    assert rec["dependencies"] == []
    assert rec["execution_time"] >= 0
    assert rec["start_time"] <= rec["end_time"]
    assert abs(rec["end_time"] - time.time()) < 60
    assert rec["worker_pid"] in set(daemon.worker_pids()) | set(daemon.descendants)


def test_submit_generated_ids_are_unique(daemon):
    c = daemon.client
    ids = [c.submit("tests.tasks:noop") for _ in range(20)]
    assert len(set(ids)) == 20
    assert all(c.result(i, timeout=10) is None for i in ids)


def test_submit_batch_with_refs(daemon):
    c = daemon.client
    ids = c.submit_many([
        {"task_id": "a", "function": "tests.tasks:square", "args": [4]},
        {"task_id": "b", "function": "tests.tasks:add", "args": [Ref("a"), 1]},
        {"task_id": "c", "function": "tests.tasks:echo", "args": [Ref("b")], "kwargs": {"sq": Ref("a"), "nested": [Ref("b")]}},
    ])
    assert ids == ["a", "b", "c"]
    assert c.result("c", timeout=10) == {"args": [17], "kwargs": {"sq": 16, "nested": [17]}}
    assert c.get("b")["dependencies"] == ["a"]
    assert sorted(c.get("c")["dependencies"]) == ["a", "b"]


def test_submit_duplicate_and_unknown_dependency_rejected(daemon):
    c = daemon.client
    c.submit("tests.tasks:noop", task_id="dup")
    before = total_tasks(c)
    with pytest.raises(RequestError) as ei:
        c.submit("tests.tasks:noop", task_id="dup")
    assert ei.value.code == "duplicate_task"
    with pytest.raises(RequestError) as ei:
        c.submit("tests.tasks:noop", dependencies=["ghost"])
    assert ei.value.code == "unknown_dependency"
    assert "ghost" in ei.value.message
    with pytest.raises(RequestError) as ei:
        c.submit_many([
            {"task_id": "x", "function": "tests.tasks:noop", "dependencies": ["y"]},
            {"task_id": "y", "function": "tests.tasks:noop", "dependencies": ["x"]},
        ])
    assert ei.value.code == "dependency_cycle"
    with pytest.raises(RequestError) as ei:
        c.request("submit", task={"function": "tests.tasks:noop", "timeout": "soon"})
    assert ei.value.code == "invalid_request"
    assert "timeout" in ei.value.message
    assert total_tasks(c) == before


def test_get_unknown_task(daemon):
    with pytest.raises(RequestError) as ei:
        daemon.client.get("no-such-task")
    assert ei.value.code == "unknown_task"
    assert "no-such-task" in ei.value.message


# -- list ---------------------------------------------------------------------------------
def test_list_with_state_and_workflow_filters(daemon):
    c = daemon.client
    ids = c.submit_many([
        {"task_id": "w1-ok", "function": "tests.tasks:noop", "workflow": "w1"},
        {"task_id": "w1-bad", "function": "tests.tasks:fail", "workflow": "w1", "max_retries": 0},
        {"task_id": "w2-ok", "function": "tests.tasks:noop", "workflow": "w2"},
        {"task_id": "loose", "function": "tests.tasks:noop"},
    ])
    c.wait(ids, timeout=10)
    names = lambda tasks: sorted(t["task_id"] for t in tasks)
    assert names(c.list()) == sorted(ids)
    assert names(c.list(workflow="w1")) == ["w1-bad", "w1-ok"]
    assert names(c.list(state="failed")) == ["w1-bad"]
    assert names(c.list(state="completed")) == ["loose", "w1-ok", "w2-ok"]
    assert names(c.list(state="completed", workflow="w2")) == ["w2-ok"]
    assert c.list(state="running") == []
    assert c.list(workflow="nope") == []
    assert len(c.list(limit=2)) == 2
    assert [t["task_id"] for t in c.list(limit=2)] == ids[-2:]  # the newest two, oldest first
    assert [t["task_id"] for t in c.list()] == ids  # oldest first
    with pytest.raises(RequestError) as ei:
        c.list(state="sleeping")
    assert ei.value.code == "invalid_request"


# -- wait, result ----------------------------------------------------------------------------
def test_wait_all_any_and_timeout(daemon, tmp_path):
    c = daemon.client
    fast = c.submit("tests.tasks:noop")
    slow = c.submit("tests.tasks:wait_for_file", args=[gate(tmp_path)])
    reply = c.wait([fast], timeout=10)
    assert [t["task_id"] for t in reply["tasks"]] == [fast]
    assert reply["pending"] == [] and reply["timed_out"] is False

    reply = c.wait([fast, slow], timeout=10, return_when="any")
    assert [t["task_id"] for t in reply["tasks"]] == [fast]
    assert reply["pending"] == [slow]
    assert reply["timed_out"] is False

    t0 = time.monotonic()
    reply = c.wait([slow], timeout=0.3)
    assert time.monotonic() - t0 >= 0.25
    assert reply["timed_out"] is True
    assert reply["pending"] == [slow] and reply["tasks"] == []

    reply = c.wait([slow], timeout=0)
    assert reply["timed_out"] is True

    Path(gate(tmp_path)).touch()
    reply = c.wait([fast, slow], timeout=10)
    assert {t["task_id"] for t in reply["tasks"]} == {fast, slow}
    assert all(t["status"] == "completed" for t in reply["tasks"])
    assert reply["timed_out"] is False


def test_wait_any_returns_when_first_ends(daemon, tmp_path):
    c = daemon.client
    blocked = c.submit("tests.tasks:wait_for_file", args=[gate(tmp_path)])
    quick = c.submit("tests.tasks:sleep", args=[0.2])
    reply = c.wait([blocked, quick], timeout=20, return_when="any")
    assert [t["task_id"] for t in reply["tasks"]] == [quick]
    assert reply["pending"] == [blocked]
    Path(gate(tmp_path)).touch()
    assert c.result(blocked, timeout=10) is True


def test_wait_unknown_task_is_an_error(daemon):
    with pytest.raises(RequestError) as ei:
        daemon.client.wait(["ghost"], timeout=1)
    assert ei.value.code == "unknown_task"


def test_result_success_failure_and_timeout(daemon, tmp_path):
    c = daemon.client
    assert c.result(c.submit("tests.tasks:add", args=[2, 3]), timeout=10) == 5
    bad = c.submit("tests.tasks:fail", args=["kaput"], max_retries=0)
    with pytest.raises(TaskFailed) as ei:
        c.result(bad, timeout=10)
    assert ei.value.reason == "error"
    assert ei.value.error["message"] == "kaput"
    assert "ValueError" in ei.value.error["type"]
    assert "tests/tasks.py" in ei.value.error["traceback"]
    assert "raise ValueError" in ei.value.traceback
    blocked = c.submit("tests.tasks:wait_for_file", args=[gate(tmp_path)])
    with pytest.raises(TimeoutError):
        c.result(blocked, timeout=0.2)
    Path(gate(tmp_path)).touch()
    assert c.result(blocked, timeout=10) is True


def test_many_parked_waits_answered(daemon, tmp_path):
    """Several peers park waits on the same task; every one is answered when it ends."""
    c = daemon.client
    blocked = c.submit("tests.tasks:wait_for_file", args=[gate(tmp_path)])
    ctx = zmq.Context.instance()
    peers = []
    try:
        for i in range(5):
            peer = ctx.socket(zmq.DEALER)
            peer.setsockopt(zmq.LINGER, 0)
            peer.connect("ipc://" + daemon.socket)
            peer.send_multipart([b"", encode({"v": 1, "op": "wait", "rid": 1000 + i, "task_ids": [blocked], "timeout": 30})])
            peers.append(peer)
        c.ping()  # a round trip: gives the daemon every chance to answer early, were it going to
        assert not any(peer.poll(0) for peer in peers), "a wait was answered before its task ended"
        Path(gate(tmp_path)).touch()
        for i, peer in enumerate(peers):
            assert peer.poll(10_000), "a parked wait was never answered"
            reply = decode(peer.recv_multipart()[-1])
            assert reply["ok"] and reply["rid"] == 1000 + i
            assert reply["tasks"][0]["status"] == "completed"
    finally:
        for peer in peers:
            peer.close(linger=0)


def test_concurrent_clients_get_their_own_replies(daemon):
    errors = []

    def client_thread(n):
        try:
            with Client(daemon.socket) as c:
                for i in range(40):
                    tid = c.submit("tests.tasks:add", args=[n, i])
                    assert c.result(tid, timeout=20) == n + i
                    assert c.get(tid)["result"] == n + i
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(f"client {n}: {exc!r}")

    threads = [threading.Thread(target=client_thread, args=(1000 * n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert daemon.client.status()["completed_tasks"] == 8 * 40


# -- cancel ------------------------------------------------------------------------------------
def test_cancel_queued_task_and_its_dependents(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    blocker = c.submit("tests.tasks:wait_for_file", args=[gate(tmp_path)])
    wait_status(c, blocker, "running")
    queued = c.submit("tests.tasks:record", args=[str(tmp_path / "ran"), "queued"])
    child = c.submit("tests.tasks:noop", dependencies=[queued])
    assert c.get(queued)["status"] == "queued"
    reply = c.cancel(queued)
    assert reply["cancelled"] == [queued]
    assert reply["status"] == "cancelled"
    rec = c.get(queued)
    assert rec["status"] == "cancelled"
    assert rec["start_time"] is None
    child_rec = c.get(child)
    assert (child_rec["status"], child_rec["reason"]) == ("failed", "upstream_failed")
    with pytest.raises(TaskCancelled):
        c.result(queued, timeout=5)
    # cancelling again is harmless and says nothing was cancelled
    assert c.cancel(queued)["cancelled"] == []
    Path(gate(tmp_path)).touch()
    assert c.result(blocker, timeout=10) is True
    assert not (tmp_path / "ran").exists()  # the cancelled task never ran


def test_cancel_running_kills_worker_and_refills(daemon, tmp_path):
    c = daemon.client
    before = {w["pid"] for w in wait_idle_pool(c, 2)}
    tid = c.submit("tests.tasks:sleep", args=[60], max_retries=3)
    rec = wait_status(c, tid, "running")
    victim = rec["worker_pid"]
    assert victim in before
    reply = c.cancel(tid)
    assert reply["cancelled"] == [tid]
    rec = c.get(tid)
    assert rec["status"] == "cancelled"
    assert rec["retry_count"] == 0  # a cancel is not retried
    assert rec["error"]["type"] == "Cancelled"
    wait_for(lambda: gone(victim), 5, what="the cancelled task's worker to be reaped")
    workers = wait_idle_pool(c, 2, exclude={victim})
    assert len({w["pid"] for w in workers} - before) == 1
    assert c.result(c.submit("tests.tasks:square", args=[3]), timeout=10) == 9
    assert c.get(tid)["status"] == "cancelled"  # still: the kill did not trigger a retry


def test_cancel_unknown_task(daemon):
    with pytest.raises(RequestError) as ei:
        daemon.client.cancel("ghost")
    assert ei.value.code == "unknown_task"


def test_cancel_workflow(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    ids = c.submit_many([
        {"task_id": f"wf-{i}", "function": "tests.tasks:wait_for_file", "args": [gate(tmp_path)], "workflow": "wf"} for i in range(3)
    ])
    wait_status(c, ids[0], "running")
    reply = c.cancel(workflow="wf")
    assert sorted(reply["cancelled"]) == sorted(ids)
    assert {t["status"] for t in c.list(workflow="wf")} == {"cancelled"}
    wait_idle_pool(c, 1)


# -- status views ---------------------------------------------------------------------------------
def test_status_fields_and_counts(make_daemon, tmp_path):
    d = make_daemon(workers=2)
    c = d.client
    st = c.status()
    assert SEED_STATUS_FIELDS <= set(st)
    assert st["max_workers"] == 2
    assert st["max_concurrent_tasks"] == 2
    assert (st["pending_tasks"], st["running_tasks"], st["completed_tasks"], st["failed_tasks"]) == (0, 0, 0, 0)
    assert isinstance(st["performance_metrics"], dict)

    ok_id = c.submit("tests.tasks:noop")
    bad_id = c.submit("tests.tasks:fail", max_retries=0)
    c.wait([ok_id, bad_id], timeout=10)
    running = c.submit("tests.tasks:wait_for_file", args=[gate(tmp_path)])
    wait_status(c, running, "running")
    pending = c.submit("tests.tasks:noop", dependencies=[running])
    st = c.status()
    assert st["completed_tasks"] == 1
    assert st["failed_tasks"] == 1
    assert st["running_tasks"] == 1
    assert st["pending_tasks"] == 1
    assert st["performance_metrics"]["total_tasks"] == 4
    Path(gate(tmp_path)).touch()
    c.wait([running, pending], timeout=10)
    st = c.status()
    assert (st["completed_tasks"], st["running_tasks"], st["pending_tasks"]) == (3, 0, 0)


def test_queue_status_counts_by_priority(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    blocker = c.submit("tests.tasks:wait_for_file", args=[gate(tmp_path)])
    wait_status(c, blocker, "running")
    for prio in ("high", "high", "medium", "low", 50, -50):
        c.submit("tests.tasks:noop", priority=prio)
    qs = c.queue_status()
    assert qs["queue_size"] == 6
    assert qs["job_counts"] == {"HIGH": 3, "MEDIUM": 1, "LOW": 2}
    Path(gate(tmp_path)).touch()
    wait_for(lambda: c.queue_status()["queue_size"] == 0, 10, what="the queue to drain")


def test_workers_view(daemon, tmp_path):
    c = daemon.client
    workers = wait_idle_pool(c, 2)
    assert sorted(w["slot"] for w in workers) == [0, 1]
    assert all(w["task_id"] is None for w in workers)
    tid = c.submit("tests.tasks:wait_for_file", args=[gate(tmp_path)])
    rec = wait_status(c, tid, "running")
    busy = [w for w in c.workers() if w["state"] == "busy"]
    assert len(busy) == 1
    assert busy[0]["task_id"] == tid
    assert busy[0]["pid"] == rec["worker_pid"]
    Path(gate(tmp_path)).touch()
    c.result(tid, timeout=10)


def test_workflow_status(daemon):
    c = daemon.client
    ids = c.submit_many([
        {"task_id": "f1", "function": "tests.tasks:noop", "workflow": "flow"},
        {"task_id": "f2", "function": "tests.tasks:fail", "workflow": "flow", "max_retries": 0},
        {"task_id": "f3", "function": "tests.tasks:noop", "workflow": "flow", "dependencies": ["f2"]},
    ])
    c.wait(ids, timeout=10)
    ws = c.workflow_status("flow")
    assert ws["workflow"] == "flow"
    assert ws["total_tasks"] == 3
    assert ws["status_counts"] == {"completed": 1, "failed": 2}
    assert ws["completed"] is True
    empty = c.workflow_status("nothing")
    assert empty["total_tasks"] == 0


def test_shutdown_stops_daemon_and_workers(make_daemon):
    d = make_daemon(workers=2)
    workers = d.worker_pids()
    reply = d.client.shutdown()
    assert reply["ok"] is True
    assert d.proc.wait(10) == 0
    assert not os.path.exists(d.socket)
    wait_for(lambda: all(gone(pid) for pid in workers), 5, what=f"workers {workers} to exit")
    with pytest.raises(DaemonUnreachable) as ei:
        Client(d.socket)
    assert d.socket in str(ei.value)


# -- scheduling seen from outside ----------------------------------------------------------------
def test_priorities_end_to_end_with_one_worker(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    order = str(tmp_path / "order")
    blocker = c.submit("tests.tasks:wait_for_file", args=[gate(tmp_path)])
    wait_status(c, blocker, "running")
    plan = [("low1", "low"), ("med1", "medium"), ("low2", "low"), ("high1", "high"), ("int50", 50), ("med2", None), ("high2", "high"), ("neg", -3)]
    ids = [c.submit("tests.tasks:record", args=[order, name], priority=prio) for name, prio in plan]
    Path(gate(tmp_path)).touch()
    c.wait(ids, timeout=20)
    ran = Path(order).read_text().split()
    assert ran == ["int50", "high1", "high2", "med1", "med2", "neg", "low1", "low2"]


def test_dependency_runs_after_upstream_and_failure_propagates(daemon, tmp_path):
    c = daemon.client
    order = str(tmp_path / "order")
    ids = c.submit_many([
        {"task_id": "first", "function": "tests.tasks:sleep", "args": [0.2]},
        {"task_id": "second", "function": "tests.tasks:record", "args": [order, "second"], "dependencies": ["first"]},
        {"task_id": "root", "function": "tests.tasks:fail", "max_retries": 0},
        {"task_id": "down1", "function": "tests.tasks:noop", "args": [], "dependencies": ["root"]},
        {"task_id": "down2", "function": "tests.tasks:add", "args": [Ref("down1"), 1]},
        {"task_id": "sibling", "function": "tests.tasks:record", "args": [order, "sibling"]},
    ])
    c.wait(ids, timeout=20)
    recs = {r["task_id"]: r for r in c.list()}
    assert recs["second"]["status"] == "completed"
    assert recs["second"]["start_time"] >= recs["first"]["end_time"]
    assert (recs["down1"]["status"], recs["down1"]["reason"]) == ("failed", "upstream_failed")
    assert (recs["down2"]["status"], recs["down2"]["reason"]) == ("failed", "upstream_failed")
    assert recs["down1"]["start_time"] is None
    assert "root" in recs["down1"]["error"]["message"]
    assert recs["sibling"]["status"] == "completed"
    with pytest.raises(TaskFailed) as ei:
        c.result("down2", timeout=1)
    assert ei.value.reason == "upstream_failed"


def test_retries_with_flaky_task(daemon, tmp_path):
    c = daemon.client
    ok_id = c.submit("tests.tasks:flaky", args=[str(tmp_path / "n1"), 2], max_retries=2, retry_backoff=0.01)
    assert c.result(ok_id, timeout=20) == 3
    rec = c.get(ok_id)
    assert rec["retry_count"] == 2
    assert rec["status"] == "completed" and rec["error"] is None

    bad_id = c.submit("tests.tasks:flaky", args=[str(tmp_path / "n2"), 5], max_retries=1, retry_backoff=0.01)
    with pytest.raises(TaskFailed) as ei:
        c.result(bad_id, timeout=20)
    assert ei.value.reason == "error"
    assert ei.value.record["retry_count"] == 1
    assert ei.value.error["message"] == "attempt 2 fails"
    assert (tmp_path / "n2").read_text() == "2"


def test_retry_backoff_is_respected(daemon, tmp_path):
    c = daemon.client
    tid = c.submit("tests.tasks:flaky", args=[str(tmp_path / "n"), 1], max_retries=1, retry_backoff=0.5)
    t0 = time.monotonic()
    assert c.result(tid, timeout=20) == 2
    assert time.monotonic() - t0 >= 0.45  # coarse: the retry waited for its backoff


# -- command tasks --------------------------------------------------------------------------------
def test_command_task_with_cwd_env_and_output(daemon, tmp_path):
    c = daemon.client
    tid = c.submit_command(["sh", "-c", 'pwd; echo "value=$FOO"; echo oops >&2'], cwd=str(tmp_path), env={"FOO": "bar baz"})
    result = c.result(tid, timeout=10)
    assert result["exit_code"] == 0
    lines = result["stdout"].splitlines()
    assert os.path.realpath(lines[0]) == os.path.realpath(tmp_path)
    assert lines[1] == "value=bar baz"
    assert result["stderr"].strip() == "oops"
    rec = c.get(tid)
    assert rec["command"] == ["sh", "-c", 'pwd; echo "value=$FOO"; echo oops >&2']


def test_command_nonzero_exit_is_a_failure(daemon):
    c = daemon.client
    tid = c.submit_command(["sh", "-c", "echo partial; echo bad >&2; exit 3"], max_retries=0)
    with pytest.raises(TaskFailed) as ei:
        c.result(tid, timeout=10)
    assert ei.value.reason == "error"
    rec = ei.value.record
    assert rec["result"]["exit_code"] == 3
    assert rec["result"]["stdout"].strip() == "partial"
    assert rec["result"]["stderr"].strip() == "bad"
    assert "3" in rec["error"]["message"]


def test_command_killed_by_signal_is_a_failure(daemon):
    c = daemon.client
    tid = c.submit_command(["sh", "-c", "kill -TERM $$"], max_retries=0)
    with pytest.raises(TaskFailed) as ei:
        c.result(tid, timeout=10)
    assert ei.value.record["result"]["exit_code"] == -signal.SIGTERM
    assert "SIGTERM" in ei.value.error["message"]


def test_command_with_a_nul_byte_is_refused_at_submit_and_no_worker_dies(daemon):
    c = daemon.client
    pids = sorted(w["pid"] for w in c.workers())
    with pytest.raises(RequestError) as ei:
        c.submit_command(["echo", "a\x00b"], task_id="nul")
    assert ei.value.code == "invalid_request" and "command" in str(ei.value)
    with pytest.raises(RequestError):
        c.get("nul")  # nothing was accepted
    # A function task's label goes into the worker's title too: a NUL there is harmless.
    assert c.result(c.submit("tests.tasks:echo", ["a\x00b"]), timeout=10) == {"args": ["a\x00b"], "kwargs": {}}
    assert sorted(w["pid"] for w in c.workers()) == pids


def test_command_not_found(daemon):
    c = daemon.client
    tid = c.submit_command(["/nonexistent/definitely-not-here"], max_retries=0)
    with pytest.raises(TaskFailed) as ei:
        c.result(tid, timeout=10)
    assert ei.value.reason == "error"
    assert "FileNotFoundError" in ei.value.error["type"]
    assert c.result(c.submit("tests.tasks:noop"), timeout=10) is None


def test_command_output_keeps_the_tail(daemon):
    c = daemon.client
    script = "for i in $(seq 1 40000); do echo line-$i; done; echo END"
    result = c.result(c.submit_command(["sh", "-c", script]), timeout=30)
    assert result["stdout"].endswith("line-40000\nEND\n")
    assert len(result["stdout"]) <= 64 * 1024
    assert "line-1\n" not in result["stdout"][:20]


def test_command_env_does_not_leak_into_next_task(make_daemon):
    d = make_daemon(workers=1)
    c = d.client
    c.result(c.submit_command(["true"], env={"LEAKY": "1"}), timeout=10)
    result = c.result(c.submit_command(["sh", "-c", 'echo "[${LEAKY:-unset}]"']), timeout=10)
    assert result["stdout"].strip() == "[unset]"



def test_function_task_with_cwd_and_env(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    reply = c.request("submit", task={"function": "tests.tasks:cwd_and_env", "args": ["PIPELINED_T"], "cwd": str(tmp_path), "env": {"PIPELINED_T": "yes"}})
    result = c.result(reply["task_id"], timeout=10)
    assert os.path.realpath(result["cwd"]) == os.path.realpath(tmp_path)
    assert result["value"] == "yes"
    # restored for the next task on the same worker
    after = c.result(c.submit("tests.tasks:cwd_and_env", args=["PIPELINED_T"]), timeout=10)
    assert after["value"] is None
    assert os.path.realpath(after["cwd"]) != os.path.realpath(tmp_path)



def test_client_submit_accepts_cwd_and_env(daemon, tmp_path):
    c = daemon.client
    tid = c.submit("tests.tasks:cwd_and_env", args=["PIPELINED_T"], cwd=str(tmp_path), env={"PIPELINED_T": "v"})
    assert c.result(tid, timeout=10)["value"] == "v"


# -- errors from user code ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "function, type_part, message_part",
    [
        ("tests.tasks:fail", "ValueError", "boom"),
        ("tests.tasks:raise_bad_str", "BadStr", ""),
        ("tests.tasks:raise_lock_holder", "LockHolder", "holds a lock"),
    ],
)
def test_user_exceptions_travel_as_text(daemon, function, type_part, message_part):
    c = daemon.client
    tid = c.submit(function, max_retries=0, timeout=20)
    reply = c.wait([tid], timeout=20)
    assert reply["timed_out"] is False, "the failing task hung"
    rec = reply["tasks"][0]
    assert (rec["status"], rec["reason"]) == ("failed", "error")
    err = rec["error"]
    assert type_part in err["type"]
    assert isinstance(err["message"], str) and message_part in err["message"]
    assert isinstance(err["traceback"], str) and "tests/tasks.py" in err["traceback"]
    # the daemon and the worker that ran it stay usable
    assert c.ping()["pong"]
    assert c.result(c.submit("tests.tasks:square", args=[5]), timeout=10) == 25
    assert len(wait_idle_pool(c, 2)) == 2


def test_unencodable_result_is_a_clear_error(daemon):
    c = daemon.client
    tid = c.submit("tests.tasks:unencodable", max_retries=0)
    with pytest.raises(TaskFailed) as ei:
        c.result(tid, timeout=10)
    assert ei.value.reason == "error"
    assert ei.value.error["type"] == "UnencodableResult"
    assert "object" in ei.value.error["message"]
    assert c.result(c.submit("tests.tasks:square", args=[6]), timeout=10) == 36


def test_too_deep_result_is_a_clear_error(daemon):
    c = daemon.client
    tid = c.submit("tests.tasks:deep", args=[5000], max_retries=0)
    with pytest.raises(TaskFailed) as ei:
        c.result(tid, timeout=10)
    assert ei.value.reason == "error"
    assert c.result(c.submit("tests.tasks:deep", args=[3]), timeout=10) == [[[[]]]]


@pytest.mark.parametrize("depth", [1021, 1022, 1023])
def test_result_nested_near_the_codec_limit(make_daemon, depth):
    d = make_daemon(workers=1)
    c = d.client
    tid = c.submit("tests.tasks:deep", args=[depth], max_retries=0)
    wait_for(lambda: c.list(state="running") == [] and c.queue_status()["queue_size"] == 0, 10, what="the task to end")
    rec = c.get(tid)  # every view of the task must still work
    assert [t["task_id"] for t in c.list()] == [tid]
    assert c.wait([tid], timeout=5)["timed_out"] is False
    if rec["status"] != "completed":
        assert (rec["status"], rec["reason"]) == ("failed", "error")
    assert c.status()["performance_metrics"]["worker_kills"] == 0


@pytest.mark.timeout(60)
def test_oversized_result_fails_task_and_worker_survives(daemon):
    c = daemon.client
    workers_before = {w["pid"] for w in wait_idle_pool(c, 2)}
    tid = c.submit("tests.tasks:big_result", args=[MAX_PAYLOAD_BYTES + 1024], max_retries=0)
    with pytest.raises(TaskFailed) as ei:
        c.result(tid, timeout=30)
    assert ei.value.reason == "error"
    assert ei.value.error["type"] == "ResultTooLarge"
    assert "too_large" in ei.value.error["message"] or "limit" in ei.value.error["message"]
    assert c.get(tid)["result"] is None
    # a result just under the limit still travels
    ok_id = c.submit("tests.tasks:big_result", args=[MAX_PAYLOAD_BYTES // 2])
    assert len(c.result(ok_id, timeout=30)) == MAX_PAYLOAD_BYTES // 2
    assert {w["pid"] for w in wait_idle_pool(c, 2)} == workers_before  # no worker was lost


@pytest.mark.timeout(90)
def test_list_and_wait_of_many_big_results_leave_the_biggest_out_instead_of_failing(daemon):
    """Five results of 14 MB are each under the per-result limit, but together over
    the 64 MB a reply may carry: list and wait still answer, with the biggest
    results left out (result_omitted), each one still readable with get."""
    c = daemon.client
    size = 14 * 1024 * 1024
    ids = c.submit_many([{"function": "tests.tasks:big_result", "args": [size + i], "workflow": "big", "max_retries": 0} for i in range(5)])
    out = c.wait(ids, timeout=60)
    assert not out["pending"] and all(r["status"] == "completed" for r in out["tasks"])
    for records in (out["tasks"], c.list(workflow="big")):
        assert len(records) == 5
        omitted = [r for r in records if r.get("result_omitted")]
        kept = [r for r in records if not r.get("result_omitted")]
        assert 1 <= len(omitted) < 5 and all(r["result"] is None for r in omitted)
        assert all(len(r["result"]) >= size for r in kept)
    for i, tid in enumerate(ids):
        assert len(c.get(tid)["result"]) == size + i
    cli = ctl(daemon.socket, "list", "--workflow", "big")
    assert cli.returncode == 0, cli.stderr


@pytest.mark.timeout(120)
def test_wait_of_thousands_of_moderate_results_over_the_reply_limit_still_answers(daemon):
    """7,000 results of 10 KB: each left-out result still costs a few bytes of the
    reply, which the first version did not count (the reply came out too_large)."""
    c = daemon.client
    ids = []
    for _ in range(7):
        ids += c.submit_many([{"function": "tests.tasks:big_result", "args": [10_000], "max_retries": 0}] * 1000)
    out = c.wait(ids, timeout=90)
    assert not out["pending"] and len(out["tasks"]) == 7000
    omitted = sum(bool(r.get("result_omitted")) for r in out["tasks"])
    assert 0 < omitted < 7000
    assert all(len(r["result"]) == 10_000 for r in out["tasks"] if not r.get("result_omitted"))


@pytest.mark.timeout(60)
def test_oversized_args_rejected_at_submit(daemon):
    c = daemon.client
    before = total_tasks(c)
    with pytest.raises(RequestError) as ei:
        c.submit("tests.tasks:echo", args=[b"x" * (MAX_PAYLOAD_BYTES + 1)], task_id="big")
    assert ei.value.code == "too_large"
    assert str(MAX_PAYLOAD_BYTES) in ei.value.message
    with pytest.raises(RequestError) as ei:
        c.submit("tests.tasks:echo", kwargs={"blob": "y" * (MAX_PAYLOAD_BYTES + 1)})
    assert ei.value.code == "too_large"
    assert total_tasks(c) == before
    with pytest.raises(RequestError):
        c.get("big")
    assert c.result(c.submit("tests.tasks:square", args=[2]), timeout=10) == 4


@pytest.mark.timeout(60)

def test_args_over_the_frame_limit_get_a_clear_error(daemon):
    with Client(daemon.socket, timeout=2.0) as c:  # today it only ends by this timeout
        t0 = time.monotonic()
        with pytest.raises(RequestError) as ei:
            c.submit("tests.tasks:echo", args=[b"x" * (65 * 1024 * 1024)])
        assert ei.value.code == "too_large"
        assert time.monotonic() - t0 < 2
    assert daemon.client.ping()["pong"]


def test_workers_are_recycled_after_max_tasks(make_daemon):
    d = make_daemon(workers=1, args=("--max-tasks-per-worker", "2"))
    c = d.client
    pids = []
    for _ in range(6):
        pids.append(c.result(c.submit("tests.tasks:getpid"), timeout=10))
    assert len(set(pids)) == 3
    assert pids[0] == pids[1] and pids[2] == pids[3] and pids[4] == pids[5]
    assert all(t["status"] == "completed" and t["retry_count"] == 0 for t in c.list())
    st = c.status()
    assert st["performance_metrics"]["worker_kills"] == 0  # a recycle is a clean exit, not a kill
    wait_idle_pool(c, 1)


def test_drain_refuses_new_tasks_and_lets_running_ones_finish(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    running = c.submit("tests.tasks:wait_for_file", args=[gate(tmp_path)])
    wait_status(c, running, "running")
    queued = c.submit("tests.tasks:record", args=[str(tmp_path / "ran"), "queued"])
    reply = c.drain()
    assert reply["draining"] is True
    assert c.status()["draining"] is True
    with pytest.raises(RequestError) as ei:
        c.submit("tests.tasks:noop")
    assert ei.value.code == "draining"
    assert c.get(running)["status"] == "running"  # not killed by the drain
    Path(gate(tmp_path)).touch()
    assert d.proc.wait(15) == 0  # nothing left running: the daemon stops by itself
    assert not (tmp_path / "ran").exists()  # the queued task was never started
    assert queued


# -- process titles ----------------------------------------------------------------------------
def test_process_titles(daemon, tmp_path):
    c = daemon.client
    workers = wait_idle_pool(c, 2)
    wait_for(lambda: cmdline(daemon.pid).startswith("pipelined: supervisor [2 workers, 0 queued, 0 running]"), 5,
             what=f"supervisor title, is {cmdline(daemon.pid)!r}")
    for w in workers:
        assert cmdline(w["pid"]) == f"pipelined: worker {w['slot']} idle"
    tid = c.submit("tests.tasks:wait_for_file", args=[gate(tmp_path)], task_id="titled")
    rec = wait_status(c, tid, "running")
    slot = next(w["slot"] for w in c.workers() if w["pid"] == rec["worker_pid"])
    wait_for(lambda: cmdline(rec["worker_pid"]) == f"pipelined: worker {slot} busy titled tests.tasks:wait_for_file", 5,
             what=f"busy title, is {cmdline(rec['worker_pid'])!r}")
    wait_for(lambda: "1 running" in cmdline(daemon.pid), 5, what="supervisor title to count the running task")
    Path(gate(tmp_path)).touch()
    c.result(tid, timeout=10)
    wait_for(lambda: cmdline(rec["worker_pid"]) == f"pipelined: worker {slot} idle", 5, what="worker back to idle title")


# -- sockets and startup --------------------------------------------------------------------------
def test_socket_and_dir_modes(daemon):
    st = os.stat(daemon.socket)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_IMODE(os.stat(daemon.runtime_dir).st_mode) == 0o750



def test_dir_mode_does_not_depend_on_umask(tmp_path):
    run = tmp_path / "run"
    cmd = f"umask 077; exec {sys.executable} -m pipelined --runtime-dir {run} --state-dir {tmp_path / 'state'} --workers 1"
    proc = subprocess.Popen(["sh", "-c", cmd], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        sock = run / "pipelined.sock"
        wait_for(lambda: sock.exists(), 15, what="socket")
        dir_mode = stat.S_IMODE(os.stat(run).st_mode)
        sock_mode = stat.S_IMODE(os.stat(sock).st_mode)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    assert sock_mode == 0o660
    assert dir_mode == 0o750


def test_second_daemon_on_same_runtime_dir_refused(daemon, make_daemon):
    second = subprocess.run(
        [sys.executable, "-m", "pipelined", "--runtime-dir", str(daemon.runtime_dir), "--state-dir", str(daemon.state_dir), "--workers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )
    assert second.returncode == 2
    assert "already running" in second.stderr
    assert str(daemon.socket) in second.stderr
    assert "Traceback" not in second.stderr
    # the first one is untouched
    assert daemon.client.ping()["pid"] == daemon.pid
    assert os.path.exists(daemon.socket)


def test_stale_socket_file_is_replaced(make_daemon):
    d = make_daemon(start=False)
    d.runtime_dir.mkdir(mode=0o750)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(d.socket)
    stale.close()  # the file stays, nobody listens
    assert stat.S_ISSOCK(os.stat(d.socket).st_mode)
    d.start()
    assert d.client.ping()["pid"] == d.pid
    assert d.client.result(d.client.submit("tests.tasks:square", args=[9]), timeout=10) == 81


def test_non_socket_file_at_socket_path_refused(make_daemon):
    d = make_daemon(start=False)
    d.runtime_dir.mkdir(mode=0o750)
    with open(d.socket, "w") as fh:
        fh.write("not a socket")
    proc = subprocess.run(d.command(), cwd=REPO, env=d.env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "not a socket" in proc.stderr
    assert Path(d.socket).read_text() == "not a socket"  # never deletes what is not its own


def test_sigterm_stops_cleanly(make_daemon):
    d = make_daemon(workers=2)
    workers = d.worker_pids()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    assert not os.path.exists(d.socket)
    assert wait_for(lambda: not any(alive(pid) for pid in workers), 5, what=f"workers {workers} gone")
