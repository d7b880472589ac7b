"""The exceptions a pipeline_client user can catch.

    PipelineError
    ├── DaemonUnreachable   no daemon at the socket, or no reply in time
    ├── RequestError        the daemon refused the request (.code, .details)
    └── TaskFailed          the task ended failed (.reason, .error, .record)
        └── TaskCancelled   ... or was cancelled
"""

from __future__ import annotations

from typing import Any


class PipelineError(Exception):
    """Base of every pipeline_client error."""


class DaemonUnreachable(PipelineError):
    def __init__(self, socket_path: str, why: str):
        super().__init__(f"cannot reach pipelined at {socket_path}: {why}")
        self.socket_path = socket_path
        self.why = why


class RequestError(PipelineError):
    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None):
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message
        self.details = details or {}


class TaskFailed(PipelineError):
    def __init__(self, record: dict[str, Any]):
        self.record = record
        self.task_id: str = record.get("task_id", "?")
        self.status: str = record.get("status", "failed")
        self.reason: str | None = record.get("reason")
        self.error: dict[str, Any] | None = record.get("error")
        super().__init__(self._describe())

    def _describe(self) -> str:
        what = self.status if self.reason is None else f"{self.status} ({self.reason})"
        text = f"task {self.task_id} {what}"
        if self.error:
            text += f": {self.error.get('type', 'Error')}: {self.error.get('message', '')}"
        return text

    @property
    def traceback(self) -> str | None:
        return (self.error or {}).get("traceback")


class TaskCancelled(TaskFailed):
    pass


def raise_for_record(record: dict[str, Any]) -> Any:
    """Return a completed task's result, or raise what its end state means."""
    status = record.get("status")
    if status == "completed":
        return record.get("result")
    if status == "cancelled":
        raise TaskCancelled(record)
    raise TaskFailed(record)
