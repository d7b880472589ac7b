"""Process titles (`ps` shows what each pipelined process is doing)."""

from __future__ import annotations

try:
    from setproctitle import setproctitle as _set
except ImportError:  # titles are a convenience, never a reason to fail
    _set = None

_last: str | None = None


def set_title(title: str) -> None:
    global _last
    if _set is not None and title != _last:
        _last = title
        _set(title.replace("\0", " "))  # setproctitle refuses NUL; a title must never fail a worker
