"""TaskStore: where accepted tasks live, behind one small interface.

The scheduler adds tasks and reports each change with `changed(task)`; the
supervisor calls `flush()` once per loop pass. This store keeps everything in
memory; the durable journal subclasses it and writes the changed tasks of a pass
in one transaction (group commit), so the scheduler never knows the difference.
"""

from __future__ import annotations

from collections.abc import Iterator

from .task import Task


class TaskStore:
    def __init__(self) -> None:
        self._tasks: dict[str, Task] = {}
        self._by_workflow: dict[str, list[str]] = {}
        self._dirty: dict[str, Task] = {}

    def add(self, task: Task) -> None:
        self._tasks[task.task_id] = task
        if task.workflow is not None:
            self._by_workflow.setdefault(task.workflow, []).append(task.task_id)
        self._dirty[task.task_id] = task

    def changed(self, task: Task) -> None:
        self._dirty[task.task_id] = task

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    def values(self) -> Iterator[Task]:
        return iter(self._tasks.values())

    def in_workflow(self, workflow: str) -> list[Task]:
        return [self._tasks[t] for t in self._by_workflow.get(workflow, ()) if t in self._tasks]

    def flush(self) -> int:
        """Persist what changed since the last flush; returns how many tasks."""
        n = len(self._dirty)
        self._dirty.clear()
        return n

    def close(self) -> None:
        self.flush()
