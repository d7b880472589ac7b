"""Durability and lifecycle: the SQLite journal, restart recovery, drain, reload, retention.

Delivery guarantee under test: **at-least-once**. A task whose submit returned an id is
on disk before the reply left (the journal is committed before any reply of a loop pass),
so it survives `kill -9` of the supervisor and ends `completed` after a restart. What is
not guaranteed is *exactly* once: an attempt that was running when the supervisor died,
or one that ended in the last few milliseconds before the kill (its end not yet in a
group commit), runs again after the restart. The tests therefore count executions
(tests.tasks:durable_step appends one line per run) and assert each task ran >= 1 time,
and == 1 time only where the stop was clean.

The journal is read behind the daemon's back with a separate, read-only sqlite3
connection: that is what a crash would leave.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import ClassVar

import psutil
import pytest

from pipeline_client import Client, Ref
from pipeline_client.errors import DaemonUnreachable, RequestError
from pipeline_protocol import decode, encode

from .conftest import _alive, wait_for
from .helpers import gone, wait_idle_pool, wait_status

JOURNAL = "journal.sqlite3"
STEP = "tests.tasks:durable_step"
GATED = "tests.tasks:gated_step"
SEED = 20240607


# -- helpers ------------------------------------------------------------------
def journal_path(d) -> Path:
    return Path(d.state_dir) / JOURNAL


def read_journal(d, sql: str, params: tuple = ()) -> list[tuple]:
    """Run one query on the journal through a read-only connection of our own."""
    con = sqlite3.connect(f"file:{journal_path(d)}?mode=ro", uri=True, timeout=5)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def journal_states(d) -> dict[str, tuple[str, int, int]]:
    """task_id -> (state, retry_count, attempt) as the file holds them."""
    return {tid: (state, rc, att) for tid, state, rc, att in read_journal(d, "SELECT task_id, state, retry_count, attempt FROM tasks")}


def runs(log: Path) -> Counter:
    """How many times each tag was recorded by durable_step / gated_step."""
    try:
        return Counter(line for line in log.read_text().splitlines() if line)
    except FileNotFoundError:
        return Counter()


def kill_only(d) -> tuple[list[psutil.Process], float]:
    """SIGKILL the supervisor only (not its group). Returns its descendants and the kill time."""
    kids = psutil.Process(d.pid).children(recursive=True)
    for p in kids:
        d.descendants.setdefault(p.pid, p)  # the fixture checks them at teardown too
    os.kill(d.pid, signal.SIGKILL)
    return kids, time.monotonic()


def kill9(d) -> tuple[list[psutil.Process], float]:
    kids, t_kill = kill_only(d)
    d.proc.wait(5)
    d.stop()  # already dead: only closes the client and the log
    return kids, t_kill


def restart(d) -> None:
    """Start the daemon again on the same dirs. Unlike Daemon.start, do not wait for idle
    workers: the restored tasks may keep them busy at once."""
    d.start(wait=False)
    d.wait_ready(idle=False)


def assert_gone_within(procs: list[psutil.Process], t0: float, limit: float) -> None:
    left = lambda: [p.pid for p in procs if _alive(p)]
    try:
        wait_for(lambda: not left(), max(0.05, t0 + limit - time.monotonic()), 0.005, "the killed supervisor's workers to die")
    except AssertionError:
        raise AssertionError(f"still alive {limit}s after kill -9 of their supervisor: {left()}") from None


def sigterm_and_wait(d, limit: float) -> tuple[int, float]:
    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    try:
        rc = d.proc.wait(limit + 5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"pipelined did not exit within {limit + 5}s of SIGTERM:\n{d.log()[-3000:]}") from None
    elapsed = time.monotonic() - t0
    d.stop()
    return rc, elapsed


def unknown(c, tid: str) -> bool:
    try:
        c.get(tid)
    except RequestError as exc:
        return exc.code == "unknown_task"
    return False


# -- 1. kill -9, ten rounds -------------------------------------------------------
class Stream:
    """Submits a random (seeded) mix of tasks and remembers what each must return."""

    OPTS: ClassVar[dict] = {"max_retries": 60, "retry_backoff": 0}  # ten kills may each cost a running task an attempt

    def __init__(self, rng: random.Random, log: Path):
        self.rng = rng
        self.log = str(log)
        self.ids = (f"t{i:04d}" for i in itertools.count())
        self.expected: dict[str, int] = {}  # accepted: submit returned
        self.maybe: dict[str, int] = {}  # submit sent, no reply (the kill hit it): may or may not exist

    def _one(self) -> tuple[dict, int]:
        rng, tid = self.rng, next(self.ids)
        value = rng.randint(1, 10_000)
        seconds = rng.choice([0, 0, 0, 0, 0, 0.005, 0.02, 0.05, 0.2])
        spec = {"function": STEP, "task_id": tid, **self.OPTS}
        kind = rng.random()
        accepted = list(self.expected)
        if kind < 0.45 or not accepted:
            spec["args"] = [self.log, tid, value, seconds]
            return spec, value
        deps = rng.sample(accepted[-40:], k=min(len(accepted), rng.randint(1, 2)))
        if kind < 0.8:  # Ref arguments: the result proves the upstream results arrived
            spec["args"] = [self.log, tid, value, seconds, *[Ref(x) for x in deps]]
            return spec, value + sum(self.expected[x] for x in deps)
        spec["args"] = [self.log, tid, value, seconds]  # plain dependencies
        spec["dependencies"] = deps
        return spec, value

    def submit_some(self, c: Client) -> None:
        """One task, or now and then a batch that chains through Refs inside itself."""
        if self.rng.random() < 0.15:
            head, head_value = self._one()
            specs, values = [head], [head_value]
            for _ in range(2):
                tid, value = next(self.ids), self.rng.randint(1, 100)
                specs.append({"function": STEP, "task_id": tid, "args": [self.log, tid, value, 0, Ref(specs[-1]["task_id"])], **self.OPTS})
                values.append(value + values[-1])
        else:
            spec, value = self._one()
            specs, values = [spec], [value]
        try:
            if len(specs) == 1:
                c.request("submit", task=specs[0])
            else:
                c.request("submit", tasks=specs)
        except DaemonUnreachable:
            self.maybe.update({s["task_id"]: v for s, v in zip(specs, values)})
            raise
        self.expected.update({s["task_id"]: v for s, v in zip(specs, values)})


@pytest.mark.timeout(150)
def test_kill9_ten_rounds_every_accepted_task_completes(make_daemon, tmp_path):
    """kill -9 of the supervisor at random points, ten rounds in a row, restarting on the
    same state dir each time: every accepted task ends completed with the right result
    (Refs included), each ran at least once, and no worker outlives its supervisor."""
    rng = random.Random(SEED)
    log = tmp_path / "runs.log"
    stream = Stream(rng, log)
    d = make_daemon(workers=2)
    unfinished_at_kills = 0
    for rnd in range(10):
        from_thread = rnd % 2 == 1  # odd rounds: the kill may land in the middle of a request
        delay = rng.uniform(0.05, 0.6)
        killed: dict = {}
        timer = None
        if from_thread:
            timer = threading.Timer(delay, lambda killed=killed: killed.update(zip(("kids", "t"), kill_only(d))))
            timer.start()
        deadline = time.monotonic() + delay
        c = Client(d.socket, timeout=1.0)
        try:
            while d.proc.poll() is None and (from_thread or time.monotonic() < deadline):
                try:
                    stream.submit_some(c)
                except DaemonUnreachable:
                    break
                time.sleep(rng.choice([0, 0.003, 0.01, 0.03]))
        finally:
            c.close()
        if from_thread:
            timer.join()
            assert killed, f"the kill from the timer thread failed:\n{d.log()[-2000:]}"
            d.proc.wait(5)
            d.stop()
            kids, t_kill = killed["kids"], killed["t"]
        else:  # right after a submit reply, or while tasks run: whichever the clock says
            kids, t_kill = kill9(d)
        assert d.proc.returncode == -signal.SIGKILL
        assert len(kids) >= 2, "the supervisor had its workers when it was killed"
        assert_gone_within(kids, t_kill, 1.0)
        unfinished_at_kills += read_journal(d, "SELECT count(*) FROM tasks WHERE state IN ('queued', 'running', 'pending')")[0][0]
        restart(d)
        listed = {t["task_id"] for t in d.client.list(limit=1_000_000)}
        missing = set(stream.expected) - listed
        assert not missing, f"round {rnd}: accepted tasks lost by kill -9: {sorted(missing)[:10]}"

    c = d.client
    present_maybe = {tid: v for tid, v in stream.maybe.items() if not unknown(c, tid)}
    expected = {**stream.expected, **present_maybe}
    reply = c.wait(list(expected), timeout=60)
    assert not reply["timed_out"], f"tasks still unfinished: {reply['pending'][:10]}"
    records = {r["task_id"]: r for r in reply["tasks"]}
    bad = {tid: (r["status"], r["reason"], r["error"]) for tid, r in records.items() if r["status"] != "completed"}
    assert not bad, f"accepted tasks that did not complete: {dict(list(bad.items())[:5])}"
    wrong = {tid: (records[tid]["result"], v) for tid, v in expected.items() if records[tid]["result"] != v}
    assert not wrong, f"wrong results (Ref arguments lost across a restart?): {dict(list(wrong.items())[:5])}"
    counts = runs(log)
    never = [tid for tid in expected if counts[tid] < 1]
    assert not never, f"completed without ever running: {never[:10]}"
    assert set(counts) <= set(expected), "a run was recorded for a task nobody submitted"
    assert all(r["status"] == "completed" for r in c.list(limit=1_000_000)), "the journal holds a task that did not complete"
    assert unfinished_at_kills >= 10, "the kills caught (almost) no unfinished work: the test tested nothing"
    assert len(expected) >= 100
    print(
        f"{len(expected)} tasks, {unfinished_at_kills} unfinished at the kills, {sum(1 for t in expected if counts[t] > 1)} ran more than once (at-least-once)"
    )


# -- 2. running at the kill -------------------------------------------------------
@pytest.mark.timeout(30)
def test_kill9_running_tasks_count_a_lost_attempt(make_daemon, tmp_path):
    d = make_daemon(workers=2)
    c = d.client
    log, gate = tmp_path / "runs.log", str(tmp_path / "gate")
    no_budget = c.submit(GATED, args=[str(log), "no_budget", gate, 1], task_id="no_budget", max_retries=0)
    budget = c.submit(GATED, args=[str(log), "budget", gate, 2], task_id="budget", max_retries=2, retry_backoff=0)
    queued = c.submit(GATED, args=[str(log), "queued", gate, 3], task_id="queued", max_retries=0)
    wait_status(c, no_budget, "running")
    wait_status(c, budget, "running")
    assert c.get(queued)["status"] == "queued"
    on_disk = journal_states(d)
    assert on_disk["no_budget"][0] == on_disk["budget"][0] == "running", on_disk

    kids, t_kill = kill9(d)
    assert_gone_within(kids, t_kill, 1.0)
    restart(d)
    c = d.client
    rec = c.get(no_budget)
    assert (rec["status"], rec["reason"], rec["retry_count"]) == ("failed", "worker_lost", 0)
    assert rec["error"]["type"] == "Interrupted"
    assert c.get(budget)["retry_count"] == 1
    assert c.get(queued)["retry_count"] == 0
    Path(gate).touch()
    assert c.result(budget, timeout=10) == 2
    assert c.result(queued, timeout=10) == 3
    rec = c.get(budget)
    assert (rec["status"], rec["retry_count"]) == ("completed", 1)
    assert c.get(queued)["retry_count"] == 0
    assert runs(log) == Counter({"budget": 1, "queued": 1})


# -- 3. clean stop ------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_sigterm_lets_running_finish_and_keeps_queued(make_daemon, tmp_path):
    grace = 10.0
    d = make_daemon(workers=2, args=("--shutdown-grace", str(grace)))
    c = d.client
    log, gate = tmp_path / "runs.log", str(tmp_path / "gate")
    running = [c.submit(GATED, args=[str(log), f"r{i}", gate, i], task_id=f"r{i}") for i in range(2)]
    queued = [c.submit(STEP, args=[str(log), f"q{i}", 10 + i], task_id=f"q{i}") for i in range(4)]
    for tid in running:
        wait_status(c, tid, "running")
    worker_pids = {c.get(t)["worker_pid"] for t in running}

    t0 = time.monotonic()
    d.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: c.status()["draining"], 5, what="the daemon to drain")
    with pytest.raises(RequestError) as ei:
        c.submit(STEP, args=[str(log), "late", 0])
    assert ei.value.code == "draining"
    assert d.proc.poll() is None, "exited while tasks were still running inside the grace period"
    assert [c.get(t)["status"] for t in queued] == ["queued"] * 4
    Path(gate).touch()
    rc = d.proc.wait(grace + 2)
    elapsed = time.monotonic() - t0
    d.stop()
    assert rc == 0
    assert elapsed < grace + 2
    wait_for(lambda: all(gone(p) for p in worker_pids), 3, what="the workers to be reaped")

    on_disk = journal_states(d)
    assert {t: on_disk[t][:2] for t in running} == {t: ("completed", 0) for t in running}
    assert {t: on_disk[t] for t in queued} == {t: ("queued", 0, 0) for t in queued}, "queued tasks must stay queued, untouched"
    assert runs(log) == Counter({"r0": 1, "r1": 1})

    restart(d)
    c = d.client
    assert [c.result(t, timeout=10) for t in queued] == [10, 11, 12, 13]
    assert [c.result(t, timeout=1) for t in running] == [0, 1]
    assert all(c.get(t)["retry_count"] == 0 for t in running + queued)
    assert runs(log) == Counter({t: 1 for t in running + queued}), "a clean stop runs nothing twice"


# -- 4. SIGTERM past a short grace ---------------------------------------------------
@pytest.mark.timeout(30)
def test_sigterm_kills_what_outlives_the_grace(make_daemon, tmp_path):
    grace = 1.0
    d = make_daemon(workers=2, args=("--shutdown-grace", str(grace)))
    c = d.client
    marker = str(tmp_path / "first-attempt")
    slow = c.submit("tests.tasks:crash_once", args=[marker, "hang"], task_id="slow", max_retries=1, retry_backoff=0)
    doomed = c.submit("tests.tasks:sleep", args=[300], task_id="doomed", max_retries=0)
    wait_status(c, slow, "running")
    wait_status(c, doomed, "running")
    wait_for(lambda: os.path.exists(marker), 5, what="the first attempt to start")
    pids = [c.get(t)["worker_pid"] for t in (slow, doomed)]

    rc, elapsed = sigterm_and_wait(d, grace + 2)
    assert rc == 0
    assert grace - 0.1 <= elapsed < grace + 2, f"exit after {elapsed:.2f}s with a grace of {grace}s"
    wait_for(lambda: all(gone(p) for p in pids), 3, what="the killed workers to be gone")
    on_disk = journal_states(d)
    assert on_disk["slow"][:2] == ("pending", 1), f"the interrupted attempt must be recorded and retried: {on_disk['slow']}"
    assert on_disk["doomed"][:2] == ("failed", 0)
    assert read_journal(d, "SELECT reason FROM tasks WHERE task_id = 'doomed'") == [("worker_lost",)]

    restart(d)
    c = d.client
    assert c.result(slow, timeout=10) == "second attempt"
    rec = c.get(slow)
    assert (rec["status"], rec["retry_count"]) == ("completed", 1)
    rec = c.get(doomed)
    assert (rec["status"], rec["reason"]) == ("failed", "worker_lost")


# -- 5. the drain op ----------------------------------------------------------------
@pytest.mark.timeout(30)
def test_drain_op_refuses_submits_and_exits_when_running_tasks_end(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    log, gate = tmp_path / "runs.log", str(tmp_path / "gate")
    held = c.submit(GATED, args=[str(log), "held", gate, 1], task_id="held")
    queued = c.submit(STEP, args=[str(log), "queued", 2], task_id="queued")
    wait_status(c, held, "running")

    reply = c.drain()
    assert reply["draining"] is True and reply["running_tasks"] == 1
    for submit in (
        lambda: c.submit(STEP, args=[str(log), "late", 3]),
        lambda: c.submit_many([{"function": STEP, "args": [str(log), "late2", 4]}]),
    ):
        with pytest.raises(RequestError) as ei:
            submit()
        assert ei.value.code == "draining"
        assert "draining" in ei.value.message
    assert c.status()["draining"] is True
    assert c.get(queued)["status"] == "queued", "a draining daemon dispatches nothing"
    assert d.proc.poll() is None

    Path(gate).touch()
    wait_for(lambda: d.proc.poll() is not None, 5, what="the daemon to exit once its running task ended")
    assert d.proc.returncode == 0
    d.stop()
    states = journal_states(d)
    assert states["held"][0] == "completed" and states["queued"] == ("queued", 0, 0)
    assert len(states) == 2, "refused submits must leave nothing in the journal"

    restart(d)
    assert d.client.result(queued, timeout=10) == 2
    assert runs(log) == Counter({"held": 1, "queued": 1})


@pytest.mark.timeout(30)
def test_drain_of_an_idle_daemon_answers_then_exits(make_daemon):
    """Nothing runs: the daemon exits in the same pass, and the drain reply must still reach the client."""
    for _ in range(3):
        d = make_daemon(workers=1)
        with Client(d.socket, timeout=3.0) as c:
            reply = c.drain()
        assert reply["draining"] is True and reply["running_tasks"] == 0
        wait_for(lambda d=d: d.proc.poll() is not None, 5, what="an idle daemon to exit on drain")
        assert d.proc.returncode == 0


# -- 6. dependencies and Ref across a restart -----------------------------------------
@pytest.mark.timeout(30)
def test_ref_chain_resolves_across_kill9(make_daemon, tmp_path):
    d = make_daemon(workers=2)
    c = d.client
    log, gate = tmp_path / "runs.log", str(tmp_path / "gate")
    a = c.submit(STEP, args=[str(log), "a", 7], task_id="a")
    assert c.result(a, timeout=10) == 7
    g = c.submit(GATED, args=[str(log), "g", gate, 0], task_id="g", max_retries=2, retry_backoff=0)
    b = c.submit(STEP, args=[str(log), "b", 1, 0, Ref(a)], task_id="b", dependencies=[g])
    cc = c.submit(STEP, args=[str(log), "c", 100, 0, Ref(b)], task_id="c")
    dd = c.submit(STEP, args=[str(log), "d", 1000, 0, Ref(a), Ref(cc)], task_id="d")
    wait_status(c, g, "running")
    assert [c.get(t)["status"] for t in (b, cc, dd)] == ["pending"] * 3

    kids, t_kill = kill9(d)
    assert_gone_within(kids, t_kill, 1.0)
    on_disk = journal_states(d)
    assert on_disk["a"][0] == "completed" and {on_disk[t][0] for t in "bcd"} == {"pending"}

    restart(d)
    c = d.client
    assert c.get(a)["result"] == 7 and c.result(a, timeout=1) == 7, "a finished result must stay readable"
    assert c.get(a)["status"] == "completed"
    Path(gate).touch()
    assert c.result(dd, timeout=10) == 1000 + 7 + 108
    assert c.result(cc, timeout=1) == 108
    assert c.result(b, timeout=1) == 8
    assert c.get(g)["retry_count"] == 1
    assert runs(log) == Counter({"a": 1, "g": 1, "b": 1, "c": 1, "d": 1}), "a task that completed before the kill must not run again"


# -- 7. retention -------------------------------------------------------------------
@pytest.mark.timeout(40)
def test_retention_prunes_finished_tasks_and_bounds_the_journal(make_daemon, tmp_path):
    ttl = 0.5
    d = make_daemon(workers=2, config=f"result_ttl_s = {ttl}\n")
    c = d.client
    log = tmp_path / "runs.log"
    # Unfinished tasks that hold no worker: one waits out a long retry backoff, one waits for it.
    held = c.submit("tests.tasks:fail", task_id="held", max_retries=1, retry_backoff=3600)
    waiting = c.submit(STEP, args=[str(log), "waiting", 2], task_id="waiting", dependencies=[held])
    wait_for(lambda: c.get(held)["retry_count"] == 1, 10, what="the first attempt to fail")
    done = [c.submit(STEP, args=[str(log), f"done{i}", i], task_id=f"done{i}") for i in range(5)]
    reply = c.wait(done, timeout=10)
    assert not reply["timed_out"]
    last_end = max(r["end_time"] for r in reply["tasks"])

    wait_for(lambda: all(unknown(c, t) for t in done), 5, what="finished tasks to be pruned")
    assert time.time() - last_end >= ttl - 0.01, "pruned before its TTL"
    listed = {t["task_id"] for t in c.list(limit=1000)}
    assert listed == {held, waiting}, "unfinished tasks are never pruned"
    assert c.get(held)["status"] == "pending" and c.get(waiting)["status"] == "pending"
    with pytest.raises(RequestError) as ei:
        c.result(done[0], timeout=1)
    assert ei.value.code == "unknown_task"
    wait_for(
        lambda: {r[0] for r in read_journal(d, "SELECT task_id FROM tasks")} == {held, waiting},
        5,
        what="pruned rows to leave the journal file",
    )

    # A steady stream for ~3 s: the journal stays bounded by rate x TTL, not by the total.
    submitted, peak, t_end = 0, 0, time.monotonic() + 3.0
    n = itertools.count()
    while time.monotonic() < t_end:  # paced by the daemon itself, so the bound holds on a slow machine too
        ids = c.submit_many([{"function": STEP, "args": [str(log), f"s{i}", 0], "task_id": f"s{i}"} for i in (next(n) for _ in range(10))])
        assert not c.wait(ids, timeout=10)["timed_out"]
        submitted += 10
        peak = max(peak, read_journal(d, "SELECT count(*) FROM tasks")[0][0])
    print(f"journal peaked at {peak} rows for {submitted} tasks")
    assert submitted >= 100
    assert peak < submitted / 2, f"journal peaked at {peak} rows for {submitted} tasks with a {ttl}s TTL"
    wait_for(lambda: read_journal(d, "SELECT count(*) FROM tasks")[0][0] == 2, 10, what="the stream to be pruned from the file")
    assert sum(runs(log).values()) == submitted + 5

    assert c.cancel(held)["cancelled"] == [held]
    assert (c.get(waiting)["status"], c.get(waiting)["reason"]) == ("failed", "upstream_failed")
    wait_for(lambda: read_journal(d, "SELECT count(*) FROM tasks")[0][0] == 0, 5, what="the last tasks, once ended, to be pruned")


@pytest.mark.timeout(30)
def test_ref_to_a_dependency_pruned_by_retention(make_daemon, tmp_path):
    """x = add(Ref(a), Ref(b)): a completes at once and outlives the TTL while b still
    runs. Retention keeps a (x still needs its result); x gets it; then a is pruned."""
    d = make_daemon(workers=2, config="result_ttl_s = 0.3\n")
    c = d.client
    gate = str(tmp_path / "gate")
    a = c.submit("tests.tasks:square", args=[3])
    b = c.submit("tests.tasks:gated_step", args=[str(tmp_path / "runs.log"), "b", gate, 2])
    x = c.submit("tests.tasks:add", args=[Ref(a), Ref(b)])
    c.result(a, timeout=10)
    time.sleep(1.0)  # three TTLs: a would be gone if nothing needed it
    assert c.get(a)["status"] == "completed", "retention pruned a result that x still needs"
    Path(gate).touch()
    assert c.result(x, timeout=10) == 11
    wait_for(lambda: unknown(c, a), 5, what="a to be pruned once x ended")


# -- 8. corrupt journal ---------------------------------------------------------------
def _damaged_journal(d, path: Path) -> None:
    """A real journal with a page in the middle overwritten."""
    d.start()
    d.client.submit_many([{"function": "tests.tasks:echo", "args": ["x" * 500]} for _ in range(40)])
    d.stop()
    data = bytearray(path.read_bytes())
    page = 4096
    assert len(data) >= 3 * page, len(data)
    data[page : 2 * page] = os.urandom(page)
    path.write_bytes(bytes(data))


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["garbage", "foreign_sqlite", "damaged_journal", "future_version"])
def test_corrupt_journal_refuses_to_start(make_daemon, kind):
    d = make_daemon(workers=1, start=False)
    path = journal_path(d)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "garbage":
        path.write_bytes(b"this is not a database\n" + os.urandom(8192))
    elif kind == "foreign_sqlite":
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE tasks (id INTEGER PRIMARY KEY, title TEXT)")
        con.execute("INSERT INTO tasks (title) VALUES ('buy milk')")
        con.commit()
        con.close()
    elif kind == "future_version":
        con = sqlite3.connect(path)
        con.executescript(SCHEMA_V1)
        con.execute(f"PRAGMA application_id = {0x70706C64}")
        con.execute("PRAGMA user_version = 99")
        con.commit()
        con.close()
    else:
        _damaged_journal(d, path)
        d.log_path.write_text("")
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    siblings = sorted(p.name for p in path.parent.iterdir())

    d.start(wait=False)
    rc = d.proc.wait(15)
    d.stop()
    out = d.log()
    assert rc == 2, out
    assert "Traceback" not in out
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    assert str(path) in lines[0]
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before, "the journal must not be touched"
    # The state dir's lock file is the only newcomer allowed: no new journal (no silent reset).
    assert sorted(p.name for p in path.parent.iterdir() if p.name != "pipelined.lock") == [n for n in siblings if n != "pipelined.lock"], "no new file next to the journal"
    assert not os.path.exists(d.socket)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "damage",
    ["UPDATE tasks SET spec = x'c1'", "UPDATE tasks SET result = x'c1'", "UPDATE tasks SET state = 'bogus'"],
    ids=["spec", "result", "state"],
)
def test_journal_with_an_undecodable_row_refuses_to_start(make_daemon, damage):
    """quick_check passes (SQLite is fine), but a row is not what pipelined wrote: that is a
    corrupt journal too, and deserves the same clear exit 2 as one SQLite rejects."""
    d = make_daemon(workers=1)
    tid = d.client.submit("tests.tasks:square", args=[2])
    assert d.client.result(tid, timeout=10) == 4
    d.stop()
    path = journal_path(d)
    con = sqlite3.connect(path)
    con.execute(damage)
    con.commit()
    con.close()
    d.log_path.write_text("")
    before = path.read_bytes()

    d.start(wait=False)
    rc = d.proc.wait(15)
    d.stop()
    out = d.log()
    assert path.read_bytes() == before
    assert "Traceback" not in out, out[-2000:]
    assert rc == 2
    lines = out.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0], out


# -- 9. migration ---------------------------------------------------------------------
SCHEMA_V1 = """
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    spec BLOB NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0,
    retry_count INTEGER NOT NULL DEFAULT 0,
    result BLOB,
    error BLOB,
    reason TEXT,
    submitted_at REAL NOT NULL,
    start_time REAL,
    end_time REAL,
    execution_time REAL
);
"""


def _v1_spec(task_id: str, function: str, args: list, dependencies: list[str] = (), max_retries: int = 3) -> bytes:
    return encode(
        {
            "task_id": task_id,
            "task_type": "default",
            "function": function,
            "command": None,
            "cwd": None,
            "env": None,
            "args": args,
            "kwargs": {},
            "priority": 0,
            "dependencies": list(dependencies),
            "timeout_s": 300.0,
            "max_retries": max_retries,
            "retry_backoff_s": 0.0,
            "memory_limit_mb": None,
            "workflow": None,
            "has_refs": any(isinstance(a, Ref) for a in args),
        }
    )


@pytest.mark.timeout(30)
def test_new_journal_is_built_at_the_current_schema_without_migration_messages(make_daemon):
    d = make_daemon(workers=1)
    assert d.client.call(STEP, [os.devnull, "fresh", 1]) == 1
    assert read_journal(d, "PRAGMA user_version") == [(3,)]
    assert "migrated" not in d.log()  # nothing was migrated: the operator is not told so


@pytest.mark.timeout(30)
def test_schema_v1_journal_is_migrated(make_daemon, tmp_path):
    d = make_daemon(workers=2, start=False)
    path = journal_path(d)
    path.parent.mkdir(parents=True)
    log = str(tmp_path / "runs.log")
    now = time.time()
    con = sqlite3.connect(path)
    con.executescript(SCHEMA_V1)
    con.execute(f"PRAGMA application_id = {0x70706C64}")
    con.execute("PRAGMA user_version = 1")
    rows = [
        (
            "v1-done",
            0,
            _v1_spec("v1-done", STEP, [log, "v1-done", 42]),
            "completed",
            1,
            0,
            encode(42),
            None,
            None,
            now - 5,
            now - 4,
            now - 3,
            0.1,
        ),
        ("v1-queued", 1, _v1_spec("v1-queued", STEP, [log, "v1-queued", 5]), "queued", 0, 0, None, None, None, now - 5, None, None, None),
        (
            "v1-running",
            2,
            _v1_spec("v1-running", STEP, [log, "v1-running", 6]),
            "running",
            1,
            0,
            None,
            None,
            None,
            now - 5,
            now - 4,
            None,
            None,
        ),
        (
            "v1-child",
            3,
            _v1_spec("v1-child", STEP, [log, "v1-child", 1, 0, Ref("v1-done"), Ref("v1-queued")], ["v1-done", "v1-queued"]),
            "pending",
            0,
            0,
            None,
            None,
            None,
            now - 5,
            None,
            None,
            None,
        ),
    ]
    con.executemany("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.commit()
    con.close()

    restart(d)
    c = d.client
    assert read_journal(d, "PRAGMA user_version") == [(3,)]
    assert read_journal(d, "PRAGMA application_id") == [(0x70706C64,)]
    columns = {r[1]: r for r in read_journal(d, "PRAGMA table_info(tasks)")}
    assert {"worker_pid", "workflow"} <= set(columns)
    assert columns["seq"][5] == 1  # v3: seq is the rowid (the primary key)
    assert read_journal(d, "SELECT name FROM sqlite_master WHERE type = 'index'") == []
    assert "migrated to schema version 2" in d.log() and "migrated to schema version 3" in d.log()
    assert c.get("v1-done")["result"] == 42 and c.get("v1-done")["status"] == "completed"
    assert c.result("v1-queued", timeout=10) == 5
    assert c.result("v1-child", timeout=10) == 1 + 42 + 5
    assert c.result("v1-running", timeout=10) == 6
    assert c.get("v1-running")["retry_count"] == 1
    assert runs(Path(log)) == Counter({"v1-queued": 1, "v1-child": 1, "v1-running": 1})
    new = c.submit(STEP, args=[log, "new", 9])
    assert c.result(new, timeout=10) == 9


# -- 10. SIGHUP -----------------------------------------------------------------------
@pytest.mark.timeout(40)
def test_sighup_reloads_worker_count_and_keeps_old_config_on_error(make_daemon):
    d = make_daemon(workers=None, config="max_workers = 2\n")
    c = d.client
    wait_idle_pool(c, 2)

    d.config_path.write_text("max_workers = 3\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_idle_pool(c, 3)
    assert c.status()["max_workers"] == 3
    d.config_path.write_text("max_workers = 1\n")
    d.proc.send_signal(signal.SIGHUP)
    wait_idle_pool(c, 1)
    pids = {w["pid"] for w in c.workers()}

    for n, bad in enumerate(["max_workers = 'lots'\n", "max_workers = [\n", "max_wrokers = 4\n", "max_workers = 0\n"], start=1):
        d.config_path.write_text(bad)
        d.proc.send_signal(signal.SIGHUP)
        wait_for(lambda n=n: d.log().count("configuration rejected") == n, 5, what=f"bad config {n} to be rejected")
        assert {w["pid"] for w in c.workers()} == pids, f"a rejected config changed the pool: {bad!r}"
        assert c.status()["max_workers"] == 1
        assert c.result(c.submit("tests.tasks:square", args=[n]), timeout=10) == n * n
    assert d.proc.poll() is None


# -- 11. journal before reply ------------------------------------------------------------
@pytest.mark.timeout(30)
def test_every_reply_follows_its_journal_commit(make_daemon, tmp_path):
    d = make_daemon(workers=1)
    c = d.client
    log, gate = tmp_path / "runs.log", str(tmp_path / "gate")
    path = journal_path(d)
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        state = lambda tid: (con.execute("SELECT state FROM tasks WHERE task_id = ?", (tid,)).fetchone() or [None])[0]
        held = c.submit(GATED, args=[str(log), "held", gate, 1], task_id="held")
        assert state(held) in ("queued", "running")
        for i in range(40):
            tid = c.submit(STEP, args=[str(log), f"s{i}", i], task_id=f"s{i}")
            assert state(tid) is not None, f"submit of {tid} replied before the task was in the journal"
        ids = c.submit_many([{"function": STEP, "args": [str(log), f"b{i}", i], "task_id": f"b{i}"} for i in range(50)])
        missing = [t for t in ids if state(t) is None]
        assert not missing, f"batch submit replied before {len(missing)} of its tasks were in the journal"
        assert c.cancel("s39")["cancelled"] == ["s39"]
        assert state("s39") == "cancelled", "cancel replied before the cancellation was in the journal"
        Path(gate).touch()
        assert c.result("s5", timeout=10) == 5
        row = con.execute("SELECT state, result FROM tasks WHERE task_id = 's5'").fetchone()
        assert row[0] == "completed" and decode(row[1]) == 5, "result replied before the end was in the journal"
        reply = c.wait(ids, timeout=10)
        assert not reply["timed_out"]
        done = {r[0] for r in con.execute("SELECT task_id FROM tasks WHERE state = 'completed'")}
        assert set(ids) <= done, "wait replied before the ends were in the journal"
    finally:
        con.close()


# -- 12. volatile ------------------------------------------------------------------------
@pytest.mark.timeout(30)
def test_volatile_keeps_nothing(make_daemon, tmp_path):
    d = make_daemon(workers=1, args=("--volatile",))
    c = d.client
    gate = str(tmp_path / "gate")
    done = c.submit("tests.tasks:square", args=[4])
    assert c.result(done, timeout=10) == 16
    held = c.submit(GATED, args=[str(tmp_path / "runs.log"), "held", gate, 1])
    queued = c.submit("tests.tasks:square", args=[5])
    wait_status(c, held, "running")
    Path(gate).touch()
    assert d.stop() == 0
    assert not list(Path(d.state_dir).glob("journal*")), "a --volatile daemon wrote a journal"

    restart(d)
    c = d.client
    for tid in (done, held, queued):
        assert unknown(c, tid), f"{tid} survived a restart of a --volatile daemon"
    assert c.list() == []
    assert c.status()["performance_metrics"]["total_tasks"] == 0


# -- found on the way ----------------------------------------------------------------
@pytest.mark.timeout(30)
def test_an_idle_worker_is_not_left_idle_behind_a_prefetched_task(make_daemon, tmp_path):
    """Found by the retention test: with a long task on one worker, quick tasks must still
    flow through the other one, not wait behind the long task. Prefetch now only queues
    behind functions known to be quick, so teach it that gated_step is quick first."""
    d = make_daemon(workers=2)
    c = d.client
    log, open_gate, gate = str(tmp_path / "runs.log"), tmp_path / "open", tmp_path / "gate"
    open_gate.touch()
    warm = c.submit_many([{"function": GATED, "args": [log, f"warm{i}", str(open_gate)]} for i in range(40)])
    assert not c.wait(warm, timeout=10)["timed_out"]
    held = {"function": GATED, "args": [log, "held", str(gate)], "task_id": "held"}
    ids = c.submit_many([held] + [{"function": "tests.tasks:square", "args": [i]} for i in range(5)])[1:]
    try:
        reply = c.wait(ids, timeout=3)
    finally:
        gate.touch()
    assert not reply["timed_out"], f"stuck behind the running task: {reply['pending']}, workers {c.workers()}"


@pytest.mark.timeout(40)
def test_sighup_applies_a_new_log_level(make_daemon):
    config = 'max_workers = {}\nlog_level = "{}"\n'
    d = make_daemon(workers=None, config=config.format(1, "error"))
    d.config_path.write_text(config.format(1, "info"))
    d.proc.send_signal(signal.SIGHUP)  # more verbose: this reload is logged already
    wait_for(lambda: "configuration reloaded (log_level)" in d.log(), 10, what="the reload at info level")
    d.config_path.write_text(config.format(1, "error"))
    d.proc.send_signal(signal.SIGHUP)  # quieter: said at the old level, then quiet
    wait_for(lambda: d.log().count("configuration reloaded (log_level)") == 2, 10, what="the second reload")
    d.config_path.write_text(config.format(2, "error"))
    d.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: d.client.status()["max_workers"] == 2, 10, what="the third reload")
    assert "configuration reloaded (max_workers)" not in d.log()  # an info line, at level error


def test_one_directory_for_runtime_and_state(make_daemon, tmp_path):
    """--runtime-dir and --state-dir may be the same directory (also by another
    path): one lock file, taken once; a second daemon on it is still refused."""
    shared = tmp_path / "shared"
    first = make_daemon(workers=1, start=False)
    first.runtime_dir, first.state_dir = shared, tmp_path / "via-link"
    (tmp_path / "via-link").symlink_to(shared)
    first.socket = str(shared / "pipelined.sock")
    first.start()
    tid = first.client.submit("tests.tasks:square", args=[4])
    assert first.client.result(tid, timeout=10) == 16
    assert (shared / "journal.sqlite3").exists()
    second = make_daemon(workers=1, start=False)
    second.runtime_dir, second.state_dir = tmp_path / "other-run", shared
    proc = subprocess.run(second.command(), cwd=second.base, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "already using the journal" in proc.stderr and f"pid {first.pid}" in proc.stderr, proc.stderr
    assert first.stop() == 0
    first.start()  # and the journal is there after a restart
    assert first.client.get(tid)["result"] == 16


def test_two_daemons_never_share_a_journal(make_daemon, tmp_path):
    """Different runtime dirs, one state dir: the second daemon is refused (exit 2)
    and the first keeps its journal to itself."""
    first = make_daemon(workers=1)
    second = make_daemon(workers=1, start=False)
    second.state_dir = first.state_dir
    tid = first.client.submit("tests.tasks:square", args=[3])
    proc = subprocess.run(second.command(), cwd=second.base, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert str(first.state_dir) in proc.stderr and "already using the journal" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert first.client.result(tid, timeout=10) == 9
