"""A private, throw-away Redis for the broker-based peers (RQ, Celery, Dramatiq).

Debian's redis-server, on 127.0.0.1 and a free port, no persistence, in a temp dir; the
runner stops it (and waits) whatever happens.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from bench import procs

POLICY_RC = Path("/usr/sbin/policy-rc.d")


class RedisUnavailable(RuntimeError):
    pass


def find_or_install() -> str:
    exe = shutil.which("redis-server")
    if exe:
        return exe
    if os.geteuid() != 0:
        raise RedisUnavailable("redis-server is not installed and we are not root: run `sudo apt-get install -y redis-server`")
    print("bench: installing redis-server (apt-get)", flush=True)
    # policy-rc.d exit 101 stops the package's postinst from starting a system-wide Redis
    # on 6379 that nobody would stop; ours runs on a private port.
    made_policy = not POLICY_RC.exists()
    if made_policy:
        POLICY_RC.write_text("#!/bin/sh\nexit 101\n")
        POLICY_RC.chmod(0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        apt = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "redis-server"]
        if subprocess.call(apt, env=env, stdout=subprocess.DEVNULL) != 0:
            subprocess.call(["apt-get", "update", "-q"], env=env, stdout=subprocess.DEVNULL)
            subprocess.call(apt, env=env, stdout=subprocess.DEVNULL)
    finally:
        if made_policy:
            POLICY_RC.unlink(missing_ok=True)
    exe = shutil.which("redis-server")
    if not exe:
        raise RedisUnavailable("apt-get install redis-server failed")
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self, env: dict[str, str]):
        exe = find_or_install()
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout.strip()
        cmd = [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
               "--dir", self.dir, "--daemonize", "no", "--protected-mode", "yes"]
        self.proc = procs.spawn(cmd, env=env, cwd=self.dir, log=os.path.join(self.dir, "redis.log"))
        deadline = time.monotonic() + 10
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RedisUnavailable(f"redis-server did not start (log in {self.dir}/redis.log)")
            time.sleep(0.05)

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def flushall(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            if not s.recv(16).startswith(b"+OK"):
                raise RuntimeError("redis FLUSHALL failed")

    def stop(self) -> None:
        procs.stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
