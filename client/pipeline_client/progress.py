"""Showing a pipeline run while it runs: one live line, or a plain line log.

    LiveLine  a terminal: one status line redrawn in place,
              [00:12] 5/12 done, 2 running, 3 queued, 1 waiting, 1 failed | running: scan (2 shards), lint
    LineLog   a pipe, a file, CI: one timestamped line whenever a stage changes state,
              12:00:03  scan      completed  4/4 tasks  1.20s
    Silent    --quiet, or --json with no terminal to draw on

Every display gets the same calls: started(), update(snapshot), note(text),
close(). A Snapshot is computed from the records by the report module, so what
scrolls by matches the summary at the end.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Any, TextIO

from .pipeline import Pipeline
from .render import clock, duration, error_line, shorten
from .report import Records, counts, stage_document, stage_records

SHOWN_STATES = ("running", "completed", "failed", "cancelled")  # queued/pending are noise in a log


@dataclass
class Snapshot:
    elapsed: float
    counts: dict[str, int]
    stages: dict[str, dict[str, Any]]  # name -> report.stage_document
    running: dict[str, int]  # stage -> tasks running now

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def snapshot(pipeline: Pipeline, workflow: str, records: Records, elapsed: float) -> Snapshot:
    recs = {name: stage_records(stage, workflow, records) for name, stage in pipeline.stages.items()}
    return Snapshot(
        elapsed=elapsed,
        counts=counts([r for rs in recs.values() for r in rs]),
        stages={name: stage_document(pipeline.stages[name], rs) for name, rs in recs.items()},
        running={name: n for name, rs in recs.items() if (n := sum(r.get("status") == "running" for r in rs))},
    )


def progress_line(snap: Snapshot) -> str:
    c = snap.counts
    parts = [f"{c['completed']}/{snap.total} done", f"{c['running']} running", f"{c['queued']} queued"]
    if c["pending"]:
        parts.append(f"{c['pending']} waiting")
    parts.append(f"{c['failed']} failed")
    if c["cancelled"]:
        parts.append(f"{c['cancelled']} cancelled")
    line = f"[{_elapsed(snap.elapsed)}] " + ", ".join(parts)
    if snap.running:
        names = [name if snap.stages[name].get("shards") is None else f"{name} ({n} shards)" for name, n in snap.running.items()]
        line += " | running: " + ", ".join(names)
    return line


def _elapsed(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Silent:
    def started(self, text: str) -> None: ...
    def update(self, snap: Snapshot) -> None: ...
    def close(self) -> None: ...

    def note(self, text: str) -> None:
        pass


class LiveLine(Silent):
    """One line, redrawn in place; cut to the terminal width so it never wraps."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.drawn = False

    def started(self, text: str) -> None:
        self.note(text)

    def update(self, snap: Snapshot) -> None:
        width = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r\x1b[K" + shorten(progress_line(snap), max(20, width - 1)))
        self.stream.flush()
        self.drawn = True

    def note(self, text: str) -> None:
        self.close()
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self.drawn = False


class LineLog(Silent):
    """Timestamped lines, one each time a stage's state changes."""

    def __init__(self, stream: TextIO):
        self.stream = stream
        self.seen: dict[str, str] = {}

    def started(self, text: str) -> None:
        self.note(text)

    def note(self, text: str) -> None:
        self.stream.write(f"{clock(time.time())}  {text}\n")
        self.stream.flush()

    def update(self, snap: Snapshot) -> None:
        width = max(len(name) for name in snap.stages)
        for name, st in snap.stages.items():
            status = st["status"]
            if status != self.seen.get(name, "pending") and status in SHOWN_STATES:
                self.note(f"{name.ljust(width)}  {status.ljust(9)}  {_detail(st)}".rstrip())
            self.seen[name] = status


def _detail(st: dict[str, Any]) -> str:
    shards = st.get("shards")
    if st["status"] == "running":
        return f"{shards} tasks" if shards else ""
    done = f"{st['completed']}/{shards} tasks  " if shards else ""
    if st["status"] == "completed":
        return done + duration(st["execution_time"])
    why = st["reason"] or ""
    failing = [t for t in st.get("tasks", [st]) if t.get("status") == "failed" and t.get("reason") != "upstream_failed"]
    err = error_line(failing[0]) if failing else None
    return done + (f"{why}: {err}" if err else why)


def make_progress(stream: TextIO, enabled: bool) -> Silent:
    if not enabled:
        return Silent()
    return LiveLine(stream) if stream.isatty() else LineLog(stream)
