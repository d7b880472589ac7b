"""msgpack codec with limits, and the Ref extension type.

Every frame on every pipelined socket is one msgpack object. Decoding is bounded:
the frame size is capped (by ZeroMQ's MAXMSGSIZE on the daemon side and again
here), msgpack caps container lengths at the frame size, and its C unpacker
refuses nesting deeper than its fixed stack. Anything that fails to decode is
reported as a ValueError naming why, never as a crash.
"""

from __future__ import annotations

import threading
from typing import Any

import msgpack

MAX_FRAME_BYTES = 64 * 1024 * 1024  # one request or reply, a batch included
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024  # one task's args+kwargs, or one result

REF_EXT = 1  # msgpack ext code of Ref


class Ref:
    """Stands for the result of another task; implies a dependency on it."""

    __slots__ = ("task_id",)

    def __init__(self, task_id: str):
        if not isinstance(task_id, str) or not task_id:
            raise TypeError(f"Ref needs a task id string, not {task_id!r}")
        self.task_id = task_id

    def __repr__(self) -> str:
        return f"Ref({self.task_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Ref) and other.task_id == self.task_id

    def __hash__(self) -> int:
        return hash(("Ref", self.task_id))


def _default(obj: Any) -> Any:
    if isinstance(obj, Ref):
        return msgpack.ExtType(REF_EXT, obj.task_id.encode())
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    raise TypeError(f"cannot encode object of type {type(obj).__name__}: {obj!r:.80}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == REF_EXT:
        try:
            return Ref(data.decode())
        except (UnicodeDecodeError, TypeError) as exc:
            raise ValueError(f"bad Ref payload: {exc}") from None
    raise ValueError(f"unknown msgpack extension type {code}")


_packer_opts = dict(default=_default, use_bin_type=True, datetime=False)
_local = threading.local()  # one reusable Packer per thread: packb builds a new one per call


def encode(obj: Any) -> bytes:
    """Encode to msgpack; TypeError names the first value that cannot travel."""
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(**_packer_opts)
    elif _local.busy:
        # Re-entered (a signal handler ran inside our `default` hook): the
        # thread's Packer is mid-object, so use a fresh one.
        return msgpack.packb(obj, **_packer_opts)
    _local.busy = True
    try:
        return packer.pack(obj)  # resets its buffer itself when it raises
    finally:
        _local.busy = False


def decode(data: bytes, max_bytes: int = MAX_FRAME_BYTES) -> Any:
    """Decode one frame; ValueError for anything malformed or over the limits."""
    if len(data) > max_bytes:
        raise ValueError(f"frame of {len(data)} bytes exceeds the {max_bytes}-byte limit")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, ext_hook=_ext_hook)
    except msgpack.StackError:
        raise ValueError("message nested too deeply") from None
    except (msgpack.ExtraData, msgpack.FormatError, ValueError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a valid msgpack message: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # msgpack raises a few odd types on truncated input
        raise ValueError(f"not a valid msgpack message: {type(exc).__name__}: {exc}") from None


def find_refs(obj: Any, into: list[str]) -> list[str]:
    """Collect the task ids of every Ref inside args/kwargs (nested too)."""
    if isinstance(obj, Ref):
        into.append(obj.task_id)
    elif isinstance(obj, list):
        for x in obj:
            find_refs(x, into)
    elif isinstance(obj, dict):
        for v in obj.values():
            find_refs(v, into)
    return into


def substitute_refs(obj: Any, results: dict[str, Any]) -> Any:
    """Replace every Ref with its task's result (results maps task id -> result)."""
    if isinstance(obj, Ref):
        return results[obj.task_id]
    if isinstance(obj, list):
        return [substitute_refs(x, results) for x in obj]
    if isinstance(obj, dict):
        return {k: substitute_refs(v, results) for k, v in obj.items()}
    return obj


_ITEMS_KEY = msgpack.packb("items")


def encode_with_items(fields: dict[str, Any], items: list[bytes]) -> bytes:
    """Encode the map `fields` plus an "items" list whose elements are already
    encoded: batches are built from pieces encoded (and checked) one by one,
    without encoding them a second time. `fields` must have under 15 keys."""
    head = encode(fields)
    n = len(items)
    if n < 16:
        array = bytes((0x90 | n,))
    elif n < 0x10000:
        array = b"\xdc" + n.to_bytes(2, "big")
    else:
        array = b"\xdd" + n.to_bytes(4, "big")
    return bytes((head[0] + 1,)) + head[1:] + _ITEMS_KEY + array + b"".join(items)
