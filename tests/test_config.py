"""Configuration: precedence (flag > env > file > default), every validation error
(exit 2, one line on stderr naming the key and where it came from, no traceback),
`pipelined --check-config` in both forms, and `socket_group`.

Everything runs the real `pipelined` as a subprocess; `--check-config` reads the
configuration exactly as a starting daemon does.
"""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import pytest

from .conftest import REPO

EXAMPLE = REPO / "systemd" / "pipelined.toml.example"
BASE_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("PARALLEL_", "PIPELINED_", "NOTIFY_SOCKET", "WATCHDOG_"))}


def pipelined(*argv: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelined", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**BASE_ENV, **(env or {})}, check=False)


def check_json(*argv: str, env: dict | None = None) -> dict:
    proc = pipelined("--check-config", "--json", *argv, env=env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def settings(*argv: str, env: dict | None = None) -> dict:
    return check_json(*argv, env=env)["settings"]


@pytest.fixture
def conf(tmp_path):
    """Write a TOML file and return its path."""
    def write(text: str, name: str = "pipelined.toml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)
    return write


def assert_config_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert proc.stdout == ""
    return lines[0]


# -- precedence ---------------------------------------------------------------------
@pytest.mark.skipif(os.path.exists("/etc/pipelined/pipelined.toml"), reason="a real /etc/pipelined/pipelined.toml would change the defaults")
def test_defaults_come_from_nowhere():
    doc = check_json()
    assert doc["config_file"] is None
    s = doc["settings"]
    assert {v["from"] for v in s.values()} == {"default"}
    assert s["default_task_timeout"]["value"] == 300.0
    assert s["max_task_retries"]["value"] == 3
    assert s["max_workers"]["value"] == (os.cpu_count() or 2)
    assert s["allowed_functions"]["value"] == ["*"] and s["allow_commands"]["value"] is True


def test_precedence_flag_over_env_over_file_over_default(conf):
    path = conf("max_workers = 3\nmax_task_retries = 5\ndefault_task_timeout = 60\nmax_cpu_percent = 70\n")
    env = {"PARALLEL_MAX_WORKERS": "6", "PARALLEL_MAX_TASK_RETRIES": "7"}
    s = settings("--config", path, "--workers", "9", env=env)
    assert s["max_workers"] == {"value": 9, "from": "flag --workers"}
    assert s["max_task_retries"] == {"value": 7, "from": "env PARALLEL_MAX_TASK_RETRIES"}
    assert s["default_task_timeout"] == {"value": 60.0, "from": f"file {path}"}
    assert s["max_cpu_percent"] == {"value": 70.0, "from": f"file {path}"}
    assert s["max_memory_percent"] == {"value": 80.0, "from": "default"}
    # Without the flag, the environment wins over the file ...
    assert settings("--config", path, env=env)["max_workers"] == {"value": 6, "from": "env PARALLEL_MAX_WORKERS"}
    # ... and without either, the file over the default.
    assert settings("--config", path)["max_workers"] == {"value": 3, "from": f"file {path}"}


@pytest.mark.parametrize(("var", "key", "raw", "value"), [
    ("PARALLEL_MAX_WORKERS", "max_workers", "5", 5),
    ("PARALLEL_MAX_CONCURRENT_TASKS", "max_concurrent_tasks", "3", 3),
    ("PARALLEL_MAX_CPU_PERCENT", "max_cpu_percent", "55.5", 55.5),
    ("PARALLEL_MAX_MEMORY_PERCENT", "max_memory_percent", "60", 60.0),
    ("PARALLEL_MIN_FREE_MEMORY_MB", "min_free_memory_mb", "1024", 1024.0),
    ("PARALLEL_DEFAULT_TASK_TIMEOUT", "default_task_timeout", "12.5", 12.5),
    ("PARALLEL_MAX_TASK_RETRIES", "max_task_retries", "0", 0),
    ("PARALLEL_ENABLE_RESOURCE_SCHEDULING", "enable_resource_scheduling", "yes", True),
    ("PARALLEL_ENABLE_DEPENDENCY_EXECUTION", "enable_dependency_execution", "false", False),
])
def test_every_seed_environment_variable(var, key, raw, value):
    assert settings(env={var: raw})[key] == {"value": value, "from": f"env {var}"}


def test_empty_environment_variable_is_unset(conf):
    path = conf("max_workers = 3\n")
    assert settings("--config", path, env={"PARALLEL_MAX_WORKERS": ""})["max_workers"]["from"] == f"file {path}"


@pytest.mark.parametrize(("file_text", "flags", "key", "value", "origin"), [
    ("max_concurrent_tasks = 1", ("--max-concurrent-tasks", "4"), "max_concurrent_tasks", 4, "flag --max-concurrent-tasks"),
    ("default_task_timeout = 1.0", ("--default-task-timeout", "9"), "default_task_timeout", 9.0, "flag --default-task-timeout"),
    ("max_task_retries = 1", ("--max-task-retries", "2"), "max_task_retries", 2, "flag --max-task-retries"),
    ("max_tasks_per_worker = 1", ("--max-tasks-per-worker", "50"), "max_tasks_per_worker", 50, "flag --max-tasks-per-worker"),
    ("shutdown_grace_s = 1.0", ("--shutdown-grace", "5"), "shutdown_grace_s", 5.0, "flag --shutdown-grace"),
    ('log_level = "error"', ("--log-level", "debug"), "log_level", "debug", "flag --log-level"),
    ("journal = true", ("--volatile",), "journal", False, "flag --volatile"),
])
def test_flags_win_over_the_file_and_say_so(conf, file_text, flags, key, value, origin):
    path = conf(file_text + "\n")
    assert settings("--config", path)[key]["from"] == f"file {path}"
    assert settings("--config", path, *flags)[key] == {"value": value, "from": origin}


def test_every_file_key_with_task_types(conf):
    text = EXAMPLE.read_text() + "\n[task_types.scan]\nmax_concurrent = 1\n"
    s = settings("--config", conf(text))
    assert s["task_types"]["value"] == {"heavy": {"max_concurrent": 2}, "scan": {"max_concurrent": 1}}
    assert all(v["from"].startswith("file ") for v in s.values())


def test_example_file_is_valid_and_has_every_key():
    s = settings("--config", str(EXAMPLE))
    data = tomllib.loads(EXAMPLE.read_text())
    assert set(data) == set(s), "the example documents every key"


def test_human_output_is_commented_toml_that_round_trips(conf, tmp_path):
    path = conf("max_workers = 3\nallowed_functions = [\"examples.*:*\", \"a.b:c\"]\n[task_types.scan]\nmax_concurrent = 2\n"
                "[task_types.\"odd name\"]\nmax_concurrent = 1\n")
    proc = pipelined("--config", path, "--check-config", env={"PARALLEL_MAX_TASK_RETRIES": "4"})
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert f"config file: {path}" in out
    lines = {line.split("=")[0].strip(): line for line in out.splitlines() if "=" in line and not line.startswith("#")}
    assert lines["max_workers"].endswith(f"# file {path}")
    assert lines["max_task_retries"].endswith("# env PARALLEL_MAX_TASK_RETRIES")
    assert lines["max_memory_percent"].endswith("# default")
    # The output is itself a valid configuration that means the same thing.
    again = tmp_path / "again.toml"
    again.write_text(out)
    assert tomllib.loads(out)["task_types"] == {"scan": {"max_concurrent": 2}, "odd name": {"max_concurrent": 1}}
    first = {k: v["value"] for k, v in settings("--config", path, env={"PARALLEL_MAX_TASK_RETRIES": "4"}).items()}
    second = {k: v["value"] for k, v in settings("--config", str(again)).items()}
    assert first == second


def test_check_config_json_says_where_things_are(tmp_path):
    doc = check_json("--runtime-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state"))
    assert doc["runtime_dir"] == str(tmp_path / "run")
    assert doc["socket"] == str(tmp_path / "run" / "pipelined.sock")
    assert doc["state_dir"] == str(tmp_path / "state")
    assert not (tmp_path / "run").exists(), "--check-config creates nothing"


def test_misspelt_parallel_variable_is_warned_about():
    proc = pipelined("--check-config", "--json", env={"PARALLEL_MAX_WORKER": "3", "PARALLEL_JOBSLOT": "1"})
    assert proc.returncode == 0
    assert "PARALLEL_MAX_WORKER " in proc.stderr and "did you mean PARALLEL_MAX_WORKERS" in proc.stderr
    assert "PARALLEL_JOBSLOT" not in proc.stderr  # GNU parallel's own variables are left alone


# -- validation: exit 2, one line, no traceback --------------------------------------
FILE_ERRORS = [
    # bad type
    ('max_workers = "four"\n', ["max_workers", "must be an integer", "'four'"]),
    ("max_workers = 2.5\n", ["max_workers", "must be an integer"]),
    ("max_workers = true\n", ["max_workers", "must be an integer"]),
    ("max_cpu_percent = \"high\"\n", ["max_cpu_percent", "must be a number"]),
    ("allow_commands = \"maybe\"\n", ["allow_commands", "true or false"]),
    ("enable_resource_scheduling = 1\n", ["enable_resource_scheduling", "true or false"]),
    ("allowed_functions = [1, 2]\n", ["allowed_functions", "glob patterns"]),
    ("allowed_functions = [\"\"]\n", ["allowed_functions", "glob patterns"]),
    ("socket_group = 12\n", ["socket_group", "must be a string"]),
    ("socket_group = \"bad group!\"\n", ["socket_group", "group name"]),
    ("log_level = \"verbose\"\n", ["log_level", "debug, info, warning or error"]),
    ("journal_sync = \"always\"\n", ["journal_sync", "normal", "full"]),
    ("http = \"8081\"\n", ["http", "HOST:PORT"]),
    ("http = \"localhost:99999\"\n", ["http", "HOST:PORT"]),
    ("[max_workers]\n", ["max_workers", "must be an integer"]),
    # out of range
    ("max_workers = 0\n", ["max_workers", "between 1 and 512", "0"]),
    ("max_workers = 100000\n", ["max_workers", "between 1 and 512"]),
    ("max_cpu_percent = 150\n", ["max_cpu_percent", "between 1 and 100"]),
    ("max_cpu_percent = nan\n", ["max_cpu_percent", "finite"]),
    ("min_free_memory_mb = inf\n", ["min_free_memory_mb", "finite"]),
    ("default_task_timeout = -1\n", ["default_task_timeout", "between"]),
    ("max_task_retries = 101\n", ["max_task_retries", "between 0 and 100"]),
    ("shutdown_grace_s = -5\n", ["shutdown_grace_s", "between"]),
    ("max_concurrent_tasks = -1\n", ["max_concurrent_tasks", "between"]),
    # integers too big for a float (math.isfinite overflowed on them), or for int() itself
    (f"max_workers = 1{'0' * 400}\n", ["max_workers", "between 1 and 512", "(401 digits)"]),
    (f"max_cpu_percent = 1{'0' * 400}\n", ["max_cpu_percent", "between 1 and 100"]),
    (f"[task_types.scan]\nmax_concurrent = 1{'0' * 400}\n", ["[task_types.scan]", "max_concurrent", "(401 digits)"]),
    (f"max_workers = 1{'0' * 5000}\n", [":1: max_workers", "more than 4300 digits"]),
    # unknown keys, with a did-you-mean
    ("max_worker = 2\n", ["unknown key 'max_worker'", "did you mean 'max_workers'"]),
    ("allowed_function = [\"*\"]\n", ["unknown key 'allowed_function'", "did you mean 'allowed_functions'"]),
    ("[task_type.scan]\nmax_concurrent = 1\n", ["unknown key 'task_type'", "did you mean 'task_types'"]),
    ("completely_unrelated = 1\n", ["unknown key 'completely_unrelated'"]),
    # bad [task_types.x] tables
    ("[task_types.scan]\nmax_concurent = 1\n", ["[task_types.scan]", "unknown key 'max_concurent'", "did you mean 'max_concurrent'"]),
    ("[task_types.scan]\nmax_concurrent = 0\n", ["[task_types.scan]", "max_concurrent", "between 1 and"]),
    ("[task_types.scan]\nmax_concurrent = \"2\"\n", ["[task_types.scan]", "max_concurrent", "integer"]),
    ("[task_types.scan]\nmax_concurrent = true\n", ["[task_types.scan]", "max_concurrent", "integer"]),
    ("[task_types.scan]\n", ["[task_types.scan]", "needs max_concurrent"]),
    ("[task_types]\nscan = 5\n", ["[task_types.scan]", "must be a table"]),
    ("task_types = 3\n", ["task_types", "[task_types.NAME] tables"]),
]


@pytest.mark.parametrize(("text", "fragments"), FILE_ERRORS, ids=[t.splitlines()[0][:40] for t, _ in FILE_ERRORS])
def test_file_errors_exit_2_naming_key_and_file(conf, text, fragments):
    path = conf(text)
    line = assert_config_error(pipelined("--config", path, "--check-config"), *fragments)
    assert path in line


@pytest.mark.parametrize(("text", "line_no"), [
    ("max_workers = 2\nmax_task_retries = \n", 2),
    ("max_workers = 2\n\n[task_types.scan\nmax_concurrent = 1\n", 3),
    ("max_workers = 2\nmax_workers = 3\n", 2),
    ("allowed_functions = [\"a:b\",\n", None),
])
def test_toml_syntax_error_names_file_and_line(conf, text, line_no):
    path = conf(text)
    line = assert_config_error(pipelined("--config", path, "--check-config"), path, "TOML syntax error")
    if line_no is not None:
        assert f"{path}:{line_no}:" in line and f"line {line_no}" in line


@pytest.mark.parametrize(("text", "line_no", "fragment"), [
    ("max_workers = 2\n\nmax_worker = 3\n", 3, "unknown key 'max_worker'"),
    ("# a comment\nmax_cpu_percent = 500\n", 2, "max_cpu_percent"),
    ("[task_types.a]\nmax_concurrent = 1\n\n[task_types.b]\nmax_concurrent = -1\n", 4, "[task_types.b]"),
])
def test_value_errors_name_the_line_too(conf, text, line_no, fragment):
    path = conf(text)
    assert_config_error(pipelined("--config", path, "--check-config"), f"{path}:{line_no}: ", fragment)


def test_config_file_problems(conf, tmp_path):
    assert_config_error(pipelined("--config", str(tmp_path / "missing.toml"), "--check-config"), "missing.toml", "no such config file")
    assert_config_error(pipelined("--config", str(tmp_path), "--check-config"), str(tmp_path), "directory")
    latin = tmp_path / "latin1.toml"
    latin.write_bytes(b"# caf\xe9\nmax_workers = 2\n")
    assert_config_error(pipelined("--config", str(latin), "--check-config"), str(latin), "UTF-8")


@pytest.mark.parametrize(("var", "raw", "fragments"), [
    ("PARALLEL_MAX_WORKERS", "abc", ["max_workers", "must be an integer", "'abc'"]),
    ("PARALLEL_MAX_WORKERS", "4.0", ["max_workers", "must be an integer"]),
    ("PARALLEL_MAX_WORKERS", "0", ["max_workers", "between 1 and 512"]),
    ("PARALLEL_MAX_CPU_PERCENT", "150", ["max_cpu_percent", "between 1 and 100"]),
    ("PARALLEL_MAX_CPU_PERCENT", "nan", ["max_cpu_percent", "finite"]),
    ("PARALLEL_MAX_WORKERS", "9" * 400, ["max_workers", "between 1 and 512", "(400 digits)"]),
    ("PARALLEL_MAX_WORKERS", "9" * 5000, ["max_workers", "between 1 and 512", "(5000 digits)"]),
    ("PARALLEL_MAX_CPU_PERCENT", "9" * 400, ["max_cpu_percent", "finite"]),
    ("PARALLEL_MIN_FREE_MEMORY_MB", "lots", ["min_free_memory_mb", "must be a number"]),
    ("PARALLEL_DEFAULT_TASK_TIMEOUT", "-3", ["default_task_timeout", "between"]),
    ("PARALLEL_MAX_TASK_RETRIES", "many", ["max_task_retries", "must be an integer"]),
    ("PARALLEL_ENABLE_RESOURCE_SCHEDULING", "maybe", ["enable_resource_scheduling", "true or false"]),
    ("PARALLEL_ENABLE_DEPENDENCY_EXECUTION", "2", ["enable_dependency_execution", "true or false"]),
])
def test_bad_environment_values_name_the_variable(var, raw, fragments):
    line = assert_config_error(pipelined("--check-config", env={var: raw}), *fragments)
    assert f"environment variable {var}" in line


@pytest.mark.parametrize(("flags", "fragments"), [
    (("--workers", "0"), ["flag --workers", "max_workers", "between 1 and 512"]),
    (("--default-task-timeout", "0"), ["flag --default-task-timeout", "default_task_timeout"]),
    (("--max-task-retries", "-1"), ["flag --max-task-retries", "max_task_retries"]),
    (("--shutdown-grace", "nan"), ["flag --shutdown-grace", "finite"]),
    (("--workers", "9" * 400), ["flag --workers", "max_workers", "between 1 and 512"]),
    (("--max-tasks-per-worker", "9" * 400), ["flag --max-tasks-per-worker", "max_tasks_per_worker", "between"]),
])
def test_bad_flag_values_name_the_flag(flags, fragments):
    assert_config_error(pipelined("--check-config", *flags), *fragments)


@pytest.mark.parametrize("argv", [("--workers", "many"), ("--log-level", "loud"), ("--no-such-flag",), ("--shutdown-grace",)])
def test_malformed_flags_are_one_line_usage_errors(argv):
    assert_config_error(pipelined("--check-config", *argv), "usage error", argv[0])


def test_a_starting_daemon_refuses_bad_config_too(conf, tmp_path):
    proc = pipelined("--config", conf("max_workers = -2\n"), "--runtime-dir", str(tmp_path / "run"), "--state-dir", str(tmp_path / "state"))
    assert_config_error(proc, "max_workers")
    assert not (tmp_path / "run").exists(), "nothing is created before the configuration is valid"


def test_json_without_check_config_is_a_usage_error(tmp_path):
    proc = pipelined("--json", "--runtime-dir", str(tmp_path / "run"))
    assert_config_error(proc, "--json")


# -- socket_group ---------------------------------------------------------------------
@pytest.fixture
def group():
    """A fresh system group (root only), removed afterwards."""
    if os.geteuid() != 0:
        pytest.skip("creating a group needs root")
    name = f"pdt{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["groupadd", "--system", name], capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"groupadd failed: {made.stderr.strip()}")
    try:
        yield name, grp.getgrnam(name).gr_gid
    finally:
        subprocess.run(["groupdel", name], capture_output=True, check=False)


def test_socket_group_gives_socket_and_dir_to_the_group(make_daemon, group, tmp_path):
    name, gid = group
    path = tmp_path / "group.toml"
    path.write_text(f'socket_group = "{name}"\n')
    d = make_daemon(workers=1, args=("--config", str(path)))
    st = os.stat(d.socket)
    assert st.st_gid == gid
    assert stat.S_IMODE(st.st_mode) == 0o660
    dst = os.stat(d.runtime_dir)
    assert dst.st_gid == gid, "the group must be able to reach the socket"
    assert stat.S_IMODE(dst.st_mode) == 0o750
    # The workers' socket stays the daemon's own: nobody else may play worker.
    assert stat.S_IMODE(os.stat(Path(d.runtime_dir) / "workers.sock").st_mode) & 0o077 == 0
    assert d.client.ping()["pong"]


def test_socket_group_by_flag_and_by_gid(make_daemon, group):
    name, gid = group
    d = make_daemon(workers=1, args=("--socket-group", str(gid)))
    assert os.stat(d.socket).st_gid == gid
    s = settings("--socket-group", name)
    assert s["socket_group"] == {"value": name, "from": "flag --socket-group"}


def test_unknown_socket_group_exits_2(tmp_path, conf):
    name = f"nosuch{uuid.uuid4().hex[:6]}"
    path = conf(f'socket_group = "{name}"\n')
    run = tmp_path / "run"
    proc = pipelined("--config", path, "--runtime-dir", str(run), "--state-dir", str(tmp_path / "state"))
    assert_config_error(proc, "socket_group", name, "no group")
    assert not (run / "pipelined.sock").exists()
    assert_config_error(pipelined("--config", path, "--check-config"), "socket_group", name)
