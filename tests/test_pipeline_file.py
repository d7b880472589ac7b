"""Pipeline files without a daemon: parsing, every validation error, expansion,
placeholder rules, shard environment, cwd defaults and --env parameters."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from pipeline_client.pipeline import (
    MAX_SHARDS,
    PipelineFileError,
    find_cycle,
    load_pipeline,
    substitute,
)


def write(tmp_path: Path, text: str, name: str = "pipe.toml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def load(tmp_path: Path, text: str, name: str = "pipe.toml"):
    return load_pipeline(write(tmp_path, text, name))


def error_of(tmp_path: Path, text: str, name: str = "pipe.toml") -> PipelineFileError:
    path = write(tmp_path, text, name)
    with pytest.raises(PipelineFileError) as info:
        load_pipeline(path)
    err = info.value
    assert err.path == str(path.absolute())
    assert str(err).startswith(str(path.absolute()))  # every message names the file
    return err


def by_id(tasks):
    return {t["task_id"]: t for t in tasks}


DIAMOND = """
    [pipeline]
    name = "dia"

    [stages.a]
    command = ["true"]

    [stages.b]
    needs = ["a"]
    command = ["echo", "b{shard}"]
    shards = 3

    [stages.c]
    needs = ["a"]
    command = ["echo", "c"]

    [stages.d]
    needs = ["b", "c"]
    command = ["echo", "d"]
"""


# -- expansion -------------------------------------------------------------------
def test_expansion_ids_workflow_and_dependencies(tmp_path):
    p = load(tmp_path, DIAMOND)
    assert p.name == "dia" and list(p.stages) == ["a", "b", "c", "d"]
    tasks = by_id(p.expand("dia-x1"))
    assert list(tasks) == ["dia-x1.a", "dia-x1.b.0", "dia-x1.b.1", "dia-x1.b.2", "dia-x1.c", "dia-x1.d"]
    assert {t["workflow"] for t in tasks.values()} == {"dia-x1"}
    assert tasks["dia-x1.a"]["dependencies"] == []
    assert tasks["dia-x1.b.1"]["dependencies"] == ["dia-x1.a"]
    # a stage that needs a sharded stage waits for every one of its shards
    assert tasks["dia-x1.d"]["dependencies"] == ["dia-x1.b.0", "dia-x1.b.1", "dia-x1.b.2", "dia-x1.c"]


def test_workflow_ids_are_prefixed_and_unique(tmp_path):
    p = load(tmp_path, DIAMOND)
    ids = {p.new_workflow_id() for _ in range(50)}
    assert len(ids) == 50
    assert all(i.startswith("dia-") and len(i) > len("dia-") for i in ids)


def test_name_defaults_to_file_stem(tmp_path):
    p = load(tmp_path, '[stages.only]\ncommand = ["true"]\n', name="nightly-build.toml")
    assert p.name == "nightly-build"
    assert [t["task_id"] for t in p.expand("w")] == ["w.only"]


def test_task_fields_pass_through(tmp_path):
    p = load(tmp_path, """
        [stages.s]
        command = ["true"]
        priority = "high"
        timeout = 7.5
        max_retries = 2
        retry_backoff = 0.1
        task_type = "scan"
        memory_limit_mb = 256
    """)
    (task,) = p.expand("w")
    assert {k: task[k] for k in ("priority", "timeout", "max_retries", "retry_backoff", "task_type", "memory_limit_mb")} == {
        "priority": "high", "timeout": 7.5, "max_retries": 2, "retry_backoff": 0.1, "task_type": "scan", "memory_limit_mb": 256,
    }


def test_function_stage_gets_args_kwargs_cwd_and_env(tmp_path):
    p = load(tmp_path, """
        [stages.f]
        function = "tests.tasks:echo"
        args = [1, "two"]
        kwargs = { three = 3 }
    """)
    (task,) = p.expand("w")
    assert task["function"] == "tests.tasks:echo"
    assert task["args"] == [1, "two"] and task["kwargs"] == {"three": 3}
    assert task["cwd"] == str(tmp_path)
    assert task["env"]["PIPELINE_STAGE"] == "f"
    assert "command" not in task


# -- placeholders ------------------------------------------------------------------
def test_placeholders_replaced_in_command_cwd_and_env_only(tmp_path):
    (tmp_path / "part1").mkdir()
    p = load(tmp_path, """
        [stages.scan]
        command = ["awk", "{print $1}", "in{shard}of{shards}.txt", '{"json": true}', "{other}", "{ shard }", "{{shard}}"]
        cwd = "part{shard}"
        env = { OUT = "out-{shard}-{shards}", RAW = "{x}" }
        task_type = "t{shard}"
        shards = 2
    """)
    task = by_id(p.expand("w"))["w.scan.1"]
    assert task["command"] == ["awk", "{print $1}", "in1of2.txt", '{"json": true}', "{other}", "{ shard }", "{1}"]
    assert task["cwd"] == str(tmp_path / "part1")
    assert task["env"]["OUT"] == "out-1-2"
    assert task["env"]["RAW"] == "{x}"
    assert task["task_type"] == "t{shard}"  # not a place placeholders go


def test_placeholders_in_args_and_kwargs_recursively(tmp_path):
    p = load(tmp_path, """
        [stages.f]
        function = "tests.tasks:echo"
        args = ["{shard}", "file{shard}.txt", ["{shards}", { deep = "x{shard}" }], "{print}", 5]
        kwargs = { n = "{shards}", text = "awk '{print $1}' {shard}", nested = { k = ["{shard}"] } }
        shards = 3
    """)
    task = by_id(p.expand("w"))["w.f.2"]
    # a value that is exactly a placeholder becomes the number itself
    assert task["args"] == [2, "file2.txt", [3, {"deep": "x2"}], "{print}", 5]
    assert task["kwargs"] == {"n": 3, "text": "awk '{print $1}' 2", "nested": {"k": [2]}}


def test_substitute_leaves_the_input_untouched():
    fields = {"command": ["a{shard}"], "env": {"X": "{shard}"}}
    out = substitute(fields, 4, 5)
    assert out == {"command": ["a4"], "env": {"X": "4"}}
    assert fields == {"command": ["a{shard}"], "env": {"X": "{shard}"}}


def test_unsharded_stage_keeps_other_braces(tmp_path):
    p = load(tmp_path, """
        [stages.s]
        command = ["sh", "-c", "echo '{\\"a\\": 1}' | awk '{print $1}'; echo ${HOME}"]
    """)
    (task,) = p.expand("w")
    assert task["command"][2] == "echo '{\"a\": 1}' | awk '{print $1}'; echo ${HOME}"


def test_placeholder_in_unsharded_stage_is_an_error(tmp_path):
    err = error_of(tmp_path, """
        [stages.s]
        command = ["echo", "{shard}"]
    """)
    assert "stage 's'" in err.message and "shards" in err.message and err.line == 1


# -- environment -------------------------------------------------------------------
def test_shard_environment(tmp_path):
    p = load(tmp_path, """
        [stages.one]
        command = ["true"]
        [stages.many]
        command = ["true"]
        shards = 4
    """)
    tasks = by_id(p.expand("wf"))
    assert "PIPELINE_SHARD" not in tasks["wf.one"]["env"] and "PIPELINE_SHARDS" not in tasks["wf.one"]["env"]
    for i in range(4):
        env = tasks[f"wf.many.{i}"]["env"]
        assert env["PIPELINE_SHARD"] == str(i) and env["PIPELINE_SHARDS"] == "4"
        assert env["PIPELINE_WORKFLOW"] == "wf" and env["PIPELINE_STAGE"] == "many"


def test_env_parameters_and_overrides(tmp_path):
    p = load(tmp_path, """
        [pipeline]
        env = { TARGET = "src", LEVEL = 3, KEEP = "yes" }

        [stages.a]
        command = ["true"]
        env = { STAGE_ONLY = "1", KEEP = "stage" }

        [stages.b]
        command = ["true"]
        shards = 2
        env = { PIPELINE_SHARD = "mine" }
    """)
    assert p.params == {"TARGET": "src", "LEVEL": "3", "KEEP": "yes"}
    tasks = by_id(p.expand("w", {"TARGET": "/elsewhere", "NEW": "x"}))
    a = tasks["w.a"]["env"]
    assert a["TARGET"] == "/elsewhere"  # --env beats [pipeline] env
    assert a["LEVEL"] == "3" and a["NEW"] == "x" and a["STAGE_ONLY"] == "1"
    assert a["KEEP"] == "stage"  # the stage's own env beats the file's default
    assert tasks["w.b.1"]["env"]["PIPELINE_SHARD"] == "1"  # reserved names are ours
    # without overrides the defaults apply
    assert by_id(p.expand("w"))["w.a"]["env"]["TARGET"] == "src"


def test_command_line_override_beats_stage_env(tmp_path):
    p = load(tmp_path, '[stages.a]\ncommand = ["true"]\nenv = { MODE = "stage" }\n')
    assert p.expand("w", {"MODE": "cli"})[0]["env"]["MODE"] == "cli"


# -- cwd -----------------------------------------------------------------------------
def test_cwd_defaults_to_the_files_folder(tmp_path, monkeypatch):
    sub = tmp_path / "proj"
    sub.mkdir()
    write(sub, '[stages.a]\ncommand = ["true"]\n[stages.b]\nfunction = "m:f"\n')
    monkeypatch.chdir(tmp_path)
    p = load_pipeline("proj/pipe.toml")  # a relative path still gives an absolute cwd
    assert [t["cwd"] for t in p.expand("w")] == [str(sub), str(sub)]
    assert p.path.is_absolute()


def test_relative_cwd_resolves_against_the_file(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    p = load(tmp_path, """
        [stages.rel]
        command = ["true"]
        cwd = "data"
        [stages.up]
        command = ["true"]
        cwd = ".."
        [stages.abs]
        command = ["true"]
        cwd = "/var/tmp"
    """)
    monkeypatch.chdir("/")
    tasks = by_id(p.expand("w"))
    assert tasks["w.rel"]["cwd"] == str(tmp_path / "data")
    assert tasks["w.up"]["cwd"] == str(tmp_path.parent)
    assert tasks["w.abs"]["cwd"] == "/var/tmp"


# -- validation errors -----------------------------------------------------------------
def test_toml_syntax_error_names_file_and_line(tmp_path):
    err = error_of(tmp_path, """
        [pipeline]
        name = "x"

        [stages.a]
        command = ["true"
        timeout = 3
    """)
    assert "invalid TOML" in err.message
    assert err.line in (5, 6)
    assert f":{err.line}: " in str(err)


def test_toml_error_at_end_of_file(tmp_path):
    err = error_of(tmp_path, '[stages.a]\ncommand = ["true"\n')
    assert "invalid TOML" in err.message and err.line == 2


def test_missing_file(tmp_path):
    with pytest.raises(PipelineFileError, match="no such file"):
        load_pipeline(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    "text, culprit, hint, line",
    [
        ('[stage.a]\ncommand = ["true"]\n', "'stage'", "'stages'", 1),
        ('[pipeline]\nnmae = "x"\n[stages.a]\ncommand = ["true"]\n', "'nmae'", "'name'", 2),
        ('[stages.a]\ncommand = ["true"]\ntimout = 5\n', "'timout'", "'timeout'", 3),
        ('[stages.a]\ncommand = ["true"]\nneed = ["b"]\n', "'need'", "'needs'", 3),
        ('[stages.a]\ncommand = ["true"]\nshard = 2\n', "'shard'", "'shards'", 3),
        ('[stages.a]\ncommand = ["true"]\nzzz = 1\n', "'zzz'", None, 3),
    ],
)
def test_unknown_keys_with_did_you_mean(tmp_path, text, culprit, hint, line):
    err = error_of(tmp_path, text)
    assert f"unknown key {culprit}" in err.message
    if hint:
        assert f"did you mean {hint}?" in err.message
    else:
        assert "did you mean" not in err.message
    assert err.line == line


def test_generated_fields_cannot_be_set(tmp_path):
    err = error_of(tmp_path, '[stages.b]\ncommand = ["true"]\ndependencies = ["a"]\n')
    assert "'dependencies'" in err.message and "needs" in err.message and err.line == 3
    err = error_of(tmp_path, '[stages.b]\ncommand = ["true"]\ntask_id = "x"\n')
    assert "'task_id'" in err.message


def test_unknown_needs(tmp_path):
    err = error_of(tmp_path, """
        [stages.build]
        command = ["true"]

        [stages.test]
        command = ["true"]
        needs = ["biuld"]
    """)
    assert "stage 'test' needs unknown stage 'biuld'" in err.message
    assert "did you mean 'build'?" in err.message
    assert err.line == 6


def test_unknown_needs_without_close_match_lists_stages(tmp_path):
    err = error_of(tmp_path, '[stages.a]\ncommand = ["true"]\nneeds = ["zzz"]\n')
    assert "'zzz'" in err.message and "stages: a" in err.message


def test_needs_must_be_a_list(tmp_path):
    err = error_of(tmp_path, '[stages.a]\ncommand = ["true"]\n[stages.b]\ncommand = ["true"]\nneeds = "a"\n')
    assert 'needs = ["a"]' in err.message


def test_cycle_is_named(tmp_path):
    err = error_of(tmp_path, """
        [stages.a]
        command = ["true"]
        needs = ["c"]

        [stages.b]
        command = ["true"]
        needs = ["a"]

        [stages.c]
        command = ["true"]
        needs = ["b"]

        [stages.free]
        command = ["true"]
    """)
    assert "cycle" in err.message
    assert "a -> c -> b -> a" in err.message
    assert "free" not in err.message


def test_self_need_is_a_cycle(tmp_path):
    err = error_of(tmp_path, '[stages.loop]\ncommand = ["true"]\nneeds = ["loop"]\n')
    assert "loop -> loop" in err.message


def test_find_cycle():
    assert find_cycle({"a": (), "b": ("a",), "c": ("a", "b")}) is None
    assert find_cycle({"a": ("b",), "b": ("a",)}) in (["a", "b", "a"], ["b", "a", "b"])
    # deep chains do not hit the recursion limit
    chain = {str(i): (str(i + 1),) for i in range(5000)}
    chain["5000"] = ()
    assert find_cycle(chain) is None
    chain["5000"] = ("0",)
    assert find_cycle(chain)[0] == find_cycle(chain)[-1]


@pytest.mark.parametrize(
    "text",
    ["", '[pipeline]\nname = "empty"\n', '[pipeline]\nname = "empty"\n[stages]\n'],
)
def test_empty_pipeline(tmp_path, text):
    err = error_of(tmp_path, text)
    assert "defines no stages" in err.message


@pytest.mark.parametrize("shards", ["0", "-1", '"4"', "true", "1.5", str(MAX_SHARDS + 1)])
def test_bad_shards(tmp_path, shards):
    err = error_of(tmp_path, f'[stages.s]\ncommand = ["true"]\nshards = {shards}\n')
    assert "stage 's': shards must be an integer" in err.message and err.line == 3


def test_both_command_and_function(tmp_path):
    err = error_of(tmp_path, '[stages.s]\ncommand = ["true"]\nfunction = "m:f"\n')
    assert "stage 's' sets both command and function" in err.message


def test_neither_command_nor_function(tmp_path):
    err = error_of(tmp_path, '[stages.s]\ntimeout = 3\n')
    assert "stage 's' needs a command or a function" in err.message and err.line == 1


@pytest.mark.parametrize(
    "body, expected",
    [
        ('command = "make test"', "argv list"),
        ("command = []", "non-empty list of strings"),
        ('command = ["echo", 3]', "non-empty list of strings"),
        ("function = 3", "function must be a string"),
        ('function = "not a path"', "function must look like 'package.module:qualname'"),
        ('command = ["true"]\ntimeout = "soon"', "timeout must be a number of seconds"),
        ('command = ["true"]\ntimeout = -1', "timeout must be > 0"),
        ('command = ["true"]\npriority = "urgent"', "priority must be high, medium, low or an integer"),
        ('command = ["true"]\nmax_retries = -2', "max_retries must be an integer"),
        ('command = ["true"]\nargs = [1]', "args and kwargs apply to function tasks only"),
        ('command = ["true"]\nenv = { X = true }', "X must be a string"),
        ('command = ["true"]\nenv = "X=1"', "env must be a table"),
        ('command = ["true"]\ncwd = 5', "cwd must be a string"),
        ('function = "m:f"\nargs = "x"', "args must be a list"),
    ],
)
def test_bad_field_values(tmp_path, body, expected):
    err = error_of(tmp_path, f"[stages.s]\n{body}\n")
    assert err.message.startswith("stage 's'")
    assert expected in err.message


def test_bad_names(tmp_path):
    err = error_of(tmp_path, '[pipeline]\nname = "has.dot"\n[stages.a]\ncommand = ["true"]\n')
    assert "[pipeline] name" in err.message and err.line == 2
    err = error_of(tmp_path, '[stages."a.b"]\ncommand = ["true"]\n')
    assert "stage 'a.b'" in err.message
    err = error_of(tmp_path, '[stages.a]\ncommand = ["true"]\n', name="bad name.toml")
    assert "set [pipeline] name" in err.message


def test_pipeline_env_must_be_strings(tmp_path):
    err = error_of(tmp_path, '[pipeline]\nenv = { A = [1] }\n[stages.a]\ncommand = ["true"]\n')
    assert "[pipeline] env: A must be a string" in err.message


def test_stage_must_be_a_table(tmp_path):
    err = error_of(tmp_path, '[stages]\na = "echo"\n')
    assert "stage 'a' must be a table" in err.message and err.line == 2


def test_error_type_is_a_pipeline_error(tmp_path):
    from pipeline_client import PipelineError

    assert issubclass(PipelineFileError, PipelineError)
    assert os.fspath(write(tmp_path, "x")).endswith("pipe.toml")
