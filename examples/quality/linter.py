"""Running ruff: one lint pass (JSON findings) or one fix pass (fix counts).

Owns the ruff command line and the parsing of its output. Ruff runs as
`python -P -m ruff` with the worker's own interpreter, so it is the ruff
installed next to pipelined, whatever PATH says; `-P` (Python 3.11+) keeps the
current folder (the pipeline's folder, or a copy of the stdlib) off sys.path,
so no file there can shadow ruff or a module it imports.

Ruff is configured on the command line only: `--isolated` ignores every
pyproject.toml / ruff.toml (the target's own config, the user's), RUFF_*
variables are dropped from its environment, and `--no-cache` keeps it from
writing .ruff_cache into the tree or the pipeline folder.

Exit codes: 0 = clean, 1 = findings (a result, not a failure), 2+ = ruff
itself failed (bad rule code, crash), which fails the task.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Files per ruff run: keeps argv far below ARG_MAX however big the target is.
CHUNK_FILES = 1000
SYNTAX_ERROR = "invalid-syntax"

_FAILED_TO_LINT = re.compile(r"Failed to lint (?P<path>.+?): (?P<reason>.+)$")
_FIXED_FILE = re.compile(r"^- (?P<path>.+):$")
_FIXED_RULE = re.compile(r"^\s+(?P<count>\d+) [×x] (?P<code>\S+)(?: \((?P<name>[^)]*)\))?\s*$")
_FIXED_TOTAL = re.compile(r"^Fixed (?P<total>\d+) errors?\b")


@dataclass
class CheckResult:
    findings: list[dict[str, Any]] = field(default_factory=list)
    unreadable: list[dict[str, str]] = field(default_factory=list)  # files ruff skipped


@dataclass
class FixResult:
    by_file: dict[str, Counter] = field(default_factory=dict)  # path -> {code: fixes}
    names: dict[str, str] = field(default_factory=dict)  # code -> rule name


def ruff_argv(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "ruff", *args]


def version() -> str:
    """Ruff's version string; also the early check that ruff is installed at all."""
    out = subprocess.run(ruff_argv("--version"), capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(
            f"cannot run ruff with {sys.executable} ({out.stderr.strip()[-300:]}); "
            "install it next to pipelined: pip install 'pipelined[examples]' (or: pip install ruff)"
        )
    return out.stdout.strip()


def check(root: Path, files: list[str], rules: list[str], target_version: str, threads: int) -> CheckResult:
    """Lint `files` (paths relative to `root`) and return normalised findings."""
    root = root.resolve()
    result = CheckResult()
    for chunk in _chunks(files):
        out = _run(root, ["--output-format=json", "--no-fix", *_common(rules, target_version)], chunk, threads)
        result.findings.extend(_finding(root, raw) for raw in json.loads(out.stdout or "[]"))
        result.unreadable.extend(_unreadable(root, out.stderr))
    result.findings = _one_syntax_error_per_file(result.findings)
    result.findings.sort(key=lambda f: (f["path"], f["line"], f["column"], f["code"]))
    return result


def fix(root: Path, files: list[str], rules: list[str], target_version: str, threads: int) -> FixResult:
    """Apply ruff's safe fixes for `rules` to `files` in place; count them per file and rule."""
    root = root.resolve()
    result = FixResult()
    for chunk in _chunks(files):
        # --fix-only: leftovers are the validate stage's business, and the exit
        # code then means only "ruff worked" or "ruff failed".
        options = ["--fix-only", "--show-fixes", "--output-format=concise", *_common(rules, target_version)]
        out = _run(root, options, chunk, threads)
        _parse_fixes(root, out.stdout, result)
    return result


def _common(rules: list[str], target_version: str) -> list[str]:
    return ["--isolated", "--no-cache", "--target-version", target_version, "--select", ",".join(rules)]


def _chunks(files: list[str]) -> Iterator[list[str]]:
    for i in range(0, len(files), CHUNK_FILES):
        yield files[i : i + CHUNK_FILES]


def _run(root: Path, options: list[str], files: list[str], threads: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUFF_")}
    if threads:
        env["RAYON_NUM_THREADS"] = str(threads)  # ruff's thread pool size
    # "--" so that a file named like an option is still a file.
    argv = ruff_argv("check", *options, "--", *files)
    # check=False: exit 1 means "found issues"; the exit code is judged below.
    out = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace", check=False)
    if out.returncode not in (0, 1):
        tail = (out.stderr or out.stdout).strip()[-2000:]
        raise RuntimeError(f"ruff failed (exit {out.returncode}): {tail}")
    return out


def _relative(root: Path, filename: str) -> str:
    """Ruff's file name as a posix path relative to `root` (the cwd ruff ran in)."""
    # Ruff prints absolute paths under its (resolved) cwd: a prefix check is
    # enough, and resolving every one of thousands of findings is not cheap.
    prefix = f"{root}{os.sep}"
    if filename.startswith(prefix):
        return Path(filename[len(prefix):]).as_posix()
    path = Path(filename)
    if path.is_absolute():
        try:
            return path.resolve().relative_to(root).as_posix()
        except ValueError:
            pass
    return path.as_posix()


def _finding(root: Path, raw: dict[str, Any]) -> dict[str, Any]:
    code = raw.get("code")
    # Ruff has spelled syntax errors as E999, as a null code and as
    # "invalid-syntax" over the years; count them under one name.
    if code in (None, "", "E999"):
        code = SYNTAX_ERROR
    fix = raw.get("fix") or {}
    location = raw.get("location") or {}
    return {
        "path": _relative(root, raw["filename"]),
        "line": location.get("row", 0),
        "column": location.get("column", 0),
        "code": code,
        "name": raw.get("name") or code,
        "message": raw.get("message", ""),
        "fix": fix.get("applicability"),  # "safe", "unsafe", "display-only" or None
    }


def _one_syntax_error_per_file(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # How many errors ruff's parser recovers into differs between versions
    # (`def f(:` is one error or two); "this file does not parse" does not.
    seen: set[str] = set()
    kept = []
    for finding in sorted(findings, key=lambda f: (f["path"], f["line"], f["column"])):
        if finding["code"] == SYNTAX_ERROR:
            if finding["path"] in seen:
                continue
            seen.add(finding["path"])
        kept.append(finding)
    return kept


def _unreadable(root: Path, stderr: str) -> Iterable[dict[str, str]]:
    for line in stderr.splitlines():
        match = _FAILED_TO_LINT.search(line)
        if match:
            yield {"path": _relative(root, match["path"]), "reason": match["reason"]}


def _parse_fixes(root: Path, stdout: str, result: FixResult) -> None:
    """Read ruff's `--show-fixes` listing:

        Fixed 3 errors:
        - pkg/a.py:
            2 × I001 (unsorted-imports)
            1 × UP004 (useless-object-inheritance)
    """
    current: Counter | None = None
    parsed = 0
    total: int | None = None
    for line in stdout.splitlines():
        if (m := _FIXED_TOTAL.match(line)) and total is None:
            total = int(m["total"])
        elif m := _FIXED_FILE.match(line):
            current = result.by_file.setdefault(_relative(root, m["path"]), Counter())
        elif (m := _FIXED_RULE.match(line)) and current is not None:
            current[m["code"]] += int(m["count"])
            result.names[m["code"]] = m["name"] or m["code"]
            parsed += int(m["count"])
    # A format change in a future ruff must fail loudly, not report zero fixes.
    if parsed != (total or 0):
        raise RuntimeError(f"could not read ruff's fix listing (parsed {parsed}, ruff says {total}):\n{stdout[-2000:]}")
