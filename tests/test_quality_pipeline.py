"""The main job end to end: `pipelinectl run examples/quality/pipeline.toml`
against a real daemon, over the small fixed codebase, with exact counts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_quality import FIXES, ISSUES_AFTER, ISSUES_BEFORE, snapshot

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "quality_sample"
PIPELINE = REPO / "examples" / "quality" / "pipeline.toml"


def pipelinectl(socket: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PIPELINED_SOCKET=socket)
    return subprocess.run([sys.executable, "-m", "pipeline_client.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(180)
def test_quality_pipeline_through_the_daemon(daemon, tmp_path):
    before = snapshot(FIXTURE)
    work = tmp_path / "work"
    proc = pipelinectl(daemon.socket, "--json", "run", str(PIPELINE), "--env", f"TARGET={FIXTURE}", "--env", f"WORK={work}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "completed"
    assert list(doc["stages"]) == ["prepare", "scan", "fix", "validate", "report"]
    for name in ("scan", "fix", "validate"):
        stage = doc["stages"][name]
        assert stage["status"] == "completed" and stage["shards"] == 4 and stage["completed"] == 4
        # The shards really ran on the pool: more than one worker took part.
        assert len({t["worker_pid"] for t in stage["tasks"]}) == 2
    result = doc["stages"]["report"]["result"]
    assert (result["files"], result["issues_before"], result["fixes_applied"], result["issues_after"]) == (5, ISSUES_BEFORE, FIXES, ISSUES_AFTER)
    report = json.loads((work / "report.json").read_text())
    assert report["files"]["scanned"] == 5
    assert (report["issues"]["before"], report["fixes"]["applied"], report["issues"]["after"]) == (ISSUES_BEFORE, FIXES, ISSUES_AFTER)
    assert set(report["timings"]["stages"]) == {"prepare", "scan", "fix", "validate", "report"}
    assert report["timings"]["stages"]["scan"]["tasks"] == 4
    assert "| " in (work / "report.md").read_text()  # a Markdown table
    assert doc["critical_path"]["stages"] == ["prepare", "scan", "fix", "validate", "report"]
    assert snapshot(FIXTURE) == before, "the target must never be modified"
