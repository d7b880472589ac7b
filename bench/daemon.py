"""Start and stop a private pipelined for a benchmark run."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pipeline_client import Client
from pipeline_client.errors import PipelineError

REPO = Path(__file__).resolve().parent.parent


class BenchDaemon:
    def __init__(self, workers: int = 2, extra: tuple[str, ...] = ()):
        self.dir = tempfile.mkdtemp(prefix="pipelined-bench-")
        self.socket = os.path.join(self.dir, "run", "pipelined.sock")
        cmd = [sys.executable, "-m", "pipelined", "--runtime-dir", os.path.join(self.dir, "run"),
               "--state-dir", os.path.join(self.dir, "state"), "--workers", str(workers), "--log-level", "warning", *extra]
        self.proc = subprocess.Popen(cmd, cwd=REPO)
        deadline = time.monotonic() + 15
        while True:
            try:
                with Client(self.socket, timeout=1) as c:
                    if sum(w["state"] == "idle" for w in c.workers()) >= workers:
                        break
            except PipelineError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("pipelined did not start")
            time.sleep(0.02)

    def stop(self, keep: bool = False) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)  # runtime dir and journal

    def __enter__(self) -> BenchDaemon:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
