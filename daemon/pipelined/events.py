"""Events: every task state change and worker start/exit, published live.

An XPUB socket at <runtime dir>/events.sock (mode 0660, like the control
socket). Each event is two frames: a topic (b"task" or b"worker") and one
msgpack map. XPUB tells us about subscriptions, so with nobody listening an
event costs one integer test and nothing is encoded: the dispatch hot path
pays only when someone watches (`pipelinectl watch`).

    task    {"event": "task", "time", "task_id", "status", "reason", "workflow",
             "task_type", "retry_count", "worker_pid"}
    worker  {"event": "worker", "time", "pid", "slot", "what": "started" | "exited", "how"}
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import zmq

from pipeline_protocol import encode

from .task import Task

log = logging.getLogger("pipelined.events")

EVENTS_SOCKET = "events.sock"
NOBLOCK = int(zmq.NOBLOCK)


class EventBus:
    def __init__(self, ctx: zmq.Context, path: str, mode: int = 0o660):
        self.path = path
        self.sock = ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)  # a slow watcher loses events, never stalls the loop
        old = os.umask(0o777 & ~mode)
        try:
            self.sock.bind("ipc://" + path)
        finally:
            os.umask(old)
        os.chmod(path, mode)
        self.subscribers = 0

    def handle_subscriptions(self) -> None:
        """Count (un)subscriptions: XPUB delivers them as b"\\x01topic" / b"\\x00topic"."""
        while True:
            try:
                msg = self.sock.recv(NOBLOCK)
            except zmq.Again:
                return
            if msg[:1] == b"\x01":
                self.subscribers += 1
            elif msg[:1] == b"\x00":
                self.subscribers = max(0, self.subscribers - 1)

    def publish(self, topic: bytes, event: dict[str, Any]) -> None:
        try:
            self.sock.send_multipart([topic, encode(event)], NOBLOCK)
        except zmq.ZMQError as exc:
            log.debug("event dropped: %s", exc)

    def task_changed(self, task: Task) -> None:
        if self.subscribers:
            self.publish(b"task", {
                "event": "task", "time": time.time(), "task_id": task.task_id, "status": task.state.value,
                "reason": task.reason, "workflow": task.workflow, "task_type": task.task_type,
                "retry_count": task.retry_count, "worker_pid": task.worker_pid,
            })

    def worker(self, pid: int, slot: int, what: str, how: str | None = None) -> None:
        if self.subscribers:
            self.publish(b"worker", {"event": "worker", "time": time.time(), "pid": pid, "slot": slot, "what": what, "how": how})

    def close(self) -> None:
        self.sock.close(linger=0)
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
