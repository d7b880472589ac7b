"""Hostile input on the control socket: raw ZeroMQ peers and raw AF_UNIX sockets sending
what no client would. After each, the daemon answers a ping and nothing changed; every
error reply has a stable `code` and a human `message`."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import msgpack
import pytest
import zmq

from pipeline_client import Client
from pipeline_protocol import ErrorCode, Ref, decode, encode

from .conftest import Daemon, wait_for, wait_for_gone

CODES = {c.value for c in ErrorCode}


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    """One daemon for the whole module: hostile input must not be able to hurt it."""
    d = Daemon(tmp_path_factory.mktemp("hostile"), workers=1)
    d.base.mkdir(parents=True, exist_ok=True)
    d.start()
    with Client(d.socket) as c:  # one ended task, so ops that need a task id have one
        c.wait([c.submit("tests.tasks:noop", task_id="seed")], timeout=10)
    yield d
    d.stop()
    left = wait_for_gone(d)
    assert not left, f"daemon left processes behind: {left}"


@pytest.fixture
def ctx():
    return zmq.Context.instance()


def snapshot(d: Daemon) -> dict:
    st = d.client.status()
    return {
        k: st[k]
        for k in ("pending_tasks", "queued_tasks", "running_tasks", "completed_tasks", "failed_tasks", "cancelled_tasks", "draining")
    } | {"total": st["performance_metrics"]["total_tasks"], "pid": d.client.ping()["pid"]}


@pytest.fixture
def unchanged(hd):
    """Assert, after the test, that the daemon is alive, answers, and holds the same tasks."""
    before = snapshot(hd)
    yield
    assert hd.proc.poll() is None, f"pipelined died:\n{hd.log()[-3000:]}"
    with Client(hd.socket, timeout=5) as fresh:
        assert fresh.ping()["pong"]
    assert snapshot(hd) == before


def exchange(ctx, d: Daemon, frames: list[bytes], kind=zmq.DEALER, timeout_ms=5000):
    """Send raw frames from a fresh peer; return the reply frames, or None if none came."""
    s = ctx.socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    s.connect("ipc://" + d.socket)
    try:
        s.send_multipart(frames)
        if not s.poll(timeout_ms):
            return None
        return s.recv_multipart()
    finally:
        s.close(linger=0)


def error_of(frames) -> dict:
    assert frames is not None, "no reply"
    reply = decode(frames[-1])
    assert isinstance(reply, dict)
    assert reply["ok"] is False
    err = reply["error"]
    assert err["code"] in CODES
    assert isinstance(err["message"], str) and len(err["message"]) > 5
    assert isinstance(err.get("details", {}), dict)
    return reply


def request(ctx, d, payload, **kw) -> dict:
    frames = exchange(ctx, d, [b"", payload if isinstance(payload, bytes) else encode(payload)], **kw)
    assert frames is not None, "no reply"
    return decode(frames[-1])


# -- frames ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "payload",
    [b"\xc1", b"\xff\xfe\xfd garbage", b"\x92\x01", b"\x01\x02\x03", b"GET / HTTP/1.1\r\n\r\n", b"\xdd\xff\xff\xff\xff", b"\xa2\xff\xfe", b"\x00" * 10000],
    ids=["never_used", "garbage", "truncated", "extra_data", "http", "huge_array_claim", "bad_utf8", "zeros"],
)
def test_garbage_bytes(ctx, hd, unchanged, payload):
    reply = error_of(exchange(ctx, hd, [b"", payload]))
    assert reply["error"]["code"] == "invalid_request"


def test_empty_payload_frame(ctx, hd, unchanged):
    assert error_of(exchange(ctx, hd, [b"", b""]))["error"]["code"] == "invalid_request"


def test_only_an_empty_delimiter(ctx, hd, unchanged):
    assert error_of(exchange(ctx, hd, [b""]))["error"]["code"] == "invalid_request"


@pytest.mark.parametrize(
    "frames",
    [
        [b"", encode({"v": 1, "op": "ping"}), b"extra"],
        [b"", b"", encode({"v": 1, "op": "ping"})],
        [b"a", b"b", b"c"],
        [b"", b"x", b"y", b"z", b"w"],
    ],
    ids=["payload_plus_extra", "two_delimiters", "three_frames_no_delimiter", "many"],
)
def test_wrong_frame_counts(ctx, hd, unchanged, frames):
    reply = error_of(exchange(ctx, hd, frames))
    assert reply["error"]["code"] == "invalid_request"
    assert "frame" in reply["error"]["message"]


def test_payload_without_delimiter_is_served(ctx, hd, unchanged):
    frames = exchange(ctx, hd, [encode({"v": 1, "op": "ping", "rid": 5})])
    reply = decode(frames[-1])
    assert reply["ok"] and reply["pong"] and reply["rid"] == 5


def test_req_socket_is_served(ctx, hd, unchanged):
    frames = exchange(ctx, hd, [encode({"v": 1, "op": "ping", "rid": "r"})], kind=zmq.REQ)
    reply = decode(frames[-1])
    assert reply["ok"] and reply["rid"] == "r"


def test_router_peer_is_harmless(ctx, hd, unchanged):
    r = ctx.socket(zmq.ROUTER)
    r.setsockopt(zmq.LINGER, 0)
    r.setsockopt(zmq.ROUTING_ID, b"evil")
    r.connect("ipc://" + hd.socket)
    try:
        for target in (b"", b"pipelined", b"\x00\x6b\x8b\x45\x67"):
            r.send_multipart([target, b"", encode({"v": 1, "op": "shutdown"})])
        assert not r.poll(300)
    finally:
        r.close(linger=0)


# -- shapes and types -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "msg, code",
    [
        ([1, "op", "ping"], "invalid_request"),
        ("ping", "invalid_request"),
        (42, "invalid_request"),
        (None, "invalid_request"),
        ({"v": 1, "op": 7}, "unknown_op"),
        ({"v": 1, "op": b"ping"}, "unknown_op"),
        ({"v": 1, "op": None}, "unknown_op"),
        ({"v": 1}, "unknown_op"),
        ({"v": 1, "op": "frobnicate"}, "unknown_op"),
        ({"v": 1, "op": "x" * 10000}, "unknown_op"),
        ({"op": "ping"}, "unsupported_version"),
        ({"v": 2, "op": "ping"}, "unsupported_version"),
        ({"v": "1", "op": "ping"}, "unsupported_version"),
        ({"v": 1.0000001, "op": "ping"}, "unsupported_version"),
        ({"v": None, "op": "ping"}, "unsupported_version"),
        ({"v": 1, "op": "ping", "rid": [1]}, "invalid_request"),
        ({"v": 1, "op": "ping", "rid": {"a": 1}}, "invalid_request"),
        ({"v": 1, "op": "ping", "rid": 1.5}, "invalid_request"),
        ({"v": 1, "op": "ping", "rid": True}, "invalid_request"),
        ({"v": 1, "op": "ping", "rid": b"bytes"}, "invalid_request"),
        ({"v": 1, "op": "ping", "rid": Ref("x")}, "invalid_request"),
    ],
)
def test_wrong_shapes(ctx, hd, unchanged, msg, code):
    reply = request(ctx, hd, msg)
    assert reply["ok"] is False
    assert reply["error"]["code"] == code
    assert isinstance(reply["error"]["message"], str) and reply["error"]["message"]


def test_unknown_op_lists_the_ops(ctx, hd, unchanged):
    reply = request(ctx, hd, {"v": 1, "op": "frobnicate", "rid": 3})
    assert reply["rid"] == 3
    assert "ping" in reply["error"]["details"]["ops"]
    assert "frobnicate" in reply["error"]["message"]


def test_unsupported_version_says_what_is_supported(ctx, hd, unchanged):
    reply = request(ctx, hd, {"v": 99, "op": "ping", "rid": 4})
    assert reply["rid"] == 4
    assert reply["error"]["details"]["supported"] == [1]
    assert "99" in reply["error"]["message"]


@pytest.mark.parametrize("rid", [0, -1, 2**62, "", "x" * 200, "☃"])
def test_rid_is_echoed(ctx, hd, unchanged, rid):
    reply = request(ctx, hd, {"v": 1, "op": "ping", "rid": rid})
    assert reply["ok"] is True and reply["rid"] == rid


def test_non_string_map_keys(ctx, hd, unchanged):
    reply = request(ctx, hd, {1: 2, None: 3, "v": 1, "op": "ping"})
    assert reply["ok"] is True


SUBMIT_CASES = [
    {"task": ["tests.tasks:noop"]},
    {"task": "tests.tasks:noop"},
    {"tasks": {"function": "tests.tasks:noop"}},
    {"tasks": ["tests.tasks:noop"]},
    {"tasks": [{"function": "tests.tasks:noop"}, 5]},
    {"tasks": []},
    {"task": {"function": "tests.tasks:noop"}, "tasks": [{"function": "tests.tasks:noop"}]},
    {},
    {"task": {"function": "tests.tasks:noop", "task_id": 12}},
    {"task": {"function": "tests.tasks:noop", "task_id": Ref("x")}},
    {"task": {"function": ["tests.tasks:noop"]}},
    {"task": {"function": "tests.tasks:noop", "args": "abc"}},
    {"task": {"function": "tests.tasks:noop", "kwargs": [1, 2]}},
    {"task": {"function": "tests.tasks:noop", "kwargs": {b"k": 1}}},
    {"task": {"function": "tests.tasks:noop", "priority": [10]}},
    {"task": {"function": "tests.tasks:noop", "priority": float("inf")}},
    {"task": {"function": "tests.tasks:noop", "timeout": float("inf")}},
    {"task": {"function": "tests.tasks:noop", "timeout": 1e30}},
    {"task": {"function": "tests.tasks:noop", "max_retries": 10**12}},
    {"task": {"function": "tests.tasks:noop", "dependencies": [Ref("x")]}},
    {"task": {"function": "tests.tasks:noop", "dependencies": {"a": 1}}},
    {"task": {"function": "tests.tasks:noop", "memory_limit_mb": True}},
    {"task": {"command": "rm -rf /"}},
    {"task": {"command": [b"ls"]}},
    {"task": {"command": ["ls"], "env": {"A": None}}},
    {"task": {"command": ["ls"], "env": [["A", "B"]]}},
    {"task": {"function": "tests.tasks:noop", "unknown": 1}},
]


@pytest.mark.parametrize("fields", SUBMIT_CASES, ids=[f"case{i}" for i in range(len(SUBMIT_CASES))])
def test_submit_with_wrong_types(ctx, hd, unchanged, fields):
    reply = request(ctx, hd, {"v": 1, "op": "submit", "rid": 1, **fields})
    assert reply["ok"] is False
    assert reply["error"]["code"] == "invalid_request", reply["error"]


def test_bad_batch_accepts_nothing(ctx, hd, unchanged):
    tasks = [{"task_id": f"ok{i}-{time.monotonic_ns()}", "function": "tests.tasks:noop"} for i in range(100)]
    tasks.append({"function": "tests.tasks:noop", "timeout": "never"})
    reply = request(ctx, hd, {"v": 1, "op": "submit", "tasks": tasks})
    assert reply["error"]["code"] == "invalid_request"
    assert "timeout" in reply["error"]["message"]


@pytest.mark.parametrize(
    "msg",
    [
        {"op": "get"},
        {"op": "get", "task_id": 5},
        {"op": "get", "task_id": ["a"]},
        {"op": "result", "task_id": None},
        {"op": "wait", "task_ids": "abc"},
        {"op": "wait", "task_ids": []},
        {"op": "wait", "task_ids": [1, 2]},
        {"op": "wait", "task_ids": ["x"] * 100_001},
        {"op": "list", "state": 5},
        {"op": "list", "state": "sleeping"},
        {"op": "list", "limit": "10"},
        {"op": "list", "workflow": ["w"]},
        {"op": "cancel"},
        {"op": "cancel", "task_id": 3},
        {"op": "cancel", "workflow": 3},
        {"op": "workflow_status"},
        {"op": "workflow_status", "workflow": 1},
    ],
)
def test_other_ops_with_wrong_types(ctx, hd, unchanged, msg):
    reply = request(ctx, hd, {"v": 1, "rid": 9, **msg})
    assert reply["ok"] is False
    assert reply["rid"] == 9
    assert reply["error"]["code"] == "invalid_request", reply["error"]


def test_wait_and_result_with_bad_timeouts(ctx, hd, unchanged):
    for timeout in (-1, "5", [1], float("nan"), 10**12):
        for op in ("wait", "result"):
            reply = request(ctx, hd, {"v": 1, "op": op, "task_ids": ["seed"], "task_id": "seed", "timeout": timeout})
            assert reply["ok"] is False
            assert reply["error"]["code"] == "invalid_request"
            assert reply["error"]["details"]["field"] == "timeout"
    for rw in ("some", 1, "", ["any"]):
        reply = request(ctx, hd, {"v": 1, "op": "wait", "task_ids": ["seed"], "return_when": rw, "timeout": 0})
        assert reply["ok"] is False
        assert reply["error"]["code"] == "invalid_request"



@pytest.mark.parametrize("limit", [0, -1])
def test_list_limit_zero_or_negative(ctx, hd, unchanged, limit):
    reply = request(ctx, hd, {"v": 1, "op": "list", "limit": limit})
    assert (reply["ok"] is False and reply["error"]["code"] == "invalid_request") or reply["tasks"] == []


# -- depth and size ----------------------------------------------------------------------------
def test_deeply_nested_msgpack(ctx, hd, unchanged):
    reply = request(ctx, hd, b"\x91" * 200_000 + b"\xc0")
    assert reply["error"]["code"] == "invalid_request"
    reply = request(ctx, hd, b"\x81\xa1v" * 200_000 + b"\xc0")
    assert reply["error"]["code"] == "invalid_request"



def test_deep_args_are_a_client_error(ctx, make_daemon):
    d = make_daemon(workers=1)
    deep = []
    for _ in range(1000):
        deep = [deep]
    reply = request(ctx, d, {"v": 1, "op": "submit", "task": {"function": "tests.tasks:echo", "args": deep}})
    assert d.client.ping()["pong"]
    if reply["ok"]:  # accepted: then it must run to an end like any task
        d.client.wait([reply["task_id"]], timeout=10)
    else:
        assert reply["error"]["code"] in ("invalid_request", "too_large"), reply["error"]


@pytest.mark.timeout(60)
def test_frame_over_the_limit_is_dropped(ctx, hd, unchanged):
    big = encode({"v": 1, "op": "submit", "task": {"function": "tests.tasks:noop", "args": [b"x" * (65 * 1024 * 1024)]}})
    assert len(big) > 64 * 1024 * 1024
    frames = exchange(ctx, hd, [b"", big], timeout_ms=1000)
    if frames is not None:  # dropping is allowed; a reply must then be an error
        error_of(frames)


@pytest.mark.timeout(60)
def test_huge_raw_frame_of_garbage(ctx, hd, unchanged):
    frames = exchange(ctx, hd, [b"", b"\xc1" * (65 * 1024 * 1024)], timeout_ms=1000)
    if frames is not None:
        error_of(frames)


# -- volume -----------------------------------------------------------------------------------
def test_flood_of_garbage_is_answered(ctx, hd, unchanged):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect("ipc://" + hd.socket)
    try:
        n = 2000
        for i in range(n):
            s.send_multipart([b"", b"\xc1" if i % 2 else msgpack.packb([i])])
        got = 0
        deadline = time.monotonic() + 20
        while got < n and time.monotonic() < deadline:
            if s.poll(1000):
                error_of(s.recv_multipart())
                got += 1
        assert got == n
    finally:
        s.close(linger=0)


def test_peer_that_never_reads(ctx, hd, unchanged):
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.setsockopt(zmq.RCVHWM, 10)
    s.connect("ipc://" + hd.socket)
    try:
        for _ in range(5000):
            s.send_multipart([b"", encode({"v": 1, "op": "status"})])
        with Client(hd.socket, timeout=5) as other:
            assert other.ping()["pong"]
    finally:
        s.close(linger=0)


def test_peer_disconnects_while_its_wait_is_parked(ctx, make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    tid = c.submit("tests.tasks:wait_for_file", args=[str(tmp_path / "gate")])
    for timeout in (0.2, None):
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect("ipc://" + d.socket)
        s.send_multipart([b"", encode({"v": 1, "op": "wait", "task_ids": [tid], "timeout": timeout, "rid": 1})])
        s.send_multipart([b"", encode({"v": 1, "op": "result", "task_id": tid, "timeout": timeout, "rid": 2})])
        s.close(linger=0)
    assert c.wait([tid], timeout=0.5)["timed_out"] is True  # the 0.2 s waits expired into the void
    Path(tmp_path / "gate").touch()  # the parked waits without a timeout are answered into the void
    assert c.result(tid, timeout=10) is True
    assert c.ping()["pong"]
    assert d.proc.poll() is None


# -- raw AF_UNIX ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello\n",
        b"\xff" * 64,
        b"\xff\x00\x00\x00\x00\x00\x00\x00\x01\x7f" + b"\x03\x00" + b"NULL" + b"\x00" * 44 + b"\x04\xff" * 1000,
        b"\x00" * 100_000,
    ],
    ids=["nothing", "text", "ff", "greeting_then_garbage", "zeros"],
)
def test_raw_unix_socket_garbage(hd, unchanged, data):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(hd.socket)
    try:
        if data:
            try:
                s.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # ZeroMQ hung up on us: fine
    finally:
        s.close()


def test_raw_unix_socket_held_open(hd, unchanged):
    held = []
    try:
        for _ in range(50):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(hd.socket)
            held.append(s)
        with Client(hd.socket, timeout=5) as c:
            assert c.ping()["pong"]
    finally:
        for s in held:
            s.close()


# -- ops that would change state, each on its own daemon ----------------------------------------------
@pytest.mark.parametrize("msg", [{"op": "shutdown", "grace_s": "soon"}, {"op": "shutdown", "grace_s": [1]}])
def test_shutdown_with_bad_fields_does_not_stop(ctx, make_daemon, msg):
    d = make_daemon(workers=1)
    reply = request(ctx, d, {"v": 1, **msg})
    assert reply["ok"] is False and reply["error"]["code"] == "invalid_request"
    assert d.client.ping()["pong"]
    assert d.client.status()["draining"] is False
    assert d.proc.poll() is None
    wait_for(lambda: d.proc.poll() is None, 0.1)
