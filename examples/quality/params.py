"""Parameters of the quality pipeline: what to lint, where to work, which rules.

Owns the environment variables a run can set (the `[pipeline] env` table of
pipeline.toml, overridden by `pipelinectl run FILE --env KEY=VALUE`) and their
defaults, plus the shard arguments. Stage functions read their parameters here
and nowhere else, so a test can drive them with monkeypatched os.environ.

    TARGET          folder to lint; default: this interpreter's standard library
    WORK            work folder (wiped by prepare); default .work/quality
    RULES           ruff rules the scans report (comma-separated)
    FIX_RULES       ruff rules whose safe fixes the fix stage applies
    TARGET_VERSION  ruff --target-version; default: this interpreter (py311, ...)
    RUFF_THREADS    threads per ruff process; default 1 (pipelined shards are the parallelism)

Relative TARGET and WORK paths resolve against the current directory, which is
the pipeline file's folder when pipelined runs the stages.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from pathlib import Path

DEFAULT_WORK = ".work/quality"

# What the scans report. Each rule is a real defect or a mechanical clean-up
# with a well-defined meaning; the stdlib has plenty of all of them. Codes are
# listed one by one (not "UP") so a newer ruff cannot silently widen the set.
SCAN_RULES = (
    "F401",  # unused import
    "F541",  # f-string without placeholders
    "F632",  # `is` comparison with a literal
    "F811",  # redefinition of an unused name
    "F841",  # unused local variable
    "E401",  # several imports on one line
    "E711",  # comparison to None with ==
    "E712",  # comparison to True/False with ==
    "E713",  # `not x in y`
    "E714",  # `not x is y`
    "E721",  # type comparison with ==
    "W605",  # invalid escape sequence in a string
    "I001",  # unsorted imports
    "UP004",  # class X(object)
    "UP006",  # typing.List[...] instead of list[...]
    "UP007",  # typing.Union[...] instead of X | Y
    "UP008",  # super(Class, self) instead of super()
    "UP015",  # redundant open() mode
    "UP018",  # str("literal"), int(1), ...
    "UP024",  # aliases of OSError
    "UP032",  # "{}".format(x) instead of an f-string
    "UP034",  # extraneous parentheses
    "UP039",  # class X(): with empty parentheses
)

# What the fix stage may change: the scan rules whose fixes keep behaviour,
# checked by running CPython's own test suite against a fixed copy of the
# stdlib (only tests that pin source line numbers notice; see README.md).
# Ruff applies only fixes it calls "safe" (never --unsafe-fixes), but "safe"
# was not enough for these, which stay reported-only:
NOT_FIXED = {
    "F401": "removing an 'unused' import breaks re-exports via `import *` (re/_parser.py needs MAXGROUPS)",
    "F632": "`[] is not []` -> `[] != []` turns an identity test into an equality test",
    "I001": "sorting imports reorders side effects (circular imports in test_import break)",
    "UP004": "dropping `object` from `class X(object, Base)` changes the MRO (test_ctypes)",
    "UP006": "`typing.List[int]` -> `list[int]` changes runtime objects: bases, reprs (test_typing)",
    "UP007": "`Union[X, Y]` -> `X | Y` changes runtime objects, as UP006 does",
    "F811": "no safe fix in general: which definition was meant?",
    "F841": "dropping an assignment can drop a side effect",
    "E711": "`== None` and `is None` differ for types with a custom __eq__",
    "E712": "`== True` and a truth test differ for non-bool values",
    "E721": "no fix exists",
}
FIX_RULES = tuple(r for r in SCAN_RULES if r not in NOT_FIXED)


def _env(name: str) -> str | None:
    # An empty value means "use the default", so a pipeline file can declare
    # TARGET = "" to document the parameter without fixing its value.
    value = os.environ.get(name, "").strip()
    return value or None


def work_dir(override: str | None = None) -> Path:
    return Path(override or _env("WORK") or DEFAULT_WORK).expanduser().resolve()


def target_dir(override: str | None = None) -> Path:
    return Path(override or _env("TARGET") or sysconfig.get_paths()["stdlib"]).expanduser().resolve()


def _rule_list(name: str, default: tuple[str, ...]) -> list[str]:
    raw = _env(name)
    if raw is None:
        return list(default)
    rules = [r.strip().upper() for r in raw.split(",") if r.strip()]
    if not rules:
        raise ValueError(f"{name} lists no rules: {raw!r}")
    return rules


def scan_rules() -> list[str]:
    return _rule_list("RULES", SCAN_RULES)


def fix_rules() -> list[str]:
    return _rule_list("FIX_RULES", FIX_RULES)


def target_version() -> str:
    # The code under test is meant for the interpreter that runs it: with the
    # stdlib as TARGET that is exactly this one.
    return _env("TARGET_VERSION") or f"py{sys.version_info.major}{sys.version_info.minor}"


def ruff_threads() -> int:
    raw = _env("RUFF_THREADS") or "1"
    threads = int(raw)
    if threads < 0:
        raise ValueError(f"RUFF_THREADS must be >= 0 (0: ruff's default), not {raw!r}")
    return threads


def shard_of(shard: int | str | None, shards: int | str | None) -> tuple[int, int]:
    """(shard, shards) from the task's kwargs, else PIPELINE_SHARD(S), else (0, 1).

    Values from a TOML file or the environment may be strings ("0") or ints.
    """
    if shard is None:
        shard = os.environ.get("PIPELINE_SHARD")
    if shards is None:
        shards = os.environ.get("PIPELINE_SHARDS")
    index = 0 if shard in (None, "") else int(shard)
    count = 1 if shards in (None, "") else int(shards)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard {index} of {count} is out of range")
    return index, count


def not_fixed_reasons(rules: list[str], fixing: list[str]) -> dict[str, str]:
    """Why each scanned rule outside the fix set is only reported (for the report)."""
    return {r: NOT_FIXED.get(r, "not in FIX_RULES") for r in rules if r not in fixing}
