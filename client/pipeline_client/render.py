"""Rendering pipelinectl output: one Outcome, shown as JSON or as a human view.

A command handler returns an Outcome (plain data, the function that turns that
data into text for a person, the exit code); `emit` prints it either way, so the
JSON and the table always come from the same data. This module also owns the
small formatting vocabulary every view shares: aligned tables, durations, clock
times, one-line descriptions of a task.
"""

from __future__ import annotations

import base64
import json
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .exit_codes import EXIT_OK

ENVELOPE_KEYS = ("v", "rid", "ok")  # protocol plumbing, not worth showing anyone


@dataclass
class Outcome:
    data: Any
    human: Callable[[Any], str]
    exit_code: int = EXIT_OK
    streamed: bool = False  # the command printed as it went (watch, top): nothing left to emit


def streamed(exit_code: int = EXIT_OK) -> Outcome:
    return Outcome(None, lambda _: "", exit_code, streamed=True)


def emit(outcome: Outcome, as_json: bool, stream: TextIO) -> None:
    if outcome.streamed:
        return
    text = to_json(outcome.data) if as_json else outcome.human(outcome.data)
    if text:
        stream.write(text if text.endswith("\n") else text + "\n")
    stream.flush()


def to_json(data: Any, indent: int | None = 2) -> str:
    try:
        return json.dumps(data, indent=indent, default=_json_default, ensure_ascii=False)
    except TypeError:
        # A map key JSON cannot carry (msgpack allows bytes or a Ref as a key):
        # only keys can fail here, `_json_default` takes any value.
        return json.dumps(_json_keys(data), indent=indent, default=_json_default, ensure_ascii=False)


_JSON_KEY_TYPES = (str, int, float, bool, type(None))


def _json_keys(data: Any) -> Any:
    """`data` with every map key JSON cannot carry turned into its str(): b'k'
    becomes "b'k'" (not "k", which may be a str key of the same map), a Ref "Ref('id')"."""
    if isinstance(data, dict):
        return {(k if isinstance(k, _JSON_KEY_TYPES) else str(k)): _json_keys(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_json_keys(v) for v in data]
    return data


def _json_default(obj: Any) -> Any:
    if isinstance(obj, bytes):
        try:
            return obj.decode()
        except UnicodeDecodeError:
            return {"base64": base64.b64encode(obj).decode()}
    task_id = getattr(obj, "task_id", None)  # a Ref inside args
    if isinstance(task_id, str):
        return {"ref": task_id}
    return repr(obj)


def strip_envelope(reply: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in reply.items() if k not in ENVELOPE_KEYS}


# -- formatting vocabulary ------------------------------------------------------
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell; columns listed in `right` right-aligned."""
    cells = [[str(h) for h in headers]] + [["-" if c is None or c == "" else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def clock(epoch: float | None, now: float | None = None) -> str:
    """HH:MM:SS for today, the date as well for anything older."""
    if epoch is None:
        return "-"
    now = time.time() if now is None else now
    same_day = time.localtime(epoch)[:3] == time.localtime(now)[:3]
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", time.localtime(epoch))


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 3)] + "..."


def what(record: dict[str, Any]) -> str:
    """What a task runs: its function, or its command line as a shell would show it."""
    if record.get("function"):
        return str(record["function"])
    command = record.get("command")
    if isinstance(command, list):
        return shlex.join(str(a) for a in command)
    return "-"


def status_text(record: dict[str, Any]) -> str:
    status = str(record.get("status", "?"))
    return f"{status} ({record['reason']})" if record.get("reason") else status


def error_line(record: dict[str, Any]) -> str | None:
    error = record.get("error")
    if not error:
        return None
    message = str(error.get("message", "")).strip().splitlines()
    return f"{error.get('type', 'Error')}: {message[0] if message else ''}".rstrip(": ")


# -- views ------------------------------------------------------------------------
def tasks_view(records: list[dict[str, Any]]) -> str:
    if not records:
        return "no tasks"
    rows = [
        [r.get("task_id"), r.get("status"), r.get("reason"), r.get("priority"), r.get("retry_count"),
         duration(r.get("execution_time")), clock(r.get("submitted_at")), shorten(what(r), 48)]
        for r in records
    ]
    return table(["TASK", "STATUS", "REASON", "PRIO", "RETRIES", "TIME", "SUBMITTED", "RUNS"], rows, right=(3, 4, 5))


def task_view(record: dict[str, Any]) -> str:
    lines = [
        ("task", record.get("task_id")),
        ("status", status_text(record)),
        ("runs", what(record)),
        ("workflow", record.get("workflow")),
        ("type", record.get("task_type")),
        ("priority", record.get("priority")),
        ("needs", ", ".join(record.get("dependencies") or []) or None),
        ("submitted", clock(record.get("submitted_at"))),
        ("started", clock(record.get("start_time"))),
        ("ended", clock(record.get("end_time"))),
        ("time", duration(record.get("execution_time"))),
        ("retries", record.get("retry_count")),
        ("worker", record.get("worker_pid")),
        ("error", error_line(record)),
    ]
    text = table(["", ""], [(k, "-" if v is None else v) for k, v in lines])
    text = text.split("\n", 1)[1]  # no header row for a key/value list
    return text + _result_block(record.get("result")) + _traceback_block(record.get("error"))


def _indent(text: str, prefix: str = "  ") -> str:
    return "\n".join(prefix + line for line in text.rstrip("\n").splitlines())


def _result_block(result: Any) -> str:
    if result is None:
        return ""
    if isinstance(result, dict) and "exit_code" in result:
        # A command's result: the exit code and the tails of its output streams.
        parts = [f"\nexit code {result['exit_code']}"]
        for key, value in result.items():
            if key != "exit_code" and isinstance(value, str) and value.strip():
                parts.append(f"{key}:\n{_indent(value)}")
        return "\n".join(parts)
    return "\nresult:\n" + _indent(to_json(result))


def _traceback_block(error: dict[str, Any] | None) -> str:
    tb = (error or {}).get("traceback")
    return "\ntraceback:\n" + _indent(tb) if tb else ""


def mapping_view(data: dict[str, Any]) -> str:
    """Key/value lines; nested maps flattened to dotted keys."""
    rows = list(_flatten(data))
    if not rows:
        return "-"
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _flatten(data: dict[str, Any], prefix: str = ""):
    for key, value in data.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{key}.")
        elif isinstance(value, float):
            yield f"{prefix}{key}", f"{value:.3f}".rstrip("0").rstrip(".")
        elif isinstance(value, list):
            yield f"{prefix}{key}", ", ".join(map(str, value)) or "-"
        else:
            yield f"{prefix}{key}", "-" if value is None else value


def workers_view(workers: list[dict[str, Any]]) -> str:
    if not workers:
        return "no workers"
    rows = [[w.get("slot"), w.get("pid"), w.get("state"), w.get("task_id"), w.get("tasks_done"), _number(w.get("rss_mb")),
             _number(w.get("cpu_percent")), duration(w.get("uptime_s"))] for w in workers]
    return table(["SLOT", "PID", "STATE", "TASK", "TASKS DONE", "RSS MB", "CPU %", "UPTIME"], rows, right=(0, 1, 4, 5, 6, 7))


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def ping_view(data: dict[str, Any]) -> str:
    facts = [f"pid {data['pid']}" if "pid" in data else None,
             f"version {data['version']}" if "version" in data else None,
             f"up {duration(data['uptime_s'])}" if "uptime_s" in data else None,
             f"round trip {data['rtt_ms']} ms"]
    return f"pipelined is up at {data['socket']} ({', '.join(f for f in facts if f)})"


def cancel_view(data: dict[str, Any]) -> str:
    cancelled = data.get("cancelled") or []
    if data.get("workflow"):
        if not cancelled:
            return f"nothing to cancel: every task of workflow {data['workflow']} has ended"
        return f"cancelled {len(cancelled)} task(s) of workflow {data['workflow']}: {', '.join(cancelled)}"
    if cancelled:
        return f"cancelled {', '.join(cancelled)}"
    return f"nothing to cancel: {data.get('task_id')} is {data.get('status', 'already ended')}"


def drain_view(data: dict[str, Any]) -> str:
    running = data.get("running_tasks") or 0
    when = f"once its {running} running task(s) finish" if running else "now"
    return f"pipelined is draining: it starts no new tasks and exits {when}; queued tasks stay in the journal"


def shutdown_view(data: dict[str, Any]) -> str:
    return "pipelined is stopping"


def task_id_view(data: dict[str, Any]) -> str:
    return str(data["task_id"])
