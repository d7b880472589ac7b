"""Batched worker traffic: a worker running short tasks gets several in one run
message and reports their ends in batches (worker_messages). These tests pin what
batching must never change: every task runs once with its own result, a short
task's result is not held back by a long task behind it, deadlines count from
each task's real start, and `Client.call` (submit and wait in one exchange).
"""

from __future__ import annotations

import time

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
