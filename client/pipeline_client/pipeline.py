"""Pipeline files: load a TOML DAG of stages, validate it, expand it to tasks.

    FILE.toml --load_pipeline()--> Pipeline --expand(workflow, env)--> [task dicts]
                                                                        |
                                                          Client.submit_many (one batch)

Owns the file format: which keys exist and what they mean, the `{shard}` /
`{shards}` placeholders, the environment a stage's tasks get, and every error a
pipeline author can see before anything is submitted. Knows nothing of sockets
or terminals.

    [pipeline]
    name = "quality"                  # workflow ids are "quality-<suffix>"
    env = { TARGET = "src" }          # parameters; `pipelinectl run --env` overrides

    [stages.scan]
    command = ["ruff", "check", "part{shard}"]
    shards = 4                        # tasks quality-<suffix>.scan.0 .. .scan.3

    [stages.report]
    needs = ["scan"]                  # every shard of scan
    function = "examples.quality:report"
"""

from __future__ import annotations

import difflib
import os
import re
import secrets
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_protocol import ProtocolError, validate_task_spec

from .errors import PipelineError
from .tasks import int_beyond_wire, int_too_large

# Keys a stage passes straight through to its tasks (the task fields of DESIGN.md).
TASK_KEYS = frozenset(
    {"command", "function", "args", "kwargs", "priority", "timeout", "max_retries",
     "retry_backoff", "task_type", "memory_limit_mb", "env", "cwd"}
)
STAGE_KEYS = TASK_KEYS | {"needs", "shards", "description"}
PIPELINE_KEYS = frozenset({"name", "description", "env"})
TOP_KEYS = frozenset({"pipeline", "stages"})
# Task fields a stage may not set, because the expansion owns them.
RESERVED_KEYS = {
    "task_id": "task ids are made from the workflow and stage names",
    "workflow": "every task of the file gets the run's workflow id",
    "dependencies": 'a stage waits for other stages with needs = ["stage", ...]',
}

MAX_SHARDS = 10_000
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
PLACEHOLDER_RE = re.compile(r"\{(shard|shards)\}")
SHARD_ENV, SHARDS_ENV = "PIPELINE_SHARD", "PIPELINE_SHARDS"
WORKFLOW_ENV, STAGE_ENV = "PIPELINE_WORKFLOW", "PIPELINE_STAGE"


class PipelineFileError(PipelineError):
    """A pipeline file that cannot run; the message names the file and the culprit."""

    def __init__(self, path: str | os.PathLike, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        self.message = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Stage:
    name: str
    fields: dict[str, Any]  # the TASK_KEYS the file set, as written
    needs: tuple[str, ...] = ()
    shards: int | None = None  # None: one task, not sharded

    def task_ids(self, workflow: str) -> list[str]:
        if self.shards is None:
            return [f"{workflow}.{self.name}"]
        return [f"{workflow}.{self.name}.{i}" for i in range(self.shards)]


@dataclass(frozen=True)
class Pipeline:
    path: Path  # absolute
    name: str
    stages: dict[str, Stage]  # in file order
    params: dict[str, str] = field(default_factory=dict)  # [pipeline] env defaults

    @property
    def folder(self) -> Path:
        return self.path.parent

    def new_workflow_id(self) -> str:
        return f"{self.name}-{secrets.token_hex(3)}"

    def expand(self, workflow: str, env: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The task dicts of one run, ready for Client.submit_many."""
        overrides = dict(env or {})
        return [task for stage in self.stages.values() for task in self._stage_tasks(stage, workflow, overrides)]

    def _stage_tasks(self, stage: Stage, workflow: str, overrides: dict[str, str]) -> Iterator[dict[str, Any]]:
        deps = [tid for need in stage.needs for tid in self.stages[need].task_ids(workflow)]
        shard_indexes: list[int | None] = [None] if stage.shards is None else list(range(stage.shards))
        for task_id, shard in zip(stage.task_ids(workflow), shard_indexes):
            fields = stage.fields if shard is None else substitute(stage.fields, shard, stage.shards)
            task = {k: v for k, v in fields.items() if k not in ("cwd", "env")}
            task["task_id"] = task_id
            task["workflow"] = workflow
            task["dependencies"] = list(deps)
            task["cwd"] = self._resolve_cwd(fields.get("cwd"))
            task["env"] = self._task_env(fields.get("env") or {}, overrides, workflow, stage, shard)
            yield task

    def _resolve_cwd(self, cwd: str | None) -> str:
        # Relative to the file, not to wherever pipelinectl happens to run.
        return str(self.folder if cwd is None else (self.folder / os.path.expanduser(cwd)).resolve())

    def _task_env(self, stage_env: dict[str, str], overrides: dict[str, str], workflow: str, stage: Stage, shard: int | None) -> dict[str, str]:
        # Parameters, then the stage's own env, then the command line; the
        # PIPELINE_* names are ours and always win.
        env = {**self.params, **stage_env, **overrides, WORKFLOW_ENV: workflow, STAGE_ENV: stage.name}
        if shard is not None:
            env[SHARD_ENV] = str(shard)
            env[SHARDS_ENV] = str(stage.shards)
        return env


# -- placeholders -------------------------------------------------------------
def substitute(fields: dict[str, Any], shard: int, shards: int) -> dict[str, Any]:
    """Replace {shard}/{shards} in the places a stage may use them, and nowhere else.

    Places: command argv, string values inside args/kwargs (recursively), cwd,
    env values. Any other brace (awk, shell, JSON, "{other}") is left alone. In
    args/kwargs a value that is exactly "{shard}" or "{shards}" becomes the int.
    """
    values = {"shard": shard, "shards": shards}

    def text(s: str) -> str:
        return PLACEHOLDER_RE.sub(lambda m: str(values[m.group(1)]), s)

    def data(v: Any) -> Any:
        if isinstance(v, str):
            whole = PLACEHOLDER_RE.fullmatch(v)
            return values[whole.group(1)] if whole else text(v)
        if isinstance(v, list):
            return [data(x) for x in v]
        if isinstance(v, dict):
            return {k: data(x) for k, x in v.items()}
        return v

    out = dict(fields)
    if "command" in out:
        out["command"] = [text(a) for a in out["command"]]
    for key in ("args", "kwargs"):
        if key in out:
            out[key] = data(out[key])
    if "cwd" in out:
        out["cwd"] = text(out["cwd"])
    if "env" in out:
        out["env"] = {k: text(v) for k, v in out["env"].items()}
    return out


def uses_placeholders(fields: dict[str, Any]) -> bool:
    probe = substitute(fields, -1, -1)
    return probe != fields


# -- loading --------------------------------------------------------------------
def load_pipeline(path: str | os.PathLike) -> Pipeline:
    """Read and fully validate a pipeline file; PipelineFileError names the culprit."""
    path = Path(path).absolute()
    text = _read(path)
    doc = _parse(path, text)
    loc = _Locator(path, text)
    _check_keys(doc, TOP_KEYS, "the file", loc, ())
    meta = doc.get("pipeline", {})
    if not isinstance(meta, dict):
        raise loc.error("[pipeline] must be a table", (), "pipeline")
    _check_keys(meta, PIPELINE_KEYS, "[pipeline]", loc, ("pipeline",))
    name = _pipeline_name(meta, path, loc)
    params = _env_table(meta.get("env", {}), "[pipeline] env", loc, ("pipeline",))
    stages = _stages(doc.get("stages"), loc)
    _check_needs(stages, loc)
    _check_cycles(stages, loc)
    pipeline = Pipeline(path=path, name=name, stages=stages, params=params)
    _check_tasks(pipeline, loc)
    return pipeline


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PipelineFileError(path, "no such file") from None
    except IsADirectoryError:
        raise PipelineFileError(path, "is a directory, not a pipeline file") from None
    except UnicodeDecodeError as exc:
        raise PipelineFileError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise PipelineFileError(path, f"cannot read: {exc.strerror}") from None


def _parse(path: Path, text: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib says "... (at line 3, column 7)"; turn that into path:3: ...
        msg = str(exc)
        if msg.endswith("(at end of document)"):
            what = msg.removesuffix("(at end of document)").rstrip()
            raise PipelineFileError(path, f"invalid TOML: {what} (at the end of the file)", max(1, len(text.splitlines()))) from None
        m = re.search(r"\s*\(at line (\d+), column (\d+)\)$", msg)
        if m is None:
            raise PipelineFileError(path, f"invalid TOML: {msg}") from None
        what = msg[: m.start()]
        raise PipelineFileError(path, f"invalid TOML: {what} (column {m.group(2)})", int(m.group(1))) from None
    except ValueError:  # tomllib lets int()'s 4300-digit limit through as a plain ValueError
        raise PipelineFileError(path, "invalid TOML: an integer too large to read (more than 4300 digits)") from None


def _pipeline_name(meta: dict[str, Any], path: Path, loc: _Locator) -> str:
    name = meta.get("name", path.stem)
    if not isinstance(name, str) or not NAME_RE.match(name):
        source = "name" if "name" in meta else f"name (from the file name {path.name!r}; set [pipeline] name)"
        raise loc.error(
            f"[pipeline] {source} must be 1-64 letters, digits, '-' or '_' (no dots), not {name!r}",
            ("pipeline",), "name",
        )
    return name


def _stages(table: Any, loc: _Locator) -> dict[str, Stage]:
    if table is None or table == {}:
        raise loc.error("defines no stages; add at least one [stages.NAME] table with a command or function", (), None)
    if not isinstance(table, dict):
        raise loc.error("stages must be a table of [stages.NAME] tables", (), "stages")
    return {name: _stage(name, body, loc) for name, body in table.items()}


def _stage(name: str, body: Any, loc: _Locator) -> Stage:
    where = ("stages", name)
    label = f"stage {name!r}"
    if not NAME_RE.match(name):
        raise loc.error(f"{label}: a stage name must be 1-64 letters, digits, '-' or '_' (no dots)", where, None)
    if not isinstance(body, dict):
        raise loc.error(f"{label} must be a table ([stages.{name}])", ("stages",), name)
    _check_keys(body, STAGE_KEYS, label, loc, where)
    has_command, has_function = "command" in body, "function" in body
    if has_command == has_function:
        what = "sets both command and function" if has_command else "needs a command or a function"
        raise loc.error(f"{label} {what}; give exactly one", where, "command" if has_command else None)
    if has_command:
        _check_command(body["command"], label, loc, where)
    if has_function and not isinstance(body["function"], str):
        raise loc.error(f"{label}: function must be a string 'package.module:function'", where, "function")
    fields = {k: v for k, v in body.items() if k in TASK_KEYS}
    if "env" in fields:
        fields["env"] = _env_table(fields["env"], f"{label}: env", loc, where)
    if "cwd" in fields and not isinstance(fields["cwd"], str):
        raise loc.error(f"{label}: cwd must be a string path", where, "cwd")
    shards = _shards(body, label, loc, where)
    if shards is None and uses_placeholders(fields):
        raise loc.error(f"{label} uses {{shard}} or {{shards}} but sets no shards; add shards = N", where, None)
    return Stage(name=name, fields=fields, needs=_needs(body, label, loc, where), shards=shards)


def _check_command(command: Any, label: str, loc: _Locator, where: tuple[str, ...]) -> None:
    if isinstance(command, str):
        raise loc.error(
            f'{label}: command must be an argv list such as ["make", "test"]; '
            f'for a shell line use ["sh", "-c", "..."]', where, "command",
        )
    if not isinstance(command, list) or not command or not all(isinstance(a, str) for a in command):
        raise loc.error(f"{label}: command must be a non-empty list of strings", where, "command")


def _shards(body: dict[str, Any], label: str, loc: _Locator, where: tuple[str, ...]) -> int | None:
    if "shards" not in body:
        return None
    shards = body["shards"]
    if isinstance(shards, bool) or not isinstance(shards, int) or not 1 <= shards <= MAX_SHARDS:
        raise loc.error(f"{label}: shards must be an integer from 1 to {MAX_SHARDS}, not {shards!r}", where, "shards")
    return shards


def _needs(body: dict[str, Any], label: str, loc: _Locator, where: tuple[str, ...]) -> tuple[str, ...]:
    needs = body.get("needs", [])
    if isinstance(needs, str):
        raise loc.error(f'{label}: needs must be a list, e.g. needs = ["{needs}"]', where, "needs")
    if not isinstance(needs, list) or not all(isinstance(n, str) for n in needs):
        raise loc.error(f"{label}: needs must be a list of stage names", where, "needs")
    return tuple(dict.fromkeys(needs))  # duplicates dropped, order kept


def _env_table(env: Any, label: str, loc: _Locator, where: tuple[str, ...]) -> dict[str, str]:
    if not isinstance(env, dict):
        raise loc.error(f"{label} must be a table of NAME = \"value\"", where, "env")
    out = {}
    for key, value in env.items():
        # Numbers are harmless to stringify; booleans and tables are ambiguous.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise loc.error(f"{label}: {key} must be a string, not {value!r}", where, "env")
        out[key] = value
    return out


def _check_keys(table: dict[str, Any], allowed: frozenset[str], label: str, loc: _Locator, where: tuple[str, ...]) -> None:
    for key in table:
        if key in allowed:
            continue
        if key in RESERVED_KEYS and allowed is STAGE_KEYS:
            raise loc.error(f"{label}: {key!r} cannot be set in a pipeline file ({RESERVED_KEYS[key]})", where, key)
        raise loc.error(f"{label}: unknown key {key!r}{did_you_mean(key, allowed)}", where, key)


def did_you_mean(word: str, choices: Any) -> str:
    close = difflib.get_close_matches(word, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_needs(stages: dict[str, Stage], loc: _Locator) -> None:
    for stage in stages.values():
        for need in stage.needs:
            if need not in stages:
                hint = did_you_mean(need, stages) or f" (stages: {', '.join(stages)})"
                raise loc.error(f"stage {stage.name!r} needs unknown stage {need!r}{hint}", ("stages", stage.name), "needs")


def _check_cycles(stages: dict[str, Stage], loc: _Locator) -> None:
    cycle = find_cycle({name: stage.needs for name, stage in stages.items()})
    if cycle:
        chain = " -> ".join(cycle)
        raise loc.error(f"stages form a cycle: {chain} (each needs the next)", ("stages", cycle[0]), "needs")


def find_cycle(graph: Mapping[str, tuple[str, ...]]) -> list[str] | None:
    """One cycle of `graph` as [a, b, ..., a], or None. Iterative DFS: no recursion limit."""
    on_path, done = object(), object()
    mark: dict[str, object] = {}
    for root in graph:
        if root in mark:
            continue
        path, stack = [root], [iter(graph[root])]
        mark[root] = on_path
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                stack.pop()
                mark[path.pop()] = done
            elif mark.get(nxt) is on_path:
                return path[path.index(nxt):] + [nxt]
            elif nxt not in mark:
                mark[nxt] = on_path
                path.append(nxt)
                stack.append(iter(graph[nxt]))
    return None


def _check_tasks(pipeline: Pipeline, loc: _Locator) -> None:
    # The protocol's own validator checks every field's type and range, so the
    # file and the daemon can never disagree; we only say which stage it was.
    for task in pipeline.expand("check"):
        stage = task["task_id"].split(".")[1]
        try:
            validate_task_spec(task)
        except ProtocolError as exc:
            message = exc.message.removeprefix(f"task {task['task_id']!r}: ")
            key = exc.details.get("field")
            raise loc.error(f"stage {stage!r}: {message}", ("stages", stage), key) from None
        for key in ("args", "kwargs"):
            bad = int_beyond_wire(task.get(key))
            if bad is not None:
                raise loc.error(f"stage {stage!r}: {key} {int_too_large(bad)}", ("stages", stage), key)


class _Locator:
    """Finds the line a key was written on, so errors read `file:line: ...`.

    tomllib keeps no positions; a plain scan of `[section]` headers and `key =`
    lines finds the common layouts, and an unusual one just loses the line.
    """

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()

    def error(self, message: str, section: tuple[str, ...], key: str | None) -> PipelineFileError:
        return PipelineFileError(self.path, message, self.line_of(section, key))

    def line_of(self, section: tuple[str, ...], key: str | None) -> int | None:
        start, end = self._section(section)
        if start is None:
            return None
        if key is not None:
            # `key = ...` inside the section, or a `[key...]` header at top level.
            key_re = re.compile(r"^\s*\[*\s*" + _quoted(key) + r"\s*[=.\]]")
            for i in range(start, end):
                if key_re.match(self.lines[i]):
                    return i + 1
        return start + 1 if section else None

    def _section(self, section: tuple[str, ...]) -> tuple[int | None, int]:
        if not section:
            return 0, len(self.lines)  # top level: search the whole file
        header = re.compile(r"^\s*\[\s*" + r"\s*\.\s*".join(map(_quoted, section)) + r"\s*\]")
        for i, line in enumerate(self.lines):
            if header.match(line):
                end = next((j for j in range(i + 1, len(self.lines)) if self.lines[j].lstrip().startswith("[")), len(self.lines))
                return i, end
        return None, len(self.lines)


def _quoted(name: str) -> str:
    """A regex for a TOML key written bare, "quoted" or 'quoted'."""
    return "[\"']?" + re.escape(name) + "[\"']?"
