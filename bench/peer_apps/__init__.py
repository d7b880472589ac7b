"""Task-queue apps for the peers that need their tasks declared on an app object (Celery,
Huey, Dramatiq). Their workers import these modules by name from the repo root; the
runner passes the broker address in the environment (BENCH_REDIS_URL, BENCH_HUEY_DB)."""
