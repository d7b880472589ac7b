"""The MCP shim (pipeline-mcp) driven the way an AI agent drives it: over stdio, by the
MCP Python SDK's own client and by an independent one (the MCP Inspector CLI), against
real daemons.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from contextlib import asynccontextmanager
from pathlib import Path

import psutil
import pytest

from .conftest import REPO

mcp = pytest.importorskip("mcp", reason="the MCP SDK is not installed (pip install 'pipelined[mcp]')")
import anyio  # an MCP SDK dependency
from mcp import ClientSession, StdioServerParameters, stdio_client

TOOLS = {"submit_task", "get_task", "wait_task", "cancel_task", "list_tasks", "run_pipeline", "parallel_task_management"}
SHIM = [sys.executable, "-m", "pipeline_client.mcp_server"]


def shim_params(socket: str) -> StdioServerParameters:
    return StdioServerParameters(command=SHIM[0], args=[*SHIM[1:], "--socket", str(socket), "--log-level", "info"], cwd=str(REPO))


@pytest.fixture
def errlog(tmp_path):
    """Where the shims of a test write their stderr (their log)."""
    with open(tmp_path / "shim.err", "a") as fh:
        yield fh


@asynccontextmanager
async def shim(socket: str, errlog):
    """A pipeline-mcp subprocess and an initialized SDK session on it (the handshake era,
    as most MCP hosts speak it)."""
    async with stdio_client(shim_params(socket), errlog=errlog) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def run(body):
    """Run an async test body (no pytest plugin needed), with a hard bound."""

    async def bounded():
        with anyio.fail_after(45):
            return await body()

    return anyio.run(bounded)


def text(result) -> str:
    return "\n".join(c.text for c in result.content)


def ok(result) -> dict:
    """The structured content of a successful call, after checking the JSON text matches it."""
    assert not result.is_error, text(result)
    assert json.loads(result.content[0].text) == result.structured_content
    return result.structured_content


def error(result, code: str) -> str:
    assert result.is_error, f"expected a tool error, got: {text(result)}"
    assert result.structured_content["error"]["code"] == code, result.structured_content
    return text(result)


# -- packaging ---------------------------------------------------------------------------
def test_client_imports_without_the_mcp_sdk():
    """`import pipeline_client` never pulls the SDK in; without it, pipeline-mcp says how to get it."""
    probe = textwrap.dedent(
        """
        import sys
        import pipeline_client, pipeline_client.cli
        assert not [m for m in sys.modules if m == "mcp" or m.startswith("mcp.")], "pipeline_client imported mcp"
        for name in [m for m in sys.modules if m.startswith("pipeline_client.mcp")]:
            del sys.modules[name]
        sys.modules["mcp"] = None  # from now on, `import mcp` fails as if it were not installed
        from pipeline_client import mcp_server
        sys.exit(mcp_server.main(["--socket", "/nonexistent.sock"]))
        """
    )
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'pipelined[mcp]'" in proc.stderr
    assert proc.stdout == ""


def test_console_script_is_declared():
    pyproject = (REPO / "pyproject.toml").read_text()
    assert 'pipeline-mcp = "pipeline_client.mcp_server:main"' in pyproject
    assert re.search(r'^mcp = \["mcp>=2\.3,<3"\]', pyproject, re.MULTILINE)
    assert re.search(r'^test = \[.*"mcp>=2\.3,<3"', pyproject, re.MULTILINE)  # so CI runs this file
    proc = subprocess.run([*SHIM, "--help"], cwd=REPO, check=False, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0 and "--socket PATH" in proc.stdout


# -- the SDK's client --------------------------------------------------------------------
def test_lists_seven_described_tools(tmp_path, errlog):
    """Listing needs no daemon; every tool explains itself and its arguments."""

    async def body():
        async with shim(tmp_path / "none.sock", errlog) as s:
            return (await s.list_tools()).tools

    tools = {t.name: t for t in run(body)}
    assert set(tools) == TOOLS
    for tool in tools.values():
        assert len(tool.description) > 80, tool.name
        schema = tool.input_schema
        assert schema["type"] == "object" and schema["properties"], tool.name
        for name, prop in schema["properties"].items():
            assert len(prop.get("description", "")) > 15, f"{tool.name}.{name} has no description"
    submit = tools["submit_task"].input_schema["properties"]
    assert {"function", "command", "args", "kwargs", "priority", "dependencies", "timeout", "max_retries", "retry_backoff",
            "task_id", "task_type", "memory_limit_mb", "workflow", "cwd", "env"} <= set(submit)
    assert "seconds" in submit["timeout"]["description"]
    assert '"high" (= 10)' in submit["priority"]["description"] and '"low" (= -10)' in submit["priority"]["description"]
    assert "exactly one" in submit["function"]["description"] and "package.module:function" in submit["function"]["description"]
    assert tools["wait_task"].input_schema["required"] == ["task_id"]
    assert "seconds" in tools["wait_task"].input_schema["properties"]["timeout"]["description"]
    assert tools["run_pipeline"].input_schema["required"] == ["path"]
    assert tools["parallel_task_management"].input_schema["properties"]["action"]["enum"] == ["status", "queue_status", "resource_status"]
    assert tools["get_task"].annotations.read_only_hint and tools["cancel_task"].annotations.destructive_hint


def test_submit_wait_get_list(daemon, errlog):
    async def body():
        async with shim(daemon.socket, errlog) as s:
            submitted = ok(await s.call_tool("submit_task", {"function": "tests.tasks:square", "args": [7], "priority": "high", "timeout": 5}))
            assert set(submitted) == {"task_id"}
            tid = submitted["task_id"]
            record = ok(await s.call_tool("wait_task", {"task_id": tid, "timeout": 10}))
            assert (record["task_id"], record["status"], record["result"], record["priority"]) == (tid, "completed", 49, 10)
            assert "timed_out" not in record
            got = ok(await s.call_tool("get_task", {"task_id": tid}))
            assert got["result"] == 49 and got["function"] == "tests.tasks:square"

            cmd = ok(await s.call_tool("submit_task", {"command": ["sh", "-c", "echo hi from $WHO"], "env": {"WHO": "mcp"}, "priority": -3, "task_id": "cmd-1"}))
            assert cmd == {"task_id": "cmd-1"}
            out = ok(await s.call_tool("wait_task", {"task_id": "cmd-1"}))
            assert out["result"]["exit_code"] == 0 and out["result"]["stdout"] == "hi from mcp\n" and out["priority"] == -3

            listed = ok(await s.call_tool("list_tasks", {"state": "completed"}))["tasks"]
            assert {tid, "cmd-1"} <= {t["task_id"] for t in listed}
            assert ok(await s.call_tool("list_tasks", {"state": "failed"})) == {"tasks": []}

    run(body)


def test_result_keys_json_cannot_carry(daemon, errlog):
    # A result map with bytes and Ref keys (legal msgpack) comes out with str() keys.
    async def body():
        async with shim(daemon.socket, errlog) as s:
            tid = ok(await s.call_tool("submit_task", {"function": "tests.tasks:odd_keys"}))["task_id"]
            record = ok(await s.call_tool("wait_task", {"task_id": tid, "timeout": 10}))
            assert record["result"] == {"b'k'": 1, "b'\\xff'": 2, "Ref('t')": 3, "k": 4}
            assert ok(await s.call_tool("get_task", {"task_id": tid}))["result"] == record["result"]

    run(body)


def test_cancel_and_wait_timeout(daemon, errlog):
    async def body():
        async with shim(daemon.socket, errlog) as s:
            tid = ok(await s.call_tool("submit_task", {"function": "tests.tasks:sleep", "args": [30], "workflow": "wf-a"}))["task_id"]
            t0 = time.monotonic()
            waited = ok(await s.call_tool("wait_task", {"task_id": tid, "timeout": 0.5}))
            assert 0.4 < time.monotonic() - t0 < 5
            assert waited["timed_out"] is True and waited["status"] in ("queued", "running")

            # A wait in flight blocks nothing (the client calls run in threads): other calls
            # are served meanwhile, and a cancel ends the wait with a tool error.
            outcome = {}

            async def waiter():
                outcome["wait"] = await s.call_tool("wait_task", {"task_id": tid})

            async with anyio.create_task_group() as tg:
                tg.start_soon(waiter)
                await anyio.sleep(0.3)
                t1 = time.monotonic()
                assert ok(await s.call_tool("parallel_task_management", {"action": "status"}))["running_tasks"] == 1
                assert time.monotonic() - t1 < 1.5 and "wait" not in outcome  # served while the wait goes on
                assert ok(await s.call_tool("cancel_task", {"task_id": tid})) == {"cancelled": [tid], "status": "cancelled"}
            message = error(outcome["wait"], "task_cancelled")
            assert f"task {tid} cancelled" in message
            assert outcome["wait"].structured_content["task"]["status"] == "cancelled"
            assert ok(await s.call_tool("cancel_task", {"task_id": tid}))["cancelled"] == []  # already ended: nothing to do

            others = [ok(await s.call_tool("submit_task", {"function": "tests.tasks:sleep", "args": [30], "workflow": "wf-b"}))["task_id"] for _ in range(3)]
            assert sorted(ok(await s.call_tool("cancel_task", {"workflow": "wf-b"}))["cancelled"]) == sorted(others)
            assert {t["status"] for t in ok(await s.call_tool("list_tasks", {"workflow": "wf-b"}))["tasks"]} == {"cancelled"}
            assert "exactly one of 'task_id' or 'workflow'" in error(await s.call_tool("cancel_task", {}), "invalid_arguments")

    run(body)


def test_parallel_task_management(daemon, errlog):
    async def body():
        async with shim(daemon.socket, errlog) as s:
            status = ok(await s.call_tool("parallel_task_management", {"action": "status"}))
            assert status["max_workers"] == 2 and "performance_metrics" in status and "ok" not in status
            queue = ok(await s.call_tool("parallel_task_management", {"action": "queue_status"}))
            assert queue["queue_size"] == 0 and set(queue["job_counts"]) == {"HIGH", "MEDIUM", "LOW"}
            resources = ok(await s.call_tool("parallel_task_management", {"action": "resource_status"}))
            assert {"limits", "current"} <= set(resources) and resources["limits"]["max_concurrent_tasks"] == 2
            message = error(await s.call_tool("parallel_task_management", {"action": "restart"}), "unknown_action")
            assert "'restart'" in message and "queue_status" in message

    run(body)


def test_failures_are_tool_errors(daemon, errlog):
    async def body():
        async with shim(daemon.socket, errlog) as s:
            tid = ok(await s.call_tool("submit_task", {"function": "tests.tasks:fail", "args": ["disk on fire"], "max_retries": 0}))["task_id"]
            failed = await s.call_tool("wait_task", {"task_id": tid, "timeout": 10})
            message = error(failed, "task_failed")
            assert f"task {tid} failed (error): ValueError: disk on fire" in message
            assert failed.structured_content["task"]["reason"] == "error"
            assert "Traceback" in failed.structured_content["task"]["error"]["traceback"]
            # get_task reports states, it does not judge them
            assert ok(await s.call_tool("get_task", {"task_id": tid}))["status"] == "failed"

            for tool in ("get_task", "wait_task", "cancel_task"):
                assert "no task 'nope-42'" in error(await s.call_tool(tool, {"task_id": "nope-42"}), "unknown_task")

            bad = {
                "give exactly one of 'function'": {"args": [1]},
                "exactly one of 'function' (a Python": {"function": "tests.tasks:noop", "command": ["true"]},
                "unknown argument 'funtion' (did you mean 'function'?)": {"funtion": "tests.tasks:noop"},
                "argument 'timeout' must be a number, not the string 'soon'": {"function": "tests.tasks:noop", "timeout": "soon"},
                "argument 'priority' must be one of 'high', 'medium', 'low' or an integer": {"function": "tests.tasks:noop", "priority": "urgent"},
                "argument 'command' item 1 must be a string": {"command": ["sleep", 5]},
            }
            for expected, args in bad.items():
                assert expected in error(await s.call_tool("submit_task", args), "invalid_arguments")
            assert "argument 'task_id' is required" in error(await s.call_tool("wait_task", {}), "invalid_arguments")
            # what only the daemon can judge comes back as its error, code and all
            assert "package.module:qualname" in error(await s.call_tool("submit_task", {"function": "not a function"}), "invalid_request")
            assert "unknown" in error(await s.call_tool("submit_task", {"function": "tests.tasks:noop", "dependencies": ["ghost"]}), "unknown_dependency")
            assert "unknown tool 'submit'" in error(await s.call_tool("submit", {}), "unknown_tool")
            # the shim is still there and still useful
            await s.send_ping()
            return ok(await s.call_tool("submit_task", {"function": "tests.tasks:noop"}))

    assert "task_id" in run(body)


def test_daemon_down_then_up(make_daemon, tmp_path, errlog):
    """Pointed at a socket with no daemon behind it, every call is a tool error naming the
    socket and the shim keeps serving; once the daemon is there, the same shim works."""
    d = make_daemon(start=False)

    async def body():
        async with shim(d.socket, errlog) as s:
            for tool, args in [("submit_task", {"function": "tests.tasks:noop"}), ("get_task", {"task_id": "x"}), ("list_tasks", {}),
                               ("parallel_task_management", {"action": "status"}), ("wait_task", {"task_id": "x"})]:
                result = await s.call_tool(tool, args)
                message = error(result, "daemon_unreachable")
                assert f"cannot reach pipelined at {d.socket}" in message and "is pipelined running?" in message
                assert result.structured_content["socket"] == d.socket
            assert len((await s.list_tools()).tools) == 7
            await anyio.to_thread.run_sync(d.start)
            tid = ok(await s.call_tool("submit_task", {"function": "tests.tasks:square", "args": [3]}))["task_id"]
            assert ok(await s.call_tool("wait_task", {"task_id": tid, "timeout": 10}))["result"] == 9

    run(body)
    errlog.flush()
    assert "Traceback" not in (tmp_path / "shim.err").read_text()


def test_survives_daemon_restart(make_daemon, tmp_path, errlog):
    d = make_daemon()
    slow = tmp_path / "slow.toml"
    slow.write_text('[pipeline]\nname = "slow"\n[stages.nap]\nfunction = "tests.tasks:sleep"\nargs = [30]\nmax_retries = 0\n')

    async def body():
        async with shim(d.socket, errlog) as s:
            tid = ok(await s.call_tool("submit_task", {"function": "tests.tasks:square", "args": [5]}))["task_id"]
            assert ok(await s.call_tool("wait_task", {"task_id": tid, "timeout": 10}))["result"] == 25
            await anyio.to_thread.run_sync(d.stop)
            assert d.socket in error(await s.call_tool("get_task", {"task_id": tid}), "daemon_unreachable")
            await anyio.to_thread.run_sync(d.start)
            assert ok(await s.call_tool("get_task", {"task_id": tid}))["result"] == 25  # from the journal
            again = ok(await s.call_tool("submit_task", {"function": "tests.tasks:square", "args": [6]}))["task_id"]
            assert ok(await s.call_tool("wait_task", {"task_id": again, "timeout": 10}))["result"] == 36

            # A run in flight when the daemon dies (kill -9): the error names the workflow to look for.
            outcome = {}

            async def runner():
                outcome["run"] = await s.call_tool("run_pipeline", {"path": str(slow)})

            async with anyio.create_task_group() as tg:
                tg.start_soon(runner)
                while not ok(await s.call_tool("list_tasks", {"state": "running"}))["tasks"]:
                    await anyio.sleep(0.05)
                for p in psutil.Process(d.pid).children(recursive=True):
                    d.descendants.setdefault(p.pid, p)  # the fixture checks they are gone
                os.kill(d.pid, signal.SIGKILL)
            message = error(outcome["run"], "daemon_unreachable")
            workflow = outcome["run"].structured_content["workflow"]
            assert f"workflow {workflow} had been submitted" in message and d.socket in message
            await anyio.to_thread.run_sync(d.stop)
            await anyio.to_thread.run_sync(d.start)
            [task] = ok(await s.call_tool("list_tasks", {"workflow": workflow}))["tasks"]
            assert (task["status"], task["reason"]) == ("failed", "worker_lost")  # its attempt died with the daemon

    run(body)


def test_wait_task_reports_progress_in_the_modern_era(daemon, errlog):
    """mcp.Client negotiates the 2026-07-28 protocol; progress still flows, in seconds."""
    seen: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress, total, message):
        seen.append((progress, total, message))

    async def body():
        # a Transport instance: the stdio transport, with the shim's stderr in the log file
        async with mcp.Client(stdio_client(shim_params(daemon.socket), errlog=errlog)) as c:
            assert c.protocol_version >= "2026"
            tid = ok(await c.call_tool("submit_task", {"function": "tests.tasks:sleep", "args": [1.5]}))["task_id"]
            record = ok(await c.call_tool("wait_task", {"task_id": tid, "timeout": 20}, progress_callback=on_progress))
            assert record["status"] == "completed"
            quiet = ok(await c.call_tool("wait_task", {"task_id": tid}))  # no callback: no token, no notifications
            assert quiet["status"] == "completed"
            return tid

    tid = run(body)
    assert len(seen) >= 3, seen  # at the start, at least once while it runs, at the end
    values = [p for p, _, _ in seen]
    assert values == sorted(values) and len(set(values)) == len(values) and values[-1] >= 1.0
    assert f"task {tid} running" in seen[1][2] and seen[-1][2] == f"task {tid} completed"


PIPELINE = """
[pipeline]
name = "mcp-demo"

[pipeline.env]
GREETING = "hello"

[stages.square]
function = "tests.tasks:square"
args = [12]

[stages.shout]
needs = ["square"]
command = ["sh", "-c", "echo $GREETING from shard {shard} of {shards}"]
shards = 2
"""


def test_run_pipeline_matches_pipelinectl(daemon, tmp_path, errlog):
    path = tmp_path / "demo.toml"
    path.write_text(PIPELINE)
    seen: list[tuple[float, str | None]] = []

    async def on_progress(progress, total, message):
        seen.append((progress, message))

    async def body():
        async with shim(daemon.socket, errlog) as s:
            return ok(await s.call_tool("run_pipeline", {"path": str(path), "env": {"GREETING": "hi"}, "timeout": 30}, progress_callback=on_progress))

    doc = run(body)
    assert doc["status"] == "completed" and doc["pipeline"] == "mcp-demo" and doc["file"] == str(path)
    assert doc["stages"]["square"]["result"] == 144
    assert [t["result"]["stdout"] for t in doc["stages"]["shout"]["tasks"]] == ["hi from shard 0 of 2\n", "hi from shard 1 of 2\n"]
    assert doc["counts"]["completed"] == 3
    assert any("3/3 done" in (m or "") for _, m in seen), seen
    assert seen[0][1].startswith(f"workflow {doc['workflow']}: 2 stages, 3 tasks submitted")

    cli = subprocess.run([sys.executable, "-m", "pipeline_client.cli", "--socket", daemon.socket, "--json", "run", str(path), "--env", "GREETING=hi"],
                         cwd=REPO, check=False, capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    ref = json.loads(cli.stdout)

    def shape(d):
        return {k: (sorted(v) if isinstance(v, dict) else type(v).__name__) for k, v in d.items()}

    assert shape(doc) == shape(ref)
    for name, stage in ref["stages"].items():
        assert set(doc["stages"][name]) == set(stage)
        for key in ("status", "needs", "attempts", "retry_count"):
            assert doc["stages"][name][key] == stage[key], (name, key)
    assert doc["critical_path"]["stages"] == ref["critical_path"]["stages"]


def test_run_pipeline_failures(daemon, tmp_path, errlog):
    failing = tmp_path / "failing.toml"
    failing.write_text(textwrap.dedent("""
        [pipeline]
        name = "doomed"
        [stages.explode]
        function = "tests.tasks:fail"
        args = ["kaboom"]
        max_retries = 0
        [stages.after]
        needs = ["explode"]
        function = "tests.tasks:noop"
    """))
    slow = tmp_path / "slow.toml"
    slow.write_text('[pipeline]\nname = "slow"\n[stages.nap]\nfunction = "tests.tasks:sleep"\nargs = [30]\nshards = 2\n')

    async def body():
        async with shim(daemon.socket, errlog) as s:
            result = await s.call_tool("run_pipeline", {"path": str(failing)})
            message = error(result, "pipeline_failed")
            assert "pipeline doomed" in message and "failed" in message and "ValueError: kaboom" in message
            run_doc = result.structured_content["run"]
            assert run_doc["status"] == "failed"
            assert (run_doc["stages"]["explode"]["reason"], run_doc["stages"]["after"]["reason"]) == ("error", "upstream_failed")

            t0 = time.monotonic()
            result = await s.call_tool("run_pipeline", {"path": str(slow), "timeout": 1})
            assert time.monotonic() - t0 < 15
            assert "did not finish within 1s" in error(result, "pipeline_timed_out")
            run_doc = result.structured_content["run"]
            assert run_doc["status"] == "cancelled" and run_doc["interrupted"] is True
            assert {t["status"] for t in run_doc["stages"]["nap"]["tasks"]} == {"cancelled"}

            # A run whose caller gives up (the request is cancelled) cancels its own tasks.
            with anyio.move_on_after(1.5):
                await s.call_tool("run_pipeline", {"path": str(slow)})
            for _ in range(50):
                naps = ok(await s.call_tool("list_tasks", {}))["tasks"]
                abandoned = [t for t in naps if t["workflow"] != run_doc["workflow"] and t["workflow"].startswith("slow-")]
                if len(abandoned) == 2 and {t["status"] for t in abandoned} == {"cancelled"}:
                    break
                await anyio.sleep(0.1)
            else:
                raise AssertionError(f"the abandoned run's tasks were not cancelled: {abandoned}")

            missing = tmp_path / "nowhere.toml"
            assert str(missing) in error(await s.call_tool("run_pipeline", {"path": str(missing)}), "pipeline_file_error")
            assert "'env' entry 'N' must be a string" in error(await s.call_tool("run_pipeline", {"path": str(slow), "env": {"N": 3}}), "invalid_arguments")

    run(body)


def test_stdout_carries_only_json_rpc(daemon, tmp_path):
    """A stray print or a raw write to fd 1 inside a tool call lands on stderr, not in the
    protocol stream."""
    rogue = textwrap.dedent(
        """
        import os, sys
        from pipeline_client import mcp_server, mcp_tools
        real = mcp_tools.daemon_op
        def noisy(client, args):
            print("STRAY PRINT")
            sys.stdout.flush()
            os.write(1, b"RAW WRITE\\n")
            return real(client, args)
        mcp_tools.daemon_op = noisy
        sys.exit(mcp_server.main(sys.argv[1:]))
        """
    )
    messages = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "parallel_task_management", "arguments": {"action": "status"}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "get_task", "arguments": {"task_id": "missing"}}},
    ]
    proc = subprocess.Popen([sys.executable, "-c", rogue, "--socket", daemon.socket], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    replies = {}
    try:
        for msg in messages:
            proc.stdin.write(json.dumps(msg) + "\n")
            proc.stdin.flush()
            if "id" in msg:
                line = proc.stdout.readline()
                reply = json.loads(line)  # anything but JSON-RPC here fails the test
                assert reply["jsonrpc"] == "2.0"
                replies[reply["id"]] = reply
        rest, err = proc.communicate(timeout=15)  # closes stdin: the shim must exit cleanly
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rest == "", f"unexpected bytes on stdout: {rest!r}"
    assert proc.returncode == 0
    assert len(replies[2]["result"]["tools"]) == 7
    assert replies[3]["result"]["isError"] is False and replies[3]["result"]["structuredContent"]["max_workers"] == 2
    assert replies[4]["result"]["isError"] is True
    assert "STRAY PRINT" in err and "RAW WRITE" in err


# -- an independent client: the MCP Inspector CLI ----------------------------------------------
def inspector_command(tmp_path) -> list[str]:
    """The Inspector CLI, as installed by scripts/install-inspector.sh, else through npx."""
    script = (REPO / "scripts" / "install-inspector.sh").read_text()
    version = re.search(r"^INSPECTOR_VERSION=(\S+)", script, re.MULTILINE).group(1)
    local = REPO / ".ci" / "node" / "node_modules" / ".bin" / "mcp-inspector"
    if local.exists():
        return [str(local)]
    log = REPO / ".ci" / "node" / "install.log"
    why = f" ({log.read_text().strip()[-300:]})" if log.exists() else ""
    npx = shutil.which("npx")
    if npx is None:
        pytest.skip(f"npx is not available and scripts/install-inspector.sh did not install the MCP Inspector{why}")
    cmd = [npx, "-y", f"@modelcontextprotocol/inspector@{version}"]
    try:
        probe = subprocess.run([*cmd, "--version"], check=False, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip(f"npx could not install @modelcontextprotocol/inspector@{version} within 120 s{why}")
    if probe.returncode != 0:
        pytest.skip(f"npx could not install @modelcontextprotocol/inspector@{version}: {probe.stderr.strip()[-300:]}{why}")
    return cmd


def test_mcp_inspector_cli(daemon, tmp_path):
    inspector = inspector_command(tmp_path)
    script = Path(sys.executable).with_name("pipeline-mcp")  # the console script, when this venv has it
    target = ["--cli", *([str(script)] if script.exists() else SHIM), "--socket", daemon.socket]

    def inspect(*args):
        return subprocess.run([*inspector, *target, *args], cwd=REPO, check=False, capture_output=True, text=True, timeout=60)

    listed = inspect("--method", "tools/list", "--strict")  # --strict: exit 6 on a non-portable tool schema
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert {t["name"] for t in json.loads(listed.stdout)["tools"]} == TOOLS

    called = inspect("--method", "tools/call", "--tool-name", "submit_task", "--tool-arg", "function=tests.tasks:square", "args=[9]", "priority=high")
    assert called.returncode == 0, called.stdout + called.stderr
    tid = json.loads(called.stdout)["structuredContent"]["task_id"]
    assert daemon.client.result(tid, timeout=10) == 81

    refused = inspect("--method", "tools/call", "--tool-name", "get_task", "--tool-arg", "task_id=no-such-task")
    assert refused.returncode != 0  # the Inspector exits non-zero on a tool error
    assert json.loads(refused.stdout)["isError"] is True
