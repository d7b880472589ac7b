"""Executor: pipelined behind the concurrent.futures.Executor interface.

    with Executor() as ex:
        fut = ex.submit(examples.tasks.square, 4)   # module-level functions only
        fut.result()

submit() sends the task from the caller's thread (under a lock: one socket); a
collector thread owns a second socket and parks `wait(any)` requests for every
outstanding task, resolving futures as tasks end. A pair of inproc sockets wakes
the collector when new tasks arrive, so no polling delay is added.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import threading
from collections.abc import Callable
from typing import Any

import zmq

from pipeline_protocol import decode
from pipeline_protocol.paths import endpoint

from .client import Client, encode_request
from .errors import TaskCancelled, TaskFailed

_instances = itertools.count()
_WAIT_SLICE_S = 30.0


class _TaskFuture(cf.Future):
    """A Future whose cancel() also cancels its task, if the task has not started."""

    def __init__(self, executor: Executor, task_id: str):
        super().__init__()
        self._executor = executor
        self.task_id = task_id

    def cancel(self) -> bool:
        if self.done():
            return self.cancelled()
        if not self._executor._cancel_in_daemon(self.task_id):
            self.set_running_or_notify_cancel()  # it runs (or ran): too late, as for a started future
            return False
        return super().cancel()


class Executor(cf.Executor):
    def __init__(self, socket: str | None = None, **task_options: Any):
        self._client = Client(socket)
        self._options = task_options
        self._lock = threading.Lock()
        self._futures: dict[str, cf.Future] = {}
        self._shutdown = False
        ctx = zmq.Context.instance()
        self._wake_addr = f"inproc://pipeline-executor-{id(self)}-{next(_instances)}"
        self._wake_tx = ctx.socket(zmq.PAIR)
        self._wake_tx.bind(self._wake_addr)
        self._collector = threading.Thread(target=self._collect, name="pipeline-executor", daemon=True)
        self._collector.start()

    def submit(self, fn: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> cf.Future:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot submit after shutdown")
            task_id = self._client.submit(fn, args=list(args), kwargs=kwargs, **self._options)
            future = _TaskFuture(self, task_id)
            self._futures[task_id] = future
            self._wake()
        return future

    def _wake(self) -> None:
        """Nudge the collector. Never blocks: once the collector has left, a PAIR
        send would wait forever for a peer that is gone."""
        if self._wake_tx is None:
            return
        try:
            self._wake_tx.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:
            pass

    def _cancel_in_daemon(self, task_id: str) -> bool:
        """Cancel the task unless it already started (concurrent.futures semantics)."""
        with self._lock:
            if self._wake_tx is None:
                return False  # shut down: the task is the daemon's business now
            reply = self._client.cancel(task_id, if_not_running=True)
        return task_id in reply.get("cancelled", ())

    def _resolve(self, record: dict[str, Any]) -> None:
        with self._lock:
            future = self._futures.pop(record["task_id"], None)
        if future is None or future.cancelled():
            return
        if not future.running() and not future.set_running_or_notify_cancel():
            return
        status = record.get("status")
        if status == "completed":
            future.set_result(record.get("result"))
        elif status == "cancelled":
            future.set_exception(TaskCancelled(record))
        else:
            future.set_exception(TaskFailed(record))

    def _collect(self) -> None:
        ctx = zmq.Context.instance()
        wake_rx = ctx.socket(zmq.PAIR)
        wake_rx.connect(self._wake_addr)
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(endpoint(self._client.socket_path))
        poller = zmq.Poller()
        poller.register(wake_rx, zmq.POLLIN)
        poller.register(sock, zmq.POLLIN)
        rids = itertools.count(1)
        outstanding = 0  # parked wait requests
        try:
            while True:
                with self._lock:
                    ids = list(self._futures)
                    done = self._shutdown and not ids
                if done:
                    return
                if ids and outstanding == 0:
                    fields = {"task_ids": ids, "timeout": _WAIT_SLICE_S, "return_when": "any"}
                    sock.send(encode_request("wait", next(rids), fields))
                    outstanding += 1
                events = dict(poller.poll())
                if wake_rx in events:
                    while wake_rx.poll(0):
                        wake_rx.recv()
                    if ids != list(self._futures) and outstanding:
                        # Newer tasks are not in the parked wait: park one more that covers them.
                        outstanding = 0
                if sock in events:
                    while sock.poll(0):
                        reply = decode(sock.recv_multipart()[-1])
                        outstanding = max(0, outstanding - 1)
                        for record in reply.get("tasks", []) if reply.get("ok") else []:
                            self._resolve(record)
        finally:
            sock.close(linger=0)
            wake_rx.close(linger=0)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As concurrent.futures: may be called more than once; cancel_futures
        cancels the tasks that have not started (running ones finish)."""
        with self._lock:
            self._shutdown = True
            pending = dict(self._futures) if cancel_futures else {}
            self._wake()
        for task_id, future in pending.items():
            if future.cancel():
                with self._lock:
                    self._futures.pop(task_id, None)
                    self._wake()
        if wait and self._wake_tx is not None:
            self._collector.join()
            with self._lock:
                self._wake_tx.close(linger=0)
                self._wake_tx = None
            self._client.close()
