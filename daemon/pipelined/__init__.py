"""pipelined: the supervisor daemon (loop, scheduler, worker pool, control socket)."""

__version__ = "0.1.0"
