"""Tiny task functions for the README's client and CLI examples.

Each is importable as "examples.tasks:NAME" by a pipelined worker; results are
plain values so they travel as msgpack.
"""

from __future__ import annotations

import time


def square(x: float) -> float:
    """x squared: the "hello world" of submitting a function task."""
    return x * x


def add(a: float, b: float) -> float:
    """a + b: pairs with square() to show Ref() passing one result into another task."""
    return a + b


def noop() -> None:
    """Do nothing: measures pure scheduling overhead in benchmarks."""


def slow(seconds: float) -> float:
    """Sleep, then return how long we slept: for timeouts, cancel and live progress."""
    # Arguments from the CLI or a TOML file may arrive as strings.
    seconds = float(seconds)
    time.sleep(seconds)
    return seconds
