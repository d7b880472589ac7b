"""Building task specs on the client side (shared by Client, AsyncClient, Executor)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pipeline_protocol.tasks import FIELDS

WIRE_INT_MIN, WIRE_INT_MAX = -(1 << 63), (1 << 64) - 1  # the integers msgpack can carry

# Every task field but what says what to run: those are the submit methods' own arguments.
OPTION_FIELDS = tuple(sorted(FIELDS - {"function", "command", "args", "kwargs"}))
_OPTIONS = frozenset(OPTION_FIELDS)


def function_path(function: str | Callable[..., Any]) -> str:
    """'pkg.mod:qualname' for a string or an importable module-level callable."""
    if isinstance(function, str):
        return function
    module = getattr(function, "__module__", None)
    qualname = getattr(function, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        raise ValueError(
            f"{function!r} cannot be run by a worker: pass 'module:qualname' of a function "
            "defined at module level in an importable module"
        )
    return f"{module}:{qualname}"


def _options(options: dict[str, Any]) -> dict[str, Any]:
    if not options:
        return options
    unknown = options.keys() - _OPTIONS
    if unknown:
        raise TypeError(f"unknown task option(s): {', '.join(sorted(unknown))}")
    out = {k: v for k, v in options.items() if v is not None}
    if "dependencies" in out:
        out["dependencies"] = list(out["dependencies"])
    if "cwd" in out:
        out["cwd"] = str(out["cwd"])
    if "env" in out:
        out["env"] = {str(k): str(v) for k, v in out["env"].items()}
    return out


def function_task(function: str | Callable[..., Any], args: Sequence[Any] | None, kwargs: dict[str, Any] | None, **options: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"function": function_path(function)}
    if args:
        spec["args"] = list(args)
    if kwargs:
        spec["kwargs"] = dict(kwargs)
    spec.update(_options(options))
    return spec


def command_task(command: Sequence[str], cwd: str | None, env: dict[str, str] | None, **options: Any) -> dict[str, Any]:
    if isinstance(command, str):
        raise TypeError("command must be an argv list such as ['make', 'test'], not a string")
    spec: dict[str, Any] = {"command": [str(a) for a in command]}
    if cwd is not None:
        spec["cwd"] = str(cwd)
    if env is not None:
        spec["env"] = dict(env)
    spec.update(_options(options))
    return spec


def int_beyond_wire(value: Any) -> int | None:
    """An integer inside `value` (lists and maps, keys too) that msgpack cannot
    carry, or None. For checking user input before it becomes a request."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, int) and not isinstance(v, bool):
            if not WIRE_INT_MIN <= v <= WIRE_INT_MAX:
                return v
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return None


def int_too_large(value: int | None) -> str:
    """The end of a message about an integer msgpack cannot carry (None: one too
    long even to read). Shown in full unless huge: str() refuses past 4300 digits."""
    if value is None:
        which = "an integer"
    elif value.bit_length() <= 256:
        which = f"the integer {value}"
    else:
        which = f"an integer of about {int(value.bit_length() * 0.30103)} digits"
    return f"has {which}, too large to send (integers must be within -2**63..2**64-1)"
