"""The Celery app: Redis as broker and result backend, the shared tasks registered by name.

The worker is started with `-A bench.peer_apps.celery_app`; the session builds its own app
with make_app() so a profile change (priority) gets a fresh connection pool.
"""

from __future__ import annotations

import os

from celery import Celery

from bench import peer_tasks

TASKS = ["noop", "hang", "blocker", "stamp", "dag_root", "dag_child", "dag_join", "record"]


def make_app(profile: str = "default") -> Celery:
    url = os.environ["BENCH_REDIS_URL"]
    app = Celery("bench", broker=url, backend=url, set_as_current=False)
    app.conf.update(
        task_serializer="json", result_serializer="json", accept_content=["json"],
        broker_connection_retry_on_startup=True, worker_hijack_root_logger=False,
        result_expires=3600,
    )
    if profile == "priority":
        # Celery's documented recipe for priorities on Redis: priority sub-queues, and no
        # prefetching beyond one task per process (else the low ones are already taken).
        app.conf.update(
            broker_transport_options={"priority_steps": list(range(10)), "sep": ":", "queue_order_strategy": "priority"},
            worker_prefetch_multiplier=1, task_acks_late=True,
        )
    for name in TASKS:
        app.task(name=f"bench.{name}")(getattr(peer_tasks, name))
    return app


app = make_app(os.environ.get("BENCH_CELERY_PROFILE", "default"))
