"""Limits, recycling and live observability, on real daemons with small limits.

Admission: concurrency 1 never overlaps (global and per type), a saturated
type does not hold back another type, the memory gate holds tasks (`held_by`)
until SIGHUP loosens it, memory_limit_mb kills a 400 MB task, recycling
changes worker pids and fails nothing. Observability: `pipelinectl watch`
and the Python EventWatcher see a workflow's events in order, `/metrics`
parses with prometheus_client's own parser, `/healthz`, `/status`, hostile
HTTP clients, `top`, and the `workers` op's RSS / CPU %.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline_client import top
from pipeline_client.watch import EventWatcher, watch_events
from tests.conftest import REPO, wait_for
from tests.helpers import wait_status

CTL = [sys.executable, "-m", "pipeline_client.cli"]


# -- helpers ---------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type") or "", resp.read().decode()
    finally:
        conn.close()


def http_daemon(make_daemon, workers: int = 2, config: str | None = None):
    port = free_port()
    d = make_daemon(workers=workers, args=("--http", f"127.0.0.1:{port}"), config=config)
    return d, port


def spans(path: Path) -> list[tuple[str, float, float]]:
    rows = [line.split() for line in path.read_text().splitlines()]
    return sorted((tag, float(start), float(end)) for tag, start, end in rows)


def wait_subscribed(client, timeout: float = 10.0) -> None:
    """The daemon has counted a subscription: events from now on reach the watcher."""
    wait_for(lambda: client.status()["event_subscribers"] >= 1, timeout, what="the watcher's subscription")


def metrics(port: int) -> dict:
    code, ctype, text = http_get(port, "/metrics")
    assert code == 200 and ctype.startswith("text/plain"), (code, ctype)
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(families: dict, family: str, name: str | None = None, **labels: str) -> float:
    """Sum of the samples of `family` (sample `name`) whose labels include `labels`."""
    return sum(s.value for s in families[family].samples
               if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items()))


# -- admission ---------------------------------------------------------------------------
@pytest.mark.parametrize("config, task_type", [
    ("max_concurrent_tasks = 1\n", None),
    ("[task_types.scan]\nmax_concurrent = 1\n", "scan"),
], ids=["global", "per-type"])
def test_concurrency_one_never_overlaps(make_daemon, tmp_path, config, task_type):
    d = make_daemon(workers=3, config=config)
    log = tmp_path / "spans.txt"
    extra = {"task_type": task_type} if task_type else {}
    ids = [d.client.submit("tests.tasks:span", args=[str(log), f"t{i}", 0.15], **extra) for i in range(4)]
    reply = d.client.wait(ids, timeout=20)
    assert [t["status"] for t in reply["tasks"]] == ["completed"] * 4
    runs = sorted(spans(log), key=lambda r: r[1])
    assert len(runs) == 4
    for (_, _, prev_end), (tag, start, _) in itertools.pairwise(runs):
        assert start >= prev_end, f"{tag} started {prev_end - start:.3f}s before the previous task ended: {runs}"


def test_saturated_type_does_not_block_other_types(make_daemon, tmp_path):
    d = make_daemon(workers=3, config="[task_types.scan]\nmax_concurrent = 1\n")
    c, gate = d.client, tmp_path / "go"
    scans = [c.submit("tests.tasks:wait_for_file", args=[str(gate)], task_type="scan", task_id=f"scan{i}") for i in range(3)]
    wait_status(c, "scan0", "running")
    # Queued behind a saturated type, and submitted after it: still runs at once.
    other = c.submit("tests.tasks:square", args=[7], task_type="fast")
    assert c.result(other, timeout=5) == 49
    held = c.get("scan1")
    assert held["status"] == "queued" and "scan" in held.get("held_by", ""), held
    assert c.get("scan0")["status"] == "running"
    gate.touch()
    assert all(t["status"] == "completed" for t in c.wait(scans, timeout=20)["tasks"])


def test_memory_gate_holds_until_sighup_loosens_it(make_daemon):
    strict = ("enable_resource_scheduling = true\nmax_cpu_percent = 100\nmax_memory_percent = 100\n"
              "min_free_memory_mb = 1000000000\n")  # a petabyte free: never
    d = make_daemon(workers=1, config=strict)
    tid = d.client.submit("tests.tasks:square", args=[3])
    rec = wait_for(lambda: (r := d.client.get(tid)).get("held_by") and r, 10, what="the gate to hold the task")
    assert rec["status"] == "queued" and "min_free_memory_mb" in rec["held_by"], rec
    time.sleep(0.3)  # held, not merely slow: still queued a moment later
    assert d.client.get(tid)["status"] == "queued"
    d.config_path.write_text(strict.replace("1000000000", "0"))
    d.proc.send_signal(signal.SIGHUP)
    assert d.client.result(tid, timeout=10) == 9
    assert "held_by" not in d.client.get(tid)


def test_memory_limit_kills_a_400_mb_task(make_daemon):
    d = make_daemon(workers=1)
    tid = d.client.submit("tests.tasks:big_alloc", args=[400, 10], memory_limit_mb=100, max_retries=0, timeout=30)
    rec = wait_for(lambda: (r := d.client.get(tid))["status"] in ("completed", "failed") and r, 20, what="the task to end")
    assert rec["status"] == "failed" and rec["reason"] == "memory_limit", rec
    assert rec["execution_time"] < 5, rec  # killed on the watch's next tick, not at the end of its 10 s hold
    assert "memory_limit_mb" in rec["error"]["message"]


def test_recycling_changes_pids_and_fails_nothing(make_daemon):
    d = make_daemon(workers=2, args=("--max-tasks-per-worker", "2"))
    first = set(d.worker_pids())
    ids = d.client.submit_many([{"function": "tests.tasks:getpid"} for _ in range(10)])
    records = d.client.wait(ids, timeout=30)["tasks"]
    assert [r["status"] for r in records] == ["completed"] * 10
    ran_on = [r["result"] for r in records]
    assert all(ran_on.count(pid) <= 2 for pid in ran_on), ran_on  # no worker ran more than 2
    assert len(set(ran_on)) >= 5
    wait_for(lambda: len(d.worker_pids()) == 2 and not set(d.worker_pids()) & first, 10, what="a recycled pool")
    status = d.client.status()
    assert status["failed_tasks"] == 0 and status["performance_metrics"]["worker_kills"] == 0, status  # clean exits
    assert "while idle" not in d.log() and "while busy" not in d.log()


# -- watch ---------------------------------------------------------------------------------
WORKFLOW_EVENTS = {"a": ["pending", "queued", "running", "completed"], "b": ["pending", "queued", "running", "completed"]}


def _check_workflow_events(events: list[dict], wf: str) -> None:
    assert all(e["event"] == "task" and e["workflow"] == wf for e in events), events
    seq = [(e["task_id"].rsplit("-", 1)[1], e["status"]) for e in events]
    for name, expected in WORKFLOW_EVENTS.items():
        assert [s for t, s in seq if t == name] == expected, seq
    assert seq.index(("a", "completed")) < seq.index(("b", "queued")), seq  # b waits for a
    times = [e["time"] for e in events]
    assert times == sorted(times)


def _submit_workflow(client, wf: str) -> list[str]:
    return client.submit_many([
        {"task_id": f"{wf}-a", "function": "tests.tasks:square", "args": [2], "workflow": wf},
        {"task_id": f"{wf}-b", "function": "tests.tasks:square", "args": [3], "workflow": wf, "dependencies": [f"{wf}-a"]},
        {"task_id": f"{wf}-other", "function": "tests.tasks:noop"},  # another workflow's events are filtered out
    ])


def test_watch_sees_a_workflow_in_order(make_daemon):
    d = make_daemon(workers=2)
    proc = subprocess.Popen([*CTL, "--socket", d.socket, "watch", "--json", "--workflow", "wf1", "--count", "8", "--timeout", "20"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_subscribed(d.client)
        ids = _submit_workflow(d.client, "wf1")
        d.client.wait(ids, timeout=10)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    _check_workflow_events([json.loads(line) for line in out.splitlines()], "wf1")

    # The Python side: an EventWatcher is subscribed from the moment it exists.
    wait_for(lambda: d.client.status()["event_subscribers"] == 0, 10, what="the CLI's unsubscription")
    with EventWatcher(d.socket, workflow="wf2") as watcher:
        wait_subscribed(d.client)
        _submit_workflow(d.client, "wf2")
        events = [watcher.next(timeout_s=10) for _ in range(8)]
        assert None not in events, events
        assert watcher.next(timeout_s=0.2) is None  # nothing more of wf2
    _check_workflow_events(events, "wf2")


def test_watch_events_generator_sees_worker_restarts(make_daemon):
    d = make_daemon(workers=1, args=("--max-tasks-per-worker", "1"))
    got: list[dict] = []
    thread = threading.Thread(target=lambda: got.extend(watch_events(d.socket, count=6, timeout=15)))
    thread.start()
    wait_subscribed(d.client)
    old = d.worker_pids()[0]
    tid = d.client.submit("tests.tasks:noop")
    d.client.wait([tid], timeout=10)
    thread.join(20)
    assert not thread.is_alive()
    task = [e["status"] for e in got if e["event"] == "task"]
    assert task == ["pending", "queued", "running", "completed"], got
    workers = [(e["pid"] == old, e["what"]) for e in got if e["event"] == "worker"]
    assert workers == [(True, "exited"), (False, "started")], got  # recycled: a clean exit, then a new worker
    exited = next(e for e in got if e["event"] == "worker" and e["what"] == "exited")
    assert "exit code 0" in exited["how"], exited


def test_watch_unreachable_and_timeout(make_daemon, tmp_path):
    proc = subprocess.run([*CTL, "--socket", str(tmp_path / "nope.sock"), "watch"], cwd=REPO, capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == 3 and "events.sock" in proc.stderr
    d = make_daemon(workers=1)
    proc = subprocess.run([*CTL, "--socket", d.socket, "watch", "--count", "1", "--timeout", "0.3"], cwd=REPO, capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == 1 and "0 of 1 events" in proc.stderr, proc.stderr


# -- http ------------------------------------------------------------------------------------
def test_metrics_parse_with_prometheus_parser(make_daemon):
    d, port = http_daemon(make_daemon, workers=2)
    c = d.client
    ok = c.submit("tests.tasks:square", args=[5], task_type="calc")
    bad = c.submit("tests.tasks:fail", max_retries=1, retry_backoff=0.01, task_type="calc")
    slow = c.submit("tests.tasks:sleep", args=[30], timeout=0.3, max_retries=0)
    c.wait([ok, bad, slow], timeout=20)
    fams = metrics(port)
    expected = {"pipelined_tasks", "pipelined_tasks_unfinished", "pipelined_queue_depth", "pipelined_tasks_ended",
                "pipelined_task_attempts", "pipelined_task_retries", "pipelined_task_duration_seconds", "pipelined_workers",
                "pipelined_worker_kills", "pipelined_worker_forks", "pipelined_gate_closed", "pipelined_tasks_held",
                "pipelined_draining", "pipelined_uptime_seconds", "pipelined_process_open_fds"}
    assert expected <= set(fams), sorted(set(fams))
    assert all(name.startswith("pipelined_") for name in fams)
    assert fams["pipelined_task_duration_seconds"].type == "histogram"
    assert fams["pipelined_tasks_ended"].type == "counter"
    assert sample(fams, "pipelined_tasks", state="completed") == 1
    assert sample(fams, "pipelined_tasks", state="failed") == 2
    assert sample(fams, "pipelined_tasks_ended", state="failed", task_type="calc", reason="error") == 1
    assert sample(fams, "pipelined_tasks_ended", state="failed", task_type="default", reason="timeout") == 1
    assert sample(fams, "pipelined_task_attempts", task_type="calc") == 3  # square, fail twice
    assert sample(fams, "pipelined_task_retries", task_type="calc", reason="error") == 1
    assert sample(fams, "pipelined_task_duration_seconds", "pipelined_task_duration_seconds_count") == 4
    assert sample(fams, "pipelined_task_duration_seconds", "pipelined_task_duration_seconds_count", outcome="completed") == 1
    assert sample(fams, "pipelined_worker_kills", reason="timeout") == 1
    assert sample(fams, "pipelined_workers") >= 2
    assert sample(fams, "pipelined_queue_depth") == 0
    assert sample(fams, "pipelined_tasks_unfinished") == 0
    code, _, body = http_get(port, "/metrics", method="HEAD")
    assert code == 200 and body == ""


def test_metrics_show_queue_and_held_tasks(make_daemon, tmp_path):
    d, port = http_daemon(make_daemon, workers=2, config="[task_types.scan]\nmax_concurrent = 1\n")
    gate = tmp_path / "go"
    ids = [d.client.submit("tests.tasks:wait_for_file", args=[str(gate)], task_type="scan", priority="high") for _ in range(3)]
    wait_status(d.client, ids[0], "running")
    wait_for(lambda: d.client.get(ids[1]).get("held_by"), 5, what="a held task")
    fams = metrics(port)
    assert sample(fams, "pipelined_tasks_unfinished", state="running", task_type="scan") == 1
    assert sample(fams, "pipelined_tasks_unfinished", state="queued", task_type="scan") == 2
    assert sample(fams, "pipelined_queue_depth", priority="high") == 2
    assert sample(fams, "pipelined_tasks_held", gate="max_concurrent", task_type="scan") == 2
    assert sample(fams, "pipelined_workers", state="busy") == 1
    gate.touch()
    d.client.wait(ids, timeout=20)
    fams = metrics(port)
    assert sample(fams, "pipelined_tasks_held") == 0 and sample(fams, "pipelined_queue_depth") == 0


def test_healthz_and_status(make_daemon, tmp_path):
    d, port = http_daemon(make_daemon, workers=1)
    assert http_get(port, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
    code, ctype, body = http_get(port, "/status")
    assert code == 200 and ctype == "application/json"
    status = json.loads(body)
    expected = {k: v for k, v in d.client.status().items() if k not in ("v", "rid", "ok")}
    assert set(status) == set(expected) and status["max_workers"] == 1 and status["draining"] is False
    assert http_get(port, "/nope")[0] == 404
    assert http_get(port, "/healthz", method="POST")[0] == 405
    # Draining: 503 while a running task holds the daemon up.
    gate = tmp_path / "go"
    tid = d.client.submit("tests.tasks:wait_for_file", args=[str(gate)])
    wait_status(d.client, tid, "running")
    d.client.drain()
    assert http_get(port, "/healthz") == (503, "text/plain; charset=utf-8", "draining\n")
    assert json.loads(http_get(port, "/status")[2])["draining"] is True
    gate.touch()
    assert d.proc.wait(15) == 0


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _ping_ms(client) -> float:
    t0 = time.monotonic()
    client.ping()
    return (time.monotonic() - t0) * 1000


def test_hostile_http_clients_do_not_stall_the_loop(make_daemon):
    d, port = http_daemon(make_daemon, workers=1)
    silent = [_connect(port) for _ in range(80)]  # more than the connection cap, all silent
    slow = _connect(port)
    slow.sendall(b"GET /heal")  # and never the rest
    assert _ping_ms(d.client) < 1000
    assert d.client.result(d.client.submit("tests.tasks:square", args=[4]), timeout=5) == 16

    garbage = _connect(port)
    garbage.sendall(b"\x00\xff\x13garbage\r\n\r\n")
    assert garbage.recv(100).startswith(b"HTTP/1.0 400 ")
    huge = _connect(port)
    huge.sendall(b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 9000)
    assert huge.recv(100).startswith(b"HTTP/1.0 431 ")

    # Past their budget the silent and slow ones are closed by the daemon (EOF, or reset
    # for the ones over the cap), and a normal request is served again.
    slow.settimeout(6)
    assert slow.recv(100) == b""
    assert http_get(port, "/healthz")[0] == 200
    for s in [*silent, slow, garbage, huge]:
        s.close()
    assert _ping_ms(d.client) < 1000


def test_http_bind_error_is_a_startup_error(make_daemon):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        d = make_daemon(workers=1, args=("--http", f"127.0.0.1:{port}"), start=False)
        d.start(wait=False)
        assert d.proc.wait(15) == 2
    log = d.log()
    assert f"cannot listen on 127.0.0.1 port {port}" in log and "Traceback" not in log, log
    assert not Path(d.socket).exists()


def test_http_off_loopback_warns(make_daemon):
    port = free_port()
    d = make_daemon(workers=1, config=f'http = "0.0.0.0:{port}"\n')
    assert http_get(port, "/healthz")[0] == 200
    assert "not a loopback address" in d.log()


# -- top and the workers op --------------------------------------------------------------------
def test_workers_op_has_rss_cpu_and_uptime(make_daemon):
    d = make_daemon(workers=2)
    idle = d.client.workers()
    assert all(w["rss_mb"] > 1 and w["cpu_percent"] >= 0 and w["uptime_s"] >= 0 for w in idle), idle
    spin = d.client.submit("tests.tasks:spin", args=[3])
    hog = d.client.submit_command([sys.executable, "-c", "import time; b = b'x' * (200 << 20); time.sleep(3)"])
    wait_status(d.client, spin, "running")
    wait_status(d.client, hog, "running")

    def busy_readings():
        ws = {w["task_id"]: w for w in d.client.workers()}
        return ws if ws.get(spin, {}).get("cpu_percent", 0) > 30 and ws.get(hog, {}).get("rss_mb", 0) > 150 else None

    ws = wait_for(busy_readings, 10, interval=0.3, what="CPU % of the spinning worker and RSS of the command's child")
    assert ws[hog]["rss_mb"] > 150  # the child's memory counts for its worker
    d.client.cancel(spin)
    d.client.cancel(hog)


def test_top_once_shows_workers_and_counters(make_daemon):
    d = make_daemon(workers=2)
    d.client.result(d.client.submit("tests.tasks:square", args=[2]), timeout=5)
    proc = subprocess.run([*CTL, "--socket", d.socket, "top", "--once"], cwd=REPO, capture_output=True, text=True, timeout=20, check=False)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "\x1b[" not in out  # not a terminal: plain text
    assert "1 completed" in out and "0 failed" in out and "queue" in out
    assert "RSS MB" in out and "CPU %" in out
    for pid in d.worker_pids():
        assert str(pid) in out
    proc = subprocess.run([*CTL, "--socket", d.socket, "--json", "top", "--once"], cwd=REPO, capture_output=True, text=True, timeout=20, check=False)
    snap = json.loads(proc.stdout)
    assert snap["status"]["completed_tasks"] == 1 and len(snap["workers"]) == 2 and snap["pid"] == d.pid


def _read_pty(master: int, until: bytes, timeout: float = 10.0) -> bytes:
    out, deadline = b"", time.monotonic() + timeout
    while until not in out and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                out += os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
    return out


def test_top_and_watch_on_a_terminal_stop_cleanly_on_ctrl_c(make_daemon):
    d = make_daemon(workers=1)
    for argv, marker in ((["top", "--interval", "0.1"], b"SLOT"), (["watch"], None)):
        master, slave = pty.openpty()
        proc = subprocess.Popen([*CTL, "--socket", d.socket, *argv], cwd=REPO, stdin=slave, stdout=slave, stderr=subprocess.PIPE)
        os.close(slave)
        try:
            if marker is None:  # watch: wait for its subscription, then make an event
                wait_subscribed(d.client)
                d.client.result(d.client.submit("tests.tasks:noop", task_id="seen-on-tty"), timeout=5)
                marker = b"seen-on-tty  completed"
            out = _read_pty(master, marker)
            if argv[0] == "top":
                out += _read_pty(master, b"\x1b[H", 5)  # a second frame, drawn over the first
                assert out.startswith(top.ENTER.encode()) and out.count(b"\x1b[H") >= 2, out[:200]
            assert marker in out, out
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0, proc.stderr.read()
            if argv[0] == "top":
                assert _read_pty(master, top.LEAVE.encode(), 5).endswith(top.LEAVE.encode())  # the terminal is given back
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stderr.close()
            os.close(master)
