"""The Dramatiq app: Redis broker, Results (Redis) and GroupCallbacks middleware, the shared
tasks as actors with no retries (a retry would hide a failure from the timeout workload)."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import GroupCallbacks
from dramatiq.rate_limits.backends import RedisBackend as RateLimitBackend
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from bench import peer_tasks

URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
broker = RedisBroker(url=URL)
broker.add_middleware(Results(backend=RedisBackend(url=URL)))
broker.add_middleware(GroupCallbacks(RateLimitBackend(url=URL)))
dramatiq.set_broker(broker)


def _actor(name: str, **options):
    return dramatiq.actor(actor_name=name, max_retries=0, store_results=True, **options)(getattr(peer_tasks, name.split("__")[0]))


noop = _actor("noop")
hang = _actor("hang")
blocker = _actor("blocker")
dag_root = _actor("dag_root")
dag_child = _actor("dag_child")
dag_join = _actor("dag_join")
record = _actor("record")
# Priority is an actor option (lower = sooner), so one actor per priority.
stamp = _actor("stamp", priority=100)
stamp__high = _actor("stamp__high", priority=0)
