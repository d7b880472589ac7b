"""Client: the synchronous client of pipelined.

One ZeroMQ DEALER socket per Client, so a Client belongs to one thread. Each
request carries a fresh `rid`; replies are matched on it, and stale replies (from
a request whose caller gave up waiting) are dropped.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from pipeline_protocol import PROTOCOL_VERSION, decode, encode
from pipeline_protocol.codec import MAX_FRAME_BYTES
from pipeline_protocol.paths import endpoint

from .connection import probe, resolve_socket
from .errors import DaemonUnreachable, RequestError, raise_for_record
from .tasks import command_task, function_task

DEFAULT_TIMEOUT_S = 10.0  # how long a plain request may wait for its reply
CHECK_EVERY_MS = 1000  # while a reply is slow, look this often whether the daemon is still there
IDEMPOTENT_OPS = frozenset({"ping", "get", "list", "wait", "result", "status", "queue_status", "resource_status", "workers", "workflow_status"})
_rids = itertools.count(1)
RCVTIMEO = int(zmq.RCVTIMEO)  # plain ints: pyzmq's enum lookups cost more than the calls
RCVMORE = int(zmq.RCVMORE)


def check_seconds(name: str, value: float | None) -> None:
    """ValueError unless `value` is None or a finite number of seconds >= 0 (nan
    would compare false with every deadline, inf would make no deadline)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number of seconds >= 0 (or None: no limit), not {value!r}")


def encode_request(op: str, rid: int, fields: dict[str, Any]) -> bytes:
    msg = {"v": PROTOCOL_VERSION, "op": op, "rid": rid}
    msg.update(fields)
    try:
        data = encode(msg)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"{op}: arguments must be msgpack-encodable: {exc}") from None
    if len(data) > MAX_FRAME_BYTES:
        # The daemon's socket would drop such a frame unanswered: refuse it here, clearly.
        raise RequestError("too_large", f"{op}: the request is {len(data)} bytes; the limit is {MAX_FRAME_BYTES} (send large data by path, not by value)")
    return data


def check_reply(reply: Any) -> dict[str, Any]:
    if not isinstance(reply, dict):
        raise RequestError("invalid_reply", f"daemon sent a {type(reply).__name__}, not a map")
    if not reply.get("ok"):
        err = reply.get("error") or {}
        raise RequestError(err.get("code", "unknown"), err.get("message", "request failed"), err.get("details"))
    return reply


class Client:
    """Talks to one pipelined daemon. Use as a context manager, or call close()."""

    def __init__(self, socket: str | None = None, timeout: float = DEFAULT_TIMEOUT_S, context: zmq.Context | None = None):
        check_seconds("timeout", timeout)
        self.socket_path = resolve_socket(socket)
        self.timeout = timeout
        probe(self.socket_path)
        self._ctx = context or zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._rcvtimeo = -1  # the socket's RCVTIMEO, cached: set only when it changes
        # Connection events tell a long wait that the daemon went away and came back.
        self._monitor = self._sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        self._connections = 0  # CONNECTED events seen so far
        self._sock.connect(endpoint(self.socket_path))

    def _count_connections(self) -> int:
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)
            if event["event"] == zmq.EVENT_CONNECTED:
                self._connections += 1
        return self._connections

    def _check_daemon(self, sent_at_connection: int) -> bool:
        """Called while a reply is slow: raise DaemonUnreachable if the daemon is
        gone; True when it restarted since the request left (resend it: wait and
        result are idempotent, and the journal kept the tasks). A spurious resend
        (an old CONNECTED event read late) only costs a duplicate reply, dropped."""
        probe(self.socket_path)
        return self._count_connections() > sent_at_connection

    # -- plumbing ---------------------------------------------------------
    def request(self, op: str, *, wait_s: float | None = None, parks: bool = False, after_restart: tuple[str, dict] | None = None, **fields: Any) -> dict[str, Any]:
        """Send one request and return its ok reply; RequestError for an error reply.

        `wait_s` is how long the daemon may legitimately hold the reply (wait,
        result, or any request that `parks`); None means forever. The socket
        timeout is added on top. If the daemon restarts meanwhile, idempotent
        requests are sent again; others are replaced by `after_restart` (op,
        fields), if given.
        """
        if wait_s is not None:  # (the common case skips the call)
            check_seconds("timeout", wait_s)
        rid = next(_rids)
        data = encode_request(op, rid, fields)
        sock = self._sock
        sock.send(data)
        # Events are read only when a reply is slow (no cost here), so the count may be
        # stale; the first connection is never a restart: a long first wait must not
        # be resent (the daemon would build and send the whole reply twice).
        sent_at = max(self._connections, 1)
        budget = None if (wait_s is None and (parks or op in ("wait", "result"))) else (wait_s or 0) + self.timeout
        deadline = None if budget is None else time.monotonic() + budget
        while True:
            slice_ms = CHECK_EVERY_MS if deadline is None else max(0, min(CHECK_EVERY_MS, int((deadline - time.monotonic()) * 1000)))
            if slice_ms != self._rcvtimeo:  # a blocking recv with a timeout: cheaper than poll + recv
                sock.setsockopt(RCVTIMEO, slice_ms)
                self._rcvtimeo = slice_ms
            try:
                payload = sock.recv()
                while sock.getsockopt(RCVMORE):
                    payload = sock.recv()
            except zmq.Again:
                if deadline is not None and time.monotonic() >= deadline:
                    raise DaemonUnreachable(self.socket_path, f"no reply to {op!r} within {budget:g}s") from None
                if self._check_daemon(sent_at):
                    # The daemon restarted: our request died with the old one.
                    if op not in IDEMPOTENT_OPS and after_restart is not None:
                        op, data = after_restart[0], encode_request(after_restart[0], rid, after_restart[1])
                    if op in IDEMPOTENT_OPS:
                        sock.send(data)
                    sent_at = self._connections
                continue
            try:
                reply = decode(payload)
            except ValueError as exc:
                raise RequestError("invalid_reply", str(exc)) from None
            if isinstance(reply, dict) and reply.get("rid") not in (rid, None):
                continue  # a late reply to an abandoned request
            return check_reply(reply)

    def close(self) -> None:
        self._sock.disable_monitor()
        self._monitor.close(linger=0)
        self._sock.close(linger=0)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- tasks ------------------------------------------------------------
    def submit(self, function: str | Callable[..., Any], args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any) -> str:
        """Submit a function task; returns its task id. Options are task fields."""
        return self.request("submit", task=function_task(function, args, kwargs, **options))["task_id"]

    def call(self, function: str | Callable[..., Any], args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, *, wait_timeout: float | None = None, **options: Any) -> Any:
        """Submit a function task and return its result, in one round trip.

        The same as result(submit(...)), with one exchange fewer: the daemon
        replies when the task ends. Raises TaskFailed if it failed, TimeoutError
        if it is still going after `wait_timeout` seconds (it keeps running).
        """
        check_seconds("wait_timeout", wait_timeout)
        spec = function_task(function, args, kwargs, **options)
        # Our own id, so that a wait cut short by a daemon restart can go on as `result`.
        task_id = spec.setdefault("task_id", os.urandom(8).hex())
        fields: dict[str, Any] = {"task": spec, "wait": True}
        if wait_timeout is not None:
            fields["wait_timeout"] = wait_timeout
        again = ("result", {"task_id": task_id, "timeout": wait_timeout})
        reply = self.request("submit", wait_s=wait_timeout, parks=True, after_restart=again, **fields)
        if reply.get("timed_out"):
            raise TimeoutError(f"task {task_id} did not end within {wait_timeout:g}s")
        return raise_for_record(reply["task"])

    def submit_command(self, command: Sequence[str], cwd: str | None = None, env: dict[str, str] | None = None, **options: Any) -> str:
        """Submit a command (argv list) task; returns its task id."""
        return self.request("submit", task=command_task(command, cwd, env, **options))["task_id"]

    def submit_many(self, tasks: Iterable[dict[str, Any]]) -> list[str]:
        """Submit a batch in one round trip, validated as a whole; returns the ids."""
        return self.request("submit", tasks=list(tasks))["task_ids"]

    def get(self, task_id: str) -> dict[str, Any]:
        return self.request("get", task_id=task_id)["task"]

    def list(self, state: str | None = None, workflow: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        fields = {k: v for k, v in (("state", state), ("workflow", workflow), ("limit", limit)) if v is not None}
        return self.request("list", **fields)["tasks"]

    def wait(self, task_ids: Sequence[str] | str, timeout: float | None = None, return_when: str = "all") -> dict[str, Any]:
        """Wait until the tasks end (or any of them, or the timeout).

        Returns {"tasks": [records of ended tasks], "pending": [ids], "timed_out": bool}.
        """
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        return self.request("wait", wait_s=timeout, task_ids=ids, timeout=timeout, return_when=return_when)

    def result(self, task_id: str, timeout: float | None = None) -> Any:
        """The task's result once it ends; TaskFailed if it failed, TimeoutError if it is still going."""
        reply = self.request("result", wait_s=timeout, task_id=task_id, timeout=timeout)
        if reply.get("timed_out"):
            raise TimeoutError(f"task {task_id} did not end within {timeout:g}s")
        return raise_for_record(reply["task"])

    def cancel(self, task_id: str | None = None, *, workflow: str | None = None, if_not_running: bool = False) -> dict[str, Any]:
        """Cancel a task (a running one has its worker killed), or every unfinished
        task of a workflow. if_not_running=True spares tasks that already started.
        Returns {"cancelled": [ids], "status": state of the task}."""
        fields: dict[str, Any] = {"task_id": task_id} if workflow is None else {"workflow": workflow}
        if if_not_running:
            fields["if_not_running"] = True
        return self.request("cancel", **fields)

    # -- daemon -----------------------------------------------------------
    def ping(self) -> dict[str, Any]:
        return self.request("ping")

    def status(self) -> dict[str, Any]:
        return self.request("status")

    def queue_status(self) -> dict[str, Any]:
        return self.request("queue_status")

    def resource_status(self) -> dict[str, Any]:
        return self.request("resource_status")

    def workers(self) -> list[dict[str, Any]]:
        return self.request("workers")["workers"]

    def workflow_status(self, workflow: str) -> dict[str, Any]:
        return self.request("workflow_status", workflow=workflow)

    def drain(self) -> dict[str, Any]:
        return self.request("drain")

    def shutdown(self) -> dict[str, Any]:
        return self.request("shutdown")
