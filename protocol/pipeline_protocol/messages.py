"""The envelope: one msgpack map per request, one per reply.

    request  {"v": 1, "op": "submit", "rid": 7, ...op fields}
    reply    {"v": 1, "rid": 7, "ok": true, ...reply fields}
             {"v": 1, "rid": 7, "ok": false,
              "error": {"code": "unknown_task", "message": "...", "details": {...}}}

`rid` is chosen by the client and echoed so a client can match replies to
requests (a `wait` reply may arrive long after later requests were answered).
"""

from __future__ import annotations

from typing import Any

from .errors import ErrorCode

PROTOCOL_VERSION = 1

# Every op the control socket serves. The daemon's handler table must match this.
OPS = (
    "ping",
    "submit",
    "get",
    "list",
    "wait",
    "result",
    "cancel",
    "status",
    "queue_status",
    "resource_status",
    "workers",
    "workflow_status",
    "drain",
    "shutdown",
)


def request(op: str, rid: int | str | None = None, **fields: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"v": PROTOCOL_VERSION, "op": op}
    if rid is not None:
        msg["rid"] = rid
    msg.update(fields)
    return msg


def ok(rid: Any = None, **fields: Any) -> dict[str, Any]:
    reply: dict[str, Any] = {"v": PROTOCOL_VERSION, "rid": rid, "ok": True}
    reply.update(fields)
    return reply


def error(code: ErrorCode | str, message: str, rid: Any = None, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "rid": rid,
        "ok": False,
        "error": {"code": ErrorCode(code).value, "message": message, "details": details or {}},
    }
