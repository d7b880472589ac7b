"""The outcome of one pipeline run, computed from its task records.

Pure functions of (Pipeline, workflow id, task records) and nothing else: no
sockets, no clocks, no terminals. The live progress, the final summary table,
`pipelinectl --json run` and the MCP shim's `run_pipeline` all read their
numbers from here, so they can never disagree.

A sharded stage is as bad as its worst shard (failed > cancelled > completed),
and its execution time is its slowest shard's: shards run side by side, so the
slowest one is what the stage adds to the critical path.
"""

from __future__ import annotations

from graphlib import TopologicalSorter
from typing import Any

from .pipeline import Pipeline, Stage
from .render import duration, error_line, shorten, table, to_json

END_STATUSES = frozenset({"completed", "failed", "cancelled"})
WORST_FIRST = ("failed", "cancelled", "completed")
COUNTED = ("completed", "running", "queued", "pending", "failed", "cancelled")
MAX_FAILURES_SHOWN = 10
MAX_RESULT_KEYS, MAX_RESULT_CHARS = 12, 300  # a final result longer than this is for --json

Records = dict[str, dict[str, Any]]


def stage_records(stage: Stage, workflow: str, records: Records) -> list[dict[str, Any]]:
    """The stage's task records in shard order; a task not seen yet counts as pending."""
    return [records.get(tid) or {"task_id": tid, "status": "pending"} for tid in stage.task_ids(workflow)]


def stage_status(recs: list[dict[str, Any]]) -> str:
    statuses = {r.get("status") for r in recs}
    if statuses <= END_STATUSES:
        return next(s for s in WORST_FIRST if s in statuses)
    for busy in ("running", "queued"):
        if busy in statuses:
            return busy
    return "pending"


def attempts(record: dict[str, Any]) -> int:
    """How many times the task ran: retries plus the attempt that ended it, if it started."""
    retries = record.get("retry_count") or 0
    return retries + (1 if record.get("start_time") is not None else 0)


def counts(recs: list[dict[str, Any]]) -> dict[str, int]:
    out = dict.fromkeys(COUNTED, 0)
    for r in recs:
        status = r.get("status")
        out[status] = out.get(status, 0) + 1
    return out


def stage_document(stage: Stage, recs: list[dict[str, Any]]) -> dict[str, Any]:
    status = stage_status(recs)
    worst = next((r for s in WORST_FIRST for r in recs if r.get("status") == s), recs[0])
    times = [r["execution_time"] for r in recs if r.get("execution_time") is not None]
    doc: dict[str, Any] = {
        "status": status,
        "reason": worst.get("reason") if status in ("failed", "cancelled") else None,
        "retry_count": sum(r.get("retry_count") or 0 for r in recs),
        "attempts": sum(attempts(r) for r in recs),
        "execution_time": max(times) if times else None,
        "needs": list(stage.needs),
    }
    if stage.shards is None:
        doc.update(task_id=worst["task_id"], result=worst.get("result"), error=worst.get("error"))
    else:
        starts = [r["start_time"] for r in recs if r.get("start_time") is not None]
        ends = [r["end_time"] for r in recs if r.get("end_time") is not None]
        doc.update(
            shards=stage.shards,
            completed=sum(r.get("status") == "completed" for r in recs),
            wall_time=(max(ends) - min(starts)) if starts and ends else None,
            tasks=recs,
        )
    return doc


def critical_path(pipeline: Pipeline, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The chain through `needs` with the largest total execution time."""
    graph = {name: stage.needs for name, stage in pipeline.stages.items()}
    best: dict[str, tuple[float, list[str]]] = {}
    for name in TopologicalSorter(graph).static_order():
        before = max((best[n] for n in graph[name]), key=lambda b: b[0], default=(0.0, []))
        best[name] = (before[0] + (stages[name].get("execution_time") or 0.0), before[1] + [name])
    # Ties go to the longer chain: a stage that never ran still belongs on it.
    length, chain = max(best.values(), key=lambda b: (b[0], len(b[1])))
    return {"stages": chain, "length": round(length, 3)}


def workflow_status(stages: dict[str, dict[str, Any]], interrupted: bool = False) -> str:
    statuses = {doc["status"] for doc in stages.values()}
    if statuses == {"completed"}:
        return "completed"
    if interrupted:
        return "cancelled"  # whatever failed after the cancel failed because of it
    for status in ("failed", "cancelled"):
        if status in statuses:
            return status
    return "running"


def run_document(pipeline: Pipeline, workflow: str, records: Records, elapsed: float, interrupted: bool = False) -> dict[str, Any]:
    """The one object `pipelinectl --json run` prints (and the MCP shim returns).

        {"workflow", "pipeline", "file", "status": completed|failed|cancelled|running,
         "interrupted", "elapsed", "counts": {status: n},
         "stages": {name: {"status", "reason", "retry_count", "attempts", "execution_time", "needs",
                           one task:  "task_id", "result", "error"
                           sharded:   "shards", "completed", "wall_time", "tasks": [records]}},
         "critical_path": {"stages": [names], "length": seconds}}
    """
    all_recs = {name: stage_records(stage, workflow, records) for name, stage in pipeline.stages.items()}
    stages = {name: stage_document(pipeline.stages[name], recs) for name, recs in all_recs.items()}
    return {
        "workflow": workflow,
        "pipeline": pipeline.name,
        "file": str(pipeline.path),
        "status": workflow_status(stages, interrupted),
        "interrupted": interrupted,
        "elapsed": round(elapsed, 3),
        "counts": counts([r for recs in all_recs.values() for r in recs]),
        "stages": stages,
        "critical_path": critical_path(pipeline, stages),
    }


# -- the human summary ----------------------------------------------------------
def summary_view(doc: dict[str, Any]) -> str:
    total = sum(doc["counts"].values())
    head = f"workflow {doc['workflow']} {doc['status']} in {duration(doc['elapsed'])} ({total} tasks)"
    rows = []
    for name, st in doc["stages"].items():
        tasks = f"{st['completed']}/{st['shards']}" if "shards" in st else ("1/1" if st["status"] == "completed" else "0/1")
        # WALL: first start to last end of the stage; SLOWEST: its longest task.
        wall = st.get("wall_time", st["execution_time"])
        rows.append([name, tasks, st["status"], st["reason"], st["attempts"], duration(wall), duration(st["execution_time"])])
    body = table(["STAGE", "TASKS", "STATUS", "REASON", "ATTEMPTS", "WALL", "SLOWEST"], rows, right=(1, 4, 5, 6))
    path = doc["critical_path"]
    parts = [head, "", body, "", f"critical path: {' -> '.join(path['stages'])} ({duration(path['length'])} of task time)"]
    for name, result in final_results(doc).items():
        parts += ["", f"{name} result:", result_text(result)]
    failures = failure_lines(doc)
    if failures:
        parts += ["", "failures:", *failures]
    return "\n".join(parts)


def final_results(doc: dict[str, Any]) -> dict[str, Any]:
    """Results worth showing: completed function stages that no other stage needs.

    That is where a pipeline says what it produced (a report's path, counts).
    Command results are output tails, already on disk or in `pipelinectl show`.
    """
    needed = {n for st in doc["stages"].values() for n in st["needs"]}
    return {
        name: st["result"]
        for name, st in doc["stages"].items()
        if name not in needed and st["status"] == "completed" and st.get("result") is not None
        and not (isinstance(st["result"], dict) and "exit_code" in st["result"])
    }


def result_text(result: Any) -> str:
    """A small flat map as aligned key/value lines; anything else as one line of JSON."""
    flat = isinstance(result, dict) and 0 < len(result) <= MAX_RESULT_KEYS and all(
        isinstance(k, str) and not isinstance(v, (dict, list)) for k, v in result.items()
    )
    if flat:
        width = max(len(k) for k in result)
        return "\n".join(f"  {k.ljust(width)}  {v}" for k, v in result.items())
    return "  " + shorten(to_json(result, indent=None), MAX_RESULT_CHARS)


def failure_lines(doc: dict[str, Any]) -> list[str]:
    """One line per task that failed by itself; upstream_failed ones just follow."""
    failed = []
    for st in doc["stages"].values():
        recs = st.get("tasks") or [{"task_id": st["task_id"], "status": st["status"], "reason": st["reason"], "error": st["error"], "result": st["result"]}]
        failed += [r for r in recs if r.get("status") == "failed" and r.get("reason") != "upstream_failed"]
    lines = [f"  {r['task_id']}: {_why(r)}" for r in failed[:MAX_FAILURES_SHOWN]]
    if len(failed) > MAX_FAILURES_SHOWN:
        lines.append(f"  ... and {len(failed) - MAX_FAILURES_SHOWN} more (pipelinectl list --workflow {doc['workflow']} --state failed)")
    return lines


def _why(record: dict[str, Any]) -> str:
    why = record.get("reason") or "failed"
    err = error_line(record)
    if err:
        why += f": {err}"
    result = record.get("result")
    if isinstance(result, dict) and isinstance(result.get("stderr"), str) and result["stderr"].strip():
        why += f" | stderr: {result['stderr'].strip().splitlines()[-1]}"
    return why
