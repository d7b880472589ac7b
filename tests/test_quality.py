"""The quality pipeline's stages, run in-process on tests/fixtures/quality_sample.

Calls the stage functions exactly as pipelined's workers would (cwd = the
pipeline's folder, parameters in os.environ, shard numbers as ints, strings or
PIPELINE_SHARD) and pins the exact counts the report must show.

The fixture (every finding is marked with a comment in its source):
    app.py             14 findings
    shop/cart.py       10 findings
    shop/broken.py     does not parse: one invalid-syntax finding, left alone
    shop/clean.py      no finding: must come out unchanged
    shop/__init__.py   empty
    legacy_latin1.py   not UTF-8: copied, not linted (ruff reads UTF-8 only)
    notes.txt, .cache/hidden.py, site-packages/vendored.py: never copied
Every scanned rule occurs once (F401 twice), so each fix rule is fixed exactly
once and each reported-only rule survives unchanged.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import tomllib
import warnings
from importlib import import_module
from pathlib import Path

import pytest

from examples.quality import stages, tree
from examples.quality.workdir import MARKER

REPO = Path(__file__).resolve().parent.parent
FIXTURE = REPO / "tests" / "fixtures" / "quality_sample"
PIPELINE_DIR = REPO / "examples" / "quality"

FILES = ["app.py", "shop/__init__.py", "shop/broken.py", "shop/cart.py", "shop/clean.py"]
SKIPPED = [{"path": "legacy_latin1.py", "reason": "not UTF-8 (ruff reads UTF-8 only)"}]
FIXABLE = ["F541", "E401", "E713", "E714", "W605", "UP008", "UP015", "UP018", "UP024", "UP032", "UP034", "UP039"]
# Reported, never fixed: see NOT_FIXED in examples/quality/params.py.
REPORTED_ONLY = {"F401": 2, "F632": 1, "F811": 1, "F841": 1, "E711": 1, "E712": 1, "E721": 1,
                 "I001": 1, "UP004": 1, "UP006": 1, "UP007": 1, "invalid-syntax": 1}
BEFORE = {**{code: 1 for code in FIXABLE}, **REPORTED_ONLY}
FIXED = {code: 1 for code in FIXABLE}
AFTER = REPORTED_ONLY
ISSUES_BEFORE, FIXES, ISSUES_AFTER = 25, 12, 13


def snapshot(folder: Path) -> dict[str, str]:
    """Path -> content hash of every file, except a manual demo's .work and caches."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not {".work", "__pycache__"} & set(rel.split("/")):
            digests[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


@pytest.fixture
def run_env(tmp_path, monkeypatch):
    """The environment pipelined gives a stage task: pipeline folder as cwd, parameters in env."""
    work = tmp_path / "work"
    monkeypatch.chdir(PIPELINE_DIR)
    monkeypatch.setenv("TARGET", str(FIXTURE))
    monkeypatch.setenv("WORK", str(work))
    # Pinned so the counts do not depend on the Python running the tests.
    monkeypatch.setenv("TARGET_VERSION", "py311")
    monkeypatch.setenv("RUFF_THREADS", "1")
    for name in ("RULES", "FIX_RULES", "PIPELINE_SHARD", "PIPELINE_SHARDS"):
        monkeypatch.delenv(name, raising=False)
    return work


def run_cycle(shards: int, monkeypatch) -> dict:
    results = {"prepare": stages.prepare()}
    # The three ways a shard number can arrive: str (from text), int (TOML
    # "{shard}" placeholders), or only PIPELINE_SHARD(S) in the environment.
    results["scan"] = [stages.scan(shard=str(i), shards=str(shards)) for i in range(shards)]
    results["fix"] = [stages.fix(shard=i, shards=shards) for i in range(shards)]
    results["validate"] = []
    for i in range(shards):
        monkeypatch.setenv("PIPELINE_SHARD", str(i))
        monkeypatch.setenv("PIPELINE_SHARDS", str(shards))
        results["validate"].append(stages.validate())
    results["report"] = stages.report()
    return results


@pytest.mark.parametrize("shards", [1, 3, 7])  # 7 > 5 files: some shards own nothing
def test_cycle_exact_counts(run_env, monkeypatch, shards):
    fixture_before = snapshot(FIXTURE)
    pipeline_dir_before = snapshot(PIPELINE_DIR)

    results = run_cycle(shards, monkeypatch)

    assert results["prepare"]["files"] == 5
    assert results["prepare"]["skipped"] == 1
    assert sum(r["files"] for r in results["scan"]) == 5
    assert sum(r["issues"] for r in results["scan"]) == ISSUES_BEFORE
    assert sum(r["fixes"] for r in results["fix"]) == FIXES
    assert sum(r["issues"] for r in results["validate"]) == ISSUES_AFTER
    assert results["report"] == {
        "report_json": str(run_env / "report.json"),
        "report_md": str(run_env / "report.md"),
        "files": 5,
        "issues_before": ISSUES_BEFORE,
        "issues_after": ISSUES_AFTER,
        "fixes_applied": FIXES,
    }

    report = json.loads((run_env / "report.json").read_text())
    by_rule = report["issues"]["by_rule"]
    assert {c: r["before"] for c, r in by_rule.items() if r["before"]} == BEFORE
    assert {c: r["fixed"] for c, r in by_rule.items() if r["fixed"]} == FIXED
    assert {c: r["after"] for c, r in by_rule.items() if r["after"]} == AFTER
    assert report["fixes"] == {"applied": FIXES, "files_changed": 2, "by_rule": FIXED}
    assert set(report["not_fixed"]) == set(REPORTED_ONLY) - {"invalid-syntax"}
    assert report["files"]["scanned"] == 5
    assert report["files"]["skipped"] == SKIPPED
    assert report["files"]["unreadable"] == []
    assert report["shards"] == {"scan": shards, "fix": shards, "validate": shards}
    assert {s: t["tasks"] for s, t in report["timings"]["stages"].items()} == {
        "prepare": 1, "scan": shards, "fix": shards, "validate": shards, "report": 1,
    }
    assert all(t["wall_s"] >= 0 for t in report["timings"]["stages"].values())
    md = (run_env / "report.md").read_text()
    assert "| Files scanned | 5 |" in md and "| Fixes applied | 12 (in 2 files) |" in md

    # The target and the pipeline folder are only read (no .ruff_cache either).
    assert snapshot(FIXTURE) == fixture_before
    assert snapshot(PIPELINE_DIR) == pipeline_dir_before
    copied = snapshot(run_env / "tree")
    assert sorted(copied) == sorted([*FILES, "legacy_latin1.py"])  # copied, not linted
    assert copied["legacy_latin1.py"] == fixture_before["legacy_latin1.py"]


def test_fixed_copy_is_valid_python_and_only_fixable_files_changed(run_env, monkeypatch):
    run_cycle(2, monkeypatch)
    copy = run_env / "tree"
    for name in ("shop/clean.py", "shop/broken.py", "shop/__init__.py"):
        assert (copy / name).read_bytes() == (FIXTURE / name).read_bytes()
    for name in ("app.py", "shop/cart.py"):
        fixed = (copy / name).read_text()
        assert fixed != (FIXTURE / name).read_text()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SyntaxWarning)  # cart.py keeps its `is "yes"` (F632)
            compile(fixed, name, "exec")
    app = (copy / "app.py").read_text()
    assert "super().__init__()" in app and "x not in (1, \"a\")" in app and "if x is not None:" in app
    assert "class Greeter(object):" in app  # UP004 is reported only


def test_fix_refuses_to_run_twice(run_env, monkeypatch):
    # A retried fix would see already-fixed files and report 0 fixes.
    run_cycle(1, monkeypatch)
    with pytest.raises(RuntimeError, match="earlier fix attempt"):
        stages.fix(shard=0, shards=1)


def test_report_refuses_an_incomplete_run(run_env, monkeypatch):
    run_cycle(3, monkeypatch)
    (run_env / "validate" / "shard-1.json").unlink()
    with pytest.raises(RuntimeError, match=r"validate: expected shards 0\.\.2, found \[0, 2\]"):
        stages.report()


def test_prepare_never_wipes_a_folder_it_did_not_make(run_env):
    run_env.mkdir()
    precious = run_env / "thesis.tex"
    precious.write_text("years of work")
    with pytest.raises(RuntimeError, match=f"no {MARKER} file"):
        stages.prepare()
    assert precious.read_text() == "years of work"


def test_prepare_refuses_a_target_inside_work(run_env, monkeypatch):
    inner = run_env / "src"
    inner.mkdir(parents=True)
    (inner / "a.py").write_text("x = 1\n")
    monkeypatch.setenv("TARGET", str(inner))
    with pytest.raises(RuntimeError, match="inside WORK"):
        stages.prepare()
    assert (inner / "a.py").exists()


def test_prepare_explains_a_relative_target(run_env, monkeypatch):
    monkeypatch.setenv("TARGET", "tests/fixtures/quality_sample")  # relative to the repo, not to cwd
    with pytest.raises(RuntimeError, match="relative to .*examples/quality, the pipeline file's folder"):
        stages.prepare()


def test_prepare_leaves_out_a_work_folder_inside_target(tmp_path, monkeypatch):
    target = tmp_path / "proj"
    (target / "pkg").mkdir(parents=True)
    (target / "pkg" / "mod.py").write_text("import os\n")
    monkeypatch.setenv("TARGET", str(target))
    monkeypatch.setenv("WORK", str(target / "work"))
    stages.prepare()
    assert stages.prepare()["files"] == 1  # the second run must not copy the first run's copy


def test_a_ruff_module_in_the_target_cannot_shadow_ruff(tmp_path, monkeypatch):
    # ruff runs with the copy as its cwd; `python -m ruff` must not import the copy's ruff.py.
    target = tmp_path / "proj"
    target.mkdir()
    (target / "ruff.py").write_text("raise SystemExit(3)\n")
    (target / "json.py").write_text("import os\n")  # F401, and a stdlib name
    monkeypatch.setenv("TARGET", str(target))
    monkeypatch.setenv("WORK", str(tmp_path / "work"))
    monkeypatch.chdir(target)
    stages.prepare()
    assert stages.scan(shard=0, shards=1)["issues"] == 1


def test_defaults_resolve_against_the_pipeline_folder(monkeypatch, tmp_path):
    from examples.quality import params

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORK", raising=False)
    monkeypatch.setenv("TARGET", "")  # empty = default, as pipeline.toml declares it
    assert params.work_dir() == tmp_path / ".work" / "quality"
    assert (params.target_dir() / "os.py").is_file()  # the stdlib


def test_shards_partition_the_files_exactly_once():
    files = [{"path": f"m{i}.py", "bytes": (i * 7919) % 1000} for i in range(50)]
    for shards in (1, 2, 4, 60):
        owned = [tree.shard_files(files, i, shards) for i in range(shards)]
        flat = [p for part in owned for p in part]
        assert sorted(flat) == sorted(f["path"] for f in files)
        assert owned == [tree.shard_files(files, i, shards) for i in range(shards)]  # deterministic


@pytest.mark.parametrize("bad", [("4", "4"), ("-1", "4"), ("0", "0")])
def test_shard_out_of_range_fails(run_env, bad):
    with pytest.raises(ValueError, match="out of range"):
        stages.scan(shard=bad[0], shards=bad[1])


def test_pipeline_file_matches_the_stage_functions():
    doc = tomllib.loads((PIPELINE_DIR / "pipeline.toml").read_text())
    assert doc["pipeline"]["name"] == "quality"
    assert list(doc["stages"]) == ["prepare", "scan", "fix", "validate", "report"]
    for stage in doc["stages"].values():
        module, qualname = stage["function"].split(":")
        function = getattr(import_module(module), qualname)
        inspect.signature(function).bind(**stage.get("kwargs", {}))
        assert stage["max_retries"] <= 1
    assert doc["stages"]["fix"]["needs"] == ["scan"]
    assert doc["stages"]["fix"]["max_retries"] == 0
