"""Task: one accepted task, its spec and where it stands.

Owned by the scheduler; everything else reads it. `record()` is the public task
record that replies carry (field names from the design brief).
"""

from __future__ import annotations

from typing import Any

from pipeline_protocol import TaskState, priority_label


class Task:
    __slots__ = (
        # spec
        "task_id", "task_type", "function", "command", "cwd", "env", "args", "kwargs",
        "priority", "dependencies", "timeout_s", "max_retries", "retry_backoff_s",
        "memory_limit_mb", "workflow", "has_refs",
        # progress
        "state", "seq", "attempt", "retry_count", "unmet", "result", "error", "reason",
        "submitted_at", "start_time", "end_time", "execution_time", "worker_pid",
        "deadline", "hold", "pending_dependents", "reserved_by", "bucket",
    )

    def __init__(self, spec: dict[str, Any], seq: int, now_wall: float):
        self.task_id: str = spec["task_id"]
        self.task_type: str = spec["task_type"]
        self.function: str | None = spec["function"]
        self.command: list[str] | None = spec["command"]
        self.cwd: str | None = spec["cwd"]
        self.env: dict[str, str] | None = spec["env"]
        self.args: list[Any] = spec["args"]
        self.kwargs: dict[str, Any] = spec["kwargs"]
        self.priority: int = spec["priority"]
        self.bucket: str = priority_label(self.priority)  # high | medium | low, for queue counts
        self.dependencies: list[str] = spec["dependencies"]
        self.timeout_s: float = spec["timeout"]
        self.max_retries: int = spec["max_retries"]
        self.retry_backoff_s: float = spec["retry_backoff"]
        self.memory_limit_mb: float | None = spec["memory_limit_mb"]
        self.workflow: str | None = spec["workflow"]
        self.has_refs: bool = spec.get("has_refs", False)

        self.state = TaskState.PENDING
        self.seq = seq  # FIFO order within a priority
        self.attempt = 0  # attempts started; an attempt id guards against stale results
        self.retry_count = 0
        self.unmet = 0  # dependencies not completed yet
        self.result: Any = None
        self.error: dict[str, Any] | None = None
        self.reason: str | None = None
        self.submitted_at = now_wall
        self.start_time: float | None = None
        self.end_time: float | None = None
        self.execution_time: float | None = None
        self.worker_pid: int | None = None
        self.deadline: float | None = None  # monotonic, while running
        self.hold: str | None = None  # which gate holds a queued task back
        self.reserved_by: int | None = None  # worker pid holding it prefetched (still queued)
        self.pending_dependents = 0  # unfinished tasks that need this one's result: not prunable

    def record(self) -> dict[str, Any]:
        rec = {
            "task_id": self.task_id,
            "status": self.state.value,
            "result": self.result,
            "error": self.error,
            "reason": self.reason,
            "execution_time": self.execution_time,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "retry_count": self.retry_count,
            "priority": self.priority,
            "dependencies": self.dependencies,
            "task_type": self.task_type,
            "worker_pid": self.worker_pid,
            "workflow": self.workflow,
            "submitted_at": self.submitted_at,
            "timeout": self.timeout_s,
            "max_retries": self.max_retries,
        }
        if self.function is not None:
            rec["function"] = self.function
        else:
            rec["command"] = self.command
        if self.hold is not None:
            rec["held_by"] = self.hold
        return rec

    def label(self) -> str:
        """What a process title shows for the task."""
        return self.function if self.function is not None else " ".join(self.command or [])[:60]
