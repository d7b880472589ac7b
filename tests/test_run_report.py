"""The run report and progress displays, from made-up task records (no daemon):
stage aggregation, the critical path, the --json document, the summary, the
live line and the line log."""

from __future__ import annotations

import io
import os
import re

import pytest

from pipeline_client.pipeline import load_pipeline
from pipeline_client.progress import LineLog, LiveLine, progress_line, snapshot
from pipeline_client.report import critical_path, run_document, stage_document, stage_status, summary_view

WF = "dia-1"


@pytest.fixture
def diamond(tmp_path):
    path = tmp_path / "dia.toml"
    path.write_text(
        '[pipeline]\nname = "dia"\n'
        '[stages.a]\ncommand = ["true"]\n'
        '[stages.b]\nneeds = ["a"]\ncommand = ["true"]\nshards = 3\n'
        '[stages.c]\nneeds = ["a"]\ncommand = ["true"]\n'
        '[stages.d]\nneeds = ["b", "c"]\ncommand = ["true"]\n'
    )
    return load_pipeline(path)


def rec(task_id, status, t=None, reason=None, retries=0, error=None, result=None):
    started = 100.0 if t is not None else None
    return {
        "task_id": f"{WF}.{task_id}", "status": status, "reason": reason, "retry_count": retries,
        "execution_time": t, "start_time": started, "end_time": started + t if t is not None else None,
        "error": error, "result": result,
    }


def records(*recs):
    return {r["task_id"]: r for r in recs}


@pytest.mark.parametrize(
    "statuses, expected",
    [
        (["completed", "completed"], "completed"),
        (["completed", "failed", "cancelled"], "failed"),
        (["completed", "cancelled"], "cancelled"),
        (["completed", "running", "queued"], "running"),
        (["failed", "queued", "pending"], "queued"),
        (["pending", "completed"], "pending"),
    ],
)
def test_stage_status_is_the_worst_shard(statuses, expected):
    assert stage_status([{"status": s} for s in statuses]) == expected


def test_sharded_stage_document(diamond):
    recs = [rec("b.0", "completed", 1.0), rec("b.1", "failed", 3.0, "timeout", retries=2), rec("b.2", "completed", 2.0, retries=1)]
    doc = stage_document(diamond.stages["b"], recs)
    assert doc["status"] == "failed" and doc["reason"] == "timeout"
    assert doc["retry_count"] == 3 and doc["attempts"] == 6
    assert doc["execution_time"] == 3.0  # the slowest shard
    assert doc["shards"] == 3 and doc["completed"] == 2
    assert [t["task_id"] for t in doc["tasks"]] == [f"{WF}.b.0", f"{WF}.b.1", f"{WF}.b.2"]


def test_single_stage_document_carries_result_and_error(diamond):
    err = {"type": "ValueError", "message": "boom", "traceback": "..."}
    doc = stage_document(diamond.stages["c"], [rec("c", "failed", 0.5, "error", error=err)])
    assert doc["task_id"] == f"{WF}.c" and doc["error"] == err and doc["reason"] == "error"
    assert "tasks" not in doc and doc["attempts"] == 1


def test_critical_path_follows_the_slowest_chain(diamond):
    recs = records(
        rec("a", "completed", 1.0),
        rec("b.0", "completed", 0.5), rec("b.1", "completed", 4.0), rec("b.2", "completed", 0.1),
        rec("c", "completed", 2.0),
        rec("d", "completed", 0.25),
    )
    doc = run_document(diamond, WF, recs, elapsed=6.0)
    assert doc["critical_path"] == {"stages": ["a", "b", "d"], "length": 5.25}
    recs[f"{WF}.c"]["execution_time"] = 9.0
    stages = run_document(diamond, WF, recs, elapsed=12.0)["stages"]
    assert critical_path(diamond, stages) == {"stages": ["a", "c", "d"], "length": 10.25}


def test_run_document_shape_and_status(diamond):
    recs = records(
        rec("a", "completed", 1.0),
        rec("b.0", "completed", 0.5), rec("b.1", "completed", 0.5), rec("b.2", "completed", 0.5),
        rec("c", "failed", 0.1, "error", error={"type": "ValueError", "message": "bad\ninput"}),
        rec("d", "failed", None, "upstream_failed"),
    )
    doc = run_document(diamond, WF, recs, elapsed=2.5)
    assert doc["workflow"] == WF and doc["status"] == "failed" and doc["elapsed"] == 2.5
    assert set(doc["stages"]) == {"a", "b", "c", "d"}
    for st in doc["stages"].values():
        assert {"status", "reason", "retry_count", "execution_time"} <= set(st)
    assert doc["stages"]["d"] == {**doc["stages"]["d"], "status": "failed", "reason": "upstream_failed", "attempts": 0}
    assert doc["counts"]["completed"] == 4 and doc["counts"]["failed"] == 2
    summary = summary_view(doc)
    assert re.search(r"^c\s+0/1\s+failed\s+error\s+1\s+0\.10s\s+0\.10s$", summary, re.MULTILINE)
    assert re.search(r"^b\s+3/3\s+completed\s+-\s+3\s+\d+\.\d+s\s+0\.50s$", summary, re.MULTILINE)
    assert "critical path: a -> b -> d" in summary
    assert f"{WF}.c: error: ValueError: bad" in summary
    assert f"{WF}.d:" not in summary  # upstream failures are not root causes


def test_all_completed_and_interrupted_statuses(diamond):
    done = records(*(rec(t, "completed", 0.1) for t in ("a", "b.0", "b.1", "b.2", "c", "d")))
    assert run_document(diamond, WF, done, 1.0)["status"] == "completed"
    assert run_document(diamond, WF, done, 1.0, interrupted=True)["status"] == "completed"
    cut = records(rec("a", "completed", 0.1), rec("b.0", "cancelled", 0.1), rec("d", "failed", None, "upstream_failed"))
    doc = run_document(diamond, WF, cut, 1.0, interrupted=True)
    assert doc["status"] == "cancelled" and doc["interrupted"] is True
    # tasks never seen count as pending
    assert doc["stages"]["c"]["status"] == "pending"


def test_progress_line_and_live_redraw(diamond, monkeypatch):
    recs = records(rec("a", "completed", 1.0), rec("b.0", "running"), rec("b.1", "running"), rec("b.2", "queued"), rec("c", "running"))
    snap = snapshot(diamond, WF, recs, elapsed=75)
    line = progress_line(snap)
    assert line.startswith("[01:15] 1/6 done, 3 running, 1 queued, 1 waiting, 0 failed")
    assert line.endswith("running: b (2 shards), c")
    out = io.StringIO()
    monkeypatch.setattr("shutil.get_terminal_size", lambda fallback=None: os.terminal_size((40, 24)))
    live = LiveLine(out)
    live.update(snap)
    live.update(snap)
    live.close()
    drawn = out.getvalue().split("\r\x1b[K")
    assert drawn[0] == "" and drawn[-1] == ""
    assert all(len(d) <= 39 for d in drawn) and drawn[1].endswith("...")


def test_line_log_prints_stage_changes_only(diamond):
    out = io.StringIO()
    log = LineLog(out)
    recs = records(rec("a", "running"))
    log.update(snapshot(diamond, WF, recs, 0.1))
    log.update(snapshot(diamond, WF, recs, 0.6))  # nothing changed: no line
    recs.update(records(rec("a", "completed", 1.0), rec("b.0", "running")))
    log.update(snapshot(diamond, WF, recs, 1.1))
    recs.update(records(rec("c", "failed", 0.2, "error", error={"type": "OSError", "message": "disk"})))
    log.update(snapshot(diamond, WF, recs, 1.6))
    lines = out.getvalue().splitlines()
    assert all(re.match(r"^\d\d:\d\d:\d\d  ", line) for line in lines)
    body = [line[10:].split() for line in lines]
    assert body == [
        ["a", "running"],
        ["a", "completed", "1.00s"],
        ["b", "running", "3", "tasks"],
        ["c", "failed", "error:", "OSError:", "disk"],
    ]


def test_summary_shows_the_final_stages_result(diamond):
    recs = records(
        rec("a", "completed", 0.1, result={"exit_code": 0, "stdout": "", "stderr": ""}),
        *(rec(f"b.{i}", "completed", 0.1) for i in range(3)),
        rec("c", "completed", 0.1, result={"not": "shown"}),  # d needs c: not a final stage
        rec("d", "completed", 0.1, result={"report": "/tmp/out/report.md", "issues": 7}),
    )
    summary = summary_view(run_document(diamond, WF, recs, 1.0))
    assert "d result:\n  report  /tmp/out/report.md\n  issues  7" in summary
    assert "shown" not in summary and "c result" not in summary
    recs[f"{WF}.d"]["result"] = {"exit_code": 0, "stdout": "x", "stderr": ""}  # a command's output tail
    assert "result:" not in summary_view(run_document(diamond, WF, recs, 1.0))
    recs[f"{WF}.d"]["result"] = list(range(500))
    line = summary_view(run_document(diamond, WF, recs, 1.0)).split("d result:\n")[1]
    assert line.startswith("  [0, 1, 2") and line.endswith("...") and len(line) <= 302
