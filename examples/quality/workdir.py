"""The work folder: the only place the quality pipeline writes.

Stages run as separate tasks (maybe in separate processes, maybe retried), so
they hand data to each other through files here, never through memory:

    WORK/
      .quality-work        marker: this folder is ours to wipe
      manifest.json        prepare: the files copied, their sizes and hashes
      tree/                prepare: the copy of TARGET that fix edits
      scan/shard-N.json    scan: findings of shard N before fixing
      fix/shard-N.json     fix: fixes applied in shard N
      validate/shard-N.json validate: findings of shard N after fixing
      timings/STAGE-N.json each stage task: when it ran and for how long
      report.json, report.md

Owns the layout, JSON reading/writing (atomic, so a killed task never leaves
half a file for the report to read) and the per-task timing records.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARKER = ".quality-work"
PHASES = ("scan", "fix", "validate")


@dataclass(frozen=True)
class WorkDir:
    root: Path

    @property
    def tree(self) -> Path:
        return self.root / "tree"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def report_json(self) -> Path:
        return self.root / "report.json"

    @property
    def report_md(self) -> Path:
        return self.root / "report.md"

    def shard_file(self, phase: str, shard: int) -> Path:
        return self.root / phase / f"shard-{shard}.json"

    def timing_file(self, stage: str, shard: int | None) -> Path:
        suffix = "" if shard is None else f"-{shard}"
        return self.root / "timings" / f"{stage}{suffix}.json"

    def reset(self) -> None:
        """Empty the folder for a new run, refusing to wipe anything not ours."""
        if self.root.exists():
            if not self.root.is_dir():
                raise RuntimeError(f"WORK {self.root} exists and is not a folder")
            if any(self.root.iterdir()) and not (self.root / MARKER).exists():
                # A mistyped WORK=~ must not cost anyone their home folder.
                raise RuntimeError(
                    f"WORK {self.root} is not empty and was not made by this pipeline "
                    f"(no {MARKER} file); choose an empty or new folder"
                )
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        (self.root / MARKER).write_text("made by examples/quality; prepare wipes this folder\n")


def write_json(path: Path, data: Any, pretty: bool = False) -> None:
    # Compact by default: shard files hold thousands of findings, and json's
    # indenting encoder is pure Python (several times slower than compact).
    text = json.dumps(data, indent=1, sort_keys=True) if pretty else json.dumps(data, separators=(",", ":"))
    write_text(path, text + "\n")


def write_text(path: Path, text: str) -> None:
    # Write-then-rename: a reader sees the old file or the whole new one, never
    # half of one, even if this task is killed mid-write.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read_json(path: Path, what: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise RuntimeError(f"{what} is missing: {path} (did the earlier stage run with this WORK?)") from None


@contextmanager
def timed(work: WorkDir, stage: str, shard: int | None = None) -> Iterator[dict[str, Any]]:
    """Record when this stage task ran; the report turns these into time per stage.

    Wall-clock start/end (comparable across worker processes) plus a monotonic
    duration. Written only on success: a failed task's time is the daemon's to
    report, and the report stage never runs after a failure anyway.
    """
    record: dict[str, Any] = {"stage": stage, "shard": shard, "start": time.time()}
    started = time.perf_counter()
    yield record
    record["seconds"] = round(time.perf_counter() - started, 4)
    record["end"] = time.time()
    record["pid"] = os.getpid()
    write_json(work.timing_file(stage, shard), record)
