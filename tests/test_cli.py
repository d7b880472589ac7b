"""pipelinectl end to end: the real CLI as a subprocess against a real daemon.

Every command in human and --json form, the exit codes (0 ok, 1 task failed,
2 usage/config, 3 unreachable), pipeline files run with `pipelinectl run`
(a diamond with a failing branch, sharding, placeholders, parameters, retries,
timeouts, every validation error), the live terminal display, and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, wait_for

PYTHONPATH = os.pathsep.join(str(REPO / p) for p in ("protocol", "client", "daemon", "."))
ENV = {k: v for k, v in os.environ.items() if k != "PIPELINED_SOCKET"}
ENV["PYTHONPATH"] = PYTHONPATH + (os.pathsep + os.environ["PYTHONPATH"] if os.environ.get("PYTHONPATH") else "")
COMMANDS = ["ping", "status", "workers", "list", "show", "submit", "call", "wait", "cancel", "run", "watch", "top", "drain", "shutdown"]


def ctl_argv(sock: str | None, *argv: str) -> list[str]:
    socket_args = ["--socket", sock] if sock else []
    return [sys.executable, "-m", "pipeline_client.cli", *socket_args, *argv]


def ctl(sock: str | None, *argv: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(ctl_argv(sock, *argv), check=False, capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**ENV, **(env or {})})


def ctl_json(sock: str, *argv: str, code: int = 0):
    proc = ctl(sock, "--json", *argv)
    assert proc.returncode == code, proc.stderr
    return json.loads(proc.stdout)


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr
    assert len(err.splitlines()) == 1, err
    assert err.startswith("pipelinectl: ")
    for fragment in fragments:
        assert fragment in err
    return err


def pipeline_file(folder: Path, text: str, name: str = "pipe.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


# -- no daemon needed ---------------------------------------------------------------
@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_on_every_command(command):
    argv = ["--help"] if command is None else [command, "--help"]
    proc = ctl(None, *argv)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: pipelinectl" + ("" if command is None else f" {command}"))
    if command is None:
        for name in COMMANDS:
            assert re.search(rf"^\s+{name}\s+\S", proc.stdout, re.MULTILINE), name


@pytest.mark.parametrize("argv", [["ping"], ["status"], ["list"], ["show", "x"], ["submit", "--", "true"], ["drain"]])
def test_unreachable_daemon_exits_3_naming_the_socket(tmp_path, argv):
    sock = str(tmp_path / "nowhere" / "pipelined.sock")
    err = assert_one_line_error(ctl(sock, *argv), 3, sock, "pipelined --runtime-dir")
    assert "no socket" in err


def test_unreachable_via_environment_and_json(tmp_path):
    sock = str(tmp_path / "env.sock")
    proc = ctl(None, "--json", "status", env={"PIPELINED_SOCKET": sock})
    assert_one_line_error(proc, 3, sock)
    assert proc.stdout == ""


def test_stale_socket_exits_3(tmp_path):
    path = str(tmp_path / "stale.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()  # the file stays, nobody listens
    assert_one_line_error(ctl(path, "ping"), 3, path, "no daemon is listening")


def test_run_validates_before_connecting(tmp_path):
    path = pipeline_file(tmp_path, '[stages.a]\ncommand = ["true"]\nneeds = ["nope"]\n')
    assert_one_line_error(ctl(str(tmp_path / "none.sock"), "run", str(path)), 2, str(path), "'nope'")
    ok = pipeline_file(tmp_path, '[stages.a]\ncommand = ["true"]\n', "ok.toml")
    assert_one_line_error(ctl(str(tmp_path / "none.sock"), "run", str(ok)), 3, "none.sock")


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["submit"], "needs a command"),
        (["submit", "--"], "needs a command"),
        (["cancel"], "task id or --workflow"),
        (["submit", "--priority", "urgent", "--", "true"], "priority"),
        (["submit", "--env", "NOEQUALS", "--", "true"], "KEY=VALUE"),
        (["call", "tests.tasks:add", "1", "not json"], "argument 2 is not JSON"),
        (["list", "--state", "sleeping"], "invalid choice"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_usage_errors_exit_2(daemon, argv, fragment):
    proc = ctl(daemon.socket, *argv)
    assert proc.returncode == 2, proc.stderr
    assert fragment in proc.stderr and "Traceback" not in proc.stderr


BAD_NUMBERS = [
    # call arguments msgpack cannot carry, or JSON Python will not parse
    (["call", "tests.tasks:square", str(2**70)], ["argument 1", str(2**70), "2**64-1"]),
    (["call", "tests.tasks:square", str(-(2**63) - 1)], ["argument 1", "2**64-1"]),
    (["call", "tests.tasks:square", "1" * 5000], ["argument 1", "too large"]),
    (["call", "tests.tasks:square", "[" * 5000 + "]" * 5000], ["argument 1", "nests too deeply"]),
    (["call", "tests.tasks:echo", "--kwarg", f"k=[{2**64}]"], ["--kwarg k", "too large"]),
    # numeric options: nan, inf, negative, zero where meaningless, and huge integers
    (["wait", "x", "--timeout", "nan"], ["argument --timeout", "finite number of seconds >= 0", "'nan'"]),
    (["wait", "x", "--timeout", "-1"], ["argument --timeout", ">= 0"]),
    (["top", "--interval", "nan"], ["argument --interval", "> 0"]),
    (["top", "--interval", "inf"], ["argument --interval", "> 0"]),
    (["top", "--interval", "0"], ["argument --interval", "> 0"]),
    (["watch", "--timeout", "inf"], ["argument --timeout"]),
    (["watch", "--count", "-1"], ["argument --count"]),
    (["list", "--limit", str(2**70)], ["argument --limit", "2**63-1"]),
    (["submit", "--timeout", "nan", "--", "true"], ["argument --timeout", "> 0"]),
    (["submit", "--backoff", "-0.5", "--", "true"], ["argument --backoff", ">= 0"]),
    (["submit", "--memory-limit", "inf", "--", "true"], ["argument --memory-limit"]),
    (["submit", "--retries", str(2**70), "--", "true"], ["argument --retries", "from 0 to 100"]),
    (["call", "--retries", "1" * 5000, "tests.tasks:noop"], ["argument --retries", "(5000 digits)"]),
    (["submit", "--priority", "9" * 5000, "--", "true"], ["argument --priority", "outside"]),
]


@pytest.mark.parametrize(("argv", "fragments"), BAD_NUMBERS, ids=[" ".join(a)[:40] for a, _ in BAD_NUMBERS])
def test_bad_numbers_are_usage_errors(daemon, argv, fragments):
    proc = ctl(daemon.socket, *argv, timeout=20)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr[-2000:])
    assert daemon.client.list() == []  # nothing was submitted


@pytest.mark.parametrize(("option", "value"), [("--type", "gpu\x1b[2J"), ("--type", "a\nb"), ("--workflow", "w\x1b]0;x\x07"), ("--workflow", "nightly\n")])
def test_control_characters_in_type_and_workflow_are_refused(daemon, option, value):
    # They came out raw in /metrics and in tables; task ids already refused them.
    proc = ctl(daemon.socket, "submit", option, value, "--", "true")
    assert_one_line_error(proc, 2, option.removeprefix("--").replace("type", "task_type"), "printable", "invalid_request")
    assert daemon.client.list() == []


# -- inspecting the daemon ----------------------------------------------------------------
def test_ping_status_workers(daemon):
    proc = ctl(daemon.socket, "ping")
    assert proc.returncode == 0 and proc.stdout.startswith(f"pipelined is up at {daemon.socket} (pid {daemon.pid}")
    pong = ctl_json(daemon.socket, "ping")
    assert pong["pid"] == daemon.pid and pong["socket"] == daemon.socket and "v" not in pong

    status = ctl_json(daemon.socket, "status")
    assert status["max_workers"] == 2 and "running_tasks" in status and "performance_metrics" in status
    proc = ctl(daemon.socket, "status")
    assert re.search(r"^max_workers\s+2$", proc.stdout, re.MULTILINE)

    workers = ctl_json(daemon.socket, "workers")["workers"]
    assert sorted(w["pid"] for w in workers) == sorted(daemon.worker_pids())
    proc = ctl(daemon.socket, "workers")
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["SLOT", "PID", "STATE", "TASK", "TASKS", "DONE", "RSS", "MB", "CPU", "%", "UPTIME"]
    assert len(lines) == 3 and all(" idle " in line for line in lines[1:])


def test_json_flag_after_the_command(daemon):
    proc = ctl(daemon.socket, "status", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["max_workers"] == 2


# -- tasks --------------------------------------------------------------------------------
def test_submit_wait_show_list(daemon, tmp_path):
    proc = ctl(daemon.socket, "submit", "--id", "hello", "--cwd", str(tmp_path), "--env", "GREETING=hi there", "--",
               "sh", "-c", 'echo "$GREETING from $(pwd)"; echo "{not a placeholder}" >&2')
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "hello\n"
    proc = ctl(daemon.socket, "submit", "--after", "hello", "--priority", "high", "--type", "tiny", "--", "true")
    second = proc.stdout.strip()
    assert proc.returncode == 0 and second

    proc = ctl(daemon.socket, "wait", "hello", second)
    assert proc.returncode == 0, proc.stdout
    assert re.search(r"^hello\s+completed\s", proc.stdout, re.MULTILINE)

    record = ctl_json(daemon.socket, "show", "hello")
    assert record["status"] == "completed"
    assert record["result"]["stdout"] == f"hi there from {tmp_path}\n"
    assert record["result"]["stderr"] == "{not a placeholder}\n"
    other = ctl_json(daemon.socket, "show", second)
    assert other["dependencies"] == ["hello"] and other["priority"] == 10 and other["task_type"] == "tiny"

    shown = ctl(daemon.socket, "show", "hello").stdout
    assert re.search(r"^status\s+completed$", shown, re.MULTILINE)
    assert "exit code 0" in shown and f"hi there from {tmp_path}" in shown

    listed = ctl_json(daemon.socket, "list")["tasks"]
    assert {"hello", second} <= {t["task_id"] for t in listed}
    proc = ctl(daemon.socket, "list", "--state", "completed")
    assert proc.stdout.splitlines()[0].split()[:3] == ["TASK", "STATUS", "REASON"]
    assert re.search(r"^hello\s+completed", proc.stdout, re.MULTILINE)
    assert ctl_json(daemon.socket, "list", "--state", "failed")["tasks"] == []


def test_submit_relative_cwd_is_the_callers(daemon, tmp_path):
    # cwd defaults to where pipelinectl runs (REPO here), like running the command locally
    task_id = ctl(daemon.socket, "submit", "--", "pwd").stdout.strip()
    assert ctl(daemon.socket, "wait", task_id).returncode == 0
    assert ctl_json(daemon.socket, "show", task_id)["result"]["stdout"].strip() == str(REPO)


def test_failed_command_exits_1(daemon):
    task_id = ctl(daemon.socket, "submit", "--retries", "0", "--", "sh", "-c", "echo nope >&2; exit 4").stdout.strip()
    proc = ctl(daemon.socket, "wait", task_id)
    assert proc.returncode == 1
    assert re.search(rf"^{re.escape(task_id)}\s+failed\s+error", proc.stdout, re.MULTILINE)
    shown = ctl(daemon.socket, "show", task_id).stdout
    assert "failed (error)" in shown and "exit code 4" in shown and "nope" in shown
    proc = ctl(daemon.socket, "--json", "submit", "--retries", "0", "--wait", "--", "false")
    assert proc.returncode == 1 and json.loads(proc.stdout)["status"] == "failed"


def test_call_functions(daemon):
    proc = ctl(daemon.socket, "--json", "call", "tests.tasks:add", "2", "40", "--wait")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["result"] == 42
    proc = ctl(daemon.socket, "--json", "call", "tests.tasks:echo", '"text"', "[1, 2]", '{"a": null}', "--kwarg", "k=true")
    task_id = json.loads(proc.stdout)["task_id"]
    wait = ctl_json(daemon.socket, "wait", task_id)
    assert wait["tasks"][0]["result"] == {"args": ["text", [1, 2], {"a": None}], "kwargs": {"k": True}}
    assert wait["pending"] == [] and wait["timed_out"] is False

    proc = ctl(daemon.socket, "call", "--retries", "0", "--wait", "tests.tasks:fail", '"kaput"')
    assert proc.returncode == 1
    assert "ValueError: kaput" in proc.stdout and "traceback:" in proc.stdout


ODD_KEYS_JSON = {"b'k'": 1, "b'\\xff'": 2, "Ref('t')": 3, "k": 4}


def test_results_with_keys_json_cannot_carry(daemon, tmp_path):
    # msgpack allows bytes (or a Ref) as a map key; JSON does not: shown as their str().
    proc = ctl(daemon.socket, "call", "tests.tasks:odd_keys", "--wait")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert '"b\'k\'": 1' in proc.stdout and '"Ref(\'t\')": 3' in proc.stdout
    record = ctl_json(daemon.socket, "call", "tests.tasks:odd_keys", "--wait")
    assert record["result"] == ODD_KEYS_JSON
    assert ctl_json(daemon.socket, "show", record["task_id"])["result"] == ODD_KEYS_JSON
    proc = ctl(daemon.socket, "show", record["task_id"])
    assert proc.returncode == 0 and "Ref('t')" in proc.stdout, proc.stderr
    assert ctl_json(daemon.socket, "wait", record["task_id"])["tasks"][0]["result"] == ODD_KEYS_JSON

    path = pipeline_file(tmp_path, """
        [stages.a]
        function = "tests.tasks:noop"
        [stages.b]
        needs = ["a"]
        function = "tests.tasks:odd_keys"
    """)
    proc = ctl(daemon.socket, "run", "-q", str(path))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stdout + proc.stderr
    assert "b result:" in proc.stdout and "Ref('t')" in proc.stdout
    proc = ctl(daemon.socket, "--json", "run", str(path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["stages"]["b"]["result"] == ODD_KEYS_JSON


def test_wait_timeout_cancel_and_unknown_task(daemon):
    task_id = ctl(daemon.socket, "submit", "--", "sleep", "30").stdout.strip()
    proc = ctl(daemon.socket, "--json", "wait", "--timeout", "0.2", task_id)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["pending"] == [task_id]
    assert "still not ended" in ctl(daemon.socket, "wait", "--timeout", "0.1", task_id).stdout

    proc = ctl(daemon.socket, "cancel", task_id)
    assert proc.returncode == 0 and proc.stdout.strip() == f"cancelled {task_id}"
    wait_for(lambda: ctl_json(daemon.socket, "show", task_id)["status"] == "cancelled", 10, 0.1, "the cancel")
    proc = ctl(daemon.socket, "cancel", task_id)
    assert proc.returncode == 0 and "nothing to cancel" in proc.stdout
    assert ctl(daemon.socket, "wait", task_id).returncode == 1

    assert_one_line_error(ctl(daemon.socket, "show", "no-such-task"), 2, "no-such-task", "unknown_task")
    assert_one_line_error(ctl(daemon.socket, "wait", "no-such-task"), 2, "unknown_task")


def test_cancel_workflow(daemon):
    ids = [ctl(daemon.socket, "submit", "--workflow", "wf1", "--", "sleep", "30").stdout.strip() for _ in range(3)]
    reply = ctl_json(daemon.socket, "cancel", "--workflow", "wf1")
    assert sorted(reply["cancelled"]) == sorted(ids)
    wait_for(lambda: all(t["status"] == "cancelled" for t in ctl_json(daemon.socket, "list", "--workflow", "wf1")["tasks"]), 10, 0.1)


def test_drain_lets_running_tasks_finish(daemon):
    task_id = ctl(daemon.socket, "submit", "--", "sleep", "1").stdout.strip()
    wait_for(lambda: daemon.client.get(task_id)["status"] == "running", 10, 0.05, "the task to start")
    proc = ctl(daemon.socket, "drain")
    assert proc.returncode == 0
    assert proc.stdout.startswith("pipelined is draining") and "1 running task(s)" in proc.stdout
    assert_one_line_error(ctl(daemon.socket, "submit", "--", "true"), 2, "draining")
    wait_for(lambda: daemon.proc.poll() is not None, 15, 0.05, "the daemon to exit after the drain")
    assert_one_line_error(ctl(daemon.socket, "ping"), 3, daemon.socket)


def test_shutdown(daemon):
    assert ctl_json(daemon.socket, "shutdown") == {"stopping": True}
    wait_for(lambda: daemon.proc.poll() is not None, 15, 0.05, "the daemon to exit")
    assert_one_line_error(ctl(daemon.socket, "status"), 3, daemon.socket)


# -- pipelinectl run ----------------------------------------------------------------------
DIAMOND = """
    [pipeline]
    name = "diamond"

    [stages.start]
    command = ["true"]

    [stages.left]
    needs = ["start"]
    command = ["sh", "-c", "echo left $PIPELINE_SHARD"]
    shards = 2

    [stages.right]
    needs = ["start"]
    command = ["sh", "-c", "echo broken >&2; exit 3"]
    max_retries = 0

    [stages.join]
    needs = ["left", "right"]
    command = ["true"]

    [stages.after_join]
    needs = ["join"]
    command = ["true"]

    [stages.left_only]
    needs = ["left"]
    command = ["true"]
"""


@pytest.mark.timeout(90)
def test_run_diamond_with_failing_branch(daemon, tmp_path):
    path = pipeline_file(tmp_path, DIAMOND)
    proc = ctl(daemon.socket, "--json", "run", str(path))
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)  # exactly one object, nothing else on stdout
    assert doc["workflow"].startswith("diamond-") and doc["status"] == "failed"
    st = doc["stages"]
    assert {name: (s["status"], s["reason"]) for name, s in st.items()} == {
        "start": ("completed", None),
        "left": ("completed", None),
        "right": ("failed", "error"),
        "join": ("failed", "upstream_failed"),
        "after_join": ("failed", "upstream_failed"),
        "left_only": ("completed", None),
    }
    for s in st.values():
        assert {"status", "reason", "retry_count", "execution_time"} <= set(s)
    assert [t["result"]["stdout"] for t in st["left"]["tasks"]] == ["left 0\n", "left 1\n"]
    assert st["join"]["execution_time"] is None and st["right"]["retry_count"] == 0
    assert doc["critical_path"]["stages"][0] == "start"
    # every task of the run is in the one workflow, submitted in one batch
    tasks = ctl_json(daemon.socket, "list", "--workflow", doc["workflow"])["tasks"]
    assert len(tasks) == 7


@pytest.mark.timeout(90)
def test_run_human_output_when_not_a_terminal(daemon, tmp_path):
    path = pipeline_file(tmp_path, DIAMOND)
    proc = ctl(daemon.socket, "run", str(path))
    assert proc.returncode == 1
    out = proc.stdout
    log, _, summary = out.partition("\nworkflow diamond-")
    log_lines = log.splitlines()
    assert all(re.match(r"^\d\d:\d\d:\d\d  ", line) for line in log_lines), log
    assert "workflow diamond-" in log_lines[0] and "7 tasks submitted" in log_lines[0]
    assert any(re.search(r"right\s+failed\s+error: CommandFailed", line) for line in log_lines), log
    assert any(re.search(r"join\s+failed\s+upstream_failed", line) for line in log_lines), log
    assert summary.split("\n", 1)[0].endswith("(7 tasks)") and " failed in " in summary
    assert re.search(r"^STAGE\s+TASKS\s+STATUS\s+REASON\s+ATTEMPTS\s+WALL\s+SLOWEST$", summary, re.MULTILINE)
    assert re.search(r"^left\s+2/2\s+completed\s+-\s+2\s+\d", summary, re.MULTILINE)
    assert re.search(r"^join\s+0/1\s+failed\s+upstream_failed\s+0\s+-\s+-$", summary, re.MULTILINE)
    assert re.search(r"^critical path: start -> \S+ .*\(\d+\.\d+s of task time\)$", summary, re.MULTILINE)
    assert re.search(r"^  diamond-\w+\.right: error: .*\| stderr: broken$", summary, re.MULTILINE)


@pytest.mark.timeout(90)
def test_run_success_sharding_placeholders_and_cwd(daemon, tmp_path):
    folder = tmp_path / "proj"
    (folder / "out").mkdir(parents=True)
    path = pipeline_file(folder, """
        [pipeline]
        name = "shards"

        [stages.split]
        command = ["sh", "-c", "echo $PIPELINE_SHARD/$PIPELINE_SHARDS > out/part-{shard}-of-{shards}.txt; echo '{\\"k\\": {shard}}' | awk '{print $1}'"]
        shards = 3

        [stages.merge]
        needs = ["split"]
        command = ["sh", "-c", "cat out/part-*.txt > out/all.txt; echo {other} {shard_id}"]
    """)
    proc = ctl(daemon.socket, "--json", "run", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "completed" and doc["interrupted"] is False
    assert (folder / "out" / "all.txt").read_text() == "0/3\n1/3\n2/3\n"  # cwd: the file's folder
    split = doc["stages"]["split"]
    assert split["shards"] == 3 and split["completed"] == 3
    assert [t["task_id"] for t in split["tasks"]] == [f"{doc['workflow']}.split.{i}" for i in range(3)]
    assert [t["result"]["stdout"] for t in split["tasks"]] == ['{"k":\n'] * 3
    assert doc["stages"]["merge"]["result"]["stdout"] == "{other} {shard_id}\n"
    assert doc["critical_path"]["stages"] == ["split", "merge"]


@pytest.mark.timeout(90)
def test_run_function_stages_and_env_parameters(daemon, tmp_path):
    path = pipeline_file(tmp_path / "fn", """
        [pipeline]
        name = "fn"
        env = { LABEL = "default" }

        [stages.echo]
        function = "tests.tasks:echo"
        args = ["{shard}", "x{shards}", "{print}"]
        kwargs = { nested = { s = "{shard}" } }
        shards = 2

        [stages.where]
        function = "tests.tasks:cwd_and_env"
        args = ["LABEL"]
    """)
    proc = ctl(daemon.socket, "--json", "run", str(path), "--env", "LABEL=from-cli")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    results = [t["result"] for t in doc["stages"]["echo"]["tasks"]]
    assert results == [
        {"args": [0, "x2", "{print}"], "kwargs": {"nested": {"s": 0}}},
        {"args": [1, "x2", "{print}"], "kwargs": {"nested": {"s": 1}}},
    ]
    assert doc["stages"]["where"]["result"] == {"cwd": str(tmp_path / "fn"), "value": "from-cli"}
    proc = ctl(daemon.socket, "--json", "run", str(path))
    assert json.loads(proc.stdout)["stages"]["where"]["result"]["value"] == "default"


@pytest.mark.timeout(90)
def test_run_reports_retries_and_timeouts(daemon, tmp_path):
    path = pipeline_file(tmp_path, """
        [stages.flaky]
        command = ["sh", "-c", "n=$(cat count 2>/dev/null || echo 0); echo $((n+1)) > count; [ $n -ge 1 ]"]
        max_retries = 2
        retry_backoff = 0

        [stages.slow]
        command = ["sleep", "30"]
        timeout = 0.5
        max_retries = 0
    """)
    proc = ctl(daemon.socket, "--json", "run", str(path))
    assert proc.returncode == 1
    st = json.loads(proc.stdout)["stages"]
    assert (st["flaky"]["status"], st["flaky"]["retry_count"], st["flaky"]["attempts"]) == ("completed", 1, 2)
    assert (st["slow"]["status"], st["slow"]["reason"]) == ("failed", "timeout")


VALIDATION_ERRORS = [
    ("syntax", '[stages.a]\ncommand = ["true"\ntimeout = 3\n', "invalid TOML"),
    ("unknown_key", '[stages.a]\ncommand = ["true"]\ntimout = 3\n', "unknown key 'timout' (did you mean 'timeout'?)"),
    ("unknown_top", '[stage.a]\ncommand = ["true"]\n', "unknown key 'stage' (did you mean 'stages'?)"),
    ("unknown_needs", '[stages.a]\ncommand = ["true"]\nneeds = ["b"]\n', "needs unknown stage 'b'"),
    ("cycle", '[stages.a]\ncommand = ["true"]\nneeds = ["b"]\n[stages.b]\ncommand = ["true"]\nneeds = ["a"]\n', "cycle: a -> b -> a"),
    ("empty", '[pipeline]\nname = "nothing"\n', "defines no stages"),
    ("bad_shards", '[stages.a]\ncommand = ["true"]\nshards = 0\n', "shards must be an integer"),
    ("both", '[stages.a]\ncommand = ["true"]\nfunction = "m:f"\n', "sets both command and function"),
    ("neither", '[stages.a]\ntimeout = 1\n', "needs a command or a function"),
    ("bad_value", '[stages.a]\ncommand = ["true"]\npriority = "asap"\n', "priority must be"),
]


@pytest.mark.parametrize("name, text, fragment", VALIDATION_ERRORS, ids=[v[0] for v in VALIDATION_ERRORS])
def test_run_validation_errors_exit_2_and_submit_nothing(daemon, tmp_path, name, text, fragment):
    path = pipeline_file(tmp_path, text, f"{name}.toml")
    err = assert_one_line_error(ctl(daemon.socket, "run", str(path)), 2, fragment)
    assert err.startswith(f"pipelinectl: {path}:")  # file, then line when known
    assert ctl_json(daemon.socket, "list")["tasks"] == []


def test_run_rejects_integers_too_large_to_send(daemon, tmp_path):
    path = pipeline_file(tmp_path, f"""
        [stages.a]
        function = "tests.tasks:echo"
        kwargs = {{ n = {2**64} }}
    """)
    assert_one_line_error(ctl(daemon.socket, "run", str(path)), 2, f"{path}:3:", "stage 'a'", "kwargs", str(2**64))
    path = pipeline_file(tmp_path, f"""
        [stages.a]
        function = "tests.tasks:echo"
        args = [1{"0" * 5000}]
    """, "huge.toml")
    assert_one_line_error(ctl(daemon.socket, "run", str(path)), 2, str(path), "more than 4300 digits")
    assert daemon.client.list() == []


def test_run_missing_file_exits_2(daemon, tmp_path):
    assert_one_line_error(ctl(daemon.socket, "run", str(tmp_path / "missing.toml")), 2, "missing.toml", "no such file")


@pytest.mark.timeout(60)
def test_run_live_display_on_a_terminal(daemon, tmp_path):
    path = pipeline_file(tmp_path, """
        [stages.nap]
        command = ["sleep", "1.2"]
        shards = 2
        [stages.done]
        needs = ["nap"]
        command = ["true"]
    """)
    master, slave = pty.openpty()
    proc = subprocess.Popen(ctl_argv(daemon.socket, "run", str(path)), stdout=slave, stderr=subprocess.PIPE, cwd=REPO, env=ENV)
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(10) == 0
    text = out.decode()
    redraws = re.findall(r"\r\x1b\[K(\[\d\d:\d\d\] [^\r\n]*)", text)
    assert redraws, text
    assert any(re.match(r"\[\d\d:\d\d\] 0/3 done, 2 running, 0 queued, 1 waiting, 0 failed \| running: nap \(2 shards\)", r) for r in redraws), redraws
    assert "critical path: nap -> done" in text


@pytest.mark.timeout(60)
def test_ctrl_c_cancels_the_run(daemon, tmp_path):
    path = pipeline_file(tmp_path, """
        [pipeline]
        name = "long"
        [stages.sleepers]
        command = ["sleep", "60"]
        shards = 2
        [stages.after]
        needs = ["sleepers"]
        command = ["true"]
    """)
    proc = subprocess.Popen(ctl_argv(daemon.socket, "run", str(path)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    first = proc.stdout.readline()
    workflow = re.search(r"workflow (long-\w+):", first).group(1)
    client = daemon.client
    wait_for(lambda: sum(t["status"] == "running" for t in client.list(workflow=workflow)) == 2, 15, 0.05, "both sleepers to run")
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - started < 15  # it did not sit out the 60 s sleeps
    assert proc.returncode == 1
    assert f"interrupted; cancelled 2 unfinished task(s) of workflow {workflow}" in err
    assert "Traceback" not in err
    assert f"workflow {workflow} cancelled" in out
    tasks = {t["task_id"]: t for t in client.list(workflow=workflow)}
    assert tasks[f"{workflow}.sleepers.0"]["status"] == "cancelled"
    assert tasks[f"{workflow}.sleepers.1"]["status"] == "cancelled"
    assert tasks[f"{workflow}.after"]["status"] in ("cancelled", "failed")
    # the sleepers were killed (a cancelled task that runs has 50 ms to end first)
    wait_for(lambda: not any(w["task_id"] for w in client.workers()), 5, what="the sleepers' workers to be killed")
