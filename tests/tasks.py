"""Task functions the tests submit (importable as tests.tasks from the repo root)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time


def noop():
    return None


def square(x):
    return x * x


def add(a, b):
    return a + b


def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


def fail(message="boom"):
    raise ValueError(message)


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def record(path, value):
    """Append a line to a file: lets tests see the order tasks ran in."""
    with open(path, "a") as fh:
        fh.write(f"{value}\n")
    return value


def flaky(path, fail_times):
    """Fail the first `fail_times` calls (counted in a file), then succeed."""
    n = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as fh:
        fh.write(str(n + 1))
    if n < fail_times:
        raise RuntimeError(f"attempt {n + 1} fails")
    return n + 1


def exit_with(code):
    sys.exit(code)


def hard_exit(code):
    os._exit(code)


def segfault():
    import ctypes

    ctypes.string_at(0)


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def spawn_grandchild(pidfile, new_session=False):
    """Start a long sleeper (optionally in its own session), record its pid, then hang."""
    proc = subprocess.Popen(["sleep", "300"], start_new_session=new_session)
    with open(pidfile, "w") as fh:
        fh.write(str(proc.pid))
    time.sleep(300)


def getpid():
    return os.getpid()


class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("__str__ exploded")

    def __repr__(self):
        raise RuntimeError("__repr__ exploded")


def raise_bad_str():
    raise BadStr()


class LockHolder(Exception):
    def __init__(self):
        super().__init__("holds a lock")
        self.lock = threading.Lock()
        self.lock.acquire()


def raise_lock_holder():
    raise LockHolder()


def unencodable():
    return object()


def odd_keys():
    """A result whose map keys JSON cannot carry (msgpack can): bytes and a Ref."""
    from pipeline_protocol.codec import Ref

    return {b"k": 1, b"\xff": 2, Ref("t"): 3, "k": 4}


def big_result(n_bytes):
    return b"x" * n_bytes


def big_alloc(mb, hold_s=5):
    data = bytearray(mb * 1024 * 1024)
    for i in range(0, len(data), 4096):
        data[i] = 1
    time.sleep(hold_s)
    return len(data)


def cwd_and_env(name):
    return {"cwd": os.getcwd(), "value": os.environ.get(name)}


def wait_for_file(path, timeout=30.0):
    """Block until `path` exists: lets a test hold a worker busy and release it at will."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} never appeared")
        time.sleep(0.005)
    return True


def spawn_daemonized(pidfile):
    """Double-fork a setsid sleeper, so it is re-parented away from the worker; record its pid, hang."""
    pid = os.fork()
    if pid == 0:
        try:
            os.setsid()
            grandchild = os.fork()
            if grandchild == 0:
                os.execvp("sleep", ["sleep", "300"])
            with open(pidfile + ".tmp", "w") as fh:
                fh.write(str(grandchild))
            os.rename(pidfile + ".tmp", pidfile)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    time.sleep(300)


def command_child_pid(pidfile):
    """Run `sleep` as a child, record its pid, then wait on it (a busy command-like task)."""
    proc = subprocess.Popen(["sleep", "300"])
    with open(pidfile + ".tmp", "w") as fh:
        fh.write(str(proc.pid))
    os.rename(pidfile + ".tmp", pidfile)
    proc.wait()


def deep(n):
    """A result nested n lists deep."""
    value = []
    for _ in range(n):
        value = [value]
    return value


def crash_once(path, how="exit"):
    """Crash the worker on the first call (a marker file remembers it), succeed on the next."""
    if not os.path.exists(path):
        open(path, "w").close()
        if how == "segv":
            segfault()
        elif how == "kill":
            kill_self()
        elif how == "hang":
            time.sleep(300)
        else:
            os._exit(9)
    return "second attempt"


def durable_step(log_path, tag, value, seconds=0.0, *upstream):
    """Sleep, then append `tag` to log_path in one write, then return value + sum(upstream).

    The durability tests count how often each task ran (at-least-once) from the log and
    check `Ref` arguments through the result: `upstream` are the results of Ref args.
    """
    time.sleep(seconds)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{tag}\n".encode())
    finally:
        os.close(fd)
    return value + sum(upstream)


def gated_step(log_path, tag, gate, value=0, timeout=60.0):
    """Block until the file `gate` exists (the test releases it), then durable_step(log_path, tag, value)."""
    wait_for_file(gate, timeout)
    return durable_step(log_path, tag, value)


def hold_then(mode_path, go_path, how="return"):
    """Fast unless `mode_path` exists; then wait for `go_path` and end as `how` (return | exit).

    Lets a test make the daemon learn that the function is short (so it prefetches the
    next task behind it), then hold a worker busy with it and decide how it ends.
    """
    if not os.path.exists(mode_path):
        return "fast"
    open(go_path + ".started", "w").close()  # the test may wait for this: the task really runs
    deadline = time.monotonic() + 60
    while not os.path.exists(go_path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{go_path} never appeared")
        time.sleep(0.002)
    if how == "exit":
        os._exit(3)
    return "held"


def reset_usr1():
    """Put SIGUSR1 back to its default action (terminate), as some libraries do."""
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    return True


def span(path, tag, seconds):
    """Sleep, then append "tag start end" (monotonic clock, shared by every process):
    lets a test check which tasks overlapped."""
    start = time.monotonic()
    time.sleep(seconds)
    end = time.monotonic()
    with open(path, "a") as fh:
        fh.write(f"{tag} {start} {end}\n")
    return tag


def spin(seconds):
    """Burn CPU for `seconds` (a busy worker for CPU % readings)."""
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
    return n


def gil_bound(log_path, tag):
    """Log a run, then stay inside one C call that holds the GIL (no Python signal
    handler can run) for minutes: only a kill ends it."""
    durable_step(log_path, tag, 0)
    return sum(range(10**11))


def tuple_keyed(value):
    return {(value,): value}  # encodes (as an array key) but cannot be decoded


def tuple_wrapping_tuple_key(value):
    return (value, {(value, 2): "x"})  # a tuple result holding an undecodable key
