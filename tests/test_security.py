"""Access control: what may run (allowed_functions / allow_commands -> not_permitted),
who owns the runtime dir (a live daemon is never stolen from, a dead one's socket and
lock are reclaimed), and what an unprivileged user is told when the socket is closed
to them (exit 3, path, owner, group, mode; no traceback).
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from pipeline_client import Client, RequestError

from .conftest import REPO, Daemon, wait_for, wait_for_gone
from .helpers import gone

NOBODY = 65534
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PARALLEL_", "PIPELINED_"))}


def write_config(tmp_path: Path, text: str, name: str = "policy.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def pipelined_cmd(runtime_dir, state_dir, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipelined", "--runtime-dir", str(runtime_dir), "--state-dir", str(state_dir), "--workers", "1", *extra]


# -- allowed_functions / allow_commands ---------------------------------------------------
POLICY = 'allowed_functions = ["tests.tasks:square", "tests.tasks:add", "examples.*:*"]\nallow_commands = false\n'


@pytest.fixture
def locked_down(make_daemon, tmp_path):
    return make_daemon(workers=1, args=("--config", write_config(tmp_path, POLICY)))


def total(d: Daemon) -> int:
    return d.client.status()["performance_metrics"]["total_tasks"]


def test_allowed_function_runs(locked_down):
    c = locked_down.client
    assert c.result(c.submit("tests.tasks:square", args=[6]), timeout=10) == 36
    assert c.result(c.submit("examples.tasks:square", args=[3]), timeout=10) == 9  # a glob


@pytest.mark.parametrize("function", ["tests.tasks:noop", "os:system", "subprocess:run", "tests.tasks:square_x", "examples:anything"])
def test_function_outside_allowed_functions_is_not_permitted(locked_down, function):
    c = locked_down.client
    before = total(locked_down)
    with pytest.raises(RequestError) as info:
        c.submit(function, args=["true"], task_id="forbidden")
    assert info.value.code == "not_permitted"
    assert function in info.value.message and "allowed_functions" in info.value.message
    assert total(locked_down) == before
    with pytest.raises(RequestError) as info:
        c.get("forbidden")
    assert info.value.code == "unknown_task"


def test_command_tasks_not_permitted(locked_down):
    c = locked_down.client
    before = total(locked_down)
    with pytest.raises(RequestError) as info:
        c.submit_command(["touch", "/tmp/should-not-exist"], task_id="cmd")
    assert info.value.code == "not_permitted"
    assert "allow_commands" in info.value.message
    assert info.value.details.get("task_id") == "cmd"
    assert total(locked_down) == before


def test_a_batch_with_one_forbidden_task_accepts_nothing(locked_down):
    c = locked_down.client
    before = total(locked_down)
    batch = [
        {"task_id": "ok1", "function": "tests.tasks:square", "args": [2]},
        {"task_id": "ok2", "function": "tests.tasks:add", "args": [1, 2]},
        {"task_id": "bad", "command": ["true"]},
    ]
    with pytest.raises(RequestError) as info:
        c.submit_many(batch)
    assert info.value.code == "not_permitted"
    assert total(locked_down) == before
    for tid in ("ok1", "ok2", "bad"):
        with pytest.raises(RequestError):
            c.get(tid)


def test_pipelinectl_reports_not_permitted(locked_down):
    env = {**BASE_ENV, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipeline_client.cli", "--socket", locked_down.socket, "submit", "--", "true"],
                          capture_output=True, text=True, timeout=30, cwd=REPO, env=env, check=False)
    assert proc.returncode == 2
    assert "not_permitted" in proc.stderr and "Traceback" not in proc.stderr


def test_policy_follows_a_reload(make_daemon, tmp_path):
    path = write_config(tmp_path, POLICY)
    d = make_daemon(workers=1, args=("--config", path))
    with pytest.raises(RequestError):
        d.client.submit("tests.tasks:noop")
    Path(path).write_text('allowed_functions = ["tests.tasks:*"]\nallow_commands = true\n')
    d.proc.send_signal(signal.SIGHUP)

    def allowed():
        try:
            return d.client.submit("tests.tasks:noop")
        except RequestError as exc:
            assert exc.code == "not_permitted"
            return None

    tid = wait_for(allowed, 10, 0.05, "the reloaded policy to allow tests.tasks:noop")
    d.client.result(tid, timeout=10)
    assert d.client.result(d.client.submit_command(["echo", "hi"]), timeout=10)["stdout"].strip() == "hi"


def test_allow_commands_false_with_every_function_allowed_warns(make_daemon, tmp_path):
    d = make_daemon(workers=1, args=("--config", write_config(tmp_path, "allow_commands = false\n")))
    assert "os:system" in d.log() and "narrow allowed_functions" in d.log()


# -- one daemon per runtime dir ---------------------------------------------------------------
def test_second_daemon_is_refused_and_the_first_keeps_serving(make_daemon, tmp_path):
    first = make_daemon(workers=1)
    proc = subprocess.run(pipelined_cmd(first.runtime_dir, tmp_path / "other-state"), cwd=REPO, env=BASE_ENV,
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "already running" in line and first.socket in line and f"pid {first.pid}" in line
    assert first.client.ping()["pid"] == first.pid
    assert first.client.result(first.client.submit("tests.tasks:square", args=[4]), timeout=10) == 16
    assert stat.S_ISSOCK(os.stat(first.socket).st_mode)


def test_a_refused_daemon_leaves_the_live_ones_directory_alone(make_daemon, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("giving the directory to another group needs root")
    first = make_daemon(workers=1)
    before = os.stat(first.runtime_dir)
    proc = subprocess.run(pipelined_cmd(first.runtime_dir, tmp_path / "other-state", "--socket-group", str(NOBODY)),
                          cwd=REPO, env=BASE_ENV, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2 and "already running" in proc.stderr
    after = os.stat(first.runtime_dir)
    assert (after.st_gid, after.st_mode) == (before.st_gid, before.st_mode)
    assert os.stat(first.socket).st_gid == before.st_gid


def test_two_daemons_starting_at_once_one_wins(tmp_path):
    """The lock closes the race that probing the socket alone leaves open."""
    run = tmp_path / "run"
    with contextlib.ExitStack() as stack:
        logs = [stack.enter_context(open(tmp_path / f"d{i}.log", "w+")) for i in range(2)]
        procs = [subprocess.Popen(pipelined_cmd(run, tmp_path / f"state{i}"), cwd=REPO, env=BASE_ENV, stdout=log, stderr=subprocess.STDOUT)
                 for i, log in enumerate(logs)]
        try:
            wait_for(lambda: any(p.poll() is not None for p in procs), 20, 0.02, "one of the two daemons to give up")
            loser = next(p for p in procs if p.poll() is not None)
            winner = next(p for p in procs if p is not loser)
            assert loser.returncode == 2
            text = (tmp_path / f"d{procs.index(loser)}.log").read_text()
            assert "already running" in text and "Traceback" not in text
            sock = str(run / "pipelined.sock")
            wait_for(lambda: os.path.exists(sock), 15, what="the winner's socket")
            with Client(sock, timeout=5) as c:
                assert c.ping()["pid"] == winner.pid
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(15)


def test_stale_socket_is_replaced(make_daemon):
    d = make_daemon(workers=1, start=False)
    d.runtime_dir.mkdir(mode=0o750)
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(d.socket)
    stale.close()  # the file stays, nobody listens
    d.start()
    assert "removing stale socket" in d.log()
    assert d.client.ping()["pid"] == d.pid
    assert d.client.result(d.client.submit("tests.tasks:square", args=[9]), timeout=10) == 81


def test_a_sigkilled_daemon_leaves_nothing_that_blocks_a_restart(make_daemon):
    first = make_daemon(workers=1)
    workers = first.worker_pids()
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(10)
    for pid in workers:
        wait_for(lambda pid=pid: gone(pid) or _zombie(pid), 10, what=f"worker {pid} to die with its supervisor")
    assert os.path.exists(first.socket), "a SIGKILLed daemon cannot clean up its socket"
    # Same runtime dir and state dir: the socket is stale, the lock died with its process.
    second = Daemon(first.base, workers=1)
    second.start()
    try:
        assert second.client.ping()["pid"] == second.pid
    finally:
        second.stop()
        assert not wait_for_gone(second)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except (FileNotFoundError, IndexError):
        return True


def test_a_file_that_is_not_a_socket_is_never_removed(make_daemon):
    d = make_daemon(start=False)
    d.runtime_dir.mkdir(mode=0o750)
    Path(d.socket).write_text("precious")
    proc = subprocess.run(d.command(), cwd=REPO, env=d.env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 2 and "not a socket" in proc.stderr and "Traceback" not in proc.stderr
    assert Path(d.socket).read_text() == "precious"


# -- an unprivileged client ----------------------------------------------------------------------
def _as_nobody(*argv: str, groups: list[int] | None = None) -> subprocess.CompletedProcess:
    group_args = ["--groups=" + ",".join(map(str, groups))] if groups else ["--clear-groups"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/", "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", *group_args, sys.executable, *argv],
                          capture_output=True, text=True, timeout=30, cwd="/", env=env, check=False)


@pytest.fixture
def open_base():
    """A base dir every user may traverse (tmp_path's parents are root-only)."""
    if os.geteuid() != 0:
        pytest.skip("switching to another user needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv is not installed (util-linux)")
    probe = _as_nobody("-c", "import pipeline_client")
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run this Python or import pipeline_client from {REPO}: {probe.stderr.strip()[-200:]}")
    base = Path(tempfile.mkdtemp(prefix="pd-sec-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def open_daemon(open_base):
    started: list[Daemon] = []

    def start(**kwargs) -> Daemon:
        d = Daemon(open_base / f"d{len(started)}", **kwargs)
        d.base.mkdir(mode=0o755)
        started.append(d)
        return d.start()

    yield start
    for d in started:
        d.stop()
        assert not wait_for_gone(d), f"daemon {d.pid} left processes behind"


def _assert_unreachable(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    text = proc.stderr.strip()
    assert len(text.splitlines()) == 1, text
    for fragment in fragments:
        assert fragment in text, (fragment, text)
    return text


def test_nobody_blocked_by_the_runtime_dir(open_daemon):
    d = open_daemon(workers=1)
    proc = _as_nobody("-m", "pipeline_client.cli", "--socket", d.socket, "ping")
    _assert_unreachable(proc, d.socket, "permission denied", str(d.runtime_dir), "owner root, group root, mode 0750", "you are nobody")


def test_nobody_blocked_by_the_socket_mode(open_daemon):
    d = open_daemon(workers=1)
    os.chmod(d.runtime_dir, 0o755)  # let everyone reach the socket file; its 0660 still says no
    proc = _as_nobody("-m", "pipeline_client.cli", "--socket", d.socket, "status")
    _assert_unreachable(proc, d.socket, "permission denied on the socket", "owner root, group root, mode 0660")
    # The JSON form fails the same way (errors go to stderr either way).
    proc = _as_nobody("-m", "pipeline_client.cli", "--json", "--socket", d.socket, "status")
    _assert_unreachable(proc, d.socket, "mode 0660")


def test_nobody_in_the_socket_group_gets_in(open_daemon, tmp_path):
    name = f"pds{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["groupadd", "--system", name], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"groupadd failed: {made.stderr.strip()}")
    try:
        gid = grp.getgrnam(name).gr_gid
        d = open_daemon(workers=1, args=("--socket-group", name))
        assert os.stat(d.socket).st_gid == gid and os.stat(d.runtime_dir).st_gid == gid
        proc = _as_nobody("-m", "pipeline_client.cli", "--socket", d.socket, "ping", groups=[gid])
        assert proc.returncode == 0, proc.stderr
        # ... and whoever gets in can run code as the daemon's user: that is the trust model.
        proc = _as_nobody("-m", "pipeline_client.cli", "--socket", d.socket, "call", "tests.tasks:getpid", "--wait", groups=[gid])
        assert proc.returncode == 0, proc.stderr
        # Without the group, the same user is turned away with a clear message.
        proc = _as_nobody("-m", "pipeline_client.cli", "--socket", d.socket, "ping")
        _assert_unreachable(proc, d.socket, f"group {name}", "mode 0750")
    finally:
        subprocess.run(["groupdel", name], capture_output=True, check=False)


def test_permission_denied_does_not_suggest_starting_a_daemon(open_daemon):
    d = open_daemon(workers=1)
    proc = _as_nobody("-m", "pipeline_client.cli", "--socket", d.socket, "ping")
    text = _assert_unreachable(proc, "permission denied")
    assert "start it with" not in text
