"""pipelinectl: inspect and steer a pipelined daemon, and run pipeline files.

    argv --argparse--> handler(args, session) --Client--> pipelined
                            |
                            v
                        Outcome(data, human view, exit code) --render.emit--> stdout

Owns the command line: the parser, one short handler per command (each sends
its request and returns an Outcome; none prints), and the mapping of every
error to one line on stderr and a named exit code. Task specs are built from
the options in cli_requests.py; `run` lives in run.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

from pipeline_protocol import TaskState

from .cli_requests import (
    RETRIES_ARG,
    UsageError,
    command_spec,
    count_arg,
    env_assignment,
    function_spec,
    number_arg,
    priority_arg,
    seconds_arg,
)
from .client import Client
from .connection import START_HINT
from .errors import DaemonUnreachable, RequestError
from .exit_codes import EXIT_INTERRUPTED, EXIT_OK, EXIT_TASK_FAILED, EXIT_UNREACHABLE, EXIT_USAGE
from .pipeline import PipelineFileError
from .render import (
    Outcome,
    cancel_view,
    drain_view,
    emit,
    mapping_view,
    ping_view,
    shutdown_view,
    streamed,
    strip_envelope,
    task_id_view,
    task_view,
    tasks_view,
    to_json,
    workers_view,
)
from .run import cmd_run
from .top import run_top
from .watch import EventWatcher, event_line


class Session:
    """What a handler needs: its options, and a Client opened on first use."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.as_json: bool = getattr(args, "json", False)
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(socket=getattr(self.args, "socket", None))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# -- handlers: build the request, return the outcome --------------------------------
def cmd_ping(args: argparse.Namespace, s: Session) -> Outcome:
    """Check that the daemon answers."""
    t0 = time.perf_counter()
    reply = strip_envelope(s.client.ping())
    reply.update(socket=s.client.socket_path, rtt_ms=round((time.perf_counter() - t0) * 1000, 2))
    return Outcome(reply, ping_view)


def cmd_status(args: argparse.Namespace, s: Session) -> Outcome:
    """Show the daemon's counters (workers, queued, running, completed, failed)."""
    return Outcome(strip_envelope(s.client.status()), mapping_view)


def cmd_workers(args: argparse.Namespace, s: Session) -> Outcome:
    """Show the worker processes and what each is running."""
    return Outcome({"workers": s.client.workers()}, lambda d: workers_view(d["workers"]))


def cmd_list(args: argparse.Namespace, s: Session) -> Outcome:
    """List tasks, newest last."""
    tasks = s.client.list(state=args.state, workflow=args.workflow, limit=args.limit)
    return Outcome({"tasks": tasks}, lambda d: tasks_view(d["tasks"]))


def cmd_show(args: argparse.Namespace, s: Session) -> Outcome:
    """Show one task: its state, timings, result or error and traceback."""
    return Outcome(s.client.get(args.task_id), task_view)


def cmd_submit(args: argparse.Namespace, s: Session) -> Outcome:
    """Submit a command task (argv after --); print its task id."""
    return _submit(s, command_spec(args))


def cmd_call(args: argparse.Namespace, s: Session) -> Outcome:
    """Submit a function task ('package.module:function'); each ARG_JSON is one JSON argument."""
    return _submit(s, function_spec(args))


def _submit(s: Session, spec: dict[str, Any]) -> Outcome:
    if not s.args.wait:
        task_id = s.client.request("submit", task=spec)["task_id"]
        return Outcome({"task_id": task_id}, task_id_view)
    # Submit and wait in one request: the reply comes when the task ends.
    record = s.client.request("submit", parks=True, task=spec, wait=True)["task"]
    return Outcome(record, task_view, EXIT_OK if record["status"] == "completed" else EXIT_TASK_FAILED)


def cmd_wait(args: argparse.Namespace, s: Session) -> Outcome:
    """Wait until the tasks end; exit 1 if any did not complete (or the timeout passed)."""
    reply = strip_envelope(s.client.wait(args.task_ids, timeout=args.timeout))
    ok = not reply.get("pending") and all(t.get("status") == "completed" for t in reply.get("tasks", []))
    return Outcome(reply, _wait_view, EXIT_OK if ok else EXIT_TASK_FAILED)


def _wait_view(reply: dict[str, Any]) -> str:
    text = tasks_view(reply.get("tasks", []))
    if reply.get("pending"):
        text += f"\nstill not ended after the timeout: {', '.join(reply['pending'])}"
    return text


def cmd_cancel(args: argparse.Namespace, s: Session) -> Outcome:
    """Cancel a task, or every unfinished task of --workflow; queued ones are dropped, running ones killed."""
    if (args.task_id is None) == (args.workflow is None):
        raise UsageError("cancel needs a task id or --workflow W (not both)")
    reply = strip_envelope(s.client.cancel(args.task_id, workflow=args.workflow))
    reply.update({"task_id": args.task_id} if args.workflow is None else {"workflow": args.workflow})
    return Outcome(reply, cancel_view)


def cmd_watch(args: argparse.Namespace, s: Session) -> Outcome:
    """Stream task and worker events live, one line each (--json: JSON lines); Ctrl-C stops.

    --count N stops after N events, --timeout S after S seconds; exit 1 if
    both are given and the N events did not come in time."""
    watcher = EventWatcher(getattr(args, "socket", None), workflow=args.workflow, task_type=args.type, states=args.state)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    seen = 0
    try:
        with watcher:
            while args.count is None or seen < args.count:
                event = watcher.next(None if deadline is None else max(0.0, deadline - time.monotonic()))
                if event is None:
                    break
                print(to_json(event, indent=None) if s.as_json else event_line(event), flush=True)
                seen += 1
    except KeyboardInterrupt:
        return streamed(EXIT_OK)
    if args.count is not None and seen < args.count:
        print(f"pipelinectl: watch: {seen} of {args.count} events within {args.timeout:g}s", file=sys.stderr, flush=True)
        return streamed(EXIT_TASK_FAILED)
    return streamed(EXIT_OK)


def cmd_top(args: argparse.Namespace, s: Session) -> Outcome:
    """A live view of workers (RSS, CPU use), queue and running tasks, redrawn in place; Ctrl-C stops."""
    try:
        run_top(s.client, sys.stdout, args.interval, args.once, s.as_json)
    except KeyboardInterrupt:
        pass
    return streamed(EXIT_OK)


def cmd_drain(args: argparse.Namespace, s: Session) -> Outcome:
    """Stop dispatching; running tasks finish, queued ones stay in the journal."""
    return Outcome(strip_envelope(s.client.drain()), drain_view)


def cmd_shutdown(args: argparse.Namespace, s: Session) -> Outcome:
    """Stop the daemon; like SIGTERM, it drains first, then exits."""
    return Outcome(strip_envelope(s.client.shutdown()), shutdown_view)


# -- the parser -----------------------------------------------------------------------
def _common() -> argparse.ArgumentParser:
    # SUPPRESS defaults let --json/--socket go before or after the command
    # without the subcommand's default wiping out the global value.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS, help="control socket (default: $PIPELINED_SOCKET or the runtime dir's pipelined.sock)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="print JSON instead of tables")
    return common


def _task_option_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--id", metavar="ID", help="task id (default: generated)")
    p.add_argument("--priority", type=priority_arg, metavar="P", help="high, medium, low or an integer (higher runs first)")
    p.add_argument("--after", action="append", metavar="ID", help="run only after task ID completed (repeatable)")
    p.add_argument("--timeout", type=seconds_arg(zero_ok=False), metavar="S", help="hard timeout per attempt, seconds")
    p.add_argument("--retries", type=RETRIES_ARG, metavar="N", help="retries after a failed attempt")
    p.add_argument("--backoff", type=seconds_arg(zero_ok=True), metavar="S", help="first retry delay, seconds (doubles each retry)")
    p.add_argument("--type", metavar="T", help="task type (the key of per-type concurrency limits)")
    p.add_argument("--memory-limit", type=number_arg(zero_ok=False), metavar="MB", help="kill the task if its memory exceeds MB")
    p.add_argument("--workflow", metavar="W", help="group id for list/cancel --workflow")
    p.add_argument("--cwd", metavar="DIR", help="working directory (default: the current one)")
    p.add_argument("--env", action="append", type=env_assignment, metavar="KEY=VALUE", help="environment variable (repeatable)")
    p.add_argument("--wait", action="store_true", help="wait for the task and show its record; exit 1 if it fails")
    return p


def build_parser() -> argparse.ArgumentParser:
    common, task_opts = _common(), _task_option_parser()
    parser = argparse.ArgumentParser(
        prog="pipelinectl", parents=[common],
        description="Inspect and steer a pipelined daemon, and run pipeline files.",
        epilog="exit codes: 0 ok, 1 a task failed, 2 usage or config error, 3 daemon unreachable",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)

    def add(name: str, handler: Any, *extra: argparse.ArgumentParser) -> argparse.ArgumentParser:
        doc = (handler.__doc__ or "").strip()
        summary = doc.split(";")[0].split(". ")[0].rstrip(".")
        p = sub.add_parser(name, parents=[common, *extra], help=summary, description=doc)
        p.set_defaults(handler=handler)
        return p

    add("ping", cmd_ping)
    add("status", cmd_status)
    add("workers", cmd_workers)
    p = add("list", cmd_list)
    p.add_argument("--state", choices=[s.value for s in TaskState], help="only tasks in this state")
    p.add_argument("--workflow", metavar="W", help="only tasks of this workflow")
    p.add_argument("--limit", type=count_arg(1), metavar="N", help="at most N tasks")
    add("show", cmd_show).add_argument("task_id", metavar="ID")
    p = add("submit", cmd_submit, task_opts)
    p.add_argument("command", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command and its arguments")
    p = add("call", cmd_call, task_opts)
    p.add_argument("function", metavar="FUNCTION", help="package.module:function")
    p.add_argument("args", nargs="*", metavar="ARG_JSON", help='positional arguments as JSON: 4 "text" \'[1, 2]\'')
    p.add_argument("--kwarg", action="append", metavar="KEY=JSON", help="keyword argument (repeatable)")
    p = add("wait", cmd_wait)
    p.add_argument("task_ids", nargs="+", metavar="ID")
    p.add_argument("--timeout", type=seconds_arg(zero_ok=True), metavar="S", help="give up after S seconds (exit 1)")
    p = add("cancel", cmd_cancel)
    p.add_argument("task_id", nargs="?", metavar="ID")
    p.add_argument("--workflow", metavar="W", help="cancel every unfinished task of workflow W")
    p = add("run", cmd_run)
    p.add_argument("file", metavar="FILE", help="pipeline file (TOML)")
    p.add_argument("--env", action="append", type=env_assignment, metavar="KEY=VALUE", help="set a pipeline parameter (repeatable; overrides [pipeline] env)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress, just the summary")
    p = add("watch", cmd_watch)
    p.add_argument("--workflow", metavar="W", help="only task events of workflow W")
    p.add_argument("--type", metavar="T", help="only task events of task type T")
    p.add_argument("--state", action="append", choices=[s.value for s in TaskState], help="only task events entering this state (repeatable)")
    p.add_argument("--count", type=count_arg(1), metavar="N", help="stop after N events")
    p.add_argument("--timeout", type=seconds_arg(zero_ok=True), metavar="S", help="stop after S seconds")
    p = add("top", cmd_top)
    p.add_argument("--interval", type=seconds_arg(zero_ok=False), default=1.0, metavar="S", help="seconds between frames (default 1)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    add("drain", cmd_drain)
    add("shutdown", cmd_shutdown)
    return parser


# -- main: every failure is one line on stderr and a named exit code ---------------------
def fail(message: str, code: int) -> int:
    print(f"pipelinectl: {message}", file=sys.stderr, flush=True)
    return code


def unreachable_message(exc: DaemonUnreachable) -> str:
    text = str(exc)
    # Only a missing or silent daemon calls for starting one; a permission problem does not.
    if "pipelined --runtime-dir" not in text and "permission denied" not in text:
        text += f"; {START_HINT}"
    return text


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    session = Session(args)
    try:
        outcome = args.handler(args, session)
        emit(outcome, session.as_json, sys.stdout)
        return outcome.exit_code
    except DaemonUnreachable as exc:
        return fail(unreachable_message(exc), EXIT_UNREACHABLE)
    except PipelineFileError as exc:
        return fail(str(exc), EXIT_USAGE)
    except RequestError as exc:
        return fail(f"{exc.message} [{exc.code}]", EXIT_USAGE)
    except UsageError as exc:
        return fail(str(exc), EXIT_USAGE)
    except KeyboardInterrupt:
        return fail("interrupted", EXIT_INTERRUPTED)
    except BrokenPipeError:
        # stdout closed early (| head): not an error worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    finally:
        session.close()


if __name__ == "__main__":
    sys.exit(main())
