"""Medians of the runs, the Markdown table and the JSON document."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from bench.workloads import REPORT_ORDER, WORKLOADS

HEADERS = {
    "throughput": "A. throughput (tasks/s)",
    "latency": "B. latency p50 / p99 (µs)",
    "timeout": "C. hard timeout 0.5 s",
    "priority": "D. priority (high's start position)",
    "dag": "E. DAG 1→n→1 (s)",
    "durability": "F. durability (done / queued)",
}


def _med(runs: list[dict], key: str) -> float | None:
    vals = [r[key] for r in runs if r.get("status") == "ok" and isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def _count(runs: list[dict], key: str) -> str:
    """'yes' / 'no' when every run agrees, else 'k/n yes'."""
    vals = [bool(r.get(key)) for r in runs if r.get("status") == "ok"]
    if all(vals):
        return "yes"
    if not any(vals):
        return "no"
    return f"{sum(vals)}/{len(vals)} yes"


def summarize(runs: list[dict]) -> dict[str, Any]:
    """The median figures of one (peer, workload) over its runs."""
    ok = [r for r in runs if r.get("status") == "ok"]
    if not ok:
        first = runs[0] if runs else {"status": "not run"}
        return {"status": first.get("status"), "note": first.get("note") or first.get("error"), "runs": len(runs)}
    out: dict[str, Any] = {"status": "ok", "runs": len(runs), "ok_runs": len(ok)}
    for key in ("tasks_per_s", "p50_us", "p99_us", "late_ms", "position", "of", "seconds", "completed", "done_at_kill",
                "ran_twice", "submit_s", "n", "chunksize", "children", "capped_from", "timeout_s",
                "per_task_submit_per_s", "map_per_s", "recovery_s", "submit_result_p50_us", "submit_result_p99_us"):
        m = _med(ok, key)
        if m is not None:
            out[key] = m
    for key in ("killed", "healthy", "grandchild_survived", "valid", "partial"):
        if key in ok[0]:
            out[key] = _count(ok, key)
    for key in ("how", "outcome", "killed", "note"):
        if isinstance(ok[0].get(key), str):
            out[key] = ok[0][key]
    if any(r.get("status") == "lost" for r in runs):
        out["status"] = "lost"
    return out


def cell(workload: str, s: dict[str, Any]) -> str:
    text = _cell(workload, s)
    if s.get("status") == "ok" and s.get("capped_from"):
        text += f" (n = {s['n']:,.0f}, not {s['capped_from']:,.0f})"
    if s.get("status") == "ok" and s.get("ok_runs", 0) < s.get("runs", 0):
        text += f" ({s['ok_runs']} of {s['runs']} runs ok)"
    return text


def _cell(workload: str, s: dict[str, Any]) -> str:
    st = s.get("status")
    if st == "no_feature":
        return "no such feature"
    if st == "lost":
        return "lost (in-process queue)"
    if st != "ok":
        return f"{st}"
    if workload == "throughput":
        text = f"{s['tasks_per_s']:,.0f}"
        if s.get("map_per_s"):  # an in-process pool: the headline is one submit per task
            text += f" (one submit per task); map, chunks of {s['chunksize']:,.0f}: {s['map_per_s']:,.0f}"
        elif s.get("per_task_submit_per_s"):  # pipelined: the headline is submit_many
            text += f" (submit_many); one submit per task: {s['per_task_submit_per_s']:,.0f}"
        return text
    if workload == "latency":
        text = f"{s['p50_us']:,.0f} / {s['p99_us']:,.0f}"
        if s.get("submit_result_p50_us"):
            text += f" (Client.call); submit + result: {s['submit_result_p50_us']:,.0f} / {s['submit_result_p99_us']:,.0f}"
        return text
    if workload == "timeout":
        if s.get("outcome") == "no_answer" and s["killed"] == "no":
            verdict = "not enforced (no failure within 5 s)"
        elif s["killed"] == "yes":
            late = f", {s['late_ms']:+,.0f} ms" if s.get("late_ms") is not None else ""
            at = f" (timeout {s['timeout_s']:g} s)" if s.get("timeout_s") not in (None, 0.5) else ""
            verdict = f"killed{late}{at}"
        else:
            verdict = f"killed {s['killed']}"
        pool = {"yes": "pool ok", "no": "pool NOT ok (a no-op did not run within 10 s)"}.get(s["healthy"], f"pool ok {s['healthy']}")
        gc = {"yes": "grandchild survived", "no": "grandchild killed"}.get(s["grandchild_survived"],
                                                                          f"grandchild survived {s['grandchild_survived']}")
        return f"{verdict}; {pool}; {gc}"
    if workload == "priority":
        flag = "" if s.get("valid") in (None, "yes") else " (submit slower than the blockers)"
        return f"{s['position']:.0f} of {s['of']:.0f}{flag}"
    if workload == "dag":
        return f"{s['seconds']:.2f}" + (" (partial: caller waits for root)" if s.get("partial") == "yes" else "")
    if workload == "durability":
        return f"{s['completed']:.0f} / {s['of']:.0f}"
    return "?"


def _paired(doc: dict, peer: str, workload: str, key: str, pair_key: str, peer_over_pair: bool) -> float | None:
    """The median over repetitions of (peer figure / pipelined's figure from the pair
    session run right before it), or its inverse: drift between the two is minutes at most."""
    own = {r.get("rep"): r for r in doc["raw"].get(peer, {}).get(workload, []) if r.get("status") == "ok"}
    vals = []
    for pair in doc.get("pairs", {}).get(peer, []):
        mine = pair.get(workload, {})
        theirs = own.get(mine.get("rep"))
        a, b = (theirs or {}).get(key), mine.get(pair_key) if mine.get("status") == "ok" else None
        if a and b:
            vals.append(a / b if peer_over_pair else b / a)
    return statistics.median(vals) if vals else None


def ratios(doc: dict, peer: str) -> tuple[str, str]:
    """A: pipelined's tasks/s over the peer's; B: the peer's p50 over pipelined's, with
    Client.call and with submit + result (>1: pipelined is faster). Paired runs."""
    if peer == "pipelined":
        return "–", "–"
    a = _paired(doc, peer, "throughput", "tasks_per_s", "tasks_per_s", False)
    b_call = _paired(doc, peer, "latency", "p50_us", "p50_us", True)
    b_two = _paired(doc, peer, "latency", "p50_us", "submit_result_p50_us", True)
    return _times(a), f"{_times(b_call)} / {_times(b_two)}"


def _times(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}×"


def markdown(doc: dict[str, Any]) -> str:
    summary, labels, workloads = doc["medians"], doc["labels"], [w for w in REPORT_ORDER if w in doc["workloads"]]
    m = doc["machine"]
    lines = [
        "# pipelined vs peers",
        "",
        f"Command: `{doc['command']}`  ",
        *(["**Interrupted** before the end: figures are from the runs that finished.  "] if doc.get("interrupted") else []),
        (f"Ran {doc['started']} → {doc['finished']} on {m['cpu_count']} CPUs ({m['cpu_model']}), Python {m['python']}, "
         f"pipelined at {m['git_commit']}{' (+ uncommitted changes in ' + str(len(m['git_dirty_files'])) + ' files)' if m['git_dirty_files'] else ''}.  "),
        (f"Median of {doc['runs']} run(s) per figure{' (fewer than 3: for development only)' if doc['runs'] < 3 else ''}, "
         "every peer once in each run, each right after a pipelined session of A and B that its ratios are computed "
         f"from; 2 workers each. Sizes: {', '.join(f'{k} {v:,}' for k, v in doc['sizes'].items())}."),
        "",
    ]
    head = ["peer"] + [HEADERS[w] for w in workloads]
    with_ratios = "throughput" in workloads and "latency" in workloads
    if with_ratios:
        head += ["A: pipelined ÷ peer", "B p50: peer ÷ pipelined (Client.call / submit + result)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for peer in doc["peers"]:
        row = [labels.get(peer, peer)] + [cell(w, summary[peer].get(w, {"status": "not run"})) for w in workloads]
        if with_ratios:
            row += list(ratios(doc, peer))
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", ("Ratios above 1 mean pipelined (journal on) is faster; each is the median over the runs of the "
              "peer against the pipelined pair session run just before it. A counts tasks that are each tracked on "
              "their own (an id or future, a state, a result): batch submission APIs count (submit_many, "
              "enqueue_many, group), a chunked map does not (it sends n/8 calls per message), so the in-process pools' "
              "A is one submit per task and their map figure is shown beside it. A is a rate; peers too slow for "
              "20,000 tasks in a ~20 minute suite ran the n given in their cell. B: Client.call is pipelined's submit "
              "and wait in one exchange (the same shape as submit + future.result() of the pools); submit + result "
              "is two exchanges. C: killed = the task stopped (worker killed or exception "
              "raised in it), +ms = from the deadline (task start + 0.5 s) to the caller seeing the failure; pool ok = a "
              "no-op completed afterwards. D: 0-based start position of the high-priority task among 200 low + 1 high "
              "submitted while both workers were busy (0 and 1 can be a tie: the two workers free up within a "
              "millisecond or so of each other). F: distinct tasks that completed at least once after kill -9 of "
              "the workers (and daemon/consumer) and a restart."), "", "## Per peer", ""]
    for peer in doc["peers"]:
        lines.append(f"**{labels.get(peer, peer)}**")
        for w in workloads:
            runs = doc["raw"][peer].get(w, [])
            s = summary[peer].get(w, {})
            api = next((r.get("api") for r in runs if r.get("api")), None)
            extra = []
            if s.get("status") in ("no_feature", "lost", "unavailable", "start_failed", "error") and s.get("note") != api:
                extra.append(str(s.get("note")))
            errs = [r.get("error") for r in runs if r.get("status") in ("error", "start_failed", "unavailable")]
            if errs and s.get("status") == "ok":
                extra.append(f"{len(errs)} of {len(runs)} runs failed: {errs[0]}")
            if w == "timeout" and s.get("how"):
                extra.append(f"how: {s['how']}")
            if w == "throughput" and s.get("n"):
                extra.append(f"{s['n']:,.0f} tasks")
            if w == "durability" and s.get("status") == "ok":
                extra.append(f"{s.get('done_at_kill', 0):.0f} were done at the kill ({s.get('killed')}); "
                             f"{s.get('ran_twice', 0):.0f} ran twice")
            text = "; ".join(x for x in [api, *extra] if x)
            if text:
                lines.append(f"- {WORKLOADS[w]}: {text}")
        left = doc.get("leftovers", {}).get(peer)
        if left:
            lines.append(f"- processes left after its sessions (killed by the runner): {len(left)}: {left[:3]}")
        lines.append("")
    lines.append(f"Processes left at the end of the run: {len(doc['final_leftovers'])}"
                 + (f": {doc['final_leftovers']}" if doc["final_leftovers"] else " (checked with ps/proc)."))
    lines.append("")
    lines.append("Packages: " + ", ".join(f"{k} {v}" for k, v in doc["packages"].items() if v))
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], out_dir: Path) -> str:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(doc)
    (out_dir / "latest.md").write_text(md)
    (out_dir / "latest.json").write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return md


if __name__ == "__main__":  # re-render the Markdown from a JSON document: python -m bench.report [latest.json]
    import sys

    src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results" / "latest.json")
    print(write(json.loads(src.read_text()), src.parent), end="")
