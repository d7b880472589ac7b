"""Stable error codes and the one exception type that carries them."""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(str, enum.Enum):
    """Codes in error replies. Clients may match on them; never rename one."""

    INVALID_REQUEST = "invalid_request"  # malformed frame, wrong shape or types
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_OP = "unknown_op"
    UNKNOWN_TASK = "unknown_task"
    DUPLICATE_TASK = "duplicate_task"
    UNKNOWN_DEPENDENCY = "unknown_dependency"
    DEPENDENCY_CYCLE = "dependency_cycle"
    TOO_LARGE = "too_large"
    NOT_PERMITTED = "not_permitted"
    DRAINING = "draining"
    INTERNAL = "internal"


class ProtocolError(Exception):
    """A request that cannot be served; the edge turns it into an error reply."""

    def __init__(self, code: ErrorCode | str, message: str, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.details = details or {}

    def __str__(self) -> str:
        return f"{self.code.value}: {self.message}"
