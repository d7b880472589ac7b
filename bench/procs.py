"""Starting and stopping the processes a benchmark needs, and finding any left behind.

Every process the runner starts gets BENCH_MARK=<run id> in its environment; children and
grandchildren inherit it, so even daemonised or reparented leftovers are found by scanning
/proc for that marker (a pid list would miss what setsid'd or double-forked).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

MARK = "BENCH_MARK"  # one value per runner invocation
SESSION_MARK = "BENCH_SESSION"  # one value per peer session (a child process of the runner)


def spawn(cmd: list[str], *, env: dict[str, str] | None = None, cwd: str | Path | None = None,
          log: str | Path | None = None) -> subprocess.Popen:
    """Start cmd in its own session (so its whole group can be signalled), output to log."""
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below, once the child has it
    try:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    finally:
        if log:
            out.close()


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, grace: float = 10.0) -> None:
    """Ask proc's process group to stop, SIGKILL it after grace, and reap proc."""
    if proc.poll() is None:
        _killpg(proc.pid, sig)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    _killpg(proc.pid, signal.SIGKILL)  # stragglers in the group (pool children)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def alive(pid: int) -> bool:
    """True if pid exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def marked(value: str, exclude: set[int] | None = None, var: str = MARK) -> list[int]:
    """Live (non-zombie) pids whose environment carries var=value."""
    needle = f"{var}={value}".encode()
    exclude = exclude or set()
    found = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in exclude:
            continue
        try:
            env = Path(f"/proc/{d}/environ").read_bytes()
        except OSError:
            continue
        if needle in env.split(b"\0") and alive(int(d)):
            found.append(int(d))
    return found


def describe(pids: list[int]) -> list[str]:
    """`ps`-style one-liners for a report."""
    if not pids:
        return []
    r = subprocess.run(["ps", "-o", "pid=,ppid=,stat=,args=", "-p", ",".join(map(str, pids))], capture_output=True, text=True, check=False)
    return [line.strip() for line in r.stdout.splitlines() if line.strip()]


def kill_marked(value: str, exclude: set[int] | None = None, var: str = MARK, grace: float = 3.0) -> list[str]:
    """SIGKILL every process carrying the marker that is still there after `grace` s (some
    pools' workers exit asynchronously after a shutdown); return what was found (for the report)."""
    deadline = time.monotonic() + grace
    while (pids := marked(value, exclude, var)) and time.monotonic() < deadline:
        time.sleep(0.1)
    found = describe(pids)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if alive(p)]
        time.sleep(0.05)
    return found


def kill_pid(pid: int) -> bool:
    """SIGKILL pid if it is alive; True if it was."""
    if not alive(pid):
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    return True
