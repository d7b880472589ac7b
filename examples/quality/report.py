"""The report: every stage's output folded into report.json and report.md.

Owns the report's shape and its Markdown rendering. It also checks that the
run is complete and consistent (every shard of every phase present, every file
of the manifest scanned exactly once per phase) — a report built from a partial
run would be quietly wrong, so an incomplete run fails the report stage.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from .workdir import PHASES, WorkDir, read_json, write_json, write_text

STAGE_ORDER = ("prepare", "scan", "fix", "validate", "report")
TOP_FILES = 10


def build(wd: WorkDir, report_started: float) -> dict[str, Any]:
    manifest = read_json(wd.manifest, "the manifest")
    phases = {phase: _phase_shards(wd, phase, manifest) for phase in PHASES}
    before = _count(phases["scan"], "by_rule")
    after = _count(phases["validate"], "by_rule")
    fixed = _count(phases["fix"], "by_rule")
    return {
        "pipeline": "quality",
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "target": manifest["target"],
        "tree": manifest["tree"],
        "python": manifest["python"],
        "ruff": manifest["ruff"],
        "target_version": manifest["target_version"],
        "rules": manifest["rules"],
        "fix_rules": manifest["fix_rules"],
        "not_fixed": manifest["not_fixed"],
        "shards": {phase: len(shards) for phase, shards in phases.items()},
        "files": _files_section(manifest, phases),
        "issues": {
            "before": sum(before.values()),
            "after": sum(after.values()),
            "by_rule": _by_rule(before, fixed, after, _names(phases)),
        },
        "fixes": {
            "applied": sum(fixed.values()),
            "files_changed": sum(len(s["by_file"]) for s in phases["fix"]),
            "by_rule": dict(sorted(fixed.items())),
        },
        "top_files": _top_files(phases),
        "timings": _timings(wd, report_started),
    }


def write(wd: WorkDir, data: dict[str, Any]) -> None:
    write_json(wd.report_json, data, pretty=True)
    write_text(wd.report_md, render_markdown(data))


# -- gathering ------------------------------------------------------------------
def _phase_shards(wd: WorkDir, phase: str, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    paths = sorted((wd.root / phase).glob("shard-*.json"))
    shards = [read_json(p, f"{phase} output") for p in paths]
    if not shards:
        raise RuntimeError(f"no {phase} output in {wd.root / phase}: did the {phase} stage run?")
    count = shards[0]["shards"]
    indexes = sorted(s["shard"] for s in shards)
    if indexes != list(range(count)) or any(s["shards"] != count for s in shards):
        raise RuntimeError(f"{phase}: expected shards 0..{count - 1}, found {indexes}")
    seen = Counter(p for s in shards for p in s["files"])
    expected = {f["path"] for f in manifest["files"]}
    if set(seen) != expected or any(n != 1 for n in seen.values()):
        raise RuntimeError(f"{phase}: the shards do not cover the manifest's {len(expected)} files exactly once")
    return sorted(shards, key=lambda s: s["shard"])


def _count(shards: list[dict[str, Any]], key: str) -> Counter:
    total: Counter = Counter()
    for shard in shards:
        total.update(shard[key])
    return total


def _names(phases: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    names: dict[str, str] = {}
    for shard in phases["fix"]:
        names.update(shard["names"])
    for phase in ("scan", "validate"):
        for shard in phases[phase]:
            names.update((f["code"], f["name"]) for f in shard["findings"])
    return names


def _by_rule(before: Counter, fixed: Counter, after: Counter, names: dict[str, str]) -> dict[str, dict[str, Any]]:
    codes = sorted(set(before) | set(fixed) | set(after), key=lambda c: (-before[c], c))
    return {
        c: {"name": names.get(c, c), "before": before[c], "fixed": fixed[c], "after": after[c]}
        for c in codes
    }


def _files_section(manifest: dict[str, Any], phases: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    unreadable = [u for phase in ("scan", "validate") for s in phases[phase] for u in s["unreadable"]]
    return {
        "scanned": len(manifest["files"]),
        "bytes": sum(f["bytes"] for f in manifest["files"]),
        "lines": sum(f["lines"] for f in manifest["files"]),
        "skipped": manifest["skipped"],
        "unreadable": unreadable,
    }


def _top_files(phases: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    before = Counter(f["path"] for s in phases["scan"] for f in s["findings"])
    after = Counter(f["path"] for s in phases["validate"] for f in s["findings"])
    top = sorted(before, key=lambda p: (-before[p], p))[:TOP_FILES]
    return [{"path": p, "before": before[p], "after": after[p]} for p in top]


def _timings(wd: WorkDir, report_started: float) -> dict[str, Any]:
    records = [read_json(p, "a timing record") for p in sorted((wd.root / "timings").glob("*.json"))]
    now = time.time()
    # The report's own record is written after this returns; count it up to now.
    records.append({"stage": "report", "shard": None, "start": report_started, "end": now, "seconds": now - report_started})
    stages: dict[str, dict[str, Any]] = {}
    for stage in STAGE_ORDER:
        mine = [r for r in records if r["stage"] == stage]
        if mine:
            stages[stage] = {
                "tasks": len(mine),
                "wall_s": round(max(r["end"] for r in mine) - min(r["start"] for r in mine), 3),
                "busy_s": round(sum(r["seconds"] for r in mine), 3),
                "slowest_s": round(max(r["seconds"] for r in mine), 3),
            }
    busy = sum(r["seconds"] for r in records)
    wall = max(r["end"] for r in records) - min(r["start"] for r in records)
    # Task-seconds per second of wall time: how many tasks ran at once on
    # average (> 1: shards really ran side by side; not a speedup when the
    # workers outnumber the cores).
    return {"stages": stages, "wall_s": round(wall, 3), "busy_s": round(busy, 3),
            "avg_concurrency": round(busy / wall, 2) if wall > 0 else None}


# -- rendering ------------------------------------------------------------------
def render_markdown(data: dict[str, Any]) -> str:
    files, issues, fixes, timings = data["files"], data["issues"], data["fixes"], data["timings"]
    lines = [
        "# Quality report",
        "",
        f"- Target: `{data['target']}` (fixed copy: `{data['tree']}`)",
        f"- {data['ruff']}, Python {data['python']}, target version {data['target_version']}",
        "- Shards: " + ", ".join(f"{phase} {n}" for phase, n in data["shards"].items()),
        "",
        "| | |",
        "|---|---:|",
        f"| Files scanned | {files['scanned']} |",
        f"| Lines | {files['lines']} |",
        f"| Files copied, not linted | {len(files['skipped'])} |",
        f"| Issues before | {issues['before']} |",
        f"| Fixes applied | {fixes['applied']} (in {fixes['files_changed']} files) |",
        f"| Issues after | {issues['after']} |",
        f"| Wall time | {timings['wall_s']:.2f} s (on average {timings['avg_concurrency']} tasks at once) |",
        "",
        "## Issues by rule",
        "",
        "| Rule | Name | Before | Fixed | After |",
        "|---|---|---:|---:|---:|",
        *(f"| {code} | {r['name']} | {r['before']} | {r['fixed']} | {r['after']} |"
          for code, r in issues["by_rule"].items()),
        "",
        "Fixed: " + ", ".join(data["fix_rules"]) + " (ruff's safe fixes only).",
        "",
        "## Reported, not fixed",
        "",
        *(f"- {code}: {why}" for code, why in data["not_fixed"].items()),
        "",
        "## Time per stage",
        "",
        "| Stage | Tasks | Wall (s) | Busy (s) | Slowest task (s) |",
        "|---|---:|---:|---:|---:|",
        *(f"| {stage} | {t['tasks']} | {t['wall_s']:.2f} | {t['busy_s']:.2f} | {t['slowest_s']:.2f} |"
          for stage, t in timings["stages"].items()),
        "",
        "## Most issues before fixing",
        "",
        "| File | Before | After |",
        "|---|---:|---:|",
        *(f"| `{f['path']}` | {f['before']} | {f['after']} |" for f in data["top_files"]),
    ]
    lines += _skipped_section(files)
    return "\n".join(lines) + "\n"


def _skipped_section(files: dict[str, Any]) -> list[str]:
    rows = [(s["path"], s["reason"]) for s in files["skipped"]]
    rows += [(u["path"], f"ruff could not read it: {u['reason']}") for u in files["unreadable"]]
    if not rows:
        return []
    return ["", "## Files not linted", "", *(f"- `{path}`: {reason}" for path, reason in rows)]
