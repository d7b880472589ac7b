"""pipeline-mcp: the MCP shim of pipelined, an MCP server over stdio.

    MCP host --stdio (JSON-RPC)--> pipeline-mcp --pipeline_client.Client (a thread)--> pipelined
                                        |
              tools/list  <--  mcp_tools.TOOLS (descriptions, input schemas)
              tools/call  -->  check_arguments -> one handler below -> result | tool error

Built on the official MCP Python SDK (2.x, the low-level `Server`), which is an
optional dependency (`pip install 'pipelined[mcp]'`): nothing else in
pipeline_client imports this module.

Stateless: every tool call opens its own Client (so a daemon restarted between
calls is simply found again) and holds no task state. Blocking client calls run
in worker threads, never on the event loop; long waits (wait_task, run_pipeline)
are cut into short slices so that progress notifications flow and a cancelled
request stops promptly. Everything that goes wrong in a call becomes a tool
error (`isError`) with a message for the model; the shim itself keeps serving.
While it serves, the SDK points fd 1 at stderr, so a stray print (ours, a
library's) can never corrupt the protocol; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from . import mcp_tools as tools
from .client import Client
from .connection import START_HINT, resolve_socket
from .errors import DaemonUnreachable, PipelineError, RequestError
from .mcp_tools import ToolFailure
from .pipeline import Pipeline, PipelineFileError, did_you_mean, load_pipeline
from .progress import progress_line, snapshot
from .report import END_STATUSES, Records, failure_lines, run_document
from .run import cancel_workflow, fetch

try:
    import anyio
    from mcp import types
    from mcp.server.lowlevel import Server
    from mcp.server.stdio import stdio_server
except ImportError as exc:  # the shim is an optional extra; say how to get it
    _SDK_MISSING: ImportError | None = exc
else:
    _SDK_MISSING = None

log = logging.getLogger("pipeline-mcp")

WAIT_SLICE_S = 1.0  # a wait_task call looks at its task (and reports progress) this often
POLL_S = 0.5  # a run_pipeline call looks at its workflow this often
PROGRESS_EVERY_S = 2.0  # a run's progress is re-sent this often even when nothing changed
CANCEL_ON_ABORT_S = 5.0  # how long an aborted run_pipeline may take to cancel its workflow

INSTRUCTIONS = (
    "pipelined is a parallel processing engine on this machine: a daemon with a pool of worker processes. "
    "Run work with submit_task (a Python function 'package.module:function' importable by the daemon, or a "
    "command argv list) and collect it with wait_task (its result) or get_task (its state); several submitted "
    "tasks run in parallel. run_pipeline runs a whole pipeline file (a DAG of stages) to the end. list_tasks, "
    "cancel_task and parallel_task_management (status, queue_status, resource_status) inspect and steer the "
    "daemon. Times are in seconds."
)


# -- reaching the daemon --------------------------------------------------------------
class Daemon:
    """The daemon's socket, and a fresh Client for each tool call."""

    def __init__(self, socket: str):
        self.socket = socket

    async def call(self, fn: Callable[[Client, dict[str, Any]], Any], args: dict[str, Any]) -> Any:
        """One blocking operation in a worker thread, on a Client of its own."""

        def work() -> Any:
            with Client(self.socket) as client:
                return fn(client, args)

        return await anyio.to_thread.run_sync(work)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[Session]:
        """One Client for the several steps of a long call (used by one step at a time)."""
        client = await anyio.to_thread.run_sync(Client, self.socket)
        try:
            yield Session(client)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(client.close)


class Session:
    def __init__(self, client: Client):
        self.client = client

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        # Not abandoned on cancellation: each step is short (a slice), and the
        # Client must never be used by two threads at once.
        return await anyio.to_thread.run_sync(fn, self.client, *args)


class Progress:
    """MCP progress notifications for one request; a no-op unless the client sent a
    progressToken. `progress` is the seconds elapsed (it always increases); the
    message says what is happening."""

    def __init__(self, ctx: Any):
        self.ctx = ctx
        self.started = time.monotonic()
        self.last = -1.0

    async def __call__(self, message: str) -> None:
        value = round(time.monotonic() - self.started, 3)
        value = value if value > self.last else round(self.last + 0.001, 3)
        self.last = value
        try:
            await self.ctx.session.report_progress(value, None, message)
        except Exception as exc:  # noqa: BLE001  (a client that went away must not fail the call)
            log.debug("progress notification not sent: %s", exc)


# -- the tools ------------------------------------------------------------------------
Handler = Callable[[Daemon, dict[str, Any], Progress], Awaitable[dict[str, Any]]]


async def submit_task(d: Daemon, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    return await d.call(tools.submit, args)


async def get_task(d: Daemon, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    return await d.call(tools.get, args)


async def cancel_task(d: Daemon, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    return await d.call(tools.cancel, args)


async def list_tasks(d: Daemon, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    return await d.call(tools.list_tasks, args)


async def parallel_task_management(d: Daemon, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    return await d.call(tools.daemon_op, args)


def _task_line(record: dict[str, Any]) -> str:
    text = f"task {record['task_id']} {record['status']}"
    if record.get("reason"):
        text += f" ({record['reason']})"
    if record["status"] == "running" and record.get("retry_count"):
        text += f", attempt {record['retry_count'] + 1}"
    return text


async def wait_task(d: Daemon, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """The record once the task ended; {record, timed_out: true} if `timeout` passed first.
    A task that failed or was cancelled is a tool error (ToolFailure with its record)."""
    task_id, timeout = args["task_id"], args.get("timeout")
    deadline = None if timeout is None else time.monotonic() + timeout
    async with d.session() as s:
        record = await s.run(tools.get, args)  # an unknown id fails here, at once
        await progress(_task_line(record))
        while record["status"] not in END_STATUSES:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return {**record, "timed_out": True}
            step = WAIT_SLICE_S if remaining is None else min(WAIT_SLICE_S, remaining)
            reply = await s.run(Client.wait, [task_id], step)
            record = reply["tasks"][0] if reply["tasks"] else await s.run(tools.get, args)
            await progress(_task_line(record))
    if record["status"] != "completed":
        raise tools.ended_badly(record)
    return record


async def run_pipeline(d: Daemon, args: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """Run a pipeline file to the end; the document of `pipelinectl --json run`.
    A run that did not complete (or passed `timeout`) is a tool error with the document."""
    pipeline = await anyio.to_thread.run_sync(load_pipeline, args["path"])
    env, timeout = args.get("env") or {}, args.get("timeout")
    workflow = pipeline.new_workflow_id()
    tasks = pipeline.expand(workflow, env)
    ids = [t["task_id"] for t in tasks]
    started = time.monotonic()
    deadline = None if timeout is None else started + timeout
    timed_out = submitted = False
    records: Records = {}
    async with d.session() as s:
        try:
            await s.run(Client.submit_many, tasks)
            submitted = True
            await progress(f"workflow {workflow}: {len(pipeline.stages)} stages, {len(ids)} tasks submitted from {pipeline.path}")
            timed_out = await _follow(s, pipeline, workflow, ids, records, started, deadline, progress)
        except anyio.get_cancelled_exc_class():
            # The caller gave up on the run (request cancelled, host gone): like
            # Ctrl-C on pipelinectl run, its unfinished tasks are cancelled.
            with anyio.move_on_after(CANCEL_ON_ABORT_S, shield=True):
                try:
                    await s.run(partial(Client.cancel, workflow=workflow))
                    log.warning("run_pipeline of %s abandoned by the client: cancelled workflow %s", pipeline.path, workflow)
                except PipelineError as exc:
                    log.warning("run_pipeline of %s abandoned by the client; cannot cancel workflow %s: %s", pipeline.path, workflow, exc)
            raise
        except DaemonUnreachable as exc:
            if not submitted:
                raise
            # The run was accepted, so it goes on in the daemon: say how to find it again.
            raise ToolFailure(
                "daemon_unreachable",
                f"run_pipeline: {exc}; workflow {workflow} had been submitted: once the daemon is back, "
                f"list_tasks with workflow={workflow!r} shows how it went",
                {"socket": exc.socket_path, "workflow": workflow},
            ) from None
        if timed_out:
            records = await s.run(cancel_workflow, workflow, ids)
    doc = run_document(pipeline, workflow, records, time.monotonic() - started, interrupted=timed_out)
    if doc["status"] != "completed":
        raise ToolFailure("pipeline_timed_out" if timed_out else "pipeline_failed", _run_failure(doc, timeout if timed_out else None), {"run": doc})
    return doc


async def _follow(s: Session, pipeline: Pipeline, workflow: str, ids: list[str], records: Records, started: float, deadline: float | None, progress: Progress) -> bool:
    """Poll the workflow until every task has ended (False) or the deadline passed (True)."""
    shown, shown_at = "", 0.0
    while True:
        records.update(await s.run(fetch, workflow, len(ids)))
        now = time.monotonic()
        line = progress_line(snapshot(pipeline, workflow, records, now - started))
        state = line.split("] ", 1)[-1]  # the line without its clock
        if state != shown or now - shown_at >= PROGRESS_EVERY_S:
            await progress(line)
            shown, shown_at = state, now
        unfinished = [tid for tid in ids if records.get(tid, {}).get("status") not in END_STATUSES]
        if not unfinished:
            return False
        remaining = None if deadline is None else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            return True
        step = POLL_S if remaining is None else min(POLL_S, remaining)
        await s.run(Client.wait, unfinished, step, "any")


def _run_failure(doc: dict[str, Any], timeout: float | None) -> str:
    head = f"pipeline {doc['pipeline']} (workflow {doc['workflow']}, {doc['file']})"
    counts = ", ".join(f"{n} {status}" for status, n in doc["counts"].items() if n)
    if timeout is not None:
        text = f"{head} did not finish within {timeout:g}s: its unfinished tasks were cancelled ({counts})"
    else:
        text = f"{head} {doc['status']} ({counts})"
    failures = [line.strip() for line in failure_lines(doc)]
    if failures:
        text += "; failures: " + "; ".join(failures)
    return text


HANDLERS: dict[str, Handler] = {
    "submit_task": submit_task,
    "get_task": get_task,
    "wait_task": wait_task,
    "cancel_task": cancel_task,
    "list_tasks": list_tasks,
    "run_pipeline": run_pipeline,
    "parallel_task_management": parallel_task_management,
}
assert HANDLERS.keys() == tools.TOOLS.keys()

REQUEST_HINTS = {
    "unknown_task": "list_tasks shows the tasks the daemon knows (finished ones are pruned after the retention period)",
    "unknown_dependency": "every id in `dependencies` must be a task the daemon already knows",
    "duplicate_task": "choose another task_id, or leave it out to get a generated one",
    "not_permitted": "the daemon's allowed_functions / allow_commands settings refuse this task",
    "draining": "the daemon is shutting down; try again once it has been restarted",
}


# -- MCP glue ---------------------------------------------------------------------------
def _ok(data: dict[str, Any]) -> types.CallToolResult:
    data = tools.jsonable(data)
    text = json.dumps(data, indent=2, ensure_ascii=False)
    return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=data)


def _error(failure: ToolFailure) -> types.CallToolResult:
    structured = {"error": {"code": failure.code, "message": failure.message}, **tools.jsonable(failure.data)}
    content = [types.TextContent(type="text", text=failure.message)]
    if failure.data:
        content.append(types.TextContent(type="text", text=json.dumps(structured, indent=2, ensure_ascii=False)))
    return types.CallToolResult(content=content, structured_content=structured, is_error=True)


def _failure(tool: str, exc: Exception) -> ToolFailure:
    """What the caller should read for an exception out of a tool."""
    if isinstance(exc, ToolFailure):
        return exc
    if isinstance(exc, DaemonUnreachable):
        text = str(exc)
        if "pipelined --runtime-dir" not in text and "permission denied" not in text:
            text += f"; is pipelined running? {START_HINT}"  # a silent daemon: say how to get one
        return ToolFailure("daemon_unreachable", f"{tool}: {text}", {"socket": exc.socket_path})
    if isinstance(exc, RequestError):
        hint = REQUEST_HINTS.get(exc.code)
        return ToolFailure(exc.code, f"{tool}: {exc.message} [{exc.code}]" + (f"; {hint}" if hint else ""), {"details": exc.details} if exc.details else None)
    if isinstance(exc, PipelineFileError):
        return ToolFailure("pipeline_file_error", f"{tool}: {exc}")
    if isinstance(exc, (TypeError, ValueError)):  # the client refused the arguments (unencodable, bad option)
        return ToolFailure("invalid_arguments", f"{tool}: {exc}")
    log.error("%s: unexpected error", tool, exc_info=exc)
    return ToolFailure("internal_error", f"{tool}: unexpected error in pipeline-mcp: {type(exc).__name__}: {exc}")


def build_server(socket: str) -> Server:
    daemon = Daemon(socket)
    listing = [
        types.Tool(
            name=spec.name,
            title=spec.title,
            description=spec.description,
            input_schema=spec.input_schema,
            annotations=types.ToolAnnotations(
                title=spec.title,
                read_only_hint=spec.read_only or None,
                destructive_hint=True if spec.destructive else (False if spec.read_only else None),
                idempotent_hint=spec.idempotent or None,
                open_world_hint=False,
            ),
        )
        for spec in tools.TOOLS.values()
    ]

    async def list_tools(ctx: Any, params: Any) -> types.ListToolsResult:
        return types.ListToolsResult(tools=listing)

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        name, started = params.name, time.monotonic()
        try:
            if name not in HANDLERS:
                hint = did_you_mean(name, HANDLERS) or ""
                raise ToolFailure("unknown_tool", f"unknown tool {name!r}{hint}; the tools are: {', '.join(HANDLERS)}")
            args = tools.check_arguments(name, params.arguments)
            result = _ok(await HANDLERS[name](daemon, args, Progress(ctx)))
        except Exception as exc:  # noqa: BLE001  (the shim never crashes; CancelledError, a BaseException, still propagates)
            result = _error(_failure(name, exc))
        log.info("%s: %s in %.3fs", name, "error" if result.is_error else "ok", time.monotonic() - started)
        return result

    return Server(
        "pipeline-mcp",
        version=_version(),
        title="pipelined",
        instructions=INSTRUCTIONS,
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _version() -> str:
    try:
        return version("pipelined")
    except PackageNotFoundError:
        return "0"


async def serve(socket: str) -> None:
    server = build_server(socket)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline-mcp",
        description="MCP server (stdio) that lets AI agents submit, watch and cancel pipelined tasks and run pipeline files.",
        epilog="Register it with an MCP host as a stdio server; see the README section 'Use from an AI agent (MCP)'.",
    )
    parser.add_argument("--socket", metavar="PATH", help="pipelined's control socket (default: $PIPELINED_SOCKET or the runtime dir's pipelined.sock)")
    parser.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"], help="logging on stderr (default: warning)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(), format="pipeline-mcp: %(levelname)s: %(message)s")
    if _SDK_MISSING is not None:
        print(f"pipeline-mcp: the MCP Python SDK is not installed ({_SDK_MISSING}); install it with: pip install 'pipelined[mcp]'", file=sys.stderr)
        return 2
    socket = resolve_socket(args.socket)
    log.info("serving MCP over stdio for pipelined at %s", socket)
    try:
        anyio.run(serve, socket)
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
