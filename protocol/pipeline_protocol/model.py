"""Task states, failure reasons and priorities: the vocabulary of a task record."""

from __future__ import annotations

import enum


class TaskState(str, enum.Enum):
    PENDING = "pending"  # waiting on dependencies or a retry backoff
    QUEUED = "queued"  # ready, waiting for a worker
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


END_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})


class FailureReason(str, enum.Enum):
    ERROR = "error"  # exception, non-zero exit, unencodable or oversized result
    TIMEOUT = "timeout"
    WORKER_LOST = "worker_lost"
    MEMORY_LIMIT = "memory_limit"
    UPSTREAM_FAILED = "upstream_failed"


PRIORITY_NAMES = {"high": 10, "medium": 0, "low": -10}
PRIORITY_RANGE = (-1000, 1000)


def parse_priority(value: object) -> int:
    """"high" | "medium" | "low" | int -> int; higher runs first."""
    if isinstance(value, str):
        try:
            return PRIORITY_NAMES[value.lower()]
        except KeyError:
            raise ValueError(f"priority must be high, medium, low or an integer, not {value!r}") from None
    if isinstance(value, int) and not isinstance(value, bool):
        lo, hi = PRIORITY_RANGE
        if not lo <= value <= hi:
            raise ValueError(f"priority {value} is outside {lo}..{hi}")
        return value
    raise ValueError(f"priority must be high, medium, low or an integer, not {value!r}")


def priority_label(value: int) -> str:
    """The bucket the seed's queue_status counts a priority in."""
    if value >= PRIORITY_NAMES["high"]:
        return "high"
    if value <= PRIORITY_NAMES["low"]:
        return "low"
    return "medium"
