"""systemd integration: the unit file verifies, and sd_notify speaks the protocol.

A fake NOTIFY_SOCKET (an AF_UNIX datagram socket in tmp_path, or one in the
abstract namespace) records every datagram the daemon sends with its arrival
time: READY=1 only once every worker is up, STATUS= with live counts,
WATCHDOG=1 every half WATCHDOG_USEC from the loop, STOPPING=1 on SIGTERM,
RELOADING=1 then READY=1 around SIGHUP.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from pipeline_client import Client

from .conftest import REPO, wait_for

UNIT = REPO / "systemd" / "pipelined.service"
DROP_IN = REPO / "systemd" / "pipelined.conf.example"


class NotifyListener:
    """A stand-in for systemd's notification socket."""

    def __init__(self, address: str):
        self.address = address  # what goes into NOTIFY_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            with self._lock:
                self.messages.append((time.monotonic(), fields))

    def snapshot(self) -> list[tuple[float, dict[str, str]]]:
        with self._lock:
            return list(self.messages)

    def with_key(self, key: str, value: str | None = None) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in self.snapshot() if key in m and (value is None or m[key] == value)]

    def wait_for(self, key: str, value: str | None = None, timeout: float = 15.0, after: float = 0.0) -> dict[str, str]:
        def found():
            hits = [m for t, m in self.with_key(key, value) if t >= after]
            return hits[0] if hits else None

        return wait_for(found, timeout, 0.01, f"{key}={value or '*'} on NOTIFY_SOCKET")

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener(tmp_path):
    lst = NotifyListener(str(tmp_path / "notify.sock"))
    yield lst
    lst.close()


@pytest.fixture
def abstract_listener():
    lst = NotifyListener(f"@pipelined-test-{uuid.uuid4().hex}")
    yield lst
    lst.close()


# -- the unit file ------------------------------------------------------------------
def _directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _installed_pipelined() -> str:
    candidate = Path(sys.executable).parent / "pipelined"
    return str(candidate) if candidate.exists() else (shutil.which("pipelined") or "")


def _verify(unit_dir: Path) -> subprocess.CompletedProcess:
    # SYSTEMD_UNIT_PATH makes systemd-analyze load our unit (and its drop-ins) from there.
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{unit_dir}:", SYSTEMD_LOG_LEVEL="notice")
    return subprocess.run(["systemd-analyze", "verify", str(unit_dir / "pipelined.service")],
                          capture_output=True, text=True, timeout=60, env=env, check=False)


@pytest.fixture
def unit_copy(tmp_path):
    """The unit with ExecStart pointed at this machine's pipelined (the installed
    path, /usr/local/bin, need not exist here; verify insists that it does)."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    exe = _installed_pipelined()
    if not exe:
        pytest.skip("no installed pipelined script to point ExecStart at")
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    text = re.sub(r"^ExecStart=/usr/local/bin/pipelined$", f"ExecStart={exe}", UNIT.read_text(), flags=re.MULTILINE)
    assert f"ExecStart={exe}" in text
    (unit_dir / "pipelined.service").write_text(text)
    return unit_dir


def test_unit_file_passes_systemd_analyze_verify(unit_copy):
    proc = _verify(unit_copy)
    assert proc.returncode == 0, proc.stderr
    # Nothing to complain about at all: no unknown directive, no bad value.
    assert proc.stderr.strip() == "", proc.stderr


def test_unit_file_with_the_drop_in_example_verifies(unit_copy):
    drop_dir = unit_copy / "pipelined.service.d"
    drop_dir.mkdir()
    (drop_dir / "override.conf").write_text(DROP_IN.read_text())
    proc = _verify(unit_copy)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "", proc.stderr


def test_unit_file_has_what_the_brief_asks():
    d = _directives(UNIT)
    one = {k: v[-1] for k, v in d.items()}
    assert one["Type"] == "notify"
    assert one["ExecStart"].split()[0].endswith("/pipelined")
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["RuntimeDirectory"] == "pipelined" and one["RuntimeDirectoryMode"] == "0750"
    assert one["StateDirectory"] == "pipelined"
    assert one["KillMode"] == "mixed"
    assert one["Restart"] == "on-failure"
    assert one["User"] == "pipelined" and one["Group"] == "pipelined"
    assert int(one["WatchdogSec"]) > 0
    grace_s = 30  # shutdown_grace_s's default
    assert int(one["TimeoutStopSec"]) > grace_s + 5, "TimeoutStopSec must outlast the drain grace"
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                       "ProtectKernelTunables": "yes", "ProtectControlGroups": "yes",
                       "RestrictSUIDSGID": "yes", "LockPersonality": "yes"}.items():
        assert one.get(key) == value, key
    assert one["ProtectHome"] in ("yes", "read-only")
    # Nothing that would break fork, prctl(PR_SET_CHILD_SUBREAPER / PDEATHSIG), kill or setpgid.
    assert "MemoryDenyWriteExecute" not in one
    assert one["SystemCallFilter"] == "@system-service"  # an allow list that includes @process and @signal
    assert one.get("OOMPolicy") == "continue"


def test_drop_in_example_overrides_through_the_environment():
    d = _directives(DROP_IN)
    assert "PARALLEL_MAX_WORKERS=8" in d["Environment"]


# -- sd_notify ------------------------------------------------------------------------
def _notify_env(listener: NotifyListener, **extra: str) -> dict[str, str]:
    return {"NOTIFY_SOCKET": listener.address, **extra}


def _ready_then_workers_idle(make_daemon, listener: NotifyListener, workers: int = 2):
    d = make_daemon(workers=workers, env=_notify_env(listener), start=False)
    d.start(wait=False)
    ready = listener.wait_for("READY", "1")
    # READY=1 means every worker has said hello: ask at once, no waiting.
    with Client(d.socket, timeout=5) as c:
        states = [w["state"] for w in c.workers()]
    assert states == ["idle"] * workers
    d.wait_ready()
    return d, ready


def test_ready_only_once_workers_are_up_and_status_counts(make_daemon, listener):
    d, ready = _ready_then_workers_idle(make_daemon, listener, workers=2)
    assert ready["STATUS"].startswith("2 workers, 0 queued, 0 running")
    assert ready["MAINPID"] == str(d.pid)
    assert len(listener.with_key("READY", "1")) == 1
    # STATUS= follows the counts: a finished task shows up as completed.
    d.client.result(d.client.submit("tests.tasks:square", args=[3]), timeout=10)
    listener.wait_for("STATUS", "2 workers, 0 queued, 0 running, 1 completed, 0 failed")
    statuses = [m["STATUS"] for _, m in listener.with_key("STATUS")]
    assert all(re.fullmatch(r"(\d+ workers, \d+ queued, \d+ running(, \d+ completed, \d+ failed)?|draining: .*)", s) for s in statuses), statuses
    # Sent only when it changes: no two identical STATUS= datagrams in a row.
    assert all(a != b for a, b in itertools.pairwise(statuses)), statuses


def test_status_shows_running_and_queued(make_daemon, listener, tmp_path):
    d = make_daemon(workers=1, env=_notify_env(listener))
    gate = tmp_path / "gate"
    first = d.client.submit("tests.tasks:wait_for_file", args=[str(gate)])
    second = d.client.submit("tests.tasks:noop")
    listener.wait_for("STATUS", "1 workers, 1 queued, 1 running, 0 completed, 0 failed")
    gate.touch()
    d.client.wait([first, second], timeout=10)
    listener.wait_for("STATUS", "1 workers, 0 queued, 0 running, 2 completed, 0 failed")


def test_abstract_namespace_notify_socket(make_daemon, abstract_listener):
    assert abstract_listener.address.startswith("@")
    d, ready = _ready_then_workers_idle(make_daemon, abstract_listener, workers=1)
    assert ready["MAINPID"] == str(d.pid)
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    abstract_listener.wait_for("STOPPING", "1")


def test_watchdog_pings_at_half_the_interval(make_daemon, listener):
    d = make_daemon(workers=1, env=_notify_env(listener, WATCHDOG_USEC="400000"))
    start = time.monotonic()
    wait_for(lambda: len([t for t, _ in listener.with_key("WATCHDOG", "1") if t >= start]) >= 8, 10, 0.05, "8 watchdog pings")
    times = [t for t, _ in listener.with_key("WATCHDOG", "1") if t >= start]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    # Every 0.2 s (half of 0.4 s) from an idle loop: never early, never badly late.
    assert all(0.15 <= g <= 0.45 for g in gaps), gaps
    assert 0.18 <= sum(gaps) / len(gaps) <= 0.3, gaps
    # The pings come from the loop itself, also while tasks run.
    d.client.result(d.client.submit("tests.tasks:sleep", args=[0.6]), timeout=10)
    busy = [t for t, _ in listener.with_key("WATCHDOG", "1") if t >= times[-1]]
    assert len(busy) >= 3


def test_watchdog_for_another_pid_is_not_ours(make_daemon, listener):
    d = make_daemon(workers=1, env=_notify_env(listener, WATCHDOG_USEC="200000", WATCHDOG_PID="1"))
    listener.wait_for("READY", "1")
    time.sleep(0.5)
    assert not listener.with_key("WATCHDOG"), "WATCHDOG_PID names another process: no pings"
    assert d.client.ping()["pong"]


def test_stopping_on_sigterm(make_daemon, listener):
    d = make_daemon(workers=1, env=_notify_env(listener))
    listener.wait_for("READY", "1")
    sent = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0
    msg = listener.wait_for("STOPPING", "1", after=sent)
    assert msg["STATUS"].startswith("draining")


def test_reloading_then_ready_on_sighup(make_daemon, listener, tmp_path):
    # (a config file of our own: make_daemon(config=...) writes before it creates its dir)
    config = tmp_path / "pipelined.toml"
    config.write_text("max_task_retries = 3\n")
    d = make_daemon(workers=1, env=_notify_env(listener), args=("--config", str(config)))
    listener.wait_for("READY", "1")
    config.write_text("max_task_retries = 1\n")
    sent = time.monotonic()
    d.proc.send_signal(signal.SIGHUP)
    reloading = listener.wait_for("RELOADING", "1", after=sent)
    assert int(reloading["MONOTONIC_USEC"]) > 0
    wait_for(lambda: len([t for t, _ in listener.with_key("READY", "1") if t >= sent]) == 1, 10, what="READY=1 after the reload")
    t_reloading = next(t for t, _ in listener.with_key("RELOADING", "1") if t >= sent)
    t_ready = next(t for t, _ in listener.with_key("READY", "1") if t >= sent)
    assert t_reloading <= t_ready
    # The new value is in force for new tasks.
    tid = d.client.submit("tests.tasks:noop")
    assert d.client.get(tid)["max_retries"] == 1
    # A bad file is refused, and the daemon still says READY=1 (keeps its old config).
    config.write_text("max_task_retries = -1\n")
    sent = time.monotonic()
    d.proc.send_signal(signal.SIGHUP)
    listener.wait_for("RELOADING", "1", after=sent)
    listener.wait_for("READY", "1", after=sent)
    assert d.client.ping()["pong"]


def test_notify_socket_is_not_inherited_by_tasks(make_daemon, listener):
    d = make_daemon(workers=1, env=_notify_env(listener, WATCHDOG_USEC="30000000"))
    tid = d.client.submit_command(["sh", "-c", "echo ${NOTIFY_SOCKET:-unset} ${WATCHDOG_USEC:-unset}"])
    assert d.client.result(tid, timeout=10)["stdout"].strip() == "unset unset"


def test_no_listener_is_not_a_reason_to_fail(make_daemon, tmp_path):
    d = make_daemon(workers=1, env={"NOTIFY_SOCKET": str(tmp_path / "nobody-listens.sock"), "WATCHDOG_USEC": "100000"})
    assert d.client.result(d.client.submit("tests.tasks:square", args=[5]), timeout=10) == 25
