"""pipeline_protocol: the wire format shared by pipelined and its clients.

Owns the message envelope, the msgpack codec and its limits, error codes, task
states and failure reasons, task-spec validation, and socket path resolution.
Imports nothing from the daemon or the client, and needs only msgpack.
"""

from .codec import Ref, decode, encode
from .errors import ErrorCode, ProtocolError
from .messages import OPS, PROTOCOL_VERSION, error, ok, request
from .model import (
    END_STATES,
    PRIORITY_NAMES,
    FailureReason,
    TaskState,
    parse_priority,
    priority_label,
)
from .paths import default_runtime_dir, default_socket_path, default_state_dir, socket_path_in
from .tasks import validate_task_spec

__all__ = [
    "END_STATES",
    "OPS",
    "PRIORITY_NAMES",
    "PROTOCOL_VERSION",
    "ErrorCode",
    "FailureReason",
    "ProtocolError",
    "Ref",
    "TaskState",
    "decode",
    "default_runtime_dir",
    "default_socket_path",
    "default_state_dir",
    "encode",
    "error",
    "ok",
    "parse_priority",
    "priority_label",
    "request",
    "socket_path_in",
    "validate_task_spec",
]
