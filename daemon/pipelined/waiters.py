"""Waiters: `wait` and `result` requests parked until their tasks end.

The control socket is a ROUTER, so a reply can be sent whenever it is ready: a
parked request keeps the client's envelope and is answered when its tasks end
(all of them, or any for return_when="any") or at its deadline.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable

from .task import Task


class Waiter:
    __slots__ = ("envelope", "rid", "kind", "task_ids", "remaining", "any", "deadline", "done")

    def __init__(self, envelope: list[bytes], rid: object, kind: str, task_ids: list[str], remaining: set[str], any_: bool, deadline: float | None):
        self.envelope = envelope
        self.rid = rid
        self.kind = kind  # "wait" | "result"
        self.task_ids = task_ids
        self.remaining = remaining
        self.any = any_
        self.deadline = deadline
        self.done = False


class Waiters:
    def __init__(self) -> None:
        self._by_task: dict[str, list[Waiter]] = {}
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._seq = itertools.count()
        self.count = 0

    def park(self, waiter: Waiter) -> None:
        for tid in waiter.remaining:
            self._by_task.setdefault(tid, []).append(waiter)
        if waiter.deadline is not None:
            heapq.heappush(self._deadlines, (waiter.deadline, next(self._seq), waiter))
            if len(self._deadlines) > 2 * self.count + 1024:
                # Answered waiters leave the heap only from its top, at their deadline
                # (a wait's timeout may be hours): drop them all now and then.
                self._deadlines = [e for e in self._deadlines if not e[2].done]
                heapq.heapify(self._deadlines)
        self.count += 1

    def _complete(self, waiter: Waiter, out: list[Waiter]) -> None:
        if not waiter.done:
            waiter.done = True
            self.count -= 1
            out.append(waiter)

    def on_ended(self, tasks: Iterable[Task]) -> list[Waiter]:
        """Waiters that can be answered now that these tasks ended."""
        out: list[Waiter] = []
        for task in tasks:
            for waiter in self._by_task.pop(task.task_id, ()):
                if waiter.done:
                    continue
                waiter.remaining.discard(task.task_id)
                if waiter.any or not waiter.remaining:
                    self._complete(waiter, out)
        return out

    def expired(self, now: float) -> list[Waiter]:
        out: list[Waiter] = []
        while self._deadlines and self._deadlines[0][0] <= now:
            self._complete(heapq.heappop(self._deadlines)[2], out)
        return out

    def next_deadline(self) -> float | None:
        while self._deadlines and self._deadlines[0][2].done:
            heapq.heappop(self._deadlines)
        return self._deadlines[0][0] if self._deadlines else None

    def all(self) -> list[Waiter]:
        out: list[Waiter] = []
        for waiters in self._by_task.values():
            for w in waiters:
                self._complete(w, out)
        self._by_task.clear()
        return out
