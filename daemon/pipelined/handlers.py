"""Control operations: one function per protocol `op`, and the table of them.

A handler takes the supervisor, the decoded request and the client's envelope,
and returns the reply fields (a dict), or DEFERRED when it parked the request
(wait, result). It raises ProtocolError for anything the client got wrong; the
edge (control.py) turns that into an error reply and nothing has changed.
"""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING, Any

from pipeline_protocol import END_STATES, ErrorCode, ProtocolError, TaskState
from pipeline_protocol.codec import MAX_PAYLOAD_BYTES, encode

from . import __version__
from .waiters import Waiter

if TYPE_CHECKING:
    from .supervisor import Supervisor

DEFERRED = None
LIST_LIMIT_DEFAULT = 1000
WAIT_IDS_MAX = 100_000


def _field(req: dict, name: str, kinds: type | tuple[type, ...], *, required: bool = False, default: Any = None) -> Any:
    value = req.get(name)
    if value is None:
        if required:
            raise ProtocolError(ErrorCode.INVALID_REQUEST, f"{req.get('op')}: field {name!r} is required", {"field": name})
        return default
    allowed = kinds if isinstance(kinds, tuple) else (kinds,)
    if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"{req.get('op')}: field {name!r} has the wrong type ({type(value).__name__})", {"field": name})
    return value


def _timeout(req: dict, name: str = "timeout") -> float | None:
    value = _field(req, name, (int, float))
    if value is not None and not 0 <= value <= 365 * 86400:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"{name} must be 0..{365 * 86400} seconds", {"field": name})
    return value


def _task(sup: Supervisor, task_id: Any):
    if not isinstance(task_id, str):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "task_id must be a string", {"field": "task_id"})
    task = sup.store.get(task_id)
    if task is None:
        raise ProtocolError(ErrorCode.UNKNOWN_TASK, f"no task {task_id!r}", {"task_id": task_id})
    return task


def _ids(req: dict) -> list[str]:
    ids = _field(req, "task_ids", list, required=True)
    if not ids or len(ids) > WAIT_IDS_MAX or not all(isinstance(i, str) for i in ids):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"task_ids must be 1..{WAIT_IDS_MAX} task id strings", {"field": "task_ids"})
    return ids


# -- ops ----------------------------------------------------------------------
def op_ping(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    return {"pong": True, "pid": os.getpid(), "version": __version__, "uptime_s": round(time.monotonic() - sup.started_mono, 3)}


def op_submit(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    if sup.draining:
        raise ProtocolError(ErrorCode.DRAINING, "pipelined is draining and accepts no new tasks")
    single, batch = req.get("task"), req.get("tasks")
    if (single is None) == (batch is None):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "submit takes either 'task' (one) or 'tasks' (a batch)")
    specs = [single] if batch is None else batch
    if not isinstance(specs, list):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "'tasks' must be a list of task maps", {"field": "tasks"})
    if sup.last_frame_bytes > MAX_PAYLOAD_BYTES:
        _check_payload_sizes(specs)
    wait = _field(req, "wait", bool, default=False)
    if wait and batch is not None:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "submit: wait applies to one task ('task'), not a batch", {"field": "wait"})
    wait_timeout = _timeout(req, "wait_timeout") if wait else None
    sup.policy.check(specs)
    ids = sup.scheduler.submit(specs, time.monotonic(), time.time())
    if wait:
        # Submit and wait in one round trip: the reply comes when the task ends
        # (a `result` reply), so a caller that wants the result pays one exchange.
        task = sup.store.get(ids[0])
        if task.state in END_STATES or wait_timeout == 0:
            return result_reply(sup, ids[0])
        deadline = None if wait_timeout is None else time.monotonic() + wait_timeout
        sup.waiters.park(Waiter(envelope, req.get("rid"), "result", [ids[0]], {ids[0]}, False, deadline))
        return DEFERRED
    return {"task_id": ids[0]} if batch is None else {"task_ids": ids}


def _check_payload_sizes(specs: list) -> None:
    for spec in specs:
        if not isinstance(spec, dict):
            continue
        size = len(encode([spec.get("args"), spec.get("kwargs")]))
        if size > MAX_PAYLOAD_BYTES:
            raise ProtocolError(
                ErrorCode.TOO_LARGE,
                f"task {spec.get('task_id')!r}: arguments are {size} bytes; the limit is {MAX_PAYLOAD_BYTES}",
                {"task_id": spec.get("task_id"), "bytes": size, "limit": MAX_PAYLOAD_BYTES},
            )


def record_of(sup: Supervisor, task) -> dict:
    rec = task.record()
    if task.state is TaskState.QUEUED and "held_by" not in rec:
        sched = sup.scheduler
        limit = sched.type_limits.get(task.task_type)
        if limit is not None and sched.running_by_type.get(task.task_type, 0) >= limit:
            rec["held_by"] = f"task_type {task.task_type} at its limit of {limit}"  # the scheduler marks only its type's head
        elif sup.gate_hold is not None:
            rec["held_by"] = sup.gate_hold
    return rec


def op_get(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    return {"task": record_of(sup, _task(sup, req.get("task_id")))}


def op_list(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    state = _field(req, "state", str)
    workflow = _field(req, "workflow", str)
    limit = _field(req, "limit", int, default=LIST_LIMIT_DEFAULT)
    if not 1 <= limit <= 1_000_000:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "limit must be 1..1000000", {"field": "limit"})
    if state is not None and state not in TaskState._value2member_map_:
        raise ProtocolError(ErrorCode.INVALID_REQUEST, f"unknown state {state!r} (one of {', '.join(s.value for s in TaskState)})", {"field": "state"})
    if workflow is not None:
        tasks = sup.store.in_workflow(workflow)
    elif state is not None:
        tasks = sup.store.in_state(TaskState(state))  # only that state's tasks, not all of them
    else:
        tasks = sup.store.values()
    out = []
    for task in reversed(tasks):  # the newest `limit` of them: the ones a look at the list is for
        if state is None or task.state.value == state:
            out.append(record_of(sup, task))
            if len(out) >= limit:
                break
    out.reverse()  # oldest first
    return {"tasks": out}


def op_wait(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict | None:
    ids = _ids(req)
    timeout = _timeout(req)
    return_when = _field(req, "return_when", str, default="all")
    if return_when not in ("all", "any"):
        raise ProtocolError(ErrorCode.INVALID_REQUEST, "return_when must be 'all' or 'any'", {"field": "return_when"})
    tasks = [_task(sup, tid) for tid in ids]
    remaining = {t.task_id for t in tasks if t.state not in END_STATES}
    done_any = len(remaining) < len(set(ids))
    if not remaining or (return_when == "any" and done_any) or timeout == 0:
        return wait_reply(sup, ids, timed_out=bool(remaining) and not (return_when == "any" and done_any))
    deadline = None if timeout is None else time.monotonic() + timeout
    sup.waiters.park(Waiter(envelope, req.get("rid"), "wait", ids, remaining, return_when == "any", deadline))
    return DEFERRED


def wait_reply(sup: Supervisor, ids: list[str], timed_out: bool) -> dict:
    ended, pending = [], []
    for tid in dict.fromkeys(ids):
        task = sup.store.get(tid)
        if task is None:
            continue
        if task.state in END_STATES:
            ended.append(task.record())
        else:
            pending.append(tid)
    return {"tasks": ended, "pending": pending, "timed_out": timed_out}


def op_result(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict | None:
    task = _task(sup, req.get("task_id"))
    timeout = _timeout(req)
    if task.state in END_STATES or timeout == 0:
        return result_reply(sup, task.task_id)
    deadline = None if timeout is None else time.monotonic() + timeout
    sup.waiters.park(Waiter(envelope, req.get("rid"), "result", [task.task_id], {task.task_id}, False, deadline))
    return DEFERRED


def result_reply(sup: Supervisor, task_id: str) -> dict:
    task = sup.store.get(task_id)
    return {"task_id": task_id, "task": task.record(), "timed_out": task.state not in END_STATES}


def op_cancel(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    workflow = _field(req, "workflow", str)
    spare_running = _field(req, "if_not_running", bool, default=False)
    if workflow is not None:
        tasks = [t for t in sup.store.in_workflow(workflow) if t.state not in END_STATES]
    else:
        tasks = [_task(sup, req.get("task_id"))]
    cancelled = [t.task_id for t in tasks if not (spare_running and t.state is TaskState.RUNNING) and sup.cancel_task(t)]
    reply: dict[str, Any] = {"cancelled": cancelled}
    if workflow is None:
        reply["status"] = tasks[0].state.value
    return reply


def op_status(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    sched = sup.scheduler
    counts = sched.counts
    completed = counts[TaskState.COMPLETED]
    return {
        "max_workers": sup.config.max_workers,
        "max_concurrent_tasks": sup.config.concurrency,
        "pending_tasks": counts[TaskState.PENDING] + counts[TaskState.QUEUED],
        "queued_tasks": counts[TaskState.QUEUED],
        "running_tasks": counts[TaskState.RUNNING],
        "completed_tasks": completed,
        "failed_tasks": counts[TaskState.FAILED],
        "cancelled_tasks": counts[TaskState.CANCELLED],
        "workers": sup.pool.counts(),
        "draining": sup.draining,
        "event_subscribers": sup.events.subscribers,
        "performance_metrics": {
            "total_tasks": len(sup.store),
            "completed_tasks": completed,
            "failed_tasks": counts[TaskState.FAILED],
            "total_execution_time": round(sched.total_execution_s, 6),
            "average_execution_time": round(sched.total_execution_s / completed, 6) if completed else 0.0,
            "uptime_s": round(time.monotonic() - sup.started_mono, 3),
            "worker_forks": sup.pool.forks,
            "worker_kills": sup.pool.kills,
        },
    }


def op_queue_status(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    return {"queue_size": sup.scheduler.counts[TaskState.QUEUED], "job_counts": sup.scheduler.queued_by_priority()}


def op_resource_status(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    return sup.resource_status()


def op_workers(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    """Each worker, with the RSS (its children included) and CPU % of its tree.

    CPU % is measured since the previous `workers` request (cached psutil
    objects, no sleeping): the first request after a worker starts says 0.0.
    """
    handles = sorted(sup.pool.by_pid.values(), key=lambda h: h.slot)
    stats = sup.pool.sampler.sample([h.pid for h in handles])
    out = []
    for h in handles:
        info = h.info()
        info.update(stats.get(h.pid, {"rss_mb": None, "cpu_percent": None}))
        out.append(info)
    return {"workers": out}


def op_workflow_status(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    workflow = _field(req, "workflow", str, required=True)
    tasks = sup.store.in_workflow(workflow)
    counts: dict[str, int] = {}
    for task in tasks:
        counts[task.state.value] = counts.get(task.state.value, 0) + 1
    return {
        "workflow": workflow,
        "total_tasks": len(tasks),
        "status_counts": counts,
        "completed": bool(tasks) and all(t.state in END_STATES for t in tasks),
    }


def op_drain(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    sup.begin_drain("drain requested")
    return {"draining": True, "running_tasks": len(sup.scheduler.running)}


def op_shutdown(sup: Supervisor, req: dict, envelope: list[bytes]) -> dict:
    grace = _field(req, "grace_s", (int, float), default=0.0)
    sup.begin_drain("shutdown requested", grace_s=float(grace))
    return {"stopping": True}


HANDLERS = {
    "ping": op_ping,
    "submit": op_submit,
    "get": op_get,
    "list": op_list,
    "wait": op_wait,
    "result": op_result,
    "cancel": op_cancel,
    "status": op_status,
    "queue_status": op_queue_status,
    "resource_status": op_resource_status,
    "workers": op_workers,
    "workflow_status": op_workflow_status,
    "drain": op_drain,
    "shutdown": op_shutdown,
}
