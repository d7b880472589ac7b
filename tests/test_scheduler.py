"""Unit tests of the scheduler: a pure data structure stepped with a hand-held clock.

No processes, no sockets, no sleeps: every call gets `now` (monotonic) and `wall`
from the test, so backoffs and deadlines are exercised by moving the clock.
"""

from __future__ import annotations

import sys

import pytest

from pipeline_protocol import ErrorCode, FailureReason, ProtocolError, Ref, TaskState
from pipelined.scheduler import BACKOFF_CAP_S, Scheduler
from pipelined.store import TaskStore

WALL0 = 1_700_000_000.0


def spec(task_id, **fields):
    return {"task_id": task_id, "function": "tests.tasks:noop", **fields}


class Sim:
    """A scheduler plus a clock that only moves when the test says so."""

    def __init__(self, **options):
        self.store = TaskStore()
        options.setdefault("default_backoff_s", 1.0)
        self.s = Scheduler(self.store, **options)
        self.now = 1000.0
        self.pid = 100

    @property
    def wall(self):
        return WALL0 + self.now

    def submit(self, *specs):
        return self.s.submit(list(specs), self.now, self.wall)

    def state(self, tid):
        return self.store.get(tid).state

    def task(self, tid):
        return self.store.get(tid)

    def pop(self):
        """The next task the scheduler would dispatch (started on a fresh pid), or None."""
        task = self.s.next_ready()
        if task is None:
            return None
        self.pid += 1
        self.s.start(task, self.pid, self.now, self.wall)
        return task.task_id

    def pop_all(self):
        order = []
        while (tid := self.pop()) is not None:
            order.append(tid)
        return order

    def complete(self, tid, result=None):
        t = self.task(tid)
        return self.s.finish(tid, t.attempt, result, None, 0.01, self.now, self.wall)

    def fail(self, tid, message="boom"):
        t = self.task(tid)
        err = {"type": "ValueError", "message": message, "traceback": None}
        return self.s.finish(tid, t.attempt, None, err, 0.01, self.now, self.wall)

    def check_counts(self):
        by_state = {s: 0 for s in TaskState}
        for t in self.store.values():
            by_state[t.state] += 1
        assert by_state == self.s.counts


# -- priority -------------------------------------------------------------------
def test_strict_priority_names_and_integers():
    sim = Sim()
    sim.submit(
        spec("low", priority="low"),
        spec("med", priority="medium"),
        spec("dflt"),
        spec("high", priority="high"),
        spec("p5", priority=5),
        spec("p20", priority=20),
        spec("m3", priority=-3),
        spec("m20", priority=-20),
    )
    assert sim.pop_all() == ["p20", "high", "p5", "med", "dflt", "m3", "low", "m20"]
    sim.check_counts()


def test_fifo_within_a_priority_across_submits():
    sim = Sim()
    ids = [f"t{i:03d}" for i in range(60)]
    for i in range(0, 60, 3):  # three submits, interleaving priorities
        sim.submit(spec(ids[i], priority="low"), spec(ids[i + 1], priority="high"), spec(ids[i + 2]))
    order = sim.pop_all()
    high = [t for i, t in enumerate(ids) if i % 3 == 1]
    med = [t for i, t in enumerate(ids) if i % 3 == 2]
    low = [t for i, t in enumerate(ids) if i % 3 == 0]
    assert order == high + med + low


def test_priority_case_insensitive_and_priority_recorded_as_int():
    sim = Sim()
    sim.submit(spec("a", priority="HIGH"), spec("b", priority="Low"))
    assert sim.task("a").priority == 10
    assert sim.task("b").priority == -10
    assert sim.pop_all() == ["a", "b"]


def test_task_released_by_dependency_still_obeys_priority():
    sim = Sim()
    sim.submit(spec("root"))
    assert sim.pop() == "root"
    sim.submit(spec("late_high", priority="high", dependencies=["root"]), spec("early_med"), spec("early_low", priority="low"))
    sim.complete("root")
    assert sim.pop_all() == ["late_high", "early_med", "early_low"]


# -- dependencies ------------------------------------------------------------------
def test_order_only_dependency_waits_for_completion():
    sim = Sim()
    sim.submit(spec("a"), spec("b", dependencies=["a"]))
    assert sim.state("b") is TaskState.PENDING
    assert sim.pop_all() == ["a"]
    assert sim.state("b") is TaskState.PENDING
    sim.complete("a")
    assert sim.state("b") is TaskState.QUEUED
    assert sim.pop_all() == ["b"]


def test_ref_argument_implies_dependency_and_results_of():
    sim = Sim()
    sim.submit(spec("a"), spec("b", args=[Ref("a"), {"nested": [Ref("a")]}], kwargs={"k": Ref("c")}), spec("c"))
    b = sim.task("b")
    assert b.dependencies == ["a", "c"]  # duplicates dropped, order kept
    assert b.has_refs
    assert sim.pop_all() == ["a", "c"]
    sim.complete("a", result=16)
    assert sim.state("b") is TaskState.PENDING
    sim.complete("c", result="x")
    assert sim.state("b") is TaskState.QUEUED
    assert sim.s.results_of(b) == {"a": 16, "c": "x"}


def test_waits_for_every_dependency():
    sim = Sim()
    sim.submit(spec("a"), spec("b"), spec("c", dependencies=["a", "b"]))
    sim.pop_all()
    sim.complete("b")
    assert sim.state("c") is TaskState.PENDING
    sim.complete("a")
    assert sim.state("c") is TaskState.QUEUED


def test_dependency_on_task_already_completed_queues_at_once():
    sim = Sim()
    sim.submit(spec("a"))
    sim.pop()
    sim.complete("a")
    sim.submit(spec("b", dependencies=["a"]))
    assert sim.state("b") is TaskState.QUEUED


def test_dependency_on_task_already_failed_fails_at_once():
    sim = Sim()
    sim.submit(spec("a", max_retries=0))
    sim.pop()
    sim.fail("a")
    sim.submit(spec("b", dependencies=["a"]))
    b = sim.task("b")
    assert b.state is TaskState.FAILED
    assert b.reason == "upstream_failed"
    assert "a" in b.error["message"]


def test_dependencies_disabled_rejects_dependent_tasks():
    sim = Sim(enable_dependencies=False)
    sim.submit(spec("a"))
    with pytest.raises(ProtocolError) as ei:
        sim.submit(spec("b", dependencies=["a"]))
    assert ei.value.code is ErrorCode.NOT_PERMITTED
    assert "b" not in sim.store


# -- failure propagation -----------------------------------------------------------
def test_failure_propagates_recursively_and_immediately_siblings_keep_running():
    sim = Sim()
    sim.submit(
        spec("root", max_retries=0),
        spec("child", dependencies=["root"]),
        spec("grandchild", dependencies=["child"]),
        spec("other_child", args=[Ref("root")]),
        spec("mixed", dependencies=["sibling", "grandchild"]),
        spec("sibling"),
        spec("sibling_dep", dependencies=["sibling"]),
    )
    assert sim.pop() == "root"
    sim.fail("root")
    for tid in ("child", "grandchild", "other_child", "mixed"):
        t = sim.task(tid)
        assert t.state is TaskState.FAILED, tid
        assert t.reason == FailureReason.UPSTREAM_FAILED.value, tid
        assert t.error["type"] == "UpstreamFailed"
        assert t.end_time is not None
    assert "root" in sim.task("child").error["message"]
    assert "child" in sim.task("grandchild").error["message"]
    # the independent branch is untouched and still runs to the end
    assert sim.state("sibling") is TaskState.QUEUED
    assert sim.pop_all() == ["sibling"]
    sim.complete("sibling")
    assert sim.pop_all() == ["sibling_dep"]
    ended = {t.task_id for t in sim.s.take_ended()}
    assert {"root", "child", "grandchild", "other_child", "mixed", "sibling"} <= ended
    sim.check_counts()


@pytest.mark.parametrize("how", ["timeout", "worker_lost", "memory_limit", "cancel_queued", "cancel_running"])
def test_every_non_completed_end_fails_dependents(how):
    sim = Sim()
    sim.submit(spec("a", max_retries=0), spec("b", dependencies=["a"]), spec("c", dependencies=["b"]))
    if how == "cancel_queued":
        assert sim.s.cancel(sim.task("a"), sim.now, sim.wall)
    else:
        sim.pop()
        if how == "cancel_running":
            sim.s.cancel_running(sim.task("a"), sim.now, sim.wall)
        else:
            sim.s.lose("a", FailureReason(how), {"type": how, "message": how}, sim.now, sim.wall)
    assert sim.state("a") in (TaskState.FAILED, TaskState.CANCELLED)
    for tid in ("b", "c"):
        assert sim.state(tid) is TaskState.FAILED
        assert sim.task(tid).reason == "upstream_failed"
    assert sim.s.has_ready() is False or sim.pop() is None
    sim.check_counts()


def test_long_chain_failing_at_the_root_does_not_recurse():
    n = 100_000
    sim = Sim()
    specs = [spec("c0", max_retries=0)] + [spec(f"c{i}", dependencies=[f"c{i - 1}"]) for i in range(1, n)]
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(200, min(limit, 1000)))  # what a stock interpreter allows
    try:
        sim.submit(*specs)
        assert sim.pop() == "c0"
        sim.fail("c0")
    finally:
        sys.setrecursionlimit(limit)
    assert sim.s.counts[TaskState.FAILED] == n
    last = sim.task(f"c{n - 1}")
    assert last.state is TaskState.FAILED and last.reason == "upstream_failed"


def test_long_chain_completes_link_by_link():
    n = 2000
    sim = Sim()
    sim.submit(*([spec("c0")] + [spec(f"c{i}", dependencies=[f"c{i - 1}"]) for i in range(1, n)]))
    for i in range(n):
        assert sim.pop() == f"c{i}"
        assert sim.pop() is None
        sim.complete(f"c{i}")
    assert sim.s.counts[TaskState.COMPLETED] == n


# -- retries and backoff -------------------------------------------------------------
def test_retries_with_exponential_backoff():
    sim = Sim()
    sim.submit(spec("t", max_retries=3, retry_backoff=2.0))
    expected_backoffs = [2.0, 4.0, 8.0]
    for retry, backoff in enumerate(expected_backoffs, start=1):
        assert sim.pop() == "t"
        sim.fail("t", f"attempt {retry}")
        t = sim.task("t")
        assert t.state is TaskState.PENDING
        assert t.retry_count == retry
        assert t.reason == "error"
        assert sim.s.next_wakeup() == pytest.approx(sim.now + backoff)
        sim.now += backoff - 0.001
        assert sim.s.promote_due(sim.now) == 0
        assert sim.pop() is None
        sim.now += 0.001
        assert sim.s.promote_due(sim.now) == 1
        assert sim.state("t") is TaskState.QUEUED
    assert sim.pop() == "t"
    assert sim.task("t").attempt == 4
    sim.fail("t", "last")
    t = sim.task("t")
    assert t.state is TaskState.FAILED
    assert t.retry_count == 3
    assert t.reason == "error"
    assert t.error["message"] == "last"
    assert sim.s.next_wakeup() is None


def test_backoff_is_capped():
    sim = Sim()
    sim.submit(spec("t", max_retries=6, retry_backoff=100.0))
    seen = []
    for _ in range(6):
        sim.pop()
        sim.fail("t")
        due = sim.s.next_wakeup()
        seen.append(round(due - sim.now, 6))
        sim.now = due
        sim.s.promote_due(sim.now)
    assert seen == [100.0, 200.0, BACKOFF_CAP_S, BACKOFF_CAP_S, BACKOFF_CAP_S, BACKOFF_CAP_S]
    assert BACKOFF_CAP_S == 300.0


def test_retry_then_success_keeps_retry_count():
    sim = Sim()
    sim.submit(spec("t", max_retries=2, retry_backoff=0.5), spec("after", dependencies=["t"]))
    sim.pop()
    sim.s.lose("t", FailureReason.WORKER_LOST, {"type": "WorkerLost", "message": "killed by SIGSEGV"}, sim.now, sim.wall)
    assert sim.state("t") is TaskState.PENDING
    assert sim.state("after") is TaskState.PENDING  # a retry is not an end
    sim.now += 0.5
    sim.s.promote_due(sim.now)
    sim.pop()
    sim.complete("t", result=7)
    t = sim.task("t")
    assert (t.state, t.retry_count, t.result, t.reason, t.error) == (TaskState.COMPLETED, 1, 7, None, None)
    assert sim.state("after") is TaskState.QUEUED


def test_default_retries_and_timeout_filled_from_scheduler_defaults():
    sim = Sim(default_timeout_s=42.0, default_max_retries=1, default_backoff_s=0.25)
    sim.submit(spec("t"))
    t = sim.task("t")
    assert (t.timeout_s, t.max_retries, t.retry_backoff_s) == (42.0, 1, 0.25)


def test_zero_retries_fails_on_first_error():
    sim = Sim(default_max_retries=3)
    sim.submit(spec("t", max_retries=0))
    sim.pop()
    sim.fail("t")
    assert sim.state("t") is TaskState.FAILED
    assert sim.task("t").retry_count == 0


# -- stale reports ---------------------------------------------------------------
def test_stale_finish_reports_are_ignored():
    sim = Sim()
    sim.submit(spec("t", max_retries=1, retry_backoff=0.0, timeout=5.0))
    sim.pop()
    first = sim.task("t").attempt
    sim.now += 5.0
    assert len(sim.s.expired(sim.now)) == 1
    sim.s.lose("t", FailureReason.TIMEOUT, {"type": "Timeout", "message": "t"}, sim.now, sim.wall)
    sim.s.promote_due(sim.now)
    sim.pop()
    second = sim.task("t").attempt
    assert second == first + 1
    # the first attempt's worker reports late: nothing changes
    assert sim.s.finish("t", first, "stale", None, 1.0, sim.now, sim.wall) is None
    assert sim.state("t") is TaskState.RUNNING
    assert sim.task("t").result is None
    assert sim.s.finish("t", second, "fresh", None, 1.0, sim.now, sim.wall) is not None
    assert sim.task("t").result == "fresh"
    # a report for a task that already ended, or never existed, is ignored too
    assert sim.s.finish("t", second, "again", None, 1.0, sim.now, sim.wall) is None
    assert sim.task("t").result == "fresh"
    assert sim.s.finish("nope", 1, None, None, 0.0, sim.now, sim.wall) is None
    assert sim.s.lose("t", FailureReason.WORKER_LOST, {}, sim.now, sim.wall) is None
    assert sim.state("t") is TaskState.COMPLETED


def test_finish_after_cancel_running_is_ignored():
    sim = Sim()
    sim.submit(spec("t"))
    sim.pop()
    attempt = sim.task("t").attempt
    sim.s.cancel_running(sim.task("t"), sim.now, sim.wall)
    assert sim.s.finish("t", attempt, 1, None, 0.1, sim.now, sim.wall) is None
    assert sim.state("t") is TaskState.CANCELLED
    assert sim.s.running == {}


# -- cancel ----------------------------------------------------------------------
def test_cancel_queued_task_is_dropped_and_cascades():
    sim = Sim()
    sim.submit(spec("a"), spec("b", dependencies=["a"]), spec("c", dependencies=["b"]), spec("d"))
    assert sim.s.cancel(sim.task("a"), sim.now, sim.wall) is True
    assert sim.state("a") is TaskState.CANCELLED
    assert [sim.state(t) for t in ("b", "c")] == [TaskState.FAILED, TaskState.FAILED]
    assert sim.task("b").reason == "upstream_failed"
    assert "cancelled" in sim.task("b").error["message"]
    assert sim.pop_all() == ["d"]  # the cancelled one is never dispatched
    assert sim.s.cancel(sim.task("a"), sim.now, sim.wall) is False  # already ended
    sim.check_counts()


def test_cancel_pending_task_waiting_on_dependency():
    sim = Sim()
    sim.submit(spec("a"), spec("b", dependencies=["a"]), spec("c", dependencies=["b"]))
    sim.pop()
    assert sim.s.cancel(sim.task("b"), sim.now, sim.wall)
    assert sim.state("b") is TaskState.CANCELLED
    assert sim.state("c") is TaskState.FAILED
    sim.complete("a")
    assert sim.state("b") is TaskState.CANCELLED  # completion of a does not resurrect it
    assert sim.pop() is None


def test_cancel_task_in_retry_backoff():
    sim = Sim()
    sim.submit(spec("t", max_retries=2, retry_backoff=1.0))
    sim.pop()
    sim.fail("t")
    assert sim.state("t") is TaskState.PENDING
    assert sim.s.cancel(sim.task("t"), sim.now, sim.wall)
    sim.now += 10
    assert sim.s.promote_due(sim.now) == 0
    assert sim.state("t") is TaskState.CANCELLED
    assert sim.pop() is None


def test_cancel_running_via_cancel_is_refused():
    sim = Sim()
    sim.submit(spec("t"))
    sim.pop()
    with pytest.raises(RuntimeError):
        sim.s.cancel(sim.task("t"), sim.now, sim.wall)
    assert sim.state("t") is TaskState.RUNNING


# -- batch validation --------------------------------------------------------------
def _rejected(sim, *specs):
    before = (len(sim.store), dict(sim.s.counts), sim.s.has_ready())
    with pytest.raises(ProtocolError) as ei:
        sim.submit(*specs)
    assert (len(sim.store), dict(sim.s.counts), sim.s.has_ready()) == before, "a rejected batch changed state"
    return ei.value


def test_unknown_dependency_rejected():
    sim = Sim()
    sim.submit(spec("x"))
    err = _rejected(sim, spec("a"), spec("b", dependencies=["a", "ghost"]))
    assert err.code is ErrorCode.UNKNOWN_DEPENDENCY
    assert err.code.value == "unknown_dependency"
    assert "ghost" in err.message and "b" in err.message
    assert err.details == {"task_id": "b", "dependency": "ghost"}
    assert "a" not in sim.store


def test_unknown_ref_dependency_rejected():
    err = _rejected(Sim(), spec("a", args=[Ref("nowhere")]))
    assert err.code is ErrorCode.UNKNOWN_DEPENDENCY
    assert "nowhere" in err.message


def test_duplicate_id_inside_batch_rejected():
    sim = Sim()
    err = _rejected(sim, spec("a"), spec("b"), spec("a"))
    assert err.code is ErrorCode.DUPLICATE_TASK
    assert err.code.value == "duplicate_task"
    assert "'a'" in err.message
    assert len(sim.store) == 0


def test_duplicate_id_against_existing_rejected():
    sim = Sim()
    sim.submit(spec("a"))
    err = _rejected(sim, spec("new"), spec("a"))
    assert err.code is ErrorCode.DUPLICATE_TASK
    assert err.details["task_id"] == "a"
    assert "new" not in sim.store


def test_cycle_inside_batch_rejected_and_named():
    sim = Sim()
    sim.submit(spec("base"))
    err = _rejected(
        sim,
        spec("ok", dependencies=["base"]),
        spec("a", dependencies=["c"]),
        spec("b", dependencies=["a", "base"]),
        spec("c", args=[Ref("b")]),
    )
    assert err.code is ErrorCode.DEPENDENCY_CYCLE
    assert err.code.value == "dependency_cycle"
    cycle = err.details["cycle"]
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert " -> ".join(cycle) in err.message


def test_self_dependency_is_a_cycle():
    err = _rejected(Sim(), spec("a", dependencies=["a"]))
    assert err.code is ErrorCode.DEPENDENCY_CYCLE
    assert "a" in err.message


def test_two_task_cycle():
    err = _rejected(Sim(), spec("x", dependencies=["y"]), spec("y", dependencies=["x"]))
    assert err.code is ErrorCode.DEPENDENCY_CYCLE
    assert set(err.details["cycle"]) == {"x", "y"}


def test_empty_batch_rejected():
    err = _rejected(Sim())
    assert err.code is ErrorCode.INVALID_REQUEST


@pytest.mark.parametrize(
    "bad, field",
    [
        ({"task_id": 5}, "task_id"),
        ({"task_id": ""}, "task_id"),
        ({"task_id": "x" * 201}, "task_id"),
        ({"task_id": "a\nb"}, "task_id"),
        ({"function": 3}, "function"),
        ({"function": "no_colon"}, "function"),
        ({"priority": "urgent"}, "priority"),
        ({"priority": 1.5}, "priority"),
        ({"priority": True}, "priority"),
        ({"priority": 10**6}, "priority"),
        ({"dependencies": "a"}, "dependencies"),
        ({"dependencies": [1]}, "dependencies"),
        ({"timeout": "5"}, "timeout"),
        ({"timeout": -1}, "timeout"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": True}, "max_retries"),
        ({"retry_backoff": "1"}, "retry_backoff"),
        ({"retry_backoff": -1}, "retry_backoff"),
        ({"memory_limit_mb": "lots"}, "memory_limit_mb"),
        ({"args": {"a": 1}}, "args"),
        ({"kwargs": [1]}, "kwargs"),
        ({"kwargs": {1: 2}}, "kwargs"),
        ({"task_type": ""}, "task_type"),
        ({"task_type": 7}, "task_type"),
        ({"workflow": 7}, "workflow"),
        ({"bogus_field": 1}, "bogus_field"),
    ],
)
def test_bad_field_types_rejected_with_invalid_request(bad, field):
    sim = Sim()
    good = spec("good")
    broken = {**spec("broken"), **bad}
    err = _rejected(sim, good, broken)
    assert err.code is ErrorCode.INVALID_REQUEST
    assert err.code.value == "invalid_request"
    assert err.details.get("field") == field
    assert field in err.message
    assert "good" not in sim.store


@pytest.mark.parametrize(
    "bad",
    [
        {"task_id": "c", "command": []},
        {"task_id": "c", "command": "ls -l"},
        {"task_id": "c", "command": ["ls", 3]},
        {"task_id": "c", "command": ["ls"], "env": {"A": 1}},
        {"task_id": "c", "command": ["ls"], "cwd": 5},
        {"task_id": "c", "command": ["ls"], "args": [1]},
        {"task_id": "c", "function": "m:f", "command": ["ls"]},
        {"task_id": "c"},
        "not a map",
        None,
    ],
)
def test_bad_task_shapes_rejected(bad):
    sim = Sim()
    err = _rejected(sim, spec("good"), bad)
    assert err.code is ErrorCode.INVALID_REQUEST


def test_rejected_batch_does_not_disturb_fifo_or_ids():
    sim = Sim()
    sim.submit(spec("a"))
    _rejected(sim, spec("b"), spec("c", dependencies=["zzz"]))
    sim.submit(spec("b"), spec("c"))  # the ids from the rejected batch are still free
    assert sim.pop_all() == ["a", "b", "c"]


def test_generated_ids_are_unique():
    sim = Sim()
    ids = sim.submit(*[{"function": "tests.tasks:noop"} for _ in range(500)])
    assert len(set(ids)) == 500
    assert all(isinstance(i, str) and i for i in ids)


# -- per-type limits -----------------------------------------------------------------
def test_type_limit_does_not_block_other_types():
    sim = Sim(type_limits={"scan": 1})
    sim.submit(
        spec("scan1", task_type="scan", priority="high"),
        spec("scan2", task_type="scan", priority="high"),
        spec("scan3", task_type="scan", priority="high"),
        spec("build", task_type="build", priority="low"),
        spec("plain"),
    )
    assert sim.pop() == "scan1"
    # scan2/scan3 outrank the rest but their type is at its limit: the others go first
    assert sim.pop_all() == ["plain", "build"]
    held = sim.task("scan2").record()
    assert sim.state("scan2") is TaskState.QUEUED
    assert "scan" in held["held_by"]
    sim.complete("scan1")
    assert sim.pop() == "scan2"
    assert sim.pop() is None
    sim.complete("scan2")
    assert sim.pop() == "scan3"
    assert "held_by" not in sim.task("scan3").record()


def test_type_limit_counts_running_tasks_of_the_type():
    sim = Sim(type_limits={"io": 2})
    sim.submit(*[spec(f"io{i}", task_type="io") for i in range(5)])
    assert sim.pop_all() == ["io0", "io1"]
    sim.s.lose("io0", FailureReason.WORKER_LOST, {"type": "x", "message": "x"}, sim.now, sim.wall)  # a loss frees a slot too
    assert sim.pop_all() == ["io2"]
    assert sim.s.running_by_type["io"] == 2


def test_cancelled_parked_task_is_not_dispatched():
    sim = Sim(type_limits={"scan": 1})
    sim.submit(spec("s1", task_type="scan"), spec("s2", task_type="scan"), spec("s3", task_type="scan"))
    assert sim.pop_all() == ["s1"]
    sim.s.cancel(sim.task("s2"), sim.now, sim.wall)
    sim.complete("s1")
    assert sim.pop_all() == ["s3"]


# -- deadlines -------------------------------------------------------------------
def test_deadline_expires_exactly_at_timeout():
    sim = Sim()
    sim.submit(spec("t", timeout=5.0, max_retries=0), spec("u", timeout=2.0))
    sim.pop()
    sim.pop()
    start = sim.now
    assert sim.s.next_wakeup() == pytest.approx(start + 2.0)
    assert sim.s.expired(start + 1.999) == []
    assert [t.task_id for t in sim.s.expired(start + 2.0)] == ["u"]
    sim.complete("u")
    assert sim.s.next_wakeup() == pytest.approx(start + 5.0)
    assert sim.s.expired(start + 4.9) == []
    [t] = sim.s.expired(start + 5.0)
    assert t.task_id == "t" and t.deadline == pytest.approx(start + 5.0)
    sim.now = start + 5.0
    sim.s.lose("t", FailureReason.TIMEOUT, {"type": "Timeout", "message": "late"}, sim.now, sim.wall)
    t = sim.task("t")
    assert (t.state, t.reason) == (TaskState.FAILED, "timeout")
    assert t.execution_time == pytest.approx(5.0)
    assert sim.s.next_wakeup() is None


def test_finished_task_never_expires():
    sim = Sim()
    sim.submit(spec("t", timeout=1.0))
    sim.pop()
    sim.complete("t")
    assert sim.s.expired(sim.now + 100) == []
    assert sim.s.next_wakeup() is None


def test_deadline_is_per_attempt():
    sim = Sim()
    sim.submit(spec("t", timeout=3.0, max_retries=1, retry_backoff=1.0))
    sim.pop()
    sim.now += 3.0
    assert len(sim.s.expired(sim.now)) == 1
    sim.s.lose("t", FailureReason.TIMEOUT, {"type": "Timeout", "message": ""}, sim.now, sim.wall)
    sim.now += 1.0
    sim.s.promote_due(sim.now)
    sim.pop()
    restart = sim.now
    assert sim.s.next_wakeup() == pytest.approx(restart + 3.0)
    assert sim.s.expired(restart + 2.9) == []
    assert len(sim.s.expired(restart + 3.0)) == 1


def test_records_carry_times_and_worker():
    sim = Sim()
    sim.submit(spec("t", priority="high", task_type="k", workflow="w"))
    sim.pop()
    sim.now += 2
    sim.complete("t", result={"x": 1})
    rec = sim.task("t").record()
    assert rec["status"] == "completed"
    assert rec["result"] == {"x": 1}
    assert rec["end_time"] - rec["start_time"] == pytest.approx(2.0)
    assert rec["worker_pid"] == sim.pid
    assert (rec["priority"], rec["task_type"], rec["workflow"]) == (10, "k", "w")


# -- reservations (prefetch) ---------------------------------------------------------------
def test_reserved_task_stays_queued_and_is_not_handed_out_twice():
    sim = Sim()
    sim.submit(spec("a"), spec("b"), spec("c"))
    a = sim.s.next_ready()
    attempt = sim.s.reserve(a, 555)
    assert attempt == 1
    assert sim.state("a") is TaskState.QUEUED
    assert sim.task("a").reserved_by == 555
    assert sim.s.top_priority() == 0
    assert sim.pop_all() == ["b", "c"]
    assert sim.s.next_ready() is None


def test_unreserved_task_goes_back_in_its_place_with_no_attempt_spent():
    sim = Sim()
    sim.submit(spec("a"), spec("b"), spec("c", priority="low"))
    a = sim.s.next_ready()
    sim.s.reserve(a, 555)
    sim.s.unreserve(a)
    assert sim.task("a").attempt == 0
    assert sim.task("a").reserved_by is None
    assert sim.pop_all() == ["a", "b", "c"]  # FIFO position kept
    assert sim.task("a").attempt == 1


def test_start_reserved_counts_the_deadline_from_the_real_start():
    sim = Sim()
    sim.submit(spec("a", timeout=5.0))
    a = sim.s.next_ready()
    attempt = sim.s.reserve(a, 555)
    sim.now += 3.0  # it waited behind another task
    assert sim.s.start_reserved(a, sim.now, sim.wall) == attempt
    assert sim.state("a") is TaskState.RUNNING
    assert sim.s.next_wakeup() == pytest.approx(sim.now + 5.0)
    assert sim.s.expired(sim.now + 4.9) == []
    assert sim.s.finish("a", attempt, 1, None, 0.1, sim.now, sim.wall) is not None
    assert sim.state("a") is TaskState.COMPLETED


def test_cancelled_reservation_is_not_requeued():
    sim = Sim()
    sim.submit(spec("a"), spec("b"))
    a = sim.s.next_ready()
    sim.s.reserve(a, 555)
    assert sim.s.cancel(a, sim.now, sim.wall)
    sim.s.unreserve(a)  # the worker's skip answer arrives afterwards
    assert sim.state("a") is TaskState.CANCELLED
    assert sim.pop_all() == ["b"]


def test_top_priority_ignores_reserved_and_ended_tasks():
    sim = Sim()
    sim.submit(spec("h", priority="high"), spec("m"), spec("l", priority="low"))
    h = sim.s.next_ready()
    sim.s.reserve(h, 555)
    sim.s.requeue(h)  # even if it is pushed back by mistake, a reserved task is not "ready"
    assert sim.s.top_priority() == 0
    sim.s.cancel(sim.task("m"), sim.now, sim.wall)
    assert sim.s.top_priority() == -10
