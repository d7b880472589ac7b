"""Scale curves: does the cost per task stay flat as the queue grows? (issue #8, item 5)

    python bench/scale.py [--sizes 10000,100000,1000000] [--volatile] [--batch 1000]
                          [--shape mixed|flat] [--type-limit K] [--profile DIR] [--max-drain-s 900]

For each size N, against a private daemon (BenchDaemon, 2 workers):

1. a gate task (bench.tasks:wait_for_file) starts and blocks on one worker;
2. N no-op tasks are submitted with `submit_many` in batches, all held PENDING
   behind the gate: half in chains of 10 (each link depends on the one before,
   the head on the gate), half in fan-outs (a parent on the gate, 100 children
   on the parent). Task ids are random 16-hex strings, like the daemon's own.
   --shape flat: every task depends on the gate alone, so all N are queued at
   once when it opens. --type-limit K: every task has task_type "scale" and
   the daemon gets [task_types.scale] max_concurrent = K;
3. with the queue full: the supervisor's RSS (psutil) and the journal's size on
   disk, and the time of `status`, `queue_status`, `get` and `list` requests
   (the same requests are timed on the empty daemon first, for comparison);
4. the gate is released (its file created) and the whole queue drains; the
   completed count is polled every 20 ms.

Reported per N: submit cost (client round trip and supervisor CPU, us per task)
over the first and the last 10% of the batches, and the drain cost (wall and
supervisor CPU, us per task) over the first and the last 10% of the tasks. A
flat curve has last/first ~ 1.0. Deciles of both go to the JSON
(bench/results/scale.json, merged by mode and size across runs).

--profile DIR records the supervisor with py-spy (raw/collapsed stacks, 200 Hz,
--nonblocking) during the submit phase and during the drain, one file each.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.daemon import REPO, BenchDaemon
from pipeline_client import Client

NOOP = "bench.tasks:noop"
GATE = "bench.tasks:wait_for_file"
CHAIN_LEN = 10
FANOUT = 100
CHAINS_PER_ROUND = 10  # 10 chains of 10 (100 tasks), then one fan-out (101): about half each
POLL_S = 0.02
RESULTS = REPO / "bench" / "results" / "scale.json"
PY_SPY = Path(sys.executable).with_name("py-spy")


# -- the workload ---------------------------------------------------------------
def _tid() -> str:
    return os.urandom(8).hex()


def task_stream(gate_id: str, shape: str = "mixed", task_type: str | None = None):
    """Endless specs, all behind the gate: chains of CHAIN_LEN and fan-outs of
    1 + FANOUT ("mixed"), or independent tasks that depend on the gate alone ("flat")."""
    extra = {"task_type": task_type} if task_type else {}

    def spec(tid: str, dep: str) -> dict:
        return {"task_id": tid, "function": NOOP, "dependencies": [dep], "max_retries": 0, **extra}

    while True:
        if shape == "flat":
            yield spec(_tid(), gate_id)
            continue
        for _ in range(CHAINS_PER_ROUND):
            prev = gate_id
            for _ in range(CHAIN_LEN):
                tid = _tid()
                yield spec(tid, prev)
                prev = tid
        parent = _tid()
        yield spec(parent, gate_id)
        for _ in range(FANOUT):
            yield spec(_tid(), parent)


# -- helpers ----------------------------------------------------------------------
def cpu_s(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def rss_mb(proc: psutil.Process) -> float:
    return proc.memory_info().rss / 1048576


def journal_bytes(d: BenchDaemon) -> dict[str, int]:
    base = os.path.join(d.dir, "state", "journal.sqlite3")
    out = {}
    for suffix in ("", "-wal", "-shm"):
        try:
            out["db" + suffix.replace("-", "_")] = os.path.getsize(base + suffix)
        except FileNotFoundError:
            pass
    return out


def timed(fn, reps: int) -> dict[str, float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_ms": statistics.median(times) * 1e3, "max_ms": max(times) * 1e3, "reps": reps}


def request_timings(c: Client, some_id: str | None, reps: int) -> dict[str, dict[str, float]]:
    ops = {
        "ping": c.ping,
        "status": c.status,
        "queue_status": c.queue_status,
        "list(limit=100)": lambda: c.list(limit=100),
        "list(state=pending,limit=100)": lambda: c.list(state="pending", limit=100),
        "list(state=queued,limit=100)": lambda: c.list(state="queued", limit=100),
        "list(state=failed,limit=100)": lambda: c.list(state="failed", limit=100),
    }
    if some_id is not None:
        ops["get"] = lambda: c.get(some_id)
    return {name: timed(fn, reps) for name, fn in ops.items()}


def window(samples: list[tuple[float, float, int]], lo: int, hi: int) -> dict[str, float]:
    """Cost over samples[lo:hi] of (wall s, supervisor cpu s, tasks)."""
    part = samples[lo:hi]
    n = sum(s[2] for s in part)
    wall = sum(s[0] for s in part)
    cpu = sum(s[1] for s in part)
    return {
        "tasks": n,
        "us_per_task": wall / n * 1e6,
        "tasks_per_s": n / wall if wall else float("inf"),
        "sup_cpu_us_per_task": cpu / n * 1e6,
    }


def crossing(progress: list[tuple[float, float, int]], target: float) -> tuple[float, float]:
    """(time, cpu) at which the done count reached `target`, interpolated between polls."""
    prev = progress[0]
    for cur in progress:
        if cur[2] >= target:
            if cur[2] == prev[2]:
                return cur[0], cur[1]
            f = (target - prev[2]) / (cur[2] - prev[2])
            return prev[0] + f * (cur[0] - prev[0]), prev[1] + f * (cur[1] - prev[1])
        prev = cur
    return progress[-1][0], progress[-1][1]


class Profiler:
    """py-spy record of the supervisor for one phase (stopped with SIGINT, which writes the file)."""

    def __init__(self, out_dir: str | None, pid: int, name: str):
        self.proc = None
        if out_dir is None:
            return
        os.makedirs(out_dir, exist_ok=True)
        self.path = os.path.join(out_dir, f"{name}.txt")
        self.log = open(os.path.join(out_dir, f"{name}.log"), "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(PY_SPY), "record", "-p", str(pid), "-f", "raw", "-o", self.path, "--nonblocking", "-r", "200"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        time.sleep(0.5)  # let it attach

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        self.proc = None


# -- one size -------------------------------------------------------------------
def label(args: argparse.Namespace) -> str:
    """The run's mode: journal|volatile, plus the shape and type limit when not the defaults."""
    out = "volatile" if args.volatile else "journal"
    if args.shape != "mixed":
        out += "-" + args.shape
    if args.type_limit:
        out += f"-typelimit{args.type_limit}"
    return out


def run_size(n: int, args: argparse.Namespace) -> dict:
    extra = ["--shutdown-grace", "2"]
    if args.volatile:
        extra.append("--volatile")
    config = None
    if args.type_limit:
        fd, config = tempfile.mkstemp(prefix="pipelined-scale-", suffix=".toml")
        with os.fdopen(fd, "w") as f:
            f.write(f"[task_types.scale]\nmax_concurrent = {args.type_limit}\n")
        extra += ["--config", config]
    try:
        d = BenchDaemon(args.workers, tuple(extra))
    finally:
        if config is not None:
            os.unlink(config)
    gate_file = os.path.join(d.dir, "gate")
    worker_pids: set[int] = set()
    profiler = None
    try:
        sup = psutil.Process(d.proc.pid)
        with Client(d.socket, timeout=300) as c:
            worker_pids |= {w["pid"] for w in c.workers()}
            # Warm up: imports in the workers, the function's typical run time (prefetch).
            c.wait(c.submit_many([{"function": NOOP, "max_retries": 0}] * 200), timeout=60)
            base = c.status()
            base_done = base["completed_tasks"] + base["failed_tasks"] + base["cancelled_tasks"]
            empty_requests = request_timings(c, None, args.reps)
            rss_empty = rss_mb(sup)

            gate_id = c.submit(GATE, args=[gate_file], timeout=3600, max_retries=0, task_id="gate-" + _tid())
            while c.status()["running_tasks"] < 1:
                time.sleep(0.01)

            # -- submit -----------------------------------------------------
            profiler = Profiler(args.profile, sup.pid, f"scale-{label(args)}-{n}-submit")
            stream = task_stream(gate_id, args.shape, "scale" if args.type_limit else None)
            samples: list[tuple[float, float, int]] = []  # (wall s, supervisor cpu s, tasks) per batch
            last_id = None
            left = n
            t_submit = time.perf_counter()
            while left > 0:
                batch = list(itertools.islice(stream, min(args.batch, left)))
                cpu0 = cpu_s(sup)
                t0 = time.perf_counter()
                ids = c.submit_many(batch)
                dt = time.perf_counter() - t0
                samples.append((dt, cpu_s(sup) - cpu0, len(batch)))
                last_id = ids[-1]
                left -= len(batch)
            submit_wall = time.perf_counter() - t_submit
            profiler.stop()

            # -- queue full -------------------------------------------------
            st = c.status()
            assert st["pending_tasks"] >= n, st
            rss_full = rss_mb(sup)
            journal_full = journal_bytes(d)
            full_requests = request_timings(c, last_id, args.reps)

            # -- drain ------------------------------------------------------
            profiler = Profiler(args.profile, sup.pid, f"scale-{label(args)}-{n}-drain")
            cpu_release = cpu_s(sup)
            t_release = time.perf_counter()
            Path(gate_file).touch()
            progress: list[tuple[float, float, int]] = [(0.0, 0.0, 0)]  # (s since release, supervisor cpu s, tasks done)
            aborted = False
            while True:
                time.sleep(POLL_S)
                st = c.status()
                done = st["completed_tasks"] + st["failed_tasks"] + st["cancelled_tasks"] - base_done - 1  # minus the gate
                progress.append((time.perf_counter() - t_release, cpu_s(sup) - cpu_release, max(0, done)))
                if done >= n:
                    break
                if progress[-1][0] > args.max_drain_s:
                    aborted = True
                    break
            profiler.stop()
            drain_wall = progress[-1][0]
            failed = st["failed_tasks"] - base["failed_tasks"]
            rss_drained = rss_mb(sup)
            journal_drained = journal_bytes(d)

        # Deciles of the drain: time and supervisor CPU per 10% of the tasks.
        marks = [crossing(progress, n * k / 10) for k in range(11)]
        drain_deciles = [
            {
                "us_per_task": (marks[k + 1][0] - marks[k][0]) / (n / 10) * 1e6,
                "sup_cpu_us_per_task": (marks[k + 1][1] - marks[k][1]) / (n / 10) * 1e6,
            }
            for k in range(10)
        ]
        nb = len(samples)
        k = max(1, nb // 10)
        submit_deciles = [window(samples, i * nb // 10, (i + 1) * nb // 10) for i in range(10)] if nb >= 10 else []
        return {
            "tasks": n,
            "mode": label(args),
            "volatile": args.volatile,
            "shape": args.shape,
            "type_limit": args.type_limit,
            "batch": args.batch,
            "workers": args.workers,
            "submit": {
                "total_s": submit_wall,
                "first_10pct": window(samples, 0, k),
                "last_10pct": window(samples, nb - k, nb),
                "batch_ms_median": statistics.median(s[0] for s in samples) * 1e3,
                "batch_ms_max": max(s[0] for s in samples) * 1e3,
                "deciles": submit_deciles,
            },
            "memory": {
                "rss_empty_mb": rss_empty,
                "rss_full_mb": rss_full,
                "rss_drained_mb": rss_drained,
                "bytes_per_queued_task": (rss_full - rss_empty) * 1048576 / n,
            },
            "journal": {"full": journal_full, "drained": journal_drained},
            "requests_empty": empty_requests,
            "requests_full": full_requests,
            "drain": {
                "aborted": aborted,
                "total_s": drain_wall,
                "done": progress[-1][2],
                "failed": failed,
                "us_per_task": drain_wall / max(1, progress[-1][2]) * 1e6,
                "first_10pct": drain_deciles[0],
                "last_10pct": drain_deciles[-1],
                "deciles": drain_deciles,
            },
        }
    finally:
        if profiler is not None:
            profiler.stop()
        Path(gate_file).touch()  # a gate still waiting must not hold up the stop
        try:
            d.stop()
        except subprocess.TimeoutExpired:
            d.proc.kill()
            d.proc.wait()
        for pid in worker_pids:  # workers die with the supervisor (PDEATHSIG); make sure
            try:
                psutil.Process(pid).kill()
            except psutil.Error:
                pass
        shutil.rmtree(d.dir, ignore_errors=True)


# -- output ---------------------------------------------------------------------
def ratio(a: float, b: float) -> str:
    return f"{b / a:.2f}x" if a else "-"


def print_tables(runs: list[dict]) -> None:
    mode = runs[0]["mode"]
    print(
        f"\nscale curves ({mode}, {runs[0]['shape']} shape, {runs[0]['workers']} workers, submit_many batches of {runs[0]['batch']}; "
        f"first/last = first and last 10% of the batches or of the drained tasks)\n"
    )
    print(
        "| N | submit us/task first → last | (tasks/s last) | sup CPU us/task first → last | max batch ms | RSS MB full | bytes/task | journal MB (db+wal) |"
    )
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    for r in runs:
        s, m, j = r["submit"], r["memory"], r["journal"]["full"]
        f, l = s["first_10pct"], s["last_10pct"]
        jmb = sum(j.values()) / 1048576 if j else 0.0
        jtxt = f"{jmb:,.1f} ({j.get('db', 0) / 1048576:,.1f}+{j.get('db_wal', 0) / 1048576:,.1f})" if j else "-"
        print(
            f"| {r['tasks']:,} | {f['us_per_task']:.1f} → {l['us_per_task']:.1f} ({ratio(f['us_per_task'], l['us_per_task'])}) | {l['tasks_per_s']:,.0f} "
            f"| {f['sup_cpu_us_per_task']:.1f} → {l['sup_cpu_us_per_task']:.1f} ({ratio(f['sup_cpu_us_per_task'], l['sup_cpu_us_per_task'])}) "
            f"| {s['batch_ms_max']:,.0f} | {m['rss_full_mb']:,.0f} | {m['bytes_per_queued_task']:,.0f} | {jtxt} |"
        )
    print()
    print("| N | drain us/task first → last | sup CPU us/task first → last | drain total s | failed |")
    print("|---:|---|---|---:|---:|")
    for r in runs:
        dr = r["drain"]
        f, l = dr["first_10pct"], dr["last_10pct"]
        flag = " (ABORTED)" if dr["aborted"] else ""
        print(
            f"| {r['tasks']:,} | {f['us_per_task']:.1f} → {l['us_per_task']:.1f} ({ratio(f['us_per_task'], l['us_per_task'])}) "
            f"| {f['sup_cpu_us_per_task']:.1f} → {l['sup_cpu_us_per_task']:.1f} ({ratio(f['sup_cpu_us_per_task'], l['sup_cpu_us_per_task'])}) "
            f"| {dr['total_s']:,.1f}{flag} | {dr['failed']} |"
        )
    print()
    names = list(runs[0]["requests_full"])
    print("| request (median ms, queue full; empty daemon in brackets) | " + " | ".join(f"N={r['tasks']:,}" for r in runs) + " |")
    print("|---|" + "---:|" * len(runs))
    for name in names:
        cells = []
        for r in runs:
            full = r["requests_full"][name]["median_ms"]
            empty = r["requests_empty"].get(name, {}).get("median_ms")
            cells.append(f"{full:,.2f}" + (f" [{empty:,.2f}]" if empty is not None else ""))
        print(f"| {name} | " + " | ".join(cells) + " |")


def save(runs: list[dict]) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    try:
        doc = json.loads(RESULTS.read_text())
    except (FileNotFoundError, ValueError):
        doc = {"runs": []}
    keys = {(r["mode"], r["tasks"]) for r in runs}
    doc["runs"] = [r for r in doc.get("runs", []) if (r.get("mode"), r.get("tasks")) not in keys] + runs
    doc["runs"].sort(key=lambda r: (r["mode"], r["tasks"]))
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")


def code_under_test() -> str:
    """Which daemon code runs: the git revision of the repo (+dirty), or the
    directory it is imported from when PYTHONPATH points elsewhere."""
    import pipelined

    where = Path(pipelined.__file__).resolve().parent.parent.parent
    if where != REPO:
        return f"pipelined from {where}"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "daemon", "protocol"], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        rev = dirty = ""
    return rev + ("+dirty" if dirty else "") if rev else f"{REPO} (not a git checkout)"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10000,100000,1000000", help="comma-separated queue sizes")
    ap.add_argument("--volatile", action="store_true", help="run the daemon without its journal")
    ap.add_argument("--batch", type=int, default=1000, help="tasks per submit_many")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--shape",
        choices=("mixed", "flat"),
        default="mixed",
        help="mixed: chains of 10 and fan-outs of 100 behind the gate; flat: every task on the gate alone",
    )
    ap.add_argument(
        "--type-limit",
        type=int,
        default=0,
        metavar="K",
        help="give every task task_type 'scale', limited to K running at once ([task_types] max_concurrent)",
    )
    ap.add_argument("--reps", type=int, default=7, help="repetitions of each timed request")
    ap.add_argument("--max-drain-s", type=float, default=900.0, help="give up on a drain after this long")
    ap.add_argument("--profile", metavar="DIR", help="record the supervisor with py-spy into DIR (submit and drain)")
    args = ap.parse_args()
    sizes = [int(s.replace("_", "")) for s in args.sizes.split(",") if s.strip()]

    runs = []
    for n in sizes:
        print(f"N={n:,}: submitting ...", file=sys.stderr, flush=True)
        code = code_under_test()  # before the run: the tree may change while it goes
        r = run_size(n, args)
        r["code"] = code
        r["date"] = datetime.datetime.now().isoformat(timespec="seconds")
        runs.append(r)
        save(runs)  # keep what we have if a later size is interrupted
        print(f"N={n:,}: submit {r['submit']['total_s']:.1f}s, drain {r['drain']['total_s']:.1f}s", file=sys.stderr, flush=True)
    print_tables(runs)
    print(f"\nJSON: {RESULTS.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
