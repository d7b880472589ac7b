"""Validation of one task spec as it arrives in a `submit` request.

`validate_task_spec` checks every field's type and range and returns a normalized
copy; defaults that depend on the daemon's configuration (timeout, retries) are
left as None for the daemon to fill. Errors name the field and, when known, the
task, so a user can find the culprit in a batch of thousands.
"""

from __future__ import annotations

import math
import re
from typing import Any

from .codec import Ref, find_refs
from .errors import ErrorCode, ProtocolError
from .model import parse_priority

TASK_ID_MAX = 200
_TASK_ID_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,%d}$" % TASK_ID_MAX)
_FUNCTION_RE = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")

FIELDS = frozenset(
    {
        "task_id",
        "task_type",
        "function",
        "command",
        "cwd",
        "env",
        "args",
        "kwargs",
        "priority",
        "dependencies",
        "timeout",
        "max_retries",
        "retry_backoff",
        "memory_limit_mb",
        "workflow",
    }
)

# Function names already seen to be well formed: a set lookup instead of a regex
# match per task. Bounded, so hostile clients cannot grow it without end.
_good_functions: set[str] = set()
GOOD_FUNCTIONS_MAX = 10_000
MEDIUM = parse_priority("medium")

MAX_RETRIES_LIMIT = 100
MAX_ARG_DEPTH = 100  # nesting of args/kwargs; keeps every recursive walk far from Python's limit
MAX_TIMEOUT_S = 7 * 24 * 3600.0


def _bad(field: str, why: str, task_id: Any = None) -> ProtocolError:
    where = f"task {task_id!r}: " if isinstance(task_id, str) else ""
    return ProtocolError(ErrorCode.INVALID_REQUEST, f"{where}{field} {why}", {"field": field, "task_id": task_id})


def _number(value: Any, field: str, tid: Any, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _bad(field, f"must be a number of seconds, not {value!r}" if field != "memory_limit_mb" else f"must be a number, not {value!r}", tid)
    if not lo < value <= hi:
        raise _bad(field, f"must be > {lo:g} and <= {hi:g}, not {value!r}", tid)
    return float(value)


def too_deep(obj: Any, limit: int) -> bool:
    """Iterative depth check: True when lists/tuples/maps nest deeper than `limit`."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (list, tuple, dict)):
            if depth > limit:
                return True
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return False


def _str_list(value: Any, field: str, tid: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise _bad(field, "must be a list of strings", tid)
    return value


def validate_task_spec(spec: Any) -> dict[str, Any]:
    """Return a normalized copy of `spec` or raise ProtocolError(invalid_request)."""
    if not isinstance(spec, dict):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"a task must be a map, not {type(spec).__name__}")
    tid = spec.get("task_id")
    if not FIELDS.issuperset(spec):
        unknown = sorted(str(k) for k in spec if k not in FIELDS)
        raise _bad(unknown[0], f"is not a task field (known: {', '.join(sorted(FIELDS))})", tid)

    if tid is not None and (not isinstance(tid, str) or not _TASK_ID_RE.fullmatch(tid)):
        raise _bad("task_id", f"must be 1..{TASK_ID_MAX} printable characters, not {tid!r:.80}", None)

    function, command = spec.get("function"), spec.get("command")
    if (function is None) == (command is None):
        raise _bad("function", "or command: give exactly one of them", tid)
    if function is not None and not (type(function) is str and function in _good_functions):
        if not isinstance(function, str) or not _FUNCTION_RE.match(function):
            raise _bad("function", f"must look like 'package.module:qualname', not {function!r:.80}", tid)
        if len(_good_functions) < GOOD_FUNCTIONS_MAX:
            _good_functions.add(function)
    if command is not None:
        if not command:
            raise _bad("command", "must not be empty", tid)
        _str_list(command, "command", tid)
        if any("\0" in arg for arg in command):  # exec could not take it
            raise _bad("command", "must not contain NUL characters", tid)
    cwd, env = spec.get("cwd"), spec.get("env")
    if cwd is not None and (not isinstance(cwd, str) or "\0" in cwd):
        raise _bad("cwd", "must be a string path without NUL characters", tid)
    if env is not None and (not isinstance(env, dict) or (env and not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()))):
        raise _bad("env", "must map strings to strings", tid)
    if env and any("\0" in k or "=" in k or not k or "\0" in v for k, v in env.items()):
        raise _bad("env", "names must be non-empty without '=' or NUL, values without NUL", tid)

    args = spec.get("args", [])
    if args is None:
        args = []
    if not isinstance(args, list):
        raise _bad("args", "must be a list", tid)
    kwargs = spec.get("kwargs", {})
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, dict) or (kwargs and not all(isinstance(k, str) for k in kwargs)):
        raise _bad("kwargs", "must be a map with string keys", tid)
    if (args and too_deep(args, MAX_ARG_DEPTH)) or (kwargs and too_deep(kwargs, MAX_ARG_DEPTH)):
        raise _bad("args", f"nest deeper than {MAX_ARG_DEPTH} levels", tid)
    if command is not None and (args or kwargs):
        raise _bad("args", "and kwargs apply to function tasks only", tid)

    task_type = spec.get("task_type", "default")
    if task_type is None:
        task_type = "default"
    # Printable like a task id (no C0 control character or DEL): both end up in tables and /metrics.
    # (fullmatch: with match, "$" let one trailing newline through.)
    if task_type != "default" and (not isinstance(task_type, str) or not 0 < len(task_type) <= 100 or not _TASK_ID_RE.fullmatch(task_type)):
        raise _bad("task_type", f"must be a non-empty string of at most 100 printable characters, not {task_type!r:.80}", tid)
    try:
        priority = spec.get("priority")
        priority = MEDIUM if priority is None else parse_priority(priority)
    except ValueError as exc:
        raise _bad("priority", str(exc).removeprefix("priority "), tid) from None

    deps = spec.get("dependencies") or []
    if deps:  # most tasks have none: no generator to check an empty list
        _str_list(deps, "dependencies", tid)
    refs = find_refs(args, []) if args else []
    if kwargs:
        find_refs(kwargs, refs)
    dependencies = list(dict.fromkeys([*deps, *refs])) if deps or refs else []  # order kept, duplicates dropped
    if isinstance(tid, str) and tid in dependencies:
        raise ProtocolError(ErrorCode.DEPENDENCY_CYCLE, f"task {tid!r} depends on itself", {"task_id": tid})

    max_retries = spec.get("max_retries")
    if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int) or not 0 <= max_retries <= MAX_RETRIES_LIMIT):
        raise _bad("max_retries", f"must be an integer 0..{MAX_RETRIES_LIMIT}, not {max_retries!r}", tid)
    workflow = spec.get("workflow")
    if workflow is not None and (not isinstance(workflow, str) or not _TASK_ID_RE.fullmatch(workflow)):  # 1..TASK_ID_MAX printable
        raise _bad("workflow", f"must be a non-empty string of at most {TASK_ID_MAX} printable characters, not {workflow!r:.80}", tid)
    # Absent numbers stay None (the daemon's defaults) without a call each.
    timeout, backoff, memory = spec.get("timeout"), spec.get("retry_backoff"), spec.get("memory_limit_mb")
    if timeout is not None:
        timeout = _number(timeout, "timeout", tid, 0, MAX_TIMEOUT_S)
    if backoff is not None:
        backoff = _number(backoff, "retry_backoff", tid, -1e-9, 3600.0)
    if memory is not None:
        memory = _number(memory, "memory_limit_mb", tid, 0, 1024.0 * 1024)

    return {
        "task_id": tid,
        "task_type": task_type,
        "function": function,
        "command": command,
        "cwd": cwd,
        "env": env,
        "args": args,
        "kwargs": kwargs,
        "priority": priority,
        "dependencies": dependencies,
        "timeout": timeout,
        "max_retries": max_retries,
        "retry_backoff": backoff,
        "memory_limit_mb": memory,
        "workflow": workflow,
        "has_refs": bool(refs),  # Ref arguments to replace by upstream results at dispatch
    }


__all__ = ["FIELDS", "Ref", "validate_task_spec"]
