"""The README's demo functions (examples/tasks.py), called directly."""

from examples import tasks


def test_demo_functions():
    assert tasks.square(4) == 16
    assert tasks.add(tasks.square(4), 1) == 17
    assert tasks.noop() is None
    assert tasks.slow("0.01") == 0.01  # CLI/TOML arguments may be strings
