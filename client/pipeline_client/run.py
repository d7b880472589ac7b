"""`pipelinectl run FILE`: run a pipeline file to the end as one workflow.

    FILE --load_pipeline--> Pipeline --expand--> tasks --submit_many (one batch)--> pipelined
                                                                                      |
         progress display <-- snapshot <-- list(workflow) + wait(any, 0.5 s) <--------+
                                                                                      |
         Ctrl-C --> cancel(workflow) --> wait for the kills to land ------------------+
                                                                                      v
                                 report.run_document --> summary table | one JSON object

`run_pipeline` is the whole job without a terminal; the MCP shim calls it too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from .client import Client
from .errors import RequestError
from .exit_codes import EXIT_OK, EXIT_TASK_FAILED
from .pipeline import Pipeline, did_you_mean, load_pipeline
from .progress import Silent, make_progress, snapshot
from .render import Outcome
from .report import END_STATUSES, Records, run_document, summary_view

POLL_S = 0.5  # longest a progress display goes without a redraw
CANCEL_SETTLE_S = 10.0  # how long to wait for cancelled tasks to be reaped


def run_pipeline(
    client: Client,
    pipeline: Pipeline,
    env: Mapping[str, str] | None = None,
    progress: Silent | None = None,
) -> dict[str, Any]:
    """Submit the pipeline as one workflow, follow it to the end, return the run document.

    Ctrl-C (KeyboardInterrupt) cancels the workflow's unfinished tasks and still
    returns the document, with `interrupted` true.
    """
    progress = progress or Silent()
    workflow = pipeline.new_workflow_id()
    tasks = pipeline.expand(workflow, env)
    ids = [t["task_id"] for t in tasks]
    started = time.monotonic()
    records: Records = {}
    interrupted = False

    def show(recs: Records) -> None:
        progress.update(snapshot(pipeline, workflow, recs, time.monotonic() - started))

    try:
        client.submit_many(tasks)
        progress.started(f"workflow {workflow}: {len(pipeline.stages)} stages, {len(ids)} tasks submitted from {pipeline.path}")
        records = follow(client, workflow, ids, show)
    except KeyboardInterrupt:
        interrupted = True
        progress.close()
        records = cancel_workflow(client, workflow, ids)
        cancelled = sum(r.get("status") == "cancelled" for r in records.values())
        print(f"pipelinectl: interrupted; cancelled {cancelled} unfinished task(s) of workflow {workflow}", file=sys.stderr, flush=True)
    finally:
        progress.close()
    return run_document(pipeline, workflow, records, time.monotonic() - started, interrupted)


def fetch(client: Client, workflow: str, count: int) -> Records:
    return {r["task_id"]: r for r in client.list(workflow=workflow, limit=count)}


def follow(client: Client, workflow: str, ids: list[str], on_update: Callable[[Records], None]) -> Records:
    """Poll until every task has ended. The wait parks in the daemon, so this never spins."""
    records: Records = {}
    while True:
        records.update(fetch(client, workflow, len(ids)))
        on_update(records)
        unfinished = [tid for tid in ids if records.get(tid, {}).get("status") not in END_STATUSES]
        if not unfinished:
            return records
        client.wait(unfinished, timeout=POLL_S, return_when="any")


def cancel_workflow(client: Client, workflow: str, ids: list[str]) -> Records:
    """Cancel what has not ended and return the records once the kills have landed."""
    try:
        client.cancel(workflow=workflow)
    except RequestError:
        pass  # interrupted before the batch was accepted: nothing to cancel
    records = fetch(client, workflow, len(ids))
    unfinished = [tid for tid, r in records.items() if r.get("status") not in END_STATUSES]
    if unfinished:
        client.wait(unfinished, timeout=CANCEL_SETTLE_S)
        records = fetch(client, workflow, len(ids))
    return records


def warn_unknown_params(pipeline: Pipeline, env: Mapping[str, str]) -> None:
    """A misspelt parameter would silently do nothing; say so when it looks like a typo."""
    for key in env:
        if pipeline.params and key not in pipeline.params:
            hint = did_you_mean(key, pipeline.params)
            if hint:
                print(f"pipelinectl: warning: --env {key} is not a parameter of {pipeline.name}{hint}", file=sys.stderr)


def cmd_run(args: Any, session: Any) -> Outcome:
    """Run a pipeline file to the end; exit 0 only if every stage completed."""
    pipeline = load_pipeline(args.file)  # every file error surfaces before we connect
    env = dict(args.env or [])
    warn_unknown_params(pipeline, env)
    # Human mode draws on stdout. With --json stdout carries only the document,
    # so progress goes to stderr, and only when a person is watching it.
    stream = sys.stderr if session.as_json else sys.stdout
    enabled = not args.quiet and (not session.as_json or stream.isatty())
    doc = run_pipeline(session.client, pipeline, env, make_progress(stream, enabled))
    code = EXIT_OK if doc["status"] == "completed" else EXIT_TASK_FAILED
    return Outcome(doc, summary_view, code)
