"""Turning pipelinectl's command-line options into task specs for `submit`.

Owns the options shared by `submit` and `call` (what each one means as a task
field), the argparse value types (KEY=VALUE, priorities) and the JSON parsing
of `call` arguments. Everything here raises UsageError or ArgumentTypeError
(exit 2) before any request is sent.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from pipeline_protocol import parse_priority


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
    try:
        return parse_priority(int(text) if text.lstrip("-").isdigit() else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def json_arg(text: str, position: int) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"argument {position} is not JSON ({exc.msg}): {text!r}; strings need quotes, e.g. '\"text\"'") from None


def json_kwarg(text: str) -> tuple[str, Any]:
    key, value = env_assignment(text)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--kwarg {key}: value is not JSON ({exc.msg}): {value!r}") from None
