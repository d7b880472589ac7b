"""pipeline_client: the thin client of pipelined (pyzmq + msgpack only).

    from pipeline_client import Client, Ref, TaskFailed
    with Client() as c:
        a = c.submit("examples.tasks:square", args=[4])
        c.result(a, timeout=10)
"""

from pipeline_protocol import Ref

from .aio import AsyncClient
from .client import Client
from .errors import DaemonUnreachable, PipelineError, RequestError, TaskCancelled, TaskFailed
from .executor import Executor

__all__ = [
    "AsyncClient",
    "Client",
    "DaemonUnreachable",
    "Executor",
    "PipelineError",
    "Ref",
    "RequestError",
    "TaskCancelled",
    "TaskFailed",
]
