"""The Huey app: SqliteHuey on a file the runner names; the shared tasks wrapped as Huey tasks."""

from __future__ import annotations

import os

from huey import SqliteHuey

from bench import peer_tasks

# store_none: noop returns None and we still want to wait for its result.
huey = SqliteHuey("bench", filename=os.environ.get("BENCH_HUEY_DB", "/tmp/bench-huey.db"), store_none=True)

noop = huey.task()(peer_tasks.noop)
hang = huey.task()(peer_tasks.hang)
blocker = huey.task()(peer_tasks.blocker)
stamp = huey.task()(peer_tasks.stamp)
dag_root = huey.task()(peer_tasks.dag_root)
dag_child = huey.task()(peer_tasks.dag_child)
dag_join = huey.task()(peer_tasks.dag_join)
record = huey.task()(peer_tasks.record)
