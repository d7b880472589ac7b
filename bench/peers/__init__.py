"""The peers, in the order they run in each repetition (each one right after a pipelined
"pair" session of A and B, from which its ratios are computed, so machine drift hits both). Modules are imported lazily, in the session process, so a
peer whose package failed to install is reported as such instead of breaking the run."""

from __future__ import annotations

import importlib

# name -> "module:Class"
PEERS = {
    "pipelined": "bench.peers.pipelined:Pipelined",
    "ppe": "bench.peers.ppe:ProcessPoolExecutorPeer",
    "pipelined-volatile": "bench.peers.pipelined:PipelinedVolatile",
    "mp-pool": "bench.peers.mp_pool:MultiprocessingPoolPeer",
    "loky": "bench.peers.loky:LokyPeer",
    "pebble": "bench.peers.pebble:PebblePeer",
    "huey": "bench.peers.huey:HueyPeer",
    "rq": "bench.peers.rq:RQPeer",
    "celery": "bench.peers.celery:CeleryPeer",
    "dask": "bench.peers.dask:DaskPeer",
    "dramatiq": "bench.peers.dramatiq:DramatiqPeer",
    "pipelined-pair": "bench.peers.pipelined:PipelinedPair",  # not a row: the runner pairs it with each peer
}
NEEDS_REDIS = {"rq", "celery", "dramatiq"}
BASELINES = {"pipelined"}  # the row the ratios are computed from (through its pair sessions)


LABELS = {
    "pipelined": "pipelined",
    "ppe": "ProcessPoolExecutor",
    "pipelined-volatile": "pipelined --volatile",
    "mp-pool": "multiprocessing.Pool",
    "loky": "loky",
    "pebble": "pebble",
    "huey": "Huey (SqliteHuey)",
    "rq": "RQ + Redis",
    "celery": "Celery + Redis",
    "dask": "Dask distributed",
    "dramatiq": "Dramatiq + Redis",
}


def load(name: str):
    module, cls = PEERS[name].split(":")
    return getattr(importlib.import_module(module), cls)
