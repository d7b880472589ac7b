"""Following the daemon's events live: the library half of `pipelinectl watch`.

    pipelined ──XPUB <runtime dir>/events.sock──► EventWatcher (SUB) ──filters──► event dicts

    from pipeline_client.watch import watch_events
    for event in watch_events(workflow="quality-1", count=10, timeout=30):
        print(event["task_id"], event["status"])

Each event is two frames, a topic (b"task" or b"worker") and one msgpack map:

    task    {"event": "task", "time", "task_id", "status", "reason", "workflow",
             "task_type", "retry_count", "worker_pid"}
    worker  {"event": "worker", "time", "pid", "slot", "what": "started" | "exited", "how"}

This is a live view, not a log: the daemon publishes only while someone
subscribes, a subscription takes a moment to reach it, and nothing from
before is replayed (`list` and `show` have the history). A slow reader
loses events rather than slowing the daemon down. When the daemon restarts,
the watcher reconnects by itself. pyzmq and msgpack only.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from typing import Any

import zmq

from pipeline_protocol import decode
from pipeline_protocol.paths import endpoint, events_socket_path

from .connection import probe, resolve_socket

TOPICS = (b"task", b"worker")


class EventWatcher:
    """A subscription to one daemon's events; connects at once (no event is missed
    for lack of a first `next()`). Iterate it, or call next(timeout_s)."""

    def __init__(
        self,
        socket: str | None = None,
        *,
        workflow: str | None = None,
        task_type: str | None = None,
        states: Iterable[str] | None = None,
        workers: bool = True,
        context: zmq.Context | None = None,
    ):
        self.socket_path = resolve_socket(socket)
        self.path = events_socket_path(self.socket_path)
        probe(self.path)  # DaemonUnreachable, naming the path, instead of waiting forever
        self.workflow = workflow
        self.task_type = task_type
        self.states = frozenset(states) if states else None
        # Worker events carry no workflow, type or state: a task filter leaves them out.
        self.with_workers = workers and workflow is None and task_type is None and self.states is None
        self._sock = (context or zmq.Context.instance()).socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        for topic in TOPICS if self.with_workers else TOPICS[:1]:
            self._sock.setsockopt(zmq.SUBSCRIBE, topic)
        self._sock.connect(endpoint(self.path))

    def matches(self, event: dict[str, Any]) -> bool:
        if event.get("event") != "task":
            return self.with_workers
        return ((self.workflow is None or event.get("workflow") == self.workflow)
                and (self.task_type is None or event.get("task_type") == self.task_type)
                and (self.states is None or event.get("status") in self.states))

    def next(self, timeout_s: float | None = None) -> dict[str, Any] | None:
        """The next matching event, or None if none came within timeout_s (None: wait forever)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            wait_ms = None if deadline is None else max(0, int((deadline - time.monotonic()) * 1000))
            if not self._sock.poll(wait_ms):
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            frames = self._sock.recv_multipart()
            if len(frames) != 2:
                continue
            try:
                event = decode(frames[1])
            except ValueError:
                continue  # not ours to judge; a bad frame must not end the watch
            if isinstance(event, dict) and self.matches(event):
                return event

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            event = self.next()
            if event is not None:
                yield event

    def close(self) -> None:
        self._sock.close(linger=0)

    def __enter__(self) -> EventWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def watch_events(
    socket: str | None = None,
    *,
    workflow: str | None = None,
    task_type: str | None = None,
    states: Iterable[str] | None = None,
    workers: bool = True,
    count: int | None = None,
    timeout: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield matching events until `count` of them came or `timeout` seconds passed
    (both None: until the caller stops iterating). Connects on the first next():
    to be sure of seeing the first event of something, open an EventWatcher first."""
    deadline = None if timeout is None else time.monotonic() + timeout
    with EventWatcher(socket, workflow=workflow, task_type=task_type, states=states, workers=workers) as watcher:
        seen = 0
        while count is None or seen < count:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            event = watcher.next(remaining)
            if event is None:
                return
            yield event
            seen += 1


# -- one line per event ---------------------------------------------------------
def event_line(event: dict[str, Any]) -> str:
    """12:00:03.120  task    3f2a9c  running  workflow quality-1  type scan  worker 4242"""
    stamp = _stamp(event.get("time"))
    if event.get("event") == "worker":
        how = f" ({event['how']})" if event.get("how") else ""
        return f"{stamp}  worker  {event.get('pid')}  {event.get('what')}{how}  slot {event.get('slot')}"
    status = str(event.get("status"))
    if event.get("reason"):
        status += f" ({event['reason']})"
    parts = [f"{stamp}  task    {event.get('task_id')}  {status}"]
    for key, label in (("workflow", "workflow"), ("task_type", "type"), ("worker_pid", "worker")):
        if event.get(key) is not None and not (key == "task_type" and event[key] == "default"):
            parts.append(f"{label} {event[key]}")
    if event.get("retry_count"):
        parts.append(f"retry {event['retry_count']}")
    return "  ".join(parts)


def _stamp(epoch: Any) -> str:
    if not isinstance(epoch, (int, float)):
        return "--:--:--.---"
    return time.strftime("%H:%M:%S", time.localtime(epoch)) + f".{int(epoch * 1000) % 1000:03d}"
