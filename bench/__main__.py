"""python -m bench: pipelined against its peers, on the same machine, in the same run.

    python -m bench [--quick] [--runs N] [--peers a,b] [--workloads x,y]

Installs (once) its own venv .bench-venv/ and re-execs itself there, starts a private
Redis for the broker-based peers, runs every selected peer's workloads `--runs` times
(round-robin: each repetition runs every peer once, so drift hits them all), and writes
bench/results/latest.md and latest.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench import env

# Mirrors bench.peers.PEERS (not imported here: this must run before the venv exists).
PEER_NAMES = ["pipelined", "ppe", "pipelined-volatile", "mp-pool", "loky", "pebble", "huey", "rq", "celery", "dask", "dramatiq"]
WORKLOAD_NAMES = ["throughput", "latency", "timeout", "priority", "dag", "durability"]
PAIR = "pipelined-pair"  # pipelined's A and B, run right before each peer for the ratios
PAIRED_WORKLOADS = ["throughput", "latency"]


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, help="repetitions; each figure is their median (default 3, --quick 1)")
    ap.add_argument("--peers", default=",".join(PEER_NAMES), help=f"comma-separated, from: {','.join(PEER_NAMES)}")
    ap.add_argument("--workloads", default=",".join(WORKLOAD_NAMES), help=f"comma-separated, from: {','.join(WORKLOAD_NAMES)}")
    ap.add_argument("--quick", action="store_true", help="small sizes and 1 run, for development")
    ap.add_argument("--size", action="append", default=[], metavar="WORKLOAD=N",
                    help="override one size, e.g. --size dag=500 (repeatable)")
    ap.add_argument("--out", default=str(env.REPO / "bench" / "results"), help="where latest.md / latest.json go")
    ap.add_argument("--session-timeout", type=float, default=900, help="kill a peer's session after this many seconds")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the scratch dir (task files, peer logs)")
    args = ap.parse_args(argv)
    given = [p.strip() for p in args.peers.split(",") if p.strip()]
    args.peers = [p for p in PEER_NAMES if p in given] + [p for p in given if p not in PEER_NAMES]  # canonical order
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    for name, given, known in (("peer", args.peers, PEER_NAMES), ("workload", args.workloads, WORKLOAD_NAMES)):
        unknown = [x for x in given if x not in known]
        if unknown:
            ap.error(f"unknown {name}(s): {', '.join(unknown)} (known: {', '.join(known)})")
    try:
        args.size = {k: int(v) for k, v in (item.split("=", 1) for item in args.size)}
    except ValueError:
        ap.error("--size takes WORKLOAD=N")
    if args.runs is None:
        args.runs = 1 if args.quick else 3
    if args.runs < 3:
        print(f"bench: --runs {args.runs}: figures of fewer than 3 runs are for development, not for the README", file=sys.stderr)
    return args


def main() -> int:
    args = parse_args(sys.argv[1:])  # before the venv dance: a typo should not cost an install
    # The command as typed (kept across the re-exec into the venv, which changes sys.orig_argv).
    command = os.environ.setdefault("BENCH_COMMAND", shlex.join(sys.orig_argv))
    env.ensure_venv()  # may re-exec us inside .bench-venv

    from bench import peers, procs, report
    from bench.redis_server import RedisServer, RedisUnavailable
    from bench.workloads import Sizes

    sizes = Sizes.quick() if args.quick else Sizes()
    for key, value in args.size.items():
        if not hasattr(sizes, key):
            sys.exit(f"bench: unknown size {key!r} (known: {', '.join(sizes.as_dict())})")
        setattr(sizes, key, value)
    run_mark = uuid.uuid4().hex
    os.environ[procs.MARK] = run_mark  # inherited by every process we start, and theirs
    os.environ["PYTHONPATH"] = os.pathsep.join([str(env.REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    for sig in (signal.SIGINT, signal.SIGTERM):  # the same clean-up for both (SIGINT too: a shell
        signal.signal(sig, interrupt)          # starts background jobs with it ignored)

    scratch = Path(tempfile.mkdtemp(prefix="bench-"))
    doc = {"command": command, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "machine": env.machine_info(),
           "packages": env.package_versions(), "install_failures": env.install_failures(), "runs": args.runs,
           "sizes": sizes.as_dict(), "peers": args.peers, "workloads": args.workloads,
           "labels": {}, "raw": {p: {} for p in args.peers}, "pairs": {}, "leftovers": {}, "final_leftovers": []}
    redis = None
    interrupted = False
    try:
        if peers.NEEDS_REDIS & set(args.peers):
            try:
                redis = RedisServer(dict(os.environ))
                print(f"bench: redis-server on {redis.url}", flush=True)
                doc["packages"]["redis-server"] = redis.version
            except RedisUnavailable as exc:
                print(f"bench: {exc}; the Redis-based peers will be reported as not started", flush=True)
                doc["redis_error"] = str(exc)
        # The ratios compare pipelined with each peer as measured right before it (a pair
        # session: A and B only), so a drift of the machine's speed hits both sides.
        paired = [w for w in PAIRED_WORKLOADS if w in args.workloads] if "pipelined" in args.peers else []
        for rep in range(args.runs):
            for peer in args.peers:
                if paired and peer not in peers.BASELINES:
                    print(f"bench: run {rep + 1}/{args.runs} pipelined (pair of {peer}) ...", flush=True)
                    pair = {r.pop("workload"): {**r, "rep": rep} for r in run_session(PAIR, rep, args, sizes, scratch, redis, doc, paired)}
                    doc["pairs"].setdefault(peer, []).append(pair)
                print(f"bench: run {rep + 1}/{args.runs} {peer} ...", flush=True)
                results = run_session(peer, rep, args, sizes, scratch, redis, doc, args.workloads)
                for r in results:
                    doc["raw"][peer].setdefault(r.pop("workload"), []).append({**r, "rep": rep})
                print("       " + "; ".join(f"{w}: {brief(rs[-1])}" for w, rs in doc["raw"][peer].items()), flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\nbench: interrupted; cleaning up", flush=True)
    finally:
        if redis:
            redis.stop()
        doc["final_leftovers"] = procs.kill_marked(run_mark, exclude={os.getpid()})
        if not args.keep_tmp:
            shutil.rmtree(scratch, ignore_errors=True)
    doc["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    doc["interrupted"] = interrupted
    doc["labels"] = {p: peers.LABELS[p] for p in args.peers}
    doc["medians"] = {p: {w: report.summarize(rs) for w, rs in doc["raw"][p].items()} for p in args.peers}
    md = report.write(doc, Path(args.out))
    print(md)
    print(f"bench: wrote {args.out}/latest.md and latest.json" + (f"; scratch kept in {scratch}" if args.keep_tmp else ""))
    return 130 if interrupted else 0


def interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def run_session(peer: str, rep: int, args, sizes, scratch: Path, redis, doc: dict, workloads: list[str]) -> list[dict]:
    """Run one peer's `workloads` in a child process; return its per-workload results."""
    from bench import peers, procs

    tmp = Path(tempfile.mkdtemp(prefix=f"{rep}-{peer}-", dir=scratch))  # a peer's pair sessions run once per peer
    out = tmp / "results.jsonl"
    if peer in peers.NEEDS_REDIS:
        if redis is None:
            return [{"workload": w, "status": "start_failed", "error": doc.get("redis_error", "no redis")} for w in workloads]
        redis.flushall()  # every session starts from an empty broker
    cfg = {"peer": peer, "workloads": workloads, "sizes": sizes.as_dict(), "tmp": str(tmp), "out": str(out),
           "redis_url": redis.url if redis else None}
    (tmp / "config.json").write_text(json.dumps(cfg))
    session_mark = f"{rep}-{peer}-{uuid.uuid4().hex[:8]}"
    child_env = {**os.environ, procs.SESSION_MARK: session_mark}
    if redis:
        child_env["BENCH_REDIS_URL"] = redis.url  # read by bench/peer_apps/*
    proc = procs.spawn([sys.executable, "-m", "bench.session", str(tmp / "config.json")], env=child_env, cwd=env.REPO,
                       log=tmp / "session.log")
    timed_out = False
    try:
        proc.wait(args.session_timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        procs.stop(proc, grace=5)
        left = procs.kill_marked(session_mark, var=procs.SESSION_MARK)
        if left:
            doc["leftovers"].setdefault(peer, []).extend(left)
    results = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    done = {r["workload"] for r in results}
    for w in workloads:
        if w not in done:
            why = f"session timed out after {args.session_timeout:g} s" if timed_out else \
                f"session ended early (exit {proc.returncode}); see its log: {tail(tmp / 'session.log')}"
            results.append({"workload": w, "status": "error", "error": why})
    return results


def tail(path: Path, n: int = 600) -> str:
    try:
        return path.read_text()[-n:]
    except OSError:
        return ""


def brief(r: dict) -> str:
    if r.get("status") != "ok":
        return str(r.get("status"))
    for key, fmt in (("tasks_per_s", "{:,.0f}/s"), ("p50_us", "p50 {:,.0f}us"), ("position", "pos {}"),
                     ("seconds", "{:.2f}s"), ("completed", "{} done")):
        if key in r:
            return fmt.format(r[key])
    if "killed" in r:
        return f"killed={r['killed']} late={r.get('late_ms') and round(r['late_ms'])}ms gc_survived={r['grandchild_survived']}"
    return "ok"


if __name__ == "__main__":
    sys.exit(main())
