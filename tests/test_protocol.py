"""pipeline_protocol: the codec and its limits, Ref, the envelope, task-spec validation,
socket paths, and the promise that the client side imports without psutil/setproctitle."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import msgpack
import pytest

from pipeline_protocol import (
    OPS,
    PROTOCOL_VERSION,
    ErrorCode,
    ProtocolError,
    Ref,
    decode,
    default_socket_path,
    encode,
    error,
    ok,
    parse_priority,
    priority_label,
    request,
    validate_task_spec,
)
from pipeline_protocol.codec import MAX_FRAME_BYTES, MAX_PAYLOAD_BYTES, REF_EXT, find_refs, substitute_refs
from pipeline_protocol.paths import default_runtime_dir, default_state_dir, endpoint, strip_endpoint

from .conftest import REPO


# -- codec --------------------------------------------------------------------------
def test_limits_are_the_documented_ones():
    assert MAX_FRAME_BYTES == 64 * 1024 * 1024
    assert MAX_PAYLOAD_BYTES == 16 * 1024 * 1024


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -1, 2**63 - 1, 1.5, "", "héllo ☃", b"\x00\xff", [], {}, [1, [2, [3]]], {"a": {"b": [None, 1.0]}}, {1: "int key"}],
)
def test_round_trip(value):
    assert decode(encode(value)) == value


def test_bytes_and_str_stay_distinct():
    assert decode(encode([b"ab", "ab"])) == [b"ab", "ab"]
    assert type(decode(encode(b"x"))) is bytes


def test_sets_travel_as_lists():
    assert sorted(decode(encode({1, 2, 3}))) == [1, 2, 3]


def test_ref_round_trip_nested():
    value = {"args": [Ref("a"), [1, Ref("b")]], "kw": {"x": Ref("c")}}
    back = decode(encode(value))
    assert back == value
    assert isinstance(back["args"][0], Ref) and back["args"][0].task_id == "a"
    assert repr(back["kw"]["x"]) == "Ref('c')"


def test_ref_is_an_ext_type_on_the_wire():
    raw = msgpack.unpackb(encode(Ref("abc")), raw=False)
    assert isinstance(raw, msgpack.ExtType)
    assert raw.code == REF_EXT and raw.data == b"abc"


def test_ref_equality_and_hash():
    assert Ref("a") == Ref("a")
    assert Ref("a") != Ref("b")
    assert Ref("a") != "a"
    assert len({Ref("a"), Ref("a"), Ref("b")}) == 2


@pytest.mark.parametrize("bad", ["", 5, None, b"a"])
def test_ref_needs_a_task_id_string(bad):
    with pytest.raises(TypeError):
        Ref(bad)


def test_find_and_substitute_refs():
    args = [1, Ref("a"), {"k": [Ref("b"), Ref("a")]}]
    assert find_refs(args, []) == ["a", "b", "a"]
    out = substitute_refs(args, {"a": 10, "b": [2]})
    assert out == [1, 10, {"k": [[2], 10]}]
    assert find_refs(out, []) == []


def test_encode_names_the_unencodable_value():
    with pytest.raises(TypeError) as ei:
        encode({"x": object()})
    assert "object" in str(ei.value)


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\xc1",  # never-used byte
        b"\x92\x01",  # array of 2 with one element: truncated
        b"\x01\x02",  # extra data after the first object
        b"\xa2\xff\xfe",  # str that is not UTF-8
        b"\xdd\xff\xff\xff\xff",  # array32 claiming 4 billion items
        b"\xdf\xff\xff\xff\xff",  # map32 claiming 4 billion pairs
        b"\xdb\xff\xff\xff\xff",  # str32 claiming 4 GiB
        msgpack.packb(msgpack.ExtType(42, b"??")),  # unknown extension
        msgpack.packb(msgpack.ExtType(REF_EXT, b"\xff\xfe")),  # Ref payload not UTF-8
        msgpack.packb(msgpack.ExtType(REF_EXT, b"")),  # Ref with empty id
        b"GET / HTTP/1.1\r\n\r\n",
    ],
)
def test_garbage_is_a_value_error(garbage):
    with pytest.raises(ValueError):
        decode(garbage)


def test_decode_refuses_frames_over_the_limit():
    data = encode("x" * 2000)
    assert decode(data, max_bytes=len(data)) == "x" * 2000
    with pytest.raises(ValueError) as ei:
        decode(data, max_bytes=len(data) - 1)
    assert str(len(data) - 1) in str(ei.value)


def test_decode_default_limit_is_the_frame_limit():
    data = b"\xc4\x00" + b"\x00" * MAX_FRAME_BYTES  # over the limit before any parsing
    with pytest.raises(ValueError) as ei:
        decode(data)
    assert "limit" in str(ei.value)


@pytest.mark.parametrize("opener", [b"\x91", b"\x81\xa1k"])  # nested arrays / nested maps
def test_decode_refuses_deep_nesting(opener):
    with pytest.raises(ValueError) as ei:
        decode(opener * 100_000 + b"\xc0")
    assert "deep" in str(ei.value)


def test_decode_accepts_moderate_nesting():
    assert decode(b"\x91" * 100 + b"\x90") is not None



def test_whatever_decode_accepts_validation_can_walk():
    depth = 1020
    try:
        args = decode(b"\x91" * depth + b"\x90")
    except ValueError:
        return  # refused at the codec: fine
    try:
        validate_task_spec({"function": "m:f", "args": args})
    except ProtocolError:
        return  # refused with a protocol error: fine
    # accepted: fine too. A RecursionError escapes and fails the test.


# -- envelope -----------------------------------------------------------------------
def test_request_ok_error_builders():
    assert request("ping", rid=3) == {"v": PROTOCOL_VERSION, "op": "ping", "rid": 3}
    assert request("get", task_id="a") == {"v": PROTOCOL_VERSION, "op": "get", "task_id": "a"}
    assert ok(7, x=1) == {"v": PROTOCOL_VERSION, "rid": 7, "ok": True, "x": 1}
    err = error(ErrorCode.UNKNOWN_TASK, "no task 'x'", 9, {"task_id": "x"})
    assert err == {"v": PROTOCOL_VERSION, "rid": 9, "ok": False, "error": {"code": "unknown_task", "message": "no task 'x'", "details": {"task_id": "x"}}}
    assert error("too_large", "big")["error"]["details"] == {}
    with pytest.raises(ValueError):
        error("not_a_code", "x")


def test_error_codes_are_stable():
    expected = {
        "invalid_request", "unsupported_version", "unknown_op", "unknown_task", "duplicate_task",
        "unknown_dependency", "dependency_cycle", "too_large", "not_permitted", "draining", "internal",
    }
    assert expected <= {c.value for c in ErrorCode}


def test_ops_cover_the_brief():
    assert set(OPS) >= {
        "ping", "submit", "get", "list", "wait", "result", "cancel", "status", "queue_status",
        "resource_status", "workers", "workflow_status", "drain", "shutdown",
    }


def test_protocol_error_carries_code_and_message():
    exc = ProtocolError("unknown_task", "no such task", {"task_id": "t"})
    assert exc.code is ErrorCode.UNKNOWN_TASK
    assert exc.message == "no such task"
    assert str(exc) == "unknown_task: no such task"


# -- priorities ---------------------------------------------------------------------
@pytest.mark.parametrize("value, expected", [("high", 10), ("medium", 0), ("low", -10), ("HIGH", 10), (7, 7), (-1000, -1000), (1000, 1000)])
def test_parse_priority(value, expected):
    assert parse_priority(value) == expected


@pytest.mark.parametrize("value", ["urgent", "", 1.0, True, None, 1001, -1001, [1]])
def test_parse_priority_rejects(value):
    with pytest.raises(ValueError):
        parse_priority(value)


def test_priority_label():
    assert [priority_label(p) for p in (100, 10, 9, 0, -9, -10, -100)] == ["high", "high", "medium", "medium", "medium", "low", "low"]


# -- task specs ------------------------------------------------------------------------
def test_validate_normalizes_a_minimal_spec():
    out = validate_task_spec({"function": "pkg.mod:func"})
    assert out["task_id"] is None
    assert out["task_type"] == "default"
    assert out["priority"] == 0
    assert out["args"] == [] and out["kwargs"] == {}
    assert out["dependencies"] == []
    assert out["timeout"] is None and out["max_retries"] is None  # the daemon fills its defaults


def test_validate_merges_refs_into_dependencies():
    out = validate_task_spec({"task_id": "t", "function": "m:f", "args": [Ref("a")], "kwargs": {"x": Ref("b")}, "dependencies": ["c", "a"]})
    assert out["dependencies"] == ["c", "a", "b"]


def test_validate_command_spec():
    out = validate_task_spec({"command": ["ls", "-l"], "cwd": "/tmp", "env": {"A": "1"}, "timeout": 5, "priority": "low"})
    assert out["command"] == ["ls", "-l"] and out["function"] is None
    assert out["timeout"] == 5.0 and out["priority"] == -10


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"task_id": "t1", "function": "m:f", "timeout": "soon"}, "timeout"),
        ({"task_id": "t1", "function": "m:f", "max_retries": "3"}, "max_retries"),
        ({"task_id": "t1", "function": "m:f", "priority": "asap"}, "priority"),
        ({"task_id": "t1", "function": "m:f", "dependencies": [3]}, "dependencies"),
        ({"task_id": "t1", "function": "m:f", "args": "x"}, "args"),
        ({"task_id": "t1", "function": "m:f", "kwargs": {3: 1}}, "kwargs"),
        ({"task_id": "t1", "function": "m:f", "retry_backoff": []}, "retry_backoff"),
        ({"task_id": "t1", "function": "m:f", "memory_limit_mb": -5}, "memory_limit_mb"),
        ({"task_id": "t1", "function": "m:f", "task_type": 3}, "task_type"),
        ({"task_id": "t1", "function": "m:f", "workflow": ""}, "workflow"),
        # control characters: they came out raw in /metrics and in tables
        ({"task_id": "t1", "function": "m:f", "task_type": "a\x00b"}, "task_type"),
        ({"task_id": "t1", "function": "m:f", "task_type": "gpu\n"}, "task_type"),
        ({"task_id": "t1", "function": "m:f", "task_type": "\x1b[31mred"}, "task_type"),
        ({"task_id": "t1", "function": "m:f", "task_type": "del\x7f"}, "task_type"),
        ({"task_id": "t1", "function": "m:f", "task_type": "x" * 101}, "task_type"),
        ({"task_id": "t1", "function": "m:f", "workflow": "w\x00"}, "workflow"),
        ({"task_id": "t1", "function": "m:f", "workflow": "w\n"}, "workflow"),
        ({"task_id": "t1", "function": "m:f", "workflow": "\x1b]0;title\x07"}, "workflow"),
        ({"task_id": "t1", "function": "m:f", "workflow": "w" * 201}, "workflow"),
        ({"task_id": "t1", "function": "not a path"}, "function"),
        ({"task_id": "t1", "command": ["ls"], "env": {"A": 1}}, "env"),
        ({"task_id": "t1", "command": ["ls"], "cwd": ["/"]}, "cwd"),
        ({"task_id": "t1", "command": [1]}, "command"),
        # NUL: exec and setproctitle refuse it; accepted, it crashed every worker that took it
        ({"task_id": "t1", "command": ["echo", "a\x00b"]}, "command"),
        ({"task_id": "t1", "command": ["ls"], "cwd": "/tmp\x00x"}, "cwd"),
        ({"task_id": "t1", "command": ["ls"], "env": {"A\x00": "1"}}, "env"),
        ({"task_id": "t1", "command": ["ls"], "env": {"A": "1\x00"}}, "env"),
        ({"task_id": "t1", "command": ["ls"], "env": {"A=B": "1"}}, "env"),
        ({"task_id": "t1", "command": ["ls"], "env": {"": "1"}}, "env"),
        ({"task_id": "t1", "function": "m:f", "colour": "red"}, "colour"),
    ],
)
def test_validate_errors_name_the_field_and_task(spec, field):
    with pytest.raises(ProtocolError) as ei:
        validate_task_spec(spec)
    err = ei.value
    assert err.code is ErrorCode.INVALID_REQUEST
    assert err.details["field"] == field
    assert field in err.message
    assert "t1" in err.message  # the culprit can be found in a batch of thousands


@pytest.mark.parametrize("tid", ["t\n", "t\x1b", "\x00t", "t" * 201])
def test_validate_rejects_unprintable_task_ids(tid):
    # "t\n" slipped through: the regex's "$" matches before a trailing newline.
    with pytest.raises(ProtocolError) as ei:
        validate_task_spec({"task_id": tid, "function": "m:f"})
    assert ei.value.code is ErrorCode.INVALID_REQUEST and ei.value.details["field"] == "task_id"


def test_validate_accepts_printable_types_and_workflows():
    out = validate_task_spec({"function": "m:f", "task_type": "gpu é 🚀", "workflow": "nightly build #3 ✓", "task_id": "id with spaces"})
    assert (out["task_type"], out["workflow"], out["task_id"]) == ("gpu é 🚀", "nightly build #3 ✓", "id with spaces")
    assert validate_task_spec({"function": "m:f", "task_type": None})["task_type"] == "default"


def test_validate_rejects_non_map():
    with pytest.raises(ProtocolError) as ei:
        validate_task_spec(["function", "m:f"])
    assert ei.value.code is ErrorCode.INVALID_REQUEST
    assert "map" in ei.value.message


def test_validate_needs_exactly_one_of_function_and_command():
    for spec in ({}, {"function": "m:f", "command": ["ls"]}):
        with pytest.raises(ProtocolError) as ei:
            validate_task_spec(spec)
        assert ei.value.code is ErrorCode.INVALID_REQUEST
        assert "function" in ei.value.message and "command" in ei.value.message


def test_validate_self_dependency_is_a_cycle():
    with pytest.raises(ProtocolError) as ei:
        validate_task_spec({"task_id": "me", "function": "m:f", "args": [Ref("me")]})
    assert ei.value.code is ErrorCode.DEPENDENCY_CYCLE


def test_validate_does_not_mutate_its_input():
    spec = {"task_id": "t", "function": "m:f", "args": [Ref("a")]}
    copy = dict(spec)
    validate_task_spec(spec)
    assert spec == copy


# -- paths --------------------------------------------------------------------------------
def test_socket_path_resolution():
    assert default_socket_path({"PIPELINED_SOCKET": "/x/y.sock"}) == "/x/y.sock"
    assert default_socket_path({"PIPELINED_RUNTIME_DIR": "/r"}) == "/r/pipelined.sock"
    assert default_socket_path({"RUNTIME_DIRECTORY": "/sd:/other"}) == "/sd/pipelined.sock"
    assert default_socket_path({"XDG_RUNTIME_DIR": "/run/user/5"}) == "/run/user/5/pipelined/pipelined.sock"
    assert default_runtime_dir({"PIPELINED_RUNTIME_DIR": "/a", "RUNTIME_DIRECTORY": "/b"}) == "/a"
    assert default_state_dir({"PIPELINED_STATE_DIR": "/s"}) == "/s"
    assert default_state_dir({"XDG_STATE_HOME": "/h"}) == "/h/pipelined"
    assert endpoint("/a.sock") == "ipc:///a.sock" and endpoint("ipc:///a.sock") == "ipc:///a.sock"
    assert strip_endpoint("ipc:///a.sock") == "/a.sock"


# -- the thin client -----------------------------------------------------------------------
BLOCKED_IMPORT_CHECK = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    BLOCKED = {"psutil", "setproctitle", "prometheus_client"}  # daemon-only dependencies

    class Blocker:
        def find_spec(self, name, path=None, target=None):
            if name.partition(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked for this test")
            return None

    for name in list(sys.modules):
        if name.partition(".")[0] in BLOCKED:
            del sys.modules[name]
    sys.meta_path.insert(0, Blocker())

    try:  # the blocker itself works
        import psutil
    except ImportError:
        pass
    else:
        raise SystemExit("blocker failed: psutil imported")

    import pipeline_protocol, pipeline_client
    from pipeline_client import AsyncClient, Client, Executor, Ref, TaskFailed, DaemonUnreachable

    imported = []
    for pkg in (pipeline_protocol, pipeline_client):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            try:
                importlib.import_module(info.name)
            except ImportError as exc:
                missing = (exc.name or "").partition(".")[0]
                if missing in BLOCKED or "blocked" in str(exc):
                    raise SystemExit(f"{info.name} needs {missing}: {exc}")
                if missing != "mcp":  # the MCP shim may need the MCP SDK; nothing else optional
                    raise
                continue
            imported.append(info.name)
    leaked = sorted(n for n in sys.modules if n.partition(".")[0] in BLOCKED)
    if leaked:
        raise SystemExit(f"imported anyway: {leaked}")
    print("OK", len(imported))
    """
)


def test_client_and_protocol_import_without_psutil_and_setproctitle():
    proc = subprocess.run([sys.executable, "-c", BLOCKED_IMPORT_CHECK], cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("OK")
    assert int(proc.stdout.split()[1]) >= 10  # it really walked both packages


def test_blocked_import_check_catches_an_offender(tmp_path):
    """The check above must fail when a client module imports psutil."""
    pkg = tmp_path / "pipeline_client"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("import psutil\n")
    proto = tmp_path / "pipeline_protocol"
    proto.mkdir()
    (proto / "__init__.py").write_text("")
    script = f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + BLOCKED_IMPORT_CHECK
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode != 0
    assert "blocked" in proc.stderr + proc.stdout
