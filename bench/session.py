"""One peer, one repetition: `python -m bench.session CONFIG.json`, run by the runner.

Each session is its own process (and process group) so that a peer's in-process pool,
threads, imports or a hang cannot leak into the next peer's measurement; the runner kills
the group and anything carrying the session marker when it ends. Results are appended to
the output file as one JSON line per workload as soon as each is measured, so a session
that is killed still reports what it finished.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

from bench import peers
from bench.peers.base import Context
from bench.workloads import WORKLOADS, NoFeature, Sizes

DIRTYING = {"timeout", "durability"}  # leave stuck/killed workers: restart the peer after them


def run_one(peer, workload: str, sizes: Sizes) -> dict:
    if workload in ("throughput", "latency"):
        peer.warm()
    if workload == "timeout":
        return peer.timeout()
    size = getattr(sizes, workload)
    used = min(size, peer.max_sizes.get(workload, size))
    result = {"n": used, **getattr(peer, workload)(used)}
    if used < size:
        result["capped_from"] = size
    return result

def main() -> int:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    sizes = Sizes(**cfg["sizes"])
    def emit(workload: str, result: dict) -> None:
        with open(cfg["out"], "a") as out:  # line by line: a killed session still reports what it finished
            out.write(json.dumps({"workload": workload, **result}, default=str) + "\n")

    todo = [w for w in WORKLOADS if w in cfg["workloads"]]
    try:
        cls = peers.load(cfg["peer"])
    except Exception as exc:  # noqa: BLE001 - an uninstallable peer is a result
        for w in todo:
            emit(w, {"status": "unavailable", "error": f"{type(exc).__name__}: {exc}"})
        return 0
    peer = cls(Context(tmp=Path(cfg["tmp"]), redis_url=cfg.get("redis_url"), env=dict(os.environ)))
    running = None  # the profile the peer was started with, None when stopped
    try:
        for w in todo:
            t0 = time.monotonic()
            phase = "start"
            try:
                if running != peer.profile(w):
                    if running is not None:
                        peer.stop()
                        running = None
                    peer.start(peer.profile(w))
                    running = peer.profile(w)
                phase = "run"
                result = {"status": "ok", **run_one(peer, w, sizes)}
            except NoFeature as exc:
                result = {"status": "no_feature", "note": str(exc)}
            except Exception as exc:  # noqa: BLE001 - reported per workload, the rest still runs
                result = {"status": "start_failed" if phase == "start" else "error", "error": f"{type(exc).__name__}: {exc}",
                          "traceback": traceback.format_exc(limit=6)}
            result.setdefault("api", peer.notes.get(w))
            emit(w, {**result, "wall_s": round(time.monotonic() - t0, 3)})
            if running is not None and (w in DIRTYING or result["status"] != "ok"):
                peer.stop()
                running = None
    finally:
        if running is not None:
            peer.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
