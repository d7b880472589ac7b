"""Task functions the benchmarks run (importable as bench.tasks from the repo root)."""

import os
import time


def noop():
    return None


def sleep_forever():
    time.sleep(3600)


def wait_for_file(path, poll_s=0.02):
    """Block until `path` exists: a gate the scale benchmark holds its queue behind."""
    while not os.path.exists(path):
        time.sleep(poll_s)
