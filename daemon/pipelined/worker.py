"""Worker: the child side of a forked worker process.

    supervisor ──run──► DEALER (this process) ──► user function / command
         ▲                                            │
         └──────────────── done {ok, result|error} ◄──┘

`worker_main` runs in the child right after fork and never returns (os._exit):
no atexit hooks, no finalizers of objects that belong to the parent. Before it
touches anything it makes the process its own: a new process group (so the
supervisor can kill the whole tree with one killpg), default signal handlers,
every inherited fd above stderr closed (the parent's ZeroMQ and wakeup fds), a
fresh ZeroMQ context, and a parent-death signal so it never outlives the
supervisor.
"""

from __future__ import annotations

import _signal  # getsignal without the enum conversion of signal.getsignal (per task)
import ctypes
import importlib
import os
import selectors
import signal
import subprocess
import sys
import time
import traceback
from collections import deque
from contextlib import contextmanager
from typing import Any

import zmq

from pipeline_protocol import decode, encode
from pipeline_protocol import worker_messages as wm
from pipeline_protocol.codec import MAX_PAYLOAD_BYTES
from pipeline_protocol.tasks import too_deep

from . import titles

PR_SET_PDEATHSIG = 1
SIGUSR1 = int(signal.SIGUSR1)
NOBLOCK = int(zmq.NOBLOCK)
EVENTS = int(zmq.EVENTS)  # plain ints: pyzmq's enum lookups cost more than the calls
POLLIN = int(zmq.POLLIN)
SIGNAL_GRACE_MS = 100  # how long a SIGUSR1 waits for the message it announces
# Set in the environment of everything a task starts: when a descendant escapes
# the worker's tree (double fork), the supervisor still knows whose it is.
TASK_TAG = "PIPELINED_TASK_ID"
MAX_RESULT_DEPTH = 200
TAIL_BYTES = 64 * 1024  # how much of a command's stdout/stderr a result keeps


def worker_main(slot: int, endpoint: str, parent_pid: int) -> None:
    code = 0
    try:
        _make_process_own(parent_pid)
        titles.set_title(f"pipelined: worker {slot} idle")
        _serve(slot, endpoint)
    except BaseException:  # noqa: BLE001 - the child must reach os._exit whatever happens
        code = 70
        try:
            traceback.print_exc()
        except BaseException:
            pass
    finally:
        os._exit(code)


def _die_with_group(signum: int, frame: Any) -> None:
    # The supervisor is gone (parent-death signal) or we were told to stop:
    # take the task's processes with us, they share our process group.
    os.killpg(0, signal.SIGKILL)


def _make_process_own(parent_pid: int) -> None:
    os.setpgid(0, 0)
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGHUP, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, _die_with_group)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    os.closerange(3, _max_fd())


def _max_fd() -> int:
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (ValueError, OSError):
        return 65536


class _Inbox:
    """The worker's side of the channel: runs received but not started, done
    item not sent yet, and the answers to skips.

    Runs may arrive while a task runs (prefetch, flagged "p"): the worker tells
    the supervisor when such a task really starts, in a done message ("next",
    "ns") or, if it holds none, in a start message.
    """

    def __init__(self, sock: zmq.Socket):
        self.sock = sock
        self.runs: deque[dict] = deque()
        self.exit: dict | None = None
        self.held: list[dict] = []  # done items not sent yet, in order (at most the last task's)
        self.current: dict | None = None  # the run item being executed
        self.announced = True  # the supervisor knows `current` started
        self.interruptible = False  # True only while a task runs: the socket is ours to use then
        self.poked = False  # a SIGUSR1 came while we could not answer it

    def on_usr1(self, signum: int, frame: Any) -> None:
        """The supervisor wants an answer now (to a skip).

        Answers between the bytecodes of the task, never inside our own socket
        calls (pyzmq runs signal handlers inside a blocking recv): outside a task
        the signal is only noted, and answered before the next task starts.
        Whether a prefetched task is dropped here or started by the main loop is
        decided by who takes it out of `runs` first: exactly one does.
        """
        if not self.interruptible:
            self.poked = True
            return
        # Not re-entered: pyzmq runs handlers inside its own blocking calls, so a
        # second signal would otherwise nest a socket call in ours. It is noted and
        # answered before the next task instead; and nothing raises into the task.
        self.interruptible = False
        try:
            self.answer()
        except zmq.ZMQError:
            self.poked = True  # try again before the next task starts
        finally:
            self.interruptible = True

    def answer(self) -> None:
        """Take what a signal announced, and report (ends held, the task that runs)."""
        while True:  # once more if another signal came meanwhile (it only noted itself)
            self.poked = False
            # The signal can overtake the message it announces (ZeroMQ delivers
            # through its I/O thread): give the message a moment to land.
            if not self.gather() and self.sock.poll(SIGNAL_GRACE_MS):
                self.gather()
            self.flush()
            if not self.poked:
                break

    def take(self, msg: dict) -> None:
        kind = msg.get("t")
        if kind == wm.RUN:
            self.runs.extend(msg["items"])
        elif kind == wm.SKIP:
            drop = set(msg["ids"])
            kept = [run for run in self.runs if run["id"] not in drop]
            if len(kept) != len(self.runs):
                dropped = [run["id"] for run in self.runs if run["id"] in drop]
                self.runs = deque(kept)
                self.sock.send(encode({"t": wm.SKIPPED, "ids": dropped}))
        elif kind == wm.EXIT:
            self.exit = msg

    def gather(self) -> int:
        """Take whatever already arrived, without waiting; returns how many messages."""
        n = 0
        sock = self.sock
        while sock.getsockopt(EVENTS) & POLLIN:
            try:
                data = sock.recv(NOBLOCK)
            except zmq.Again:  # EVENTS may report a message a moment before it can be read
                break
            self.take(decode(data))
            n += 1
        return n

    def wait(self) -> None:
        self.take(decode(self.sock.recv()))

    def flush(self) -> None:
        """Send the held done items, and say that `current` started if we have not."""
        cur = self.current
        announce = cur is not None and not self.announced
        if not self.held and not announce:
            return
        if not self.held:
            self.sock.send(encode({"t": wm.START, "id": cur["id"], "a": cur["a"], "s": cur["s"]}))
        else:
            msg: dict[str, Any] = {"t": wm.DONE, "items": self.held}
            if announce:
                msg["next"], msg["ns"] = cur["id"], cur["s"]
            self.sock.send(encode(msg))
            self.held = []
        self.announced = True


def _serve(slot: int, endpoint: str) -> None:
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.IDENTITY, b"%d" % os.getpid())
    sock.setsockopt(zmq.LINGER, 2000)
    sock.connect(endpoint)
    sock.send(encode({"t": wm.HELLO, "pid": os.getpid(), "slot": slot}))
    inbox = _Inbox(sock)
    on_usr1 = inbox.on_usr1
    signal.signal(signal.SIGUSR1, on_usr1)
    idle_title = f"pipelined: worker {slot} idle"
    while True:
        if inbox.poked:
            # A signal came between tasks: take its skips before picking the next
            # run, or a run the supervisor asked back (cancel, preempt) would start.
            inbox.answer()
        if not inbox.runs:
            inbox.current = None
            inbox.flush()  # never sleep on held ends
            if inbox.exit is not None:
                break
            titles.set_title(idle_title)
            inbox.wait()
            continue
        msg = inbox.runs.popleft()
        msg["s"] = time.monotonic()
        inbox.current = msg
        inbox.announced = not msg.get("p")
        if inbox.held or not inbox.announced:
            # The last task's end leaves before this one starts, naming it ("next"):
            # were this one to hang, crash or be killed, no finished result dies with
            # it, and the supervisor always knows which task runs (its deadline too).
            inbox.flush()
        titles.set_title(f"pipelined: worker {slot} busy {msg['id']} {_label(msg)}")
        if _signal.getsignal(SIGUSR1) != on_usr1:
            signal.signal(signal.SIGUSR1, inbox.on_usr1)  # a previous task took it over
        inbox.interruptible = True
        try:
            if inbox.poked:  # signalled between the check above and now
                inbox.on_usr1(signal.SIGUSR1, None)
            item = _execute(msg)
        finally:
            inbox.interruptible = False
        inbox.held.append(_checked_done(item))
        if not inbox.runs:
            inbox.gather()  # more work may have come while we ran
    inbox.flush()
    sock.send(encode({"t": wm.BYE, "pid": os.getpid(), "reason": inbox.exit.get("reason", "exit")}))
    sock.close(linger=2000)
    ctx.term()


def _label(msg: dict) -> str:
    if msg.get("f"):
        return msg["f"]
    return " ".join(msg.get("c") or [])[:60]


# -- running one task -----------------------------------------------------
def _execute(msg: dict) -> dict:
    os.environ[TASK_TAG] = msg["id"]
    started = time.perf_counter()
    result: Any = None
    error: dict | None = None
    try:
        if msg.get("f"):
            result = _call_function(msg)
        else:
            result, error = _run_command(msg)
    except BaseException as exc:  # noqa: BLE001 - SystemExit and KeyboardInterrupt are task failures too
        error = describe_exception(exc)
    exec_s = time.perf_counter() - started
    os.environ.pop(TASK_TAG, None)
    return {"id": msg["id"], "a": msg["a"], "ok": error is None, "result": result, "error": error, "exec_s": exec_s, "s": msg["s"]}


_PLAIN = (type(None), bool, int, float)


def _checked_done(item: dict) -> dict:
    """The done item, made sure to travel: a result that is too deep, cannot be
    encoded, would not decode on the other side, or is too large becomes an
    error. Plain scalars need no check."""
    result = item["result"]
    if type(result) in _PLAIN and item["error"] is None:
        return item
    if isinstance(result, (list, tuple, dict)) and too_deep(result, MAX_RESULT_DEPTH):
        # Replies wrap a result in a few more levels; past this the codec could not carry them.
        return _failed(item, "ResultTooDeep", f"the task's result nests deeper than {MAX_RESULT_DEPTH} levels")
    try:
        data = encode(item)
    except (TypeError, ValueError, OverflowError) as exc:
        return _failed(item, "UnencodableResult", f"the task's result cannot be sent back (msgpack): {exc}")
    if len(data) > MAX_PAYLOAD_BYTES:
        return _failed(item, "ResultTooLarge", f"the task's result is {len(data)} bytes; the limit is {MAX_PAYLOAD_BYTES} [too_large]")
    if isinstance(result, (list, tuple, dict)):
        try:  # a tuple as a dict key encodes, but comes back as an unhashable list
            decode(data)
        except ValueError as exc:
            return _failed(item, "UnencodableResult", f"the task's result cannot be sent back (msgpack): {exc}; dict keys must be str, int, float, bool, bytes or None")
    return item


def _failed(item: dict, kind: str, message: str) -> dict:
    item["ok"], item["result"] = False, None
    item["error"] = {"type": kind, "message": message, "traceback": None}
    return item


def describe_exception(exc: BaseException) -> dict[str, Any]:
    """Type, message and traceback as text. Must not raise, whatever `exc` does."""
    try:
        cls = type(exc)
        name = cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
    except BaseException:
        name = "Exception"
    try:
        message = str(exc)
    except BaseException:
        try:
            message = repr(exc)
        except BaseException:
            message = "<exception message unavailable: its __str__ and __repr__ raised>"
    try:
        tb = "".join(traceback.format_exception(exc))
    except BaseException:
        tb = None
    return {"type": str(name), "message": str(message), "traceback": tb}


@contextmanager
def _task_context(cwd: str | None, env: dict[str, str] | None):
    """cwd and env for a function task, restored afterwards (the worker is reused)."""
    old_cwd = os.getcwd() if cwd else None
    saved = {k: os.environ.get(k) for k in env} if env else {}
    added_path = False
    try:
        if cwd:
            os.chdir(cwd)
            if cwd not in sys.path:
                sys.path.insert(0, cwd)
                added_path = True
        if env:
            os.environ.update(env)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if added_path:
            try:
                sys.path.remove(cwd)
            except ValueError:
                pass
        if old_cwd is not None:
            os.chdir(old_cwd)


_resolved: dict[str, Any] = {}  # function path -> the callable (modules are never reloaded anyway)


def resolve_function(path: str) -> Any:
    target = _resolved.get(path)
    if target is None:
        target = _resolved[path] = _resolve(path)
    return target


def _resolve(path: str) -> Any:
    module_name, _, qualname = path.partition(":")
    target: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise TypeError(f"{path} is not callable")
    return target


def _call_function(msg: dict) -> Any:
    if "cwd" not in msg and "env" not in msg:  # the common case: nothing to set up and restore
        return resolve_function(msg["f"])(*msg.get("args") or (), **msg.get("kwargs") or {})
    with _task_context(msg.get("cwd"), msg.get("env")):
        function = resolve_function(msg["f"])
        return function(*msg.get("args") or (), **msg.get("kwargs") or {})


def _run_command(msg: dict) -> tuple[dict, dict | None]:
    env = dict(os.environ)
    env.update(msg.get("env") or {})
    # Same process group as this worker: the supervisor's killpg takes it down too.
    proc = subprocess.Popen(
        msg["c"], cwd=msg.get("cwd") or None, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    out, err = _read_tails(proc)
    code = proc.wait()
    result = {"exit_code": code, "stdout": out, "stderr": err}
    if code == 0:
        return result, None
    what = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
    return result, {"type": "CommandFailed", "message": f"{msg['c'][0]} ended with {what}", "traceback": None, "exit_code": code}


def _read_tails(proc: subprocess.Popen) -> tuple[str, str]:
    """Read stdout and stderr to the end, keeping only the last TAIL_BYTES of each."""
    tails = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    with selectors.DefaultSelector() as sel:
        for stream in tails:
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map():
            for key, _ in sel.select():
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
                    continue
                buf = tails[key.fileobj]
                buf += chunk
                if len(buf) > TAIL_BYTES:
                    del buf[: len(buf) - TAIL_BYTES]
    return tuple(bytes(b).decode("utf-8", "replace") for b in tails.values())  # type: ignore[return-value]
