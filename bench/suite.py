"""Run the suite: topics, one child process per client, delivery checks, and the rows of the report.

The parent never imports a client library: it creates the topics, starts ``python -m bench.runner`` for each
client (and each ``--repeat`` round, the clients interleaved so that a change in the machine's load spreads
over all of them), reads the child's result lines as they come, and checks every run against the broker once
the child has exited (so the check's CPU is nobody's). A child that stays silent longer than the timeout is
killed; its current workload fails and the rest of its list runs in a new child.
"""
from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import uuid
from typing import Callable, Optional

from . import clients, verify
from .runner import MARK
from .workloads import PARTITIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KILL_GRACE = 60.0  # seconds past --timeout before a silent child is killed (start, stop, metadata)


def plan_runs(client_names: list, workloads: list, embedded: bool) -> tuple:
    """({client: [workloads it runs]}, [n/a rows]) for the clients and workloads asked for."""
    runnable: dict = {}
    skipped = []
    for client in client_names:
        missing = clients.missing(client)
        adapter = None if missing else clients.adapter(client)
        runnable[client] = []
        for workload in workloads:
            reason = missing or adapter.unsupported(workload, embedded)
            if reason:
                skipped.append({"client": client, "workload": workload.name, "status": "n/a", "ok": None,
                                "reason": reason})
            else:
                runnable[client].append(workload)
    return runnable, skipped


async def _create_topics(bootstrap: str, names: list) -> None:
    from aiokprod.admin import create_topics

    await asyncio.wait_for(create_topics(bootstrap, {name: PARTITIONS for name in names}), 60)


def _child_env() -> dict:
    # The checkout first on the path: `python -m bench` from a checkout needs no install of aiokprod.
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": ROOT + (os.pathsep + path if path else "")}


def run_client(client: str, runs: list, bootstrap: str, timeout: float, overrides: dict,
               on_result: Callable[[dict], None], on_start: Callable[[str], None]) -> list:
    """Run ``runs`` ([{workload, topic, records}]) in child processes for ``client``; return their results
    (one per run, in order). A crash or a hang fails that run and the others go on in a fresh child."""
    results: list = []
    pending = list(runs)
    while pending:
        plan = {"client": client, "bootstrap": bootstrap, "timeout": timeout, "overrides": overrides,
                "partitions": PARTITIONS, "runs": pending}
        with tempfile.TemporaryFile(mode="w+") as stderr:
            child = subprocess.Popen([sys.executable, "-m", "bench.runner"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=ROOT,
                                     env=_child_env())
            child.stdin.write(json.dumps(plan))
            child.stdin.close()
            got, hung = _read_results(child, pending, timeout + KILL_GRACE, on_result, on_start)
            results += got
            pending = pending[len(got):]
            if pending:  # the child died or hung in pending[0]: that one fails, the rest get a new child
                stderr.seek(0)
                tail = " | ".join(stderr.read().strip().splitlines()[-3:])
                why = (f"no result after {timeout + KILL_GRACE:.0f}s, killed" if hung
                       else f"child exited {child.returncode}")
                failed = dict(pending[0], crash=f"{why}: {tail}")
                results.append(failed)
                on_result(failed)
                pending = pending[1:]
            child.stdout.close()
    return results


def _read_results(child, runs: list, silence: float, on_result, on_start) -> tuple:
    """The child's result lines as they come (a thread reads them: a select() on the pipe would miss lines
    already in the reader's buffer). Returns (results, whether the child was killed for staying silent
    ``silence`` s); returns early if the child exits. The child has exited when this returns."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in child.stdout:
            lines.put(line)
        lines.put(None)  # end of output: the child exited

    reader = threading.Thread(target=pump, name="bench-child-reader", daemon=True)
    reader.start()
    got: list = []
    hung = False
    on_start(runs[0]["workload"])
    while len(got) < len(runs):
        try:
            line = lines.get(timeout=silence)
        except queue.Empty:
            child.kill()  # silent too long: hung
            hung = True
            break
        if line is None:
            break
        if not line.startswith(MARK):
            continue
        result = json.loads(line[len(MARK):])
        got.append(result)
        on_result(result)
        if len(got) < len(runs):
            on_start(runs[len(got)]["workload"])
    child.wait()
    reader.join(5.0)  # the pipe ends with the child; the caller closes it only after this
    return got, hung


def finish_row(client: str, result: dict, stored: Optional[int], verified_by: str) -> dict:
    """One run's row: its figures, and ok only if its delivery checks out."""
    row = {"client": client, **result}
    records = result["records"]
    if "crash" in result:
        row.update(ok=False, status="FAILED", reason=result["crash"], stored=stored)
        return row
    problems = verify.check(records, result["acknowledged"], result["delivered"], result["errors"],
                            result["first_error"], stored, result["warm_up_records"])
    wall = result["wall_s"]
    cpu = result["cpu_user_s"] + result["cpu_system_s"]
    row.update(stored=stored, verified_by=verified_by, verified=not problems, ok=not problems,
               status="ok" if not problems else "FAILED", reason="; ".join(problems) or None,
               records_per_s=records / wall if wall > 0 else None,
               mb_per_s=result["payload_bytes"] / wall / 1e6 if wall > 0 else None,
               cpu_us_per_record=cpu * 1e6 / records)
    return row


def run_suite(args, bootstrap: str, embedded: bool, client_names: list, workloads: list, progress) -> list:
    """Every run's row (``--repeat`` rounds of each runnable client/workload), and the n/a rows."""
    runnable, skipped = plan_runs(client_names, workloads, embedded)
    total = sum(len(w) for w in runnable.values()) * args.repeat
    bar = progress.add_task("starting", total=total)
    rows = []
    for round_index in range(args.repeat):
        for client in client_names:
            if not runnable[client]:
                continue
            runs = [{"workload": w.name, "records": args.records,
                     "topic": f"bench-{client}-{w.name}-{uuid.uuid4().hex[:6]}"} for w in runnable[client]]
            asyncio.run(_create_topics(bootstrap, [run["topic"] for run in runs]))

            def on_start(workload, client=client):
                progress.update(bar, description=f"{client} {workload} (round {round_index + 1}/{args.repeat})")

            results = run_client(client, runs, bootstrap, args.timeout, args.overrides.get(client, {}),
                                 on_result=lambda _r: progress.advance(bar), on_start=on_start)
            progress.update(bar, description=f"{client}: checking the broker's log")
            stored, verified_by = verify.stored_counts(bootstrap, [r["topic"] for r in results])
            for result in results:
                row = finish_row(client, result, stored.get(result["topic"]), verified_by)
                row["round"] = round_index
                rows.append(row)
    progress.update(bar, description="done")
    return rows + skipped
