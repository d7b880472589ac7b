"""Throughput and round-trip latency of pipelined against ProcessPoolExecutor(2).

    python bench/throughput.py [--tasks 20000] [--roundtrips 1000] [--workers 2]

(a) N no-op tasks via single `submit`, then wait for all;
(b) the same via `submit_many` (batches of 1,000);
(c) sequential submit -> result round trips, p50 / p99, and the same with
    Client.call (submit and wait in one exchange);
(d) how late a hard timeout is enforced (deadline -> worker killed);
and the same workloads on concurrent.futures.ProcessPoolExecutor in the same run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.daemon import BenchDaemon  # noqa: E402
from bench.tasks import noop  # noqa: E402
from pipeline_client import Client, TaskFailed  # noqa: E402

NOOP = "bench.tasks:noop"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def pipelined_single(c: Client, n: int) -> float:
    t0 = time.perf_counter()
    ids = [c.submit(NOOP, max_retries=0) for _ in range(n)]
    c.wait(ids, timeout=300)
    return n / (time.perf_counter() - t0)


def pipelined_batch(c: Client, n: int, batch: int = 1000) -> float:
    t0 = time.perf_counter()
    ids: list[str] = []
    for i in range(0, n, batch):
        ids += c.submit_many([{"function": NOOP, "max_retries": 0}] * min(batch, n - i))
    c.wait(ids, timeout=300)
    return n / (time.perf_counter() - t0)


def pipelined_roundtrip(c: Client, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.result(c.submit(NOOP, max_retries=0), timeout=30)
        out.append(time.perf_counter() - t0)
    return out


def pipelined_call_roundtrip(c: Client, n: int) -> list[float]:
    """Client.call: submit and result in one exchange."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        c.call(NOOP, max_retries=0)
        out.append(time.perf_counter() - t0)
    return out


def pipelined_timeout_lateness(c: Client, runs: int = 5, timeout_s: float = 0.2) -> list[float]:
    late = []
    for _ in range(runs):
        tid = c.submit("bench.tasks:sleep_forever", timeout=timeout_s, max_retries=0)
        try:
            c.result(tid, timeout=30)
        except TaskFailed:
            pass
        rec = c.get(tid)
        late.append(rec["end_time"] - rec["start_time"] - timeout_s)
    return late


def ppe_single(ex: cf.Executor, n: int) -> float:
    t0 = time.perf_counter()
    futs = [ex.submit(noop) for _ in range(n)]
    cf.wait(futs)
    return n / (time.perf_counter() - t0)


def ppe_roundtrip(ex: cf.Executor, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        ex.submit(noop).result()
        out.append(time.perf_counter() - t0)
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--roundtrips", type=int, default=1_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--volatile", action="store_true", help="run the daemon without its journal")
    args = ap.parse_args()

    with BenchDaemon(args.workers, ("--volatile",) if args.volatile else ()) as d, Client(d.socket) as c:
        pipelined_roundtrip(c, 50)  # warm up
        single = pipelined_single(c, args.tasks)
        batch = pipelined_batch(c, args.tasks)
        rtt = pipelined_roundtrip(c, args.roundtrips)
        call = pipelined_call_roundtrip(c, args.roundtrips)
        late = pipelined_timeout_lateness(c)
    with cf.ProcessPoolExecutor(args.workers) as ex:
        ppe_roundtrip(ex, 50)
        p_single = ppe_single(ex, args.tasks)
        p_rtt = ppe_roundtrip(ex, args.roundtrips)

    rows = [
        ("(a) submit, tasks/s", f"{single:,.0f}", f"{p_single:,.0f}", f"{single / p_single:.2f}x"),
        ("(b) submit_many, tasks/s", f"{batch:,.0f}", f"{p_single:,.0f}", f"{batch / p_single:.2f}x"),
        ("(c) round trip p50, us", f"{statistics.median(rtt) * 1e6:,.0f}", f"{statistics.median(p_rtt) * 1e6:,.0f}", f"{statistics.median(p_rtt) / statistics.median(rtt):.2f}x faster"),
        ("(c) round trip p99, us", f"{pct(rtt, 0.99) * 1e6:,.0f}", f"{pct(p_rtt, 0.99) * 1e6:,.0f}", ""),
        ("(c') call round trip p50, us", f"{statistics.median(call) * 1e6:,.0f}", f"{statistics.median(p_rtt) * 1e6:,.0f}", f"{statistics.median(p_rtt) / statistics.median(call):.2f}x faster"),
        ("(c') call round trip p99, us", f"{pct(call, 0.99) * 1e6:,.0f}", f"{pct(p_rtt, 0.99) * 1e6:,.0f}", ""),
        ("(d) timeout kill lateness max, ms", f"{max(late) * 1e3:.1f}", "no hard timeout", ""),
    ]
    mode = "volatile" if args.volatile else "journal on"
    print(f"pipelined ({mode}) vs ProcessPoolExecutor({args.workers}), {args.tasks:,} no-op tasks, {args.roundtrips:,} round trips")
    print(f"| {'workload':36} | {'pipelined':>10} | {'PPE':>16} | {'ratio':>12} |")
    print(f"|{'-' * 38}|{'-' * 12}|{'-' * 18}|{'-' * 14}|")
    for name, a, b, r in rows:
        print(f"| {name:36} | {a:>10} | {b:>16} | {r:>12} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
