"""Fixtures that start a real `pipelined` on a private socket in tmp_path.

`daemon` is a running daemon with 2 workers; `make_daemon(**opts)` starts one
with other flags, config or environment. On teardown every daemon is stopped
and the test fails if any process it started (workers, task processes) is still
alive afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from pipeline_client import Client
from pipeline_client.errors import PipelineError

REPO = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout=10.0, interval=0.01, what="condition"):
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class Daemon:
    def __init__(self, base: Path, workers: int | None = 2, args: tuple[str, ...] = (), env: dict | None = None, config: str | None = None):
        self.base = base
        self.runtime_dir = base / "run"
        self.state_dir = base / "state"
        self.socket = str(self.runtime_dir / "pipelined.sock")
        self.log_path = base / "pipelined.log"
        self.workers = workers
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.env.pop("PIPELINED_SOCKET", None)
        self.config_path = None
        if config is not None:
            base.mkdir(parents=True, exist_ok=True)  # make_daemon creates the dir only after this
            self.config_path = base / "pipelined.toml"
            self.config_path.write_text(config)
        self.proc: subprocess.Popen | None = None
        self._client: Client | None = None
        self.descendants: dict[int, psutil.Process] = {}

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "pipelined", "--runtime-dir", str(self.runtime_dir), "--state-dir", str(self.state_dir)]
        if self.workers is not None:  # None: no --workers flag (the config file decides, and SIGHUP can change it)
            cmd += ["--workers", str(self.workers)]
        if self.config_path is not None:
            cmd += ["--config", str(self.config_path)]
        return cmd + self.args

    def start(self, wait: bool = True) -> Daemon:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), cwd=REPO, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 15.0, idle: bool = True) -> None:
        """Until the pool is up: every worker idle, or (idle=False, after a restart that
        may hand them restored tasks at once) merely there."""
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(f"pipelined exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if not os.path.exists(self.socket):
                return False
            try:
                with Client(self.socket, timeout=1.0) as c:
                    workers = c.workers()
            except PipelineError:
                return False
            return len([w for w in workers if w["state"] == "idle" or not idle]) >= (self.workers or 1)

        wait_for(ready, timeout, 0.02, "pipelined to be ready")
        self.remember_descendants()

    def remember_descendants(self) -> set[int]:
        try:
            for p in psutil.Process(self.proc.pid).children(recursive=True):
                self.descendants.setdefault(p.pid, p)
        except psutil.Error:
            pass
        return set(self.descendants)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.socket)
        return self._client

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def worker_pids(self) -> list[int]:
        return [w["pid"] for w in self.client.workers()]

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.remember_descendants()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
                raise AssertionError(f"pipelined did not stop within {timeout}s of SIGTERM:\n{self.log()[-3000:]}")
        self._log.close()
        return self.proc.returncode

    def leftovers(self) -> list[int]:
        """Processes this daemon started that are still alive (zombies count)."""
        # is_running() also checks the start time, so a recycled pid is not blamed on us.
        # A zombie is dead: orphans re-parented to a PID 1 that does not reap stay zombies.
        return [pid for pid, p in self.descendants.items() if _alive(p)]


@pytest.fixture
def make_daemon(tmp_path):
    started: list[Daemon] = []

    def make(workers: int | None = 2, args: tuple[str, ...] = (), env: dict | None = None, config: str | None = None, start: bool = True) -> Daemon:
        d = Daemon(tmp_path / f"d{len(started)}", workers, args, env, config)
        d.base.mkdir(parents=True, exist_ok=True)
        started.append(d)
        if start:
            d.start()
        return d

    yield make
    problems = []
    for d in started:
        d.stop()
        left = wait_for_gone(d)
        if left:
            problems.append(f"daemon {d.proc.pid if d.proc else '?'} left processes behind: {left}")
    for pid in [p for d in started for p in wait_for_gone(d)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not problems, "\n".join(problems)


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_gone(d: Daemon, timeout: float = 3.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        left = d.leftovers()
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()
