"""TaskStore: where accepted tasks live, behind one small interface.

The scheduler adds tasks and reports each change with `changed(task)` (and each
end with `ended(task)`); the supervisor calls `flush()` once per loop pass,
before any reply of that pass leaves. This store keeps everything in memory;
the durable journal (journal.py) subclasses it and writes the changes of a pass
in one transaction (group commit), so the scheduler never knows the difference.

Retention: ended tasks are remembered in the order they ended, so pruning the
ones older than the TTL costs only what it removes. One still needed by an
unfinished dependent is set aside and looked at again only once the scheduler
says it is no longer needed (`released`), never on every prune.

Tasks are also indexed by state (`in_state`), so `list --state` reads only the
tasks in that state, not every task.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, ValuesView

from pipeline_protocol import TaskState

from .task import Task


class TaskStore:
    durable = False

    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._by_workflow: dict[str, dict[str, None]] = {}
        self._dirty: dict[str, Task] = {}
        self._end_order: deque[tuple[float, str]] = deque()
        self._kept: dict[str, tuple[float, str]] = {}  # due for pruning, but a dependent still needs them
        self._released: list[tuple[float, str]] = []  # kept ones no dependent needs any more
        self._by_state: dict[TaskState, dict[str, Task]] = {s: {} for s in TaskState}

    def add(self, task: Task) -> None:
        self._index(task)
        self._dirty[task.task_id] = task

    def _index(self, task: Task) -> None:
        self._tasks[task.task_id] = task
        self._by_state[task.state][task.task_id] = task
        if task.workflow is not None:
            self._by_workflow.setdefault(task.workflow, {})[task.task_id] = None

    def changed(self, task: Task) -> None:
        self._dirty[task.task_id] = task

    def moved(self, task: Task, old: TaskState) -> None:
        """`task` went from state `old` to task.state (the scheduler calls it on every change)."""
        del self._by_state[old][task.task_id]
        self._by_state[task.state][task.task_id] = task

    def released(self, task: Task) -> None:
        """No unfinished dependent needs `task` any more: prunable if it was kept."""
        entry = self._kept.pop(task.task_id, None)
        if entry is not None:
            self._released.append(entry)

    def ended(self, task: Task) -> None:
        self._end_order.append((task.end_time or 0.0, task.task_id))

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def values(self) -> ValuesView[Task]:
        """Every task, oldest first (reversible)."""
        return self._tasks.values()

    def in_workflow(self, workflow: str) -> list[Task]:
        return [self._tasks[t] for t in self._by_workflow.get(workflow, ())]

    def in_state(self, state: TaskState) -> ValuesView[Task]:
        """Tasks in `state`, in the order they entered it, reversible (do not change states while iterating)."""
        return self._by_state[state].values()

    def load(self) -> list[Task]:
        """Tasks that survived a restart (none, for a memory store)."""
        return []

    def restore(self, tasks: Iterable[Task]) -> None:
        """Index tasks read back by load() without writing them again."""
        for task in tasks:
            self._index(task)
            if task.end_time is not None and task.state.value in ("completed", "failed", "cancelled"):
                self._end_order.append((task.end_time, task.task_id))
        self._end_order = deque(sorted(self._end_order))

    def prune(self, ended_before: float) -> list[str]:
        """Forget ended tasks whose end_time is older than `ended_before` (epoch s)."""
        gone: list[Task] = []
        due, self._released = self._released, []
        while self._end_order and self._end_order[0][0] < ended_before:
            due.append(self._end_order.popleft())
        for entry in due:
            task_id = entry[1]
            task = self._tasks.get(task_id)
            if task is None or task.end_time is None:
                continue  # already gone
            if task.pending_dependents > 0:
                self._kept[task_id] = entry  # its result is still to be handed on: see released()
                continue
            del self._tasks[task_id]
            del self._by_state[task.state][task_id]
            self._dirty.pop(task_id, None)
            if task.workflow is not None:
                members = self._by_workflow.get(task.workflow)
                if members is not None:
                    members.pop(task_id, None)
                    if not members:
                        del self._by_workflow[task.workflow]
            gone.append(task)
        self._forget(gone)
        return [t.task_id for t in gone]

    def _forget(self, tasks: list[Task]) -> None:
        """Remove pruned tasks from durable storage (nothing to do in memory)."""

    def dirty_count(self) -> int:
        return len(self._dirty)

    def flush(self) -> int:
        """Persist what changed since the last flush; returns how many tasks."""
        n = len(self._dirty)
        self._dirty.clear()
        return n

    def checkpoint(self, idle: bool) -> bool:
        """Compact durable storage if it is due (nothing to do in memory)."""
        return False

    def close(self) -> None:
        self.flush()
