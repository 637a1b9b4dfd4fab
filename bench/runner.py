"""The child process of ``python -m bench``: runs one client through a list of workloads.

    python -m bench.runner < plan.json      # plan: client, bootstrap, timeout, overrides, runs [{workload, topic, records}]

One process per client, so the CPU time it reports is the client's own: ``getrusage(RUSAGE_SELF)`` counts
every thread of this process (librdkafka batches, compresses and talks to the broker on background threads,
work that the asyncio clients do on the loop's thread) and nothing of the broker or the parent. Each
workload's figures are printed as one line ``@@bench {json}`` as soon as it is done, so the parent can show
progress and, if this process hangs, knows which workloads finished.

The timed section starts once the client is connected, knows the topic's partitions and has delivered one
warm-up record to each partition (so connections and the producer id are in place for every client alike),
and ends when the application knows the outcome of every record:
- fire-and-forget: ``await send()`` per record, the handle dropped, then one ``flush()``;
- await-each: ``await send()`` per record, every handle kept, then ``gather`` of them all (for clients
  whose futures resolve only when flushed, ``flush()`` first); every SAMPLE_EVERY-th handle gets a done
  callback that measures its latency (send to resolution);
- service: N tasks, each doing ``send_and_wait`` in a loop over its share of the records, each call timed.
"""
from __future__ import annotations

import asyncio
import functools
import gc
import json
import resource
import sys
import time
import traceback

from . import clients
from .workloads import AWAIT_EACH, BY_NAME, FIRE_AND_FORGET, SERVICE, make_records, payload_bytes

MARK = "@@bench "
SAMPLE_EVERY = 16  # await-each: one latency sample per this many records (a callback on every handle costs)


def _cpu() -> tuple:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _percentiles(samples: list) -> dict:
    if not samples:
        return {}
    ordered = sorted(samples)
    last = len(ordered) - 1

    def at(q: float) -> float:
        return ordered[min(last, int(q * len(ordered)))] * 1000.0  # ms

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "p999_ms": at(0.999), "max_ms": ordered[-1] * 1000.0,
            "samples": len(ordered)}


class Outcome:
    """What the application learned about its records in the timed section."""

    def __init__(self) -> None:
        self.delivered = None   # records the application saw succeed (None: it kept no handles)
        self.errors = 0
        self.first_error = None
        self.latencies: list = []

    def error(self, exc) -> None:
        self.errors += 1
        self.first_error = self.first_error or repr(exc)


async def _fire_and_forget(adapter, topic, keys, values, outcome: Outcome) -> None:
    send = adapter.send
    for i, value in enumerate(values):
        await send(topic, value, keys[i])
    await adapter.flush()


async def _await_each(adapter, topic, keys, values, outcome: Outcome) -> None:
    send = adapter.send
    now = time.perf_counter
    latencies = outcome.latencies

    def done(sent_at, _handle):
        latencies.append(now() - sent_at)

    handles = []
    append = handles.append
    for i, value in enumerate(values):
        if i % SAMPLE_EVERY:
            append(await send(topic, value, keys[i]))
        else:
            sent_at = now()
            handle = await send(topic, value, keys[i])
            handle.add_done_callback(functools.partial(done, sent_at))
            append(handle)
    if adapter.flush_before_gather:
        await adapter.flush()
    results = await asyncio.gather(*handles, return_exceptions=True)
    outcome.delivered = 0
    for result in results:
        if isinstance(result, BaseException):
            outcome.error(result)
        else:
            outcome.delivered += 1


async def _service(adapter, topic, keys, values, outcome: Outcome, tasks: int) -> None:
    send_and_wait = adapter.send_and_wait
    now = time.perf_counter
    latencies = outcome.latencies
    outcome.delivered = 0

    async def handler(start: int) -> None:
        # Task ``start`` takes records start, start + tasks, start + 2 * tasks ...
        for i in range(start, len(values), tasks):
            sent_at = now()
            try:
                await send_and_wait(topic, values[i], keys[i])
            except Exception as exc:  # noqa: BLE001 - counted and reported; the service goes on
                outcome.error(exc)
                continue
            latencies.append(now() - sent_at)
            outcome.delivered += 1

    await asyncio.gather(*(handler(start) for start in range(min(tasks, len(values)))))


LOOPS = {FIRE_AND_FORGET: _fire_and_forget, AWAIT_EACH: _await_each}


async def _run_async(adapter, plan: dict, run: dict, keys, values) -> dict:
    workload = BY_NAME[run["workload"]]
    topic = run["topic"]
    config = await adapter.open(plan["bootstrap"], topic, workload, plan["overrides"])
    try:
        await asyncio.wait_for(adapter.warm_up(topic, plan["partitions"]), plan["timeout"])
        acknowledged_before = adapter.acknowledged()
        outcome = Outcome()
        gc.collect()
        u0, s0 = _cpu()
        t0 = time.perf_counter()
        if workload.mode == SERVICE:
            timed = _service(adapter, topic, keys, values, outcome, workload.tasks)
        else:
            timed = LOOPS[workload.mode](adapter, topic, keys, values, outcome)
        await asyncio.wait_for(timed, plan["timeout"])
        t1 = time.perf_counter()
        u1, s1 = _cpu()
        acknowledged = _since(adapter.acknowledged(), acknowledged_before)
        extra = adapter.extra()
    finally:
        await adapter.close()
    return _figures(outcome, config, t1 - t0, u1 - u0, s1 - s0, acknowledged, extra)


def _run_sync(adapter, plan: dict, run: dict, keys, values) -> dict:
    workload = BY_NAME[run["workload"]]
    config = adapter.open_sync(plan["bootstrap"], run["topic"], workload, plan["overrides"])
    try:
        adapter.warm_up_sync(run["topic"], plan["partitions"])
        outcome = Outcome()
        gc.collect()
        u0, s0 = _cpu()
        t0 = time.perf_counter()
        adapter.produce_all(run["topic"], keys, values, plan["timeout"])
        t1 = time.perf_counter()
        u1, s1 = _cpu()
        outcome.delivered = adapter.delivered
        outcome.errors, outcome.first_error = adapter.errors, adapter.first_error
        acknowledged, extra = adapter.acknowledged(), adapter.extra()
    finally:
        adapter.close_sync()
    return _figures(outcome, config, t1 - t0, u1 - u0, s1 - s0, acknowledged, extra)


def _since(now, before):
    return None if now is None or before is None else now - before


def _figures(outcome: Outcome, config: dict, wall: float, user: float, system: float, acknowledged, extra) -> dict:
    return {"wall_s": wall, "cpu_user_s": user, "cpu_system_s": system, "delivered": outcome.delivered,
            "acknowledged": acknowledged, "errors": outcome.errors, "first_error": outcome.first_error,
            "latency": _percentiles(outcome.latencies), "config": {k: str(v) for k, v in config.items()},
            "extra": extra}


def run_plan(plan: dict) -> None:
    client = plan["client"]
    _, loop = clients.split(client)
    loop_factory = None
    if loop == "uvloop":
        import uvloop

        loop_factory = uvloop.new_event_loop
    from aiokprod import codec

    for run in plan["runs"]:
        workload = BY_NAME[run["workload"]]
        keys, values = make_records(workload, run["records"])
        result = {"workload": run["workload"], "topic": run["topic"], "records": run["records"],
                  "warm_up_records": plan["partitions"],
                  "payload_bytes": payload_bytes(keys, values), "aiokprod_codec": codec.IMPLEMENTATION}
        adapter = clients.adapter(client)
        try:
            if adapter.is_async:
                with asyncio.Runner(loop_factory=loop_factory) as runner:
                    result.update(runner.run(_run_async(adapter, plan, run, keys, values)))
            else:
                result.update(_run_sync(adapter, plan, run, keys, values))
        except Exception as exc:  # noqa: BLE001 - the row says FAILED with this; the next workload runs
            result["crash"] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        del keys, values
        print(MARK + json.dumps(result), flush=True)


def main() -> None:
    run_plan(json.load(sys.stdin))


if __name__ == "__main__":
    main()
