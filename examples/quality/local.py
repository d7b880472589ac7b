"""Run the quality pipeline without a daemon: for debugging stages and timing them.

    python -m examples.quality.local [--shards N] [--jobs J] [--target DIR] [--work DIR]

Runs prepare, then each sharded stage's shards (one after another, or J at a
time in a process pool), then the report, and prints the report's summary and
the wall time of each stage. The same functions pipelined runs; only the
scheduling differs, so comparing this with `pipelinectl run` shows what the
daemon adds. Parameters other than these flags come from the environment, as
under pipelined (see params.py).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor

from . import stages

SHARDED = ("scan", "fix", "validate")


def main(argv: list[str] | None = None) -> int:
    opts = _parse(argv)
    if opts.target:
        os.environ["TARGET"] = opts.target
    if opts.work:
        os.environ["WORK"] = opts.work
    started = time.perf_counter()
    _timed("prepare", stages.prepare)
    for name in SHARDED:
        _timed(name, lambda name=name: _run_shards(getattr(stages, name), opts.shards, opts.jobs))
    summary = _timed("report", stages.report)
    print(f"total     {time.perf_counter() - started:7.2f} s  (shards={opts.shards}, jobs={opts.jobs})")
    print(json.dumps(summary, indent=1))
    return 0


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m examples.quality.local", description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=4, help="shards per sharded stage (default 4)")
    parser.add_argument("--jobs", type=int, default=1, help="shards run at once (default 1: serial)")
    parser.add_argument("--target", help="folder to lint (default: TARGET, else the stdlib)")
    parser.add_argument("--work", help="work folder (default: WORK, else .work/quality)")
    return parser.parse_args(argv)


def _timed(name: str, step):
    started = time.perf_counter()
    result = step()
    print(f"{name:9} {time.perf_counter() - started:7.2f} s")
    return result


def _run_shards(function, shards: int, jobs: int) -> list:
    if jobs <= 1:
        return [function(shard=i, shards=shards) for i in range(shards)]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(function, shard=i, shards=shards) for i in range(shards)]
        return [f.result() for f in futures]


if __name__ == "__main__":
    raise SystemExit(main())
