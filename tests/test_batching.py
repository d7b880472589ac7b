"""Batched worker traffic: a worker running short tasks gets several in one run
message and reports their ends in batches (worker_messages). These tests pin what
batching must never change: every task runs once with its own result, a short
task's result is not held back by a long task behind it, deadlines count from
each task's real start, and `Client.call` (submit and wait in one exchange).
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest

from pipeline_client import RequestError, TaskFailed

from .conftest import wait_for


def _learn_short(c, function: str, args: list, n: int = 20) -> None:
    """Run `function` a few times so the daemon knows it is short (and batches behind it)."""
    c.wait(c.submit_many([{"function": function, "args": args} for _ in range(n)]), timeout=20)


@pytest.mark.timeout(60)
def test_thousands_of_short_tasks_each_run_once_with_their_own_result(make_daemon):
    d = make_daemon(workers=2)
    c = d.client
    _learn_short(c, "tests.tasks:square", [1])
    ids = []
    for start in range(0, 3000, 500):
        ids += c.submit_many([{"function": "tests.tasks:square", "args": [i], "max_retries": 0} for i in range(start, start + 500)])
    out = c.wait(ids, timeout=40)
    assert not out["pending"] and not out["timed_out"]
    by_id = {rec["task_id"]: rec for rec in out["tasks"]}
    assert [by_id[tid]["result"] for tid in ids] == [i * i for i in range(3000)]
    assert all(by_id[tid]["retry_count"] == 0 and by_id[tid]["status"] == "completed" for tid in ids)
    pids = {by_id[tid]["worker_pid"] for tid in ids}
    assert len(pids) == 2, "both workers took a share"
    s = c.status()
    assert s["completed_tasks"] >= 3000 and s["running_tasks"] == 0 and s["pending_tasks"] == 0


@pytest.mark.timeout(60)
def test_a_short_result_is_not_held_back_by_a_long_task_behind_it(make_daemon):
    """The worker holds the end of a short task while it starts the next one; when
    that one runs long, the supervisor asks for what it holds (flush + SIGUSR1)."""
    d = make_daemon(workers=1)
    c = d.client
    _learn_short(c, "tests.tasks:sleep", [0])
    short, long = c.submit_many([
        {"task_id": "short", "function": "tests.tasks:sleep", "args": [0], "max_retries": 0},
        {"task_id": "long", "function": "tests.tasks:sleep", "args": [5], "max_retries": 0},
    ])
    t0 = time.monotonic()
    rec = c.wait([short], timeout=10)["tasks"][0]
    waited = time.monotonic() - t0
    assert rec["status"] == "completed"
    assert waited < 2.0, f"the short task's end was held {waited:.2f}s behind the long one"
    # By then the daemon also knows the long one started, and when.
    wait_for(lambda: c.get(long)["status"] == "running", 2, what="the long task to show as running")
    started = c.get(long)["start_time"]
    assert started is not None and started >= rec["end_time"] - 0.01
    c.cancel(long)


@pytest.mark.timeout(60)
def test_deadline_of_a_batched_task_counts_from_its_real_start(make_daemon):
    d = make_daemon(workers=1)
    c = d.client
    _learn_short(c, "tests.tasks:sleep", [0])
    first, hung = c.submit_many([
        {"task_id": "first", "function": "tests.tasks:sleep", "args": [0.3], "max_retries": 0},
        {"task_id": "hung", "function": "tests.tasks:sleep", "args": [60], "timeout": 1.2, "max_retries": 0},
    ])
    out = c.wait([first, hung], timeout=20)
    recs = {r["task_id"]: r for r in out["tasks"]}
    assert recs["first"]["status"] == "completed", "the task ahead ended well: it must not take the blame"
    assert (recs["hung"]["status"], recs["hung"]["reason"]) == ("failed", "timeout")
    ran = recs["hung"]["end_time"] - recs["hung"]["start_time"]
    assert 1.2 <= ran < 1.6, f"killed {ran:.3f}s after its start; its timeout is 1.2s"
    assert recs["hung"]["start_time"] >= recs["first"]["end_time"] - 0.01


@pytest.mark.timeout(60)
def test_call_submits_and_returns_the_result_in_one_request(make_daemon):
    d = make_daemon(workers=1)
    c = d.client
    assert c.call("tests.tasks:square", [7]) == 49
    assert c.call("tests.tasks:add", kwargs={"a": 2, "b": 3}, priority="high") == 5
    with pytest.raises(TaskFailed) as failed:
        c.call("tests.tasks:fail", ["nope"], max_retries=0)
    assert failed.value.reason == "error" and "nope" in failed.value.error["message"]
    with pytest.raises(TimeoutError):
        c.call("tests.tasks:sleep", [30], wait_timeout=0.3, task_id="slow")
    assert c.get("slow")["status"] == "running"  # it goes on running; the caller stopped waiting
    c.cancel("slow")
    with pytest.raises(RequestError) as bad:
        c.call("not a function path")
    assert bad.value.code == "invalid_request"
    with pytest.raises(RequestError) as dup:
        c.call("tests.tasks:noop", task_id="slow")
    assert dup.value.code == "duplicate_task"


@pytest.mark.timeout(30)
def test_submit_wait_is_validated(make_daemon):
    d = make_daemon(workers=1)
    c = d.client
    with pytest.raises(RequestError) as batch:
        c.request("submit", tasks=[{"function": "tests.tasks:noop"}], wait=True)
    assert batch.value.code == "invalid_request" and "batch" in str(batch.value)
    with pytest.raises(RequestError) as kind:
        c.request("submit", task={"function": "tests.tasks:noop"}, wait="yes")
    assert kind.value.code == "invalid_request"
    with pytest.raises(RequestError) as negative:
        c.request("submit", task={"function": "tests.tasks:noop"}, wait=True, wait_timeout=-1)
    assert negative.value.code == "invalid_request"
    assert c.status()["pending_tasks"] == 0 and len(c.list()) == 0, "a rejected submit changes nothing"


@pytest.mark.timeout(30)
def test_async_call(make_daemon):
    import asyncio

    from pipeline_client import AsyncClient

    d = make_daemon(workers=2)

    async def main():
        async with AsyncClient(d.socket) as ac:
            results = await asyncio.gather(*(ac.call("tests.tasks:square", [i]) for i in range(20)))
            with pytest.raises(TaskFailed):
                await ac.call("tests.tasks:fail", max_retries=0)
            with pytest.raises(TimeoutError):
                await ac.call("tests.tasks:sleep", [10], wait_timeout=0.2)
            return results

    assert asyncio.run(main()) == [i * i for i in range(20)]


@pytest.mark.timeout(90)
def test_cancelling_batched_tasks_makes_no_other_task_run_twice(make_daemon, tmp_path):
    """Cancels land while their runs are in flight: the worker may already have run
    a cancelled task, and the ends after it in the same message are real results
    (they once were dropped, and those tasks ran a second time)."""
    d = make_daemon(workers=2)
    c = d.client
    log = str(tmp_path / "runs.log")
    _learn_short(c, "tests.tasks:durable_step", [os.devnull, "warm", 0])
    ids = [f"t{i}" for i in range(3000)]
    c.submit_many([{"function": "tests.tasks:durable_step", "args": [log, tid, 1], "task_id": tid, "max_retries": 0} for tid in ids])
    for tid in ids[50::7]:
        c.cancel(tid)
    out = c.wait(ids, timeout=60)
    assert not out["pending"]
    with open(log) as f:
        runs = Counter(line.strip() for line in f)
    assert [tid for tid, n in runs.items() if n > 1] == [], [l for l in d.log().splitlines() if "kill" in l or "WARN" in l or "ERROR" in l][:20]
    for rec in out["tasks"]:
        if rec["status"] != "cancelled":
            assert (rec["status"], rec["reason"], rec["retry_count"]) == ("completed", None, 0), rec
    assert all(runs[rec["task_id"]] == 1 for rec in out["tasks"] if rec["status"] == "completed")


@pytest.mark.timeout(60)
def test_a_task_hung_in_c_code_takes_no_other_result_with_it(make_daemon, tmp_path):
    """Short tasks run just before one that hangs inside a GIL-holding C call and is
    killed at its deadline: their results were sent before it started, so each ran
    once and completed, and the timeout is charged to the hung task alone."""
    d = make_daemon(workers=1)
    c = d.client
    log = str(tmp_path / "runs.log")
    _learn_short(c, "tests.tasks:durable_step", [os.devnull, "warm", 0])
    ids = [f"t{i}" for i in range(300)]
    specs = [{"function": "tests.tasks:durable_step", "args": [log, tid, 1], "task_id": tid, "max_retries": 0, "timeout": 1.5} for tid in ids]
    specs[200] = {"function": "tests.tasks:gil_bound", "args": [log, "t200"], "task_id": "t200", "max_retries": 0, "timeout": 1.5}
    c.submit_many(specs)
    out = c.wait(ids, timeout=40)
    assert not out["pending"]
    by_id = {rec["task_id"]: rec for rec in out["tasks"]}
    assert (by_id["t200"]["status"], by_id["t200"]["reason"]) == ("failed", "timeout")
    wrong = {tid: (rec["status"], rec["reason"]) for tid, rec in by_id.items() if tid != "t200" and rec["status"] != "completed"}
    assert wrong == {}
    with open(log) as f:
        runs = Counter(line.strip() for line in f)
    assert {tid: n for tid, n in runs.items() if n != 1} == {}
    assert set(runs) == set(ids)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("function", ["tests.tasks:tuple_keyed", "tests.tasks:tuple_wrapping_tuple_key"])
def test_a_result_that_would_not_decode_fails_only_its_own_task(make_daemon, function):
    """A dict keyed by a tuple encodes, but comes back with an unhashable list as a key:
    the worker checks that a result decodes, so the task fails with a clear error and
    the worker (and the tasks batched with it) carry on."""
    d = make_daemon(workers=1)
    c = d.client
    _learn_short(c, "tests.tasks:square", [1])
    specs = [{"function": "tests.tasks:square", "args": [i], "max_retries": 0} for i in range(200)]
    specs[100] = {"function": function, "args": [7], "max_retries": 0}
    pid = c.workers()[0]["pid"]
    ids = c.submit_many(specs)
    out = c.wait(ids, timeout=30)
    by_id = {rec["task_id"]: rec for rec in out["tasks"]}
    bad = by_id[ids[100]]
    assert (bad["status"], bad["reason"], bad["error"]["type"]) == ("failed", "error", "UnencodableResult")
    assert "dict keys must be" in bad["error"]["message"]
    assert [by_id[t]["result"] for t in ids[:100] + ids[101:]] == [i * i for i in range(200) if i != 100]
    assert [w["pid"] for w in c.workers()] == [pid]  # never killed
