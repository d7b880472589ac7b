"""`pipelinectl top`: a live view of the daemon's workers, queue and running tasks.

    every --interval: ping + status + queue_status + resource_status + workers
                      + get(task) per busy worker  ──►  snapshot (plain data)
                                                        ├─► frame_lines ─► Screen (a terminal: redrawn in place)
                                                        │                └► Plain  (a pipe: one snapshot after another)
                                                        └─► --json: one JSON object per line

A handful of cheap requests a frame: the running tasks are fetched by id from
the workers' list, never by listing the whole store. CPU % is measured by the
daemon between two `workers` requests, so the first frame shows 0.0.
"""

from __future__ import annotations

import shutil
import time
from typing import Any, TextIO

from .client import Client
from .errors import RequestError
from .render import clock, duration, shorten, strip_envelope, table, to_json, what

# ANSI: the alternate screen (the shell's scrollback is left alone), cursor home,
# erase to the end of the line / of the screen, hide and show the cursor.
ENTER, LEAVE = "\x1b[?1049h\x1b[?25l", "\x1b[?25h\x1b[?1049l"
HOME, EOL, EOS = "\x1b[H", "\x1b[K", "\x1b[J"


def snapshot(client: Client) -> dict[str, Any]:
    ping = client.ping()
    status = strip_envelope(client.status())
    queue = strip_envelope(client.queue_status())
    gate = client.resource_status().get("gate")
    workers = client.workers()
    running = []
    for w in workers:
        if w.get("task_id"):
            try:
                running.append(client.get(w["task_id"]))
            except RequestError:
                continue  # ended and pruned between the two requests
    return {"time": time.time(), "pid": ping.get("pid"), "version": ping.get("version"), "socket": client.socket_path,
            "status": status, "queue": queue, "gate": gate, "workers": workers, "running": running}


def frame_lines(snap: dict[str, Any]) -> list[str]:
    st, queue = snap["status"], snap["queue"]
    uptime = (st.get("performance_metrics") or {}).get("uptime_s")
    head = f"pipelined {snap.get('pid')} (v{snap.get('version')})  up {duration(uptime)}  {snap['socket']}  {clock(snap['time'])}"
    if st.get("draining"):
        head += "  [DRAINING]"
    pending = (st.get("pending_tasks") or 0) - (st.get("queued_tasks") or 0)
    pool = ", ".join(f"{n} {state}" for state, n in sorted((st.get("workers") or {}).items()))
    perf = st.get("performance_metrics") or {}
    lines = [
        head,
        (f"tasks    {st.get('running_tasks', 0)} running  {st.get('queued_tasks', 0)} queued  {pending} pending  "
         f"{st.get('completed_tasks', 0)} completed  {st.get('failed_tasks', 0)} failed  {st.get('cancelled_tasks', 0)} cancelled"),
        ("queue    " + "  ".join(f"{k} {v}" for k, v in (queue.get("job_counts") or {}).items())
         + f"   (size {queue.get('queue_size', 0)})   gate: {snap.get('gate') or 'open'}"),
        f"workers  {st.get('max_workers')} ({pool or 'none'})  forks {perf.get('worker_forks', 0)}  kills {perf.get('worker_kills', 0)}",
        "",
    ]
    rows = [[w.get("slot"), w.get("pid"), w.get("state"), w.get("task_id"), w.get("tasks_done"), _num(w.get("rss_mb")),
             _num(w.get("cpu_percent")), duration(w.get("uptime_s"))] for w in snap["workers"]]
    lines += table(["SLOT", "PID", "STATE", "TASK", "DONE", "RSS MB", "CPU %", "UPTIME"], rows, right=(0, 1, 4, 5, 6, 7)).splitlines()
    lines.append("")
    if snap["running"]:
        now = snap["time"]
        rows = [[r.get("task_id"), r.get("task_type"), r.get("workflow"), shorten(what(r), 40), r.get("worker_pid"),
                 duration(now - r["start_time"]) if r.get("start_time") else "-", r.get("retry_count")] for r in snap["running"]]
        lines += table(["RUNNING", "TYPE", "WORKFLOW", "RUNS", "WORKER", "ELAPSED", "RETRIES"], rows, right=(4, 5, 6)).splitlines()
    else:
        lines.append("no task running")
    return lines


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


class Plain:
    """Not a terminal: one snapshot after another, separated by a blank line."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def draw(self, lines: list[str]) -> None:
        self.stream.write("\n".join(lines) + "\n\n")
        self.stream.flush()

    def close(self) -> None:
        pass


class Screen(Plain):
    """A terminal: the alternate screen, each frame drawn over the last, cut to the window."""

    def __init__(self, stream: TextIO):
        super().__init__(stream)
        stream.write(ENTER)

    def draw(self, lines: list[str]) -> None:
        cols, rows = shutil.get_terminal_size()
        shown = [line[:cols] for line in lines[:rows]]
        self.stream.write(HOME + (EOL + "\n").join(shown) + EOL + EOS)
        self.stream.flush()

    def close(self) -> None:
        self.stream.write(LEAVE)
        self.stream.flush()


def run_top(client: Client, stream: TextIO, interval_s: float, once: bool, as_json: bool) -> None:
    """Draw frames until Ctrl-C (KeyboardInterrupt, left to the caller) or, with once, after one."""
    view = Screen(stream) if stream.isatty() and not once and not as_json else Plain(stream)
    try:
        while True:
            snap = snapshot(client)
            if as_json:
                stream.write(to_json(snap, indent=None) + "\n")
                stream.flush()
            else:
                view.draw(frame_lines(snap))
            if once:
                return
            time.sleep(interval_s)
    finally:
        view.close()
