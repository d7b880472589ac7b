"""Property tests: hypothesis throws random and mutated requests at ONE live daemon.

Raw ZeroMQ DEALER, one frame per request, a reply deadline per request. Whatever
arrives, the daemon answers it (ok, or an error whose `code` is one of ErrorCode),
echoes a well-formed `rid`, and stays up; afterwards its counts are consistent
(the states add up to the total, and to what `list` shows) and its memory has not
grown past a bound.

The daemon is locked down (a few harmless functions, no commands), so a mutated
submit that gets accepted runs nothing dangerous; `drain` and `shutdown` are never
sent well-formed, since they would (rightly) stop it.
"""

from __future__ import annotations

import math

import msgpack
import psutil
import pytest
import zmq

from pipeline_client import Client
from pipeline_protocol import OPS, PROTOCOL_VERSION, ErrorCode, TaskState, decode, encode

from .conftest import Daemon, wait_for, wait_for_gone

hypothesis = pytest.importorskip("hypothesis", reason="pip install hypothesis (the `test` extra)")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CODES = {c.value for c in ErrorCode}
REPLY_TIMEOUT_MS = 5000
RSS_GROWTH_LIMIT_MB = 50
SAFE_FUNCTIONS = ["tests.tasks:noop", "tests.tasks:square", "tests.tasks:add", "tests.tasks:echo"]
CONFIG = f"allowed_functions = {SAFE_FUNCTIONS!r}\nallow_commands = false\n".replace("'", '"')
TASK_IDS = [f"p{i}" for i in range(8)]  # a small pool, so get/wait/cancel/dependencies hit real tasks
STOPPING_OPS = ("drain", "shutdown")
SAFE_OPS = [op for op in OPS if op not in STOPPING_OPS]
SETTINGS = {
    "max_examples": 300,
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
}


@pytest.fixture(scope="module")
def pd(tmp_path_factory):
    base = tmp_path_factory.mktemp("property")
    config = base / "pipelined.toml"
    config.write_text(CONFIG)
    d = Daemon(base / "d", workers=2, args=("--config", str(config), "--volatile"))
    d.base.mkdir(parents=True, exist_ok=True)
    d.start()
    with Client(d.socket) as c:  # warm up, so the RSS baseline includes a served task
        c.wait([c.submit("tests.tasks:square", args=[2], task_id="seed")], timeout=10)
    d.rss_start = psutil.Process(d.pid).memory_info().rss
    yield d
    d.stop()
    assert not wait_for_gone(d), "daemon left processes behind"


@pytest.fixture(scope="module")
def dealer(pd):
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect("ipc://" + pd.socket)
    yield sock
    sock.close()
    ctx.term()


def exchange(d: Daemon, sock: zmq.Socket, payload: bytes) -> dict:
    sock.send(payload)
    if not sock.poll(REPLY_TIMEOUT_MS):
        assert d.proc.poll() is None, f"pipelined died:\n{d.log()[-3000:]}"
        raise AssertionError(f"no reply within {REPLY_TIMEOUT_MS} ms to {payload[:200]!r}")
    frames = sock.recv_multipart()
    assert len(frames) == 1, frames
    reply = msgpack.unpackb(frames[0], raw=False, strict_map_key=False)
    assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
    assert reply.get("v") == PROTOCOL_VERSION
    if not reply["ok"]:
        err = reply["error"]
        assert err["code"] in CODES, err
        assert isinstance(err["message"], str) and err["message"], err
        assert err["code"] != ErrorCode.INTERNAL.value, f"an internal error is a bug: {err} for {payload[:300]!r}"
    hypothesis.event("reply: ok" if reply["ok"] else f"reply: {reply['error']['code']}")  # --hypothesis-show-statistics
    return reply


def check_rid(request, reply: dict) -> None:
    """A map request with a well-formed rid gets it back, whatever else is wrong
    (once it decodes at all: a bad Ref anywhere makes the whole frame undecodable)."""
    try:
        decode(encode(request))
    except (TypeError, ValueError):
        return
    if isinstance(request, dict):
        rid = request.get("rid")
        if isinstance(rid, (int, str)) and not isinstance(rid, bool):
            assert reply.get("rid") == rid, (request, reply)


# -- strategies ------------------------------------------------------------------------------
ints = st.integers(min_value=-(2**63), max_value=2**64 - 1)
scalars = st.one_of(st.none(), st.booleans(), ints, st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=30), st.binary(max_size=30), st.sampled_from(TASK_IDS))
# Ext 1 is Ref; -1 is msgpack's timestamp, which the unpacker turns into an object of its own.
exts = st.one_of(st.builds(msgpack.ExtType, st.integers(min_value=0, max_value=127) | st.just(1), st.binary(max_size=16)),
                 st.builds(msgpack.Timestamp, st.integers(min_value=0, max_value=2**34), st.integers(min_value=0, max_value=999_999_999)))
values = st.recursive(st.one_of(scalars, exts),
                      lambda inner: st.one_of(st.lists(inner, max_size=5),
                                              st.dictionaries(st.one_of(st.text(max_size=10), ints, st.sampled_from(["task_id", "function", "args"])), inner, max_size=5)),
                      max_leaves=25)

FIELD_NAMES = ["task", "tasks", "task_id", "task_ids", "timeout", "return_when", "state", "workflow", "limit",
               "if_not_running", "grace_s", "rid", "v", "op"]
TASK_FIELDS = ["task_id", "task_type", "function", "command", "cwd", "env", "args", "kwargs", "priority",
               "dependencies", "timeout", "max_retries", "retry_backoff", "memory_limit_mb", "workflow"]

# A wait/result may be parked until its timeout: keep valid timeouts short (or absurd, or invalid).
wait_timeouts = st.one_of(st.floats(min_value=0, max_value=0.3), st.floats(min_value=400 * 86400, allow_infinity=True),
                          st.just(math.nan), st.integers(max_value=-1), st.text(max_size=3), st.lists(st.integers(), max_size=2), st.booleans())

valid_task = st.fixed_dictionaries(
    {"function": st.sampled_from(SAFE_FUNCTIONS), "args": st.lists(st.integers(-1000, 1000), max_size=2)},
    optional={"task_id": st.sampled_from(TASK_IDS) | st.text(min_size=1, max_size=12),
              "priority": st.sampled_from(["high", "medium", "low"]) | st.integers(-20, 20),
              "timeout": st.floats(min_value=0.5, max_value=10), "max_retries": st.integers(0, 1),
              "retry_backoff": st.floats(min_value=0.01, max_value=0.1), "task_type": st.sampled_from(["a", "b"]),
              "workflow": st.sampled_from(["w1", "w2"]), "dependencies": st.lists(st.sampled_from(TASK_IDS), max_size=2)},
)


@st.composite
def mutated_task(draw):
    task = dict(draw(valid_task))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["drop", "replace", "add", "retype"]))
        if kind == "drop" and task:
            task.pop(draw(st.sampled_from(sorted(task))))
        elif kind == "replace" and task:
            task[draw(st.sampled_from(sorted(task)))] = draw(values)
        elif kind == "add":
            task[draw(st.sampled_from(TASK_FIELDS) | st.text(max_size=8))] = draw(values)
        elif kind == "retype" and task:
            key = draw(st.sampled_from(sorted(task)))
            task[key] = draw(st.sampled_from([str(task[key]), [task[key]], {"x": task[key]}, None, True, -1, 10**18, 1e308]))
    # Wall-clock bounds for anything that does run: no long sleeps, no long retry chains.
    if isinstance(task.get("max_retries"), int) and not isinstance(task.get("max_retries"), bool):
        task["max_retries"] = min(task["max_retries"], 1)
    for key in ("retry_backoff", "timeout"):
        if isinstance(task.get(key), (int, float)) and not isinstance(task.get(key), bool) and task[key] > 10:
            task[key] = 10
    return task


@st.composite
def mutated_submit(draw):
    single = draw(st.booleans())
    req: dict = {"v": PROTOCOL_VERSION, "op": "submit", "rid": draw(ints | st.text(max_size=8))}
    if single:
        req["task"] = draw(mutated_task())
    else:
        req["tasks"] = draw(st.lists(mutated_task(), min_size=0, max_size=4))
    if draw(st.integers(0, 9)) == 0:  # now and then, break the envelope too
        req[draw(st.sampled_from(["v", "op", "rid", "tasks", "task"]))] = draw(values)
        if req.get("op") in STOPPING_OPS:
            req["op"] = "submit"
    return req


@st.composite
def op_map(draw):
    """A map with a real op name and random fields (well-formed envelope most of the time)."""
    op = draw(st.sampled_from(SAFE_OPS))
    req: dict = {"op": op}
    if draw(st.integers(0, 4)):
        req["v"] = PROTOCOL_VERSION
    else:
        req["v"] = draw(values)
    if draw(st.booleans()):
        req["rid"] = draw(values)
    for name in draw(st.lists(st.sampled_from(FIELD_NAMES[:-3]), max_size=4, unique=True)):
        req[name] = draw(values)
    if op in ("wait", "result"):
        req["timeout"] = draw(wait_timeouts)
        if draw(st.booleans()):
            req["task_ids" if op == "wait" else "task_id"] = draw(st.lists(st.sampled_from(TASK_IDS), min_size=1, max_size=3)) if op == "wait" else draw(st.sampled_from(TASK_IDS))
    if op in ("get", "cancel") and draw(st.booleans()):
        req["task_id"] = draw(st.sampled_from(TASK_IDS))
    if op == "list" and isinstance(req.get("limit"), int) and not isinstance(req.get("limit"), bool):
        req["limit"] = max(-5, min(req["limit"], 2000))
    return req


def _encodable(value) -> bytes | None:
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (TypeError, ValueError, OverflowError):
        return None


def _stopping(value) -> bool:
    """A random value that happens to be a well-formed drain/shutdown: not sent."""
    return isinstance(value, dict) and value.get("op") in STOPPING_OPS


# -- the properties -----------------------------------------------------------------------------
@settings(**SETTINGS)
@given(value=values)
def test_random_msgpack_values_get_an_answer(pd, dealer, value):
    payload = _encodable(value)
    hypothesis.assume(payload is not None and not _stopping(value))
    reply = exchange(pd, dealer, payload)
    check_rid(value, reply)


@settings(**SETTINGS)
@given(data=st.binary(min_size=0, max_size=200))
def test_random_bytes_get_an_answer(pd, dealer, data):
    hypothesis.assume(data)  # an empty frame is a valid (empty) payload too, but see test_hostile
    try:
        decoded = decode(data)
    except ValueError:
        decoded = None
    hypothesis.assume(not _stopping(decoded))
    exchange(pd, dealer, data)


@settings(**SETTINGS)
@given(req=op_map())
def test_random_maps_with_real_op_names(pd, dealer, req):
    payload = _encodable(req)
    hypothesis.assume(payload is not None)
    reply = exchange(pd, dealer, payload)
    check_rid(req, reply)
    if req.get("v") != PROTOCOL_VERSION:
        assert reply["error"]["code"] in ("unsupported_version", "invalid_request"), reply


@settings(**SETTINGS)
@given(req=mutated_submit())
def test_mutated_submits(pd, dealer, req):
    payload = _encodable(req)
    hypothesis.assume(payload is not None)
    reply = exchange(pd, dealer, payload)
    check_rid(req, reply)
    if not reply["ok"] and req.get("v") == PROTOCOL_VERSION and req.get("op") == "submit":
        assert reply["error"]["code"] in {"invalid_request", "duplicate_task", "unknown_dependency", "dependency_cycle",
                                          "not_permitted", "too_large"}, reply


@settings(**SETTINGS)
@given(req=mutated_submit(), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
def test_byte_flipped_submits(pd, dealer, req, flips):
    payload = _encodable(req)
    hypothesis.assume(payload is not None)
    data = bytearray(payload)
    for pos, byte in flips:
        data[pos % len(data)] = byte
    exchange(pd, dealer, bytes(data))


# -- afterwards: alive, consistent, bounded ------------------------------------------------------
def test_zz_daemon_is_alive_consistent_and_bounded(pd):
    assert pd.proc.poll() is None, f"pipelined died:\n{pd.log()[-3000:]}"
    with Client(pd.socket, timeout=10) as c:
        # Let what was accepted finish (every runnable task is quick and retries at most once).
        def settled():
            st_ = c.status()
            return st_ if st_["running_tasks"] == 0 and st_["queued_tasks"] == 0 else None

        status = wait_for(settled, 60, 0.1, "accepted tasks to finish")
        counts = {s.value: 0 for s in TaskState}
        listed = c.list(limit=1_000_000)
        for rec in listed:
            counts[rec["status"]] += 1
        total = status["performance_metrics"]["total_tasks"]
        assert len(listed) == total
        assert sum(counts.values()) == total
        assert status["pending_tasks"] == counts["pending"] + counts["queued"]
        assert status["running_tasks"] == counts["running"]
        assert status["completed_tasks"] == counts["completed"]
        assert status["failed_tasks"] == counts["failed"]
        assert status["cancelled_tasks"] == counts["cancelled"]
        for rec in listed:
            if rec["status"] == "failed":
                assert rec["reason"] in ("error", "timeout", "worker_lost", "memory_limit", "upstream_failed"), rec
        # Still fully working: the pool is whole and a normal task runs.
        assert len([w for w in c.workers() if w["state"] == "idle"]) == 2
        assert c.result(c.submit("tests.tasks:square", args=[12]), timeout=10) == 144
        assert status["draining"] is False
    grown_mb = (psutil.Process(pd.pid).memory_info().rss - pd.rss_start) / 2**20
    assert grown_mb < RSS_GROWTH_LIMIT_MB, f"supervisor RSS grew by {grown_mb:.1f} MB"
    assert "internal error" not in pd.log(), pd.log()[-3000:]
