"""AsyncClient: the asyncio twin of Client, same methods, awaited.

Requests multiplex over one DEALER socket: a reader task routes each reply to the
future waiting on its `rid`, so many waits can be outstanding at once.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import zmq
import zmq.asyncio

from pipeline_protocol import decode
from pipeline_protocol.paths import endpoint

from .client import DEFAULT_TIMEOUT_S, check_reply, check_seconds, encode_request
from .connection import probe, resolve_socket
from .errors import DaemonUnreachable, RequestError, raise_for_record
from .tasks import command_task, function_task


class AsyncClient:
    def __init__(self, socket: str | None = None, timeout: float = DEFAULT_TIMEOUT_S):
        check_seconds("timeout", timeout)
        self.socket_path = resolve_socket(socket)
        self.timeout = timeout
        probe(self.socket_path)
        self._ctx = zmq.asyncio.Context.instance()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint(self.socket_path))
        self._rids = itertools.count(1)
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def _read_replies(self) -> None:
        while True:
            frames = await self._sock.recv_multipart()
            try:
                reply = decode(frames[-1])
            except ValueError:
                continue
            fut = self._pending.pop(reply.get("rid"), None) if isinstance(reply, dict) else None
            if fut is not None and not fut.done():
                fut.set_result(reply)

    async def request(self, op: str, *, wait_s: float | None = None, parks: bool = False, **fields: Any) -> dict[str, Any]:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_replies())
        if wait_s is not None:  # (the common case skips the call)
            check_seconds("timeout", wait_s)
        rid = next(self._rids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        await self._sock.send(encode_request(op, rid, fields))
        budget = None if (wait_s is None and (parks or op in ("wait", "result"))) else (wait_s or 0) + self.timeout
        try:
            reply = await asyncio.wait_for(fut, budget)
        except asyncio.TimeoutError:
            raise DaemonUnreachable(self.socket_path, f"no reply to {op!r} within {budget:g}s") from None
        finally:
            self._pending.pop(rid, None)
        return check_reply(reply)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
        self._sock.close(linger=0)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def submit(self, function: str | Callable[..., Any], args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, **options: Any) -> str:
        return (await self.request("submit", task=function_task(function, args, kwargs, **options)))["task_id"]

    async def call(self, function: str | Callable[..., Any], args: Sequence[Any] | None = None, kwargs: dict[str, Any] | None = None, *, wait_timeout: float | None = None, **options: Any) -> Any:
        """Submit a function task and return its result, in one round trip (see Client.call)."""
        fields: dict[str, Any] = {"task": function_task(function, args, kwargs, **options), "wait": True}
        if wait_timeout is not None:
            fields["wait_timeout"] = wait_timeout
        reply = await self.request("submit", wait_s=wait_timeout, parks=True, **fields)
        if reply.get("timed_out"):
            raise TimeoutError(f"task {reply.get('task_id')} did not end within {wait_timeout:g}s")
        return raise_for_record(reply["task"])

    async def submit_command(self, command: Sequence[str], cwd: str | None = None, env: dict[str, str] | None = None, **options: Any) -> str:
        return (await self.request("submit", task=command_task(command, cwd, env, **options)))["task_id"]

    async def submit_many(self, tasks: Iterable[dict[str, Any]]) -> list[str]:
        return (await self.request("submit", tasks=list(tasks)))["task_ids"]

    async def get(self, task_id: str) -> dict[str, Any]:
        return (await self.request("get", task_id=task_id))["task"]

    async def list(self, state: str | None = None, workflow: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        fields = {k: v for k, v in (("state", state), ("workflow", workflow), ("limit", limit)) if v is not None}
        return (await self.request("list", **fields))["tasks"]

    async def wait(self, task_ids: Sequence[str] | str, timeout: float | None = None, return_when: str = "all") -> dict[str, Any]:
        ids = [task_ids] if isinstance(task_ids, str) else list(task_ids)
        return await self.request("wait", wait_s=timeout, task_ids=ids, timeout=timeout, return_when=return_when)

    async def result(self, task_id: str, timeout: float | None = None) -> Any:
        reply = await self.request("result", wait_s=timeout, task_id=task_id, timeout=timeout)
        if reply.get("timed_out"):
            raise TimeoutError(f"task {task_id} did not end within {timeout:g}s")
        return raise_for_record(reply["task"])

    async def cancel(self, task_id: str | None = None, *, workflow: str | None = None) -> dict[str, Any]:
        return await self.request("cancel", **({"task_id": task_id} if workflow is None else {"workflow": workflow}))

    async def ping(self) -> dict[str, Any]:
        return await self.request("ping")

    async def status(self) -> dict[str, Any]:
        return await self.request("status")

    async def queue_status(self) -> dict[str, Any]:
        return await self.request("queue_status")

    async def resource_status(self) -> dict[str, Any]:
        return await self.request("resource_status")

    async def workers(self) -> list[dict[str, Any]]:
        return (await self.request("workers"))["workers"]

    async def workflow_status(self, workflow: str) -> dict[str, Any]:
        return await self.request("workflow_status", workflow=workflow)

    async def drain(self) -> dict[str, Any]:
        return await self.request("drain")

    async def shutdown(self) -> dict[str, Any]:
        return await self.request("shutdown")


__all__ = ["AsyncClient", "RequestError"]
