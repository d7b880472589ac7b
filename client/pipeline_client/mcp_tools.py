"""The MCP shim's tools, without the MCP SDK: names, descriptions, input schemas,
argument checking, and the blocking operations each tool performs through
`pipeline_client.Client`.

    TOOLS[name] -> ToolSpec(description, input_schema, annotations)
    check_arguments(name, raw) -> dict      or ToolFailure("invalid_arguments")
    submit / get / cancel / list / daemon_op      one Client call each (blocking)

mcp_server.py turns these into an MCP server (threads, progress, results). A tool
that cannot do its job raises ToolFailure (a stable `code`, a message written for
the model that called it, and optional structured data such as the task record);
the server answers that with a tool error (`isError`), never a crash.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from .client import Client
from .errors import TaskCancelled, TaskFailed
from .pipeline import did_you_mean
from .render import to_json

END_STATUSES = ("completed", "failed", "cancelled")
STATES = ("pending", "queued", "running", "completed", "failed", "cancelled")
ACTIONS = ("status", "queue_status", "resource_status")
LIST_LIMIT_DEFAULT = 100


class ToolFailure(Exception):
    """A tool call that failed in a way the caller should read: becomes `isError`."""

    def __init__(self, code: str, message: str, data: dict[str, Any] | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data or {}


# -- schemas --------------------------------------------------------------------
SECONDS = "in seconds"
TASK_ID = {"type": "string", "minLength": 1, "description": "The task id that submit_task returned (or that you chose with `task_id`)."}

TASK_PROPERTIES: dict[str, dict[str, Any]] = {
    "function": {
        "type": "string",
        "minLength": 1,
        "description": (
            "Python function to run, written 'package.module:function' (or 'package.module:Class.method'). "
            "The daemon imports it, so it must be importable by the daemon (from its working directory or "
            "installed in its environment); its return value, which must be JSON/msgpack-encodable, becomes "
            "the task's `result`. Give exactly one of `function` or `command`."
        ),
    },
    "command": {
        "type": "array",
        "items": {"type": "string"},
        "minItems": 1,
        "description": (
            "Program to run, as an argv list such as [\"make\", \"test\"] (no shell: use [\"sh\", \"-c\", \"...\"] "
            "for pipes). The result is {exit_code, stdout, stderr} with the tails of the output; a non-zero exit "
            "fails the task. Give exactly one of `function` or `command`."
        ),
    },
    "args": {"type": "array", "description": "Positional arguments for `function` (JSON values). Function tasks only."},
    "kwargs": {"type": "object", "description": "Keyword arguments for `function` (a JSON object). Function tasks only."},
    "priority": {
        "anyOf": [
            {"type": "string", "enum": ["high", "medium", "low"]},
            {"type": "integer", "minimum": -1000, "maximum": 1000},
        ],
        "description": (
            "Scheduling priority: \"high\" (= 10), \"medium\" (= 0, the default), \"low\" (= -10), or an integer "
            "-1000..1000. Higher runs first; tasks of equal priority run in submission order."
        ),
    },
    "dependencies": {
        "type": "array",
        "items": {"type": "string"},
        "description": (
            "Task ids that must complete before this task starts. If one of them fails or is cancelled, this "
            "task fails at once with reason \"upstream_failed\". Unknown ids and cycles are rejected."
        ),
    },
    "timeout": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": (
            f"Hard time limit for each attempt, {SECONDS}. At the deadline the task's whole process tree is "
            "killed and the attempt fails with reason \"timeout\". Default: the daemon's default_task_timeout (300)."
        ),
    },
    "max_retries": {
        "type": "integer",
        "minimum": 0,
        "maximum": 100,
        "description": (
            "How many times a failed attempt (exception, non-zero exit, timeout, lost worker, memory limit) is "
            "retried. Default: the daemon's max_task_retries (3). Use 0 for no retries."
        ),
    },
    "retry_backoff": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": f"Delay before the first retry, {SECONDS}; it doubles with each further retry.",
    },
    "task_id": {
        "type": "string",
        "minLength": 1,
        "maxLength": 200,
        "description": "Your own id for the task (unique, 1..200 printable characters). Default: a generated id.",
    },
    "task_type": {
        "type": "string",
        "minLength": 1,
        "maxLength": 100,
        "description": "A free label; also the key of the daemon's per-type concurrency limits. Default: \"default\".",
    },
    "memory_limit_mb": {
        "type": "number",
        "exclusiveMinimum": 0,
        "description": "Kill the attempt (reason \"memory_limit\") when its memory (RSS, child processes included) exceeds this many MiB.",
    },
    "workflow": {
        "type": "string",
        "minLength": 1,
        "description": "A group id of your choice; list_tasks and cancel_task can select every task of a workflow.",
    },
    "cwd": {"type": "string", "minLength": 1, "description": "Working directory of the task (an absolute path is safest). Default: the daemon's."},
    "env": {
        "type": "object",
        "additionalProperties": {"type": "string"},
        "description": "Extra environment variables for the task, as a map of strings to strings.",
    },
}

RECORD_TEXT = (
    "A task record has: task_id, status (pending = waiting for dependencies or a retry backoff, queued, running, "
    "completed, failed, cancelled), result (the function's return value, or {exit_code, stdout, stderr} for a "
    "command), error ({type, message, traceback} when it raised), reason (why it failed: error, timeout, "
    "worker_lost, memory_limit, upstream_failed), execution_time (seconds), start_time and end_time (Unix "
    "seconds), retry_count, priority, dependencies, task_type, worker_pid, workflow."
)


def _schema(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    return schema


@dataclass(frozen=True)
class ToolSpec:
    name: str
    title: str
    description: str
    input_schema: dict[str, Any]
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False


TOOLS: dict[str, ToolSpec] = {
    spec.name: spec
    for spec in (
        ToolSpec(
            "submit_task",
            "Submit a task",
            "Submit one task to the pipelined daemon, which runs it on its pool of worker processes, and return at "
            "once with {\"task_id\": ...}. A task is either a Python `function` ('package.module:function', importable "
            "by the daemon) with `args`/`kwargs`, or a `command` (an argv list); give exactly one of the two. Then "
            "call wait_task to wait for its result, or get_task to look at it. Failed attempts are retried "
            "(`max_retries`, default 3); `timeout` is a hard limit per attempt in seconds.",
            _schema(TASK_PROPERTIES),
        ),
        ToolSpec(
            "get_task",
            "Get a task",
            "Return the current record of one task, whatever its state (this does not wait; a failed task is "
            "returned as a record, not as an error). " + RECORD_TEXT,
            _schema({"task_id": TASK_ID}, ("task_id",)),
            read_only=True,
            idempotent=True,
        ),
        ToolSpec(
            "wait_task",
            "Wait for a task",
            "Wait until a task has ended and return its record (the function's return value is in `result`). "
            "If the task failed or was cancelled, the call is a tool error whose message says why (reason and "
            "exception); the record is in the structured content under \"task\". If `timeout` seconds pass "
            "first, the current record is returned with \"timed_out\": true (not an error; the task keeps "
            "running: call wait_task again, or cancel_task). Sends progress notifications while waiting when "
            "the client asks for them. " + RECORD_TEXT,
            _schema(
                {
                    "task_id": TASK_ID,
                    "timeout": {
                        "type": "number",
                        "minimum": 0,
                        "description": f"How long to wait at most, {SECONDS} (0: just look). Default: until the task ends. "
                        "Many MCP hosts give up on a tool call after about a minute, so for long tasks wait in steps of 30-60 s.",
                    },
                },
                ("task_id",),
            ),
            read_only=True,
            idempotent=True,
        ),
        ToolSpec(
            "cancel_task",
            "Cancel tasks",
            "Cancel one task (`task_id`) or every unfinished task of a workflow (`workflow`); give exactly one. "
            "A queued or pending task is dropped; a running one has its worker process tree killed. Tasks that "
            "depend on a cancelled task fail with reason \"upstream_failed\". Returns {\"cancelled\": [ids that were "
            "cancelled now], \"status\": the task's state afterwards (for a single task)}; cancelling a task that "
            "already ended cancels nothing and is not an error.",
            _schema(
                {
                    "task_id": TASK_ID,
                    "workflow": {"type": "string", "minLength": 1, "description": "Cancel every unfinished task of this workflow instead of one task."},
                    "if_not_running": {"type": "boolean", "description": "Spare tasks that have already started (default false)."},
                }
            ),
            destructive=True,
            idempotent=True,
        ),
        ToolSpec(
            "list_tasks",
            "List tasks",
            "List task records the daemon knows, oldest first, optionally only those in one state or one workflow. "
            f"Returns {{\"tasks\": [records]}}: the newest `limit` of them (default {LIST_LIMIT_DEFAULT}). " + RECORD_TEXT,
            _schema(
                {
                    "state": {"type": "string", "enum": list(STATES), "description": "Only tasks in this state."},
                    "workflow": {"type": "string", "minLength": 1, "description": "Only tasks of this workflow (a pipeline run's id, or your own `workflow` label)."},
                    "limit": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": 1000000,
                        "description": f"At most this many records (default {LIST_LIMIT_DEFAULT}).",
                    },
                }
            ),
            read_only=True,
            idempotent=True,
        ),
        ToolSpec(
            "run_pipeline",
            "Run a pipeline file",
            "Run a pipeline file (TOML: a [pipeline] table and [stages.NAME] tables of task fields, `needs` and "
            "`shards`) to the end as one workflow, and return the run document, the same as `pipelinectl --json "
            "run FILE`: {workflow, pipeline, file, status, interrupted, elapsed, counts, stages: {name: {status, "
            "reason, retry_count, attempts, execution_time, needs, and task_id/result/error, or for sharded "
            "stages shards/completed/wall_time/tasks}}, critical_path}. If a stage did not complete, the call is a "
            "tool error whose message names the failures, with the document in the structured content under "
            "\"run\". Sends progress notifications while it runs when the client asks for them.",
            _schema(
                {
                    "path": {
                        "type": "string",
                        "minLength": 1,
                        "description": "Path of the pipeline file (.toml). Relative paths resolve against pipeline-mcp's working directory, so prefer an absolute path.",
                    },
                    "env": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                        "description": "Pipeline parameters as a map of strings to strings; they override the file's [pipeline.env] defaults.",
                    },
                    "timeout": {
                        "type": "number",
                        "exclusiveMinimum": 0,
                        "description": f"Deadline for the whole run, {SECONDS}: when it passes, the run's unfinished tasks are cancelled "
                        "and the call is a tool error. Default: no deadline.",
                    },
                },
                ("path",),
            ),
        ),
        ToolSpec(
            "parallel_task_management",
            "Daemon status",
            "Inspect the pipelined daemon. action \"status\": executor status (max_workers, max_concurrent_tasks, "
            "pending_tasks, running_tasks, completed_tasks, failed_tasks, workers, performance_metrics); "
            "\"queue_status\": the ready queue's size and its counts by priority; \"resource_status\": the "
            "resource limits and current CPU/memory usage that gate dispatch. Returns the daemon's reply.",
            _schema(
                {"action": {"type": "string", "enum": list(ACTIONS), "description": "Which report: status, queue_status or resource_status."}},
                ("action",),
            ),
            read_only=True,
            idempotent=True,
        ),
    )
}


# -- argument checking --------------------------------------------------------------
def check_arguments(tool: str, raw: Any) -> dict[str, Any]:
    """The arguments with nulls dropped, or ToolFailure naming the first problem."""
    spec = TOOLS[tool]
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _bad(tool, f"arguments must be a JSON object, not {_kind(raw)}")
    args = {k: v for k, v in raw.items() if v is not None}  # a null means "not given"
    props = spec.input_schema["properties"]
    for key in args:
        if key not in props:
            hint = did_you_mean(key, props) or f"; it takes: {', '.join(props)}"
            raise _bad(tool, f"unknown argument {key!r}{hint}")
    for key in spec.input_schema.get("required", ()):
        if key not in args:
            raise _bad(tool, f"argument {key!r} is required ({props[key]['description']})")
    for key, value in args.items():
        problem = _check(props[key], value)
        if problem:
            failure = _bad(tool, f"argument {key!r} {problem}")
            if key == "action":
                failure.code = "unknown_action"
            raise failure
    if tool == "submit_task" and ("function" in args) == ("command" in args):
        raise _bad(tool, "give exactly one of 'function' (a Python function 'package.module:function') or 'command' (an argv list such as [\"make\", \"test\"])")
    if tool == "cancel_task" and ("task_id" in args) == ("workflow" in args):
        raise _bad(tool, "give exactly one of 'task_id' or 'workflow'")
    return args


def _bad(tool: str, message: str) -> ToolFailure:
    return ToolFailure("invalid_arguments", f"{tool}: {message}")


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, str):
        return f"the string {value!r:.60}"
    return {"list": "an array", "dict": "an object"}.get(type(value).__name__, type(value).__name__)


_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def _check(schema: dict[str, Any], value: Any) -> str | None:
    """What is wrong with `value` under this (small) JSON schema, or None."""
    if "anyOf" in schema:
        if any(_check(alt, value) is None for alt in schema["anyOf"]):
            return None
        return f"must be {_describe(schema)}, not {_kind(value)}"
    kind = schema.get("type")
    if kind and not _TYPES[kind](value):
        return f"must be {_describe(schema)}, not {_kind(value)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"must be one of {', '.join(map(repr, schema['enum']))}, not {value!r:.60}"
    if kind in ("integer", "number"):
        if "minimum" in schema and value < schema["minimum"]:
            return f"must be >= {schema['minimum']}, not {value!r}"
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            return f"must be > {schema['exclusiveMinimum']}, not {value!r}"
        if "maximum" in schema and value > schema["maximum"]:
            return f"must be <= {schema['maximum']}, not {value!r}"
    if kind == "string":
        if len(value) < schema.get("minLength", 0):
            return "must not be empty"
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            return f"must be at most {schema['maxLength']} characters"
    if kind == "array":
        if len(value) < schema.get("minItems", 0):
            return "must not be empty"
        for i, item in enumerate(value):
            problem = _check(schema.get("items", {}), item)
            if problem:
                return f"item {i} {problem}"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        for key, item in value.items():
            problem = _check(schema["additionalProperties"], item)
            if problem:
                return f"entry {key!r} {problem}"
    return None


def _describe(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_describe(alt) for alt in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(map(repr, schema["enum"]))
    kind = schema.get("type")
    if kind == "array" and schema.get("items", {}).get("type") == "string":
        return "an array of strings"
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return "an object mapping strings to strings"
    return {"integer": "an integer", "array": "an array", "object": "an object"}.get(kind, f"a {kind}")


# -- the operations (blocking: the server runs them in a thread) ------------------------
TASK_OPTIONS = ("task_id", "task_type", "priority", "dependencies", "timeout", "max_retries", "retry_backoff", "memory_limit_mb", "workflow", "cwd", "env")


def submit(client: Client, args: dict[str, Any]) -> dict[str, Any]:
    options = {k: args[k] for k in TASK_OPTIONS if k in args}
    if "function" in args:
        task_id = client.submit(args["function"], args.get("args"), args.get("kwargs"), **options)
    else:
        if "args" in args or "kwargs" in args:
            raise _bad("submit_task", "'args' and 'kwargs' apply to function tasks only; put a command's arguments in the 'command' list")
        task_id = client.submit_command(args["command"], options.pop("cwd", None), options.pop("env", None), **options)
    return {"task_id": task_id}


def get(client: Client, args: dict[str, Any]) -> dict[str, Any]:
    return client.get(args["task_id"])


def cancel(client: Client, args: dict[str, Any]) -> dict[str, Any]:
    reply = client.cancel(args.get("task_id"), workflow=args.get("workflow"), if_not_running=args.get("if_not_running", False))
    return strip(reply)


def list_tasks(client: Client, args: dict[str, Any]) -> dict[str, Any]:
    return {"tasks": client.list(state=args.get("state"), workflow=args.get("workflow"), limit=args.get("limit", LIST_LIMIT_DEFAULT))}


def daemon_op(client: Client, args: dict[str, Any]) -> dict[str, Any]:
    return strip(getattr(client, args["action"])())


def strip(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ("v", "rid", "ok")}


def ended_badly(record: dict[str, Any]) -> ToolFailure:
    """The tool error for a task that ended failed or cancelled, with its record."""
    exc = TaskCancelled(record) if record.get("status") == "cancelled" else TaskFailed(record)
    message = str(exc)
    if record.get("retry_count"):
        message += f" (after {record['retry_count']} retr{'y' if record['retry_count'] == 1 else 'ies'})"
    if record.get("reason") == "upstream_failed":
        message += f"; a dependency did not complete (dependencies: {', '.join(record.get('dependencies') or [])})"
    code = "task_cancelled" if record.get("status") == "cancelled" else "task_failed"
    return ToolFailure(code, message, {"task": record})


def jsonable(data: Any) -> Any:
    """Plain JSON data: bytes decoded, Refs as {"ref": id}, NaN/Infinity as strings."""
    return json.loads(to_json(data, indent=None), parse_constant=str)
