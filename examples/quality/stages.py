"""The stage functions of the quality pipeline (examples/quality/pipeline.toml).

    prepare --> scan[0..N) --> fix[0..N) --> validate[0..N) --> report
    copy TARGET  ruff check    ruff --fix     ruff check         report.json
    to WORK/tree (findings)    (safe rules)   (findings after)   report.md

The seed's "version keeper scan -> quality patcher fix -> validation scan"
cycle. Each function is one pipelined task: it takes its parameters from
kwargs (the shard) and os.environ (TARGET, WORK, ... see params.py), reads and
writes files in WORK (see workdir.py), times itself, and returns a small
msgpack-friendly dict. Anything unexpected raises, which fails the task.

fix needs every scan shard to be done (scan must see the files before any fix
touches them), and validate needs every fix shard.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from . import linter, params, tree
from . import report as reporting  # "report" is also the stage function below
from .workdir import PHASES, WorkDir, read_json, timed, write_json


def prepare(target: str | None = None, work: str | None = None) -> dict[str, Any]:
    """Copy TARGET's Python files into WORK/tree and write the manifest."""
    source = params.target_dir(target)
    wd = WorkDir(params.work_dir(work))
    _check_folders(source, wd)
    with timed(wd, "prepare"):
        wd.reset()
        files, skipped = _copy_tree(source, wd)
        manifest = {
            "target": str(source),
            "tree": str(wd.tree),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "python": sys.version.split()[0],
            "ruff": linter.version(),
            "rules": params.scan_rules(),
            "fix_rules": params.fix_rules(),
            "not_fixed": params.not_fixed_reasons(params.scan_rules(), params.fix_rules()),
            "target_version": params.target_version(),
            "files": files,
            "skipped": skipped,
        }
        write_json(wd.manifest, manifest)
    return {"files": len(files), "skipped": len(skipped), "bytes": sum(f["bytes"] for f in files), "work": str(wd.root)}


def scan(shard: int | str | None = None, shards: int | str | None = None, work: str | None = None) -> dict[str, Any]:
    """Lint this shard's files before fixing; findings go to WORK/scan/shard-N.json."""
    return _lint("scan", shard, shards, work)


def validate(shard: int | str | None = None, shards: int | str | None = None, work: str | None = None) -> dict[str, Any]:
    """Lint this shard's files again after fixing; findings go to WORK/validate/shard-N.json."""
    return _lint("validate", shard, shards, work)


def fix(shard: int | str | None = None, shards: int | str | None = None, work: str | None = None) -> dict[str, Any]:
    """Apply ruff's safe fixes for FIX_RULES to this shard's files; count them."""
    index, count = params.shard_of(shard, shards)
    wd = WorkDir(params.work_dir(work))
    manifest = read_json(wd.manifest, "the manifest")
    with timed(wd, "fix", index):
        files = tree.shard_files(manifest["files"], index, count)
        _refuse_second_fix(wd, manifest, files)
        result = linter.fix(wd.tree, files, manifest["fix_rules"], manifest["target_version"], params.ruff_threads())
        by_rule = sum(result.by_file.values(), Counter())
        write_json(wd.shard_file("fix", index), {
            "phase": "fix", "shard": index, "shards": count, "files": files,
            "by_file": {path: dict(c) for path, c in sorted(result.by_file.items())},
            "by_rule": dict(by_rule), "names": result.names,
        })
    return {"shard": index, "files": len(files), "fixes": sum(by_rule.values()), "files_changed": len(result.by_file)}


def report(work: str | None = None) -> dict[str, Any]:
    """Gather every stage's output into WORK/report.json and WORK/report.md."""
    wd = WorkDir(params.work_dir(work))
    with timed(wd, "report") as record:
        data = reporting.build(wd, report_started=record["start"])
        reporting.write(wd, data)
    return {
        "report_json": str(wd.report_json),
        "report_md": str(wd.report_md),
        "files": data["files"]["scanned"],
        "issues_before": data["issues"]["before"],
        "issues_after": data["issues"]["after"],
        "fixes_applied": data["fixes"]["applied"],
    }


# -- helpers ------------------------------------------------------------------
def _lint(phase: str, shard: Any, shards: Any, work: str | None) -> dict[str, Any]:
    assert phase in PHASES
    index, count = params.shard_of(shard, shards)
    wd = WorkDir(params.work_dir(work))
    manifest = read_json(wd.manifest, "the manifest")
    with timed(wd, phase, index):
        files = tree.shard_files(manifest["files"], index, count)
        result = linter.check(wd.tree, files, manifest["rules"], manifest["target_version"], params.ruff_threads())
        by_rule = Counter(f["code"] for f in result.findings)
        write_json(wd.shard_file(phase, index), {
            "phase": phase, "shard": index, "shards": count, "files": files,
            "findings": result.findings, "unreadable": result.unreadable, "by_rule": dict(by_rule),
        })
    return {"shard": index, "files": len(files), "issues": len(result.findings)}


def _check_folders(source: Path, wd: WorkDir) -> None:
    if not source.is_dir():
        raise RuntimeError(
            f"TARGET {source} is not a folder (a relative TARGET is relative to {Path.cwd()}, "
            "the pipeline file's folder: pass an absolute path)"
        )
    # Wiping WORK must never delete the target, and the copy must not copy itself.
    if source == wd.root or source.is_relative_to(wd.root):
        raise RuntimeError(f"TARGET {source} is inside WORK {wd.root}; prepare would delete it")


def _copy_tree(source: Path, wd: WorkDir) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    exclude = wd.root if wd.root.is_relative_to(source) else None
    files: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []  # copied, not linted
    for rel, path in tree.select_files(source, exclude):
        outcome = tree.copy_file(path, wd.tree / rel)
        if isinstance(outcome, str):
            skipped.append({"path": rel, "reason": outcome})
        else:
            files.append({"path": rel, **outcome})
    if not files:
        raise RuntimeError(f"TARGET {source} holds no Python file that can be linted")
    return files, skipped


def _refuse_second_fix(wd: WorkDir, manifest: dict[str, Any], files: list[str]) -> None:
    # A retried fix task would find its files already fixed and report zero
    # fixes: a wrong report. Fail loudly instead; rerun the whole pipeline.
    digests = {f["path"]: f["sha256"] for f in manifest["files"]}
    changed = [p for p in files if tree.file_digest(wd.tree / p) != digests[p]]
    if changed:
        raise RuntimeError(
            f"{len(changed)} file(s) of this shard were already changed since prepare "
            f"(e.g. {changed[0]}): an earlier fix attempt ran; rerun the pipeline from prepare"
        )
