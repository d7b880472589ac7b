"""Task functions the benchmarks run (importable as bench.tasks from the repo root)."""

import time


def noop():
    return None


def sleep_forever():
    time.sleep(3600)
