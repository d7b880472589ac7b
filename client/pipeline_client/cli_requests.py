"""Turning pipelinectl's command-line options into task specs for `submit`.

Owns the options shared by `submit` and `call` (what each one means as a task
field), the argparse value types (KEY=VALUE, priorities) and the JSON parsing
of `call` arguments. Everything here raises UsageError or ArgumentTypeError
(exit 2) before any request is sent.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections.abc import Callable
from typing import Any

from pipeline_protocol import parse_priority
from pipeline_protocol.model import PRIORITY_RANGE
from pipeline_protocol.tasks import MAX_RETRIES_LIMIT

from .tasks import int_beyond_wire, int_too_large


class UsageError(Exception):
    """A command line that parses but makes no sense; exit 2."""


def command_spec(args: argparse.Namespace) -> dict[str, Any]:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise UsageError("submit needs a command after --, e.g. pipelinectl submit -- make test")
    return {"command": command, **task_options(args)}


def function_spec(args: argparse.Namespace) -> dict[str, Any]:
    spec = {"function": args.function, "args": [json_arg(a, i) for i, a in enumerate(args.args, 1)], **task_options(args)}
    kwargs = dict(json_kwarg(kv) for kv in args.kwarg or [])
    if kwargs:
        spec["kwargs"] = kwargs
    return spec


def task_options(args: argparse.Namespace) -> dict[str, Any]:
    """The task fields shared by submit and call, as the protocol names them."""
    fields = {
        "task_id": args.id, "priority": args.priority, "dependencies": args.after or None,
        "timeout": args.timeout, "max_retries": args.retries, "retry_backoff": args.backoff,
        "task_type": args.type, "memory_limit_mb": args.memory_limit, "workflow": args.workflow,
        # Like running the command here: relative paths mean what they mean in this shell.
        "cwd": os.path.abspath(args.cwd or os.getcwd()),
        "env": dict(args.env) if args.env else None,
    }
    return {k: v for k, v in fields.items() if v is not None}


def env_assignment(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    return key, value


def priority_arg(text: str) -> int:
    lo, hi = PRIORITY_RANGE
    if text.lstrip("-").isdigit() and len(text) > 20:  # out of range, and past 4300 digits int() refuses it
        raise argparse.ArgumentTypeError(f"priority {text[:20]}... is outside {lo}..{hi}")
    try:
        return parse_priority(int(text) if text.lstrip("-").isdigit() else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


INT64_MAX = (1 << 63) - 1


# -- numeric option types: argparse turns ArgumentTypeError into "argument --x: <message>", exit 2
def seconds_arg(*, zero_ok: bool) -> Callable[[str], float]:
    """A finite number of seconds, > 0 (or >= 0 when zero_ok); never nan or inf."""
    return _number_arg("a finite number of seconds", zero_ok)


def number_arg(*, zero_ok: bool) -> Callable[[str], float]:
    return _number_arg("a finite number", zero_ok)


def _number_arg(what: str, zero_ok: bool) -> Callable[[str], float]:
    bound = ">= 0" if zero_ok else "> 0"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (value == 0 and not zero_ok):
            raise argparse.ArgumentTypeError(f"must be {what} {bound}, not {text!r:.40}")
        return value

    return parse


def count_arg(low: int = 0, high: int = INT64_MAX) -> Callable[[str], int]:
    """An integer from `low` to `high` (by default, any that fits the protocol's int64)."""

    def parse(text: str) -> int:
        if not _INTEGER.match(text):
            raise argparse.ArgumentTypeError(f"must be an integer, not {text!r:.40}")
        digits = text.strip().lstrip("+-")
        if len(digits) > 40 or not low <= int(text) <= high:  # (int() refuses past 4300 digits)
            shown = text.strip() if len(digits) <= 40 else f"{text.strip()[:20]}... ({len(digits)} digits)"
            raise argparse.ArgumentTypeError(f"must be an integer from {low} to {'2**63-1' if high == INT64_MAX else high}, not {shown}")
        return int(text)

    return parse


_INTEGER = re.compile(r"^\s*[+-]?[0-9]+\s*$")
RETRIES_ARG = count_arg(0, MAX_RETRIES_LIMIT)


# -- call arguments: JSON, checked to be something the protocol can carry
def json_arg(text: str, position: int) -> Any:
    what = f"argument {position}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what} is not JSON ({exc.msg}): {text!r:.200}; strings need quotes, e.g. '\"text\"'") from None
    except (ValueError, RecursionError) as exc:
        raise UsageError(_json_limit(what, exc)) from None
    return _wire_value(value, what)


def json_kwarg(text: str) -> tuple[str, Any]:
    key, value = env_assignment(text)
    what = f"--kwarg {key}"
    try:
        return key, _wire_value(json.loads(value), what)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: value is not JSON ({exc.msg}): {value!r:.200}") from None
    except (ValueError, RecursionError) as exc:
        raise UsageError(_json_limit(what, exc)) from None


def _json_limit(what: str, exc: Exception) -> str:
    if isinstance(exc, RecursionError):
        return f"{what} nests too deeply to parse (arguments may nest at most 100 levels)"
    # json.loads lets int()'s digit limit through as a plain ValueError
    return f"{what} {int_too_large(None)}"


def _wire_value(value: Any, what: str) -> Any:
    bad = int_beyond_wire(value)
    if bad is not None:
        raise UsageError(f"{what} {int_too_large(bad)}")
    return value
