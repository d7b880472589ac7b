"""A/B of git revisions: the same quick workloads on each, alternating.

    python bench/compare.py REV [REV ...] [--runs 5] [--n 1500] [--tasks 10000] [--volatile]

Each REV (a commit, a branch, or `.` for the working tree) is checked out in a
temporary worktree; every run measures every revision once, in turn, so machine
drift hits them all. Per run and revision, a fresh daemon (2 workers) and
N sequential `ping`, `call` (where the revision has it), submit + result, and
`submit`, then 10,000 tasks (--tasks) by `submit_many` + `wait`. Printed: medians of p50
latency (µs) or tasks/s, and supervisor / worker CPU per operation or per task
(µs, psutil).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Runs in a child process whose PYTHONPATH points at one revision's packages.
PROBE = r"""
import json, sys, time
import psutil
import pipelined
from pipeline_client import Client
from bench.daemon import BenchDaemon
N, TASKS, tree, extra = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], tuple(sys.argv[4:])
assert pipelined.__file__.startswith(tree), f"imported {pipelined.__file__}, not the revision under {tree}"
NOOP = "bench.tasks:noop"
def cpu(p):
    t = p.cpu_times()
    return t.user + t.system
out = {}
with BenchDaemon(2, extra) as d, Client(d.socket) as c:
    sup = psutil.Process(d.proc.pid)
    workers = sup.children()
    ops = {"ping": c.ping, "call": lambda: c.call(NOOP, max_retries=0),
           "submit+result": lambda: c.result(c.submit(NOOP, max_retries=0), timeout=30),
           "submit": lambda: c.submit(NOOP, max_retries=0)}
    for name, fn in ops.items():
        try:
            for _ in range(200):
                fn()
        except AttributeError:  # an older revision without it
            continue
        lat = []
        s0, w0 = cpu(sup), sum(cpu(w) for w in workers)
        for _ in range(N):
            t0 = time.perf_counter()
            fn()
            lat.append(time.perf_counter() - t0)
        lat.sort()
        out[name] = [lat[N // 2] * 1e6, (cpu(sup) - s0) / N * 1e6, (sum(cpu(w) for w in workers) - w0) / N * 1e6]
    s0, w0 = cpu(sup), sum(cpu(w) for w in workers)
    t0 = time.perf_counter()
    ids = []
    for at in range(0, TASKS, 1000):
        ids += c.submit_many([{"function": NOOP, "max_retries": 0}] * min(1000, TASKS - at))
    c.wait(ids, timeout=300)
    # CPU per task: the throughput path's cost, which tasks/s alone hides on a busy machine.
    out["A tasks/s"] = [TASKS / (time.perf_counter() - t0), (cpu(sup) - s0) / TASKS * 1e6, (sum(cpu(w) for w in workers) - w0) / TASKS * 1e6]
print(json.dumps(out))
"""


def checkout(rev: str, scratch: str) -> Path:
    if rev == ".":
        return REPO
    path = Path(scratch) / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "-f", str(path), rev], check=True, capture_output=True)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("revs", nargs="+", help="git revisions; '.' is the working tree")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n", type=int, default=1500, help="sequential operations per latency figure")
    ap.add_argument("--tasks", type=int, default=10_000, help="tasks submitted by submit_many (batches of 1,000) and waited for")
    ap.add_argument("--volatile", action="store_true", help="run the daemons without their journal")
    args = ap.parse_args()
    scratch = tempfile.mkdtemp(prefix="bench-compare-")
    trees = {}
    try:
        trees = {rev: checkout(rev, scratch) for rev in args.revs}
        results: dict[str, list[dict]] = {rev: [] for rev in args.revs}
        for run in range(args.runs):
            for rev, tree in trees.items():
                # The revision's packages first; bench/ (BenchDaemon, the no-op task) from this checkout.
                path = os.pathsep.join([str(tree / "daemon"), str(tree / "protocol"), str(tree / "client"), str(REPO)])
                cmd = [sys.executable, "-c", PROBE, str(args.n), str(args.tasks), str(tree), *(["--volatile"] if args.volatile else [])]
                proc = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=path), cwd=REPO, capture_output=True, text=True)
                if proc.returncode:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    return 1
                results[rev].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)
        figures = list(dict.fromkeys(k for runs in results.values() for r in runs for k in r))
        print("| figure (median; CPU: supervisor / workers, µs per op) | " + " | ".join(args.revs) + " |")
        print("|---|" + "---:|" * len(args.revs))
        for fig in figures:
            cells = []
            for rev in args.revs:
                rows = [r[fig] for r in results[rev] if fig in r]
                if not rows:
                    cells.append("–")
                    continue
                med = [statistics.median(row[i] for row in rows) for i in range(3)]
                cells.append(f"{med[0]:,.0f}" + ("" if math.isnan(med[1]) else f" ({med[1]:,.0f} / {med[2]:,.0f})"))
            print(f"| {fig} | " + " | ".join(cells) + " |")
    finally:
        for rev, tree in trees.items():
            if tree != REPO:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
