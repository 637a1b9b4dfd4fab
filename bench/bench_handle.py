"""Cost per record of the delivery handles: BatchCompletion.add + resolve + asyncio.gather of the handles.

Compares the compiled twin, the Python twin and the baseline the handles replace (one asyncio Future per
record: loop.create_future + set_result + gather), on asyncio's loop and on uvloop.

    /work/venv/bin/python bench/bench_handle.py [--records 1000] [--rounds 200] [--repeat 5]

Prints microseconds per record (best of --repeat runs, each of --rounds batches of --records records).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time

# Run from a checkout without installing: the repository root holds the package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiokprod import _impl  # noqa: E402

try:
    import uvloop
except ImportError:
    uvloop = None


def _twins():
    twins = {}
    if not _impl.NO_EXTENSIONS:
        twins["native"] = _impl.native_twin("handle")
    twins["python"] = _impl.python_twin("handle")
    return twins


async def _handles(module, records, rounds, gather):
    """add + resolve per batch of ``records``; with ``gather``, also await every handle (as users do)."""
    loop = asyncio.get_running_loop()
    BatchCompletion = module.BatchCompletion
    results = None
    start = time.perf_counter()
    for _ in range(rounds):
        completion = BatchCompletion(loop, "bench", 0)
        add = completion.add
        handles = [add(1_700_000_000_000) for _ in range(records)]
        completion.resolve(0)
        if gather:  # one branch per batch: nothing against the per-record figures
            results = await asyncio.gather(*handles)
    elapsed = time.perf_counter() - start
    if gather:
        assert len(results) == records and results[-1].offset == records - 1
    else:
        await asyncio.sleep(0)  # let the batches' loop callbacks run
    del handles
    return elapsed


async def _futures_add_only(records, rounds):
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for _ in range(rounds):
        futures = [loop.create_future() for _ in range(records)]
        for offset, future in enumerate(futures):
            future.set_result(offset)
    elapsed = time.perf_counter() - start
    await asyncio.sleep(0)
    return elapsed


async def _futures_gather(records, rounds):
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    for _ in range(rounds):
        futures = [loop.create_future() for _ in range(records)]
        for offset, future in enumerate(futures):
            future.set_result(offset)
        results = await asyncio.gather(*futures)
    elapsed = time.perf_counter() - start
    assert len(results) == records
    return elapsed


def _best(loop_factory, make_coro, repeat, per):
    best = float("inf")
    for _ in range(repeat):
        loop = loop_factory()
        try:
            best = min(best, loop.run_until_complete(make_coro()))
        finally:
            loop.close()
    return best / per * 1e6


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1000, help="records per batch")
    parser.add_argument("--rounds", type=int, default=200, help="batches per run")
    parser.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    args = parser.parse_args()
    per = args.records * args.rounds
    loops = {"asyncio": asyncio.new_event_loop}
    if uvloop is not None:
        loops["uvloop"] = uvloop.new_event_loop
    print(f"{args.records} records/batch, {args.rounds} batches, best of {args.repeat}; us/record")
    print(f"{'loop':8} {'implementation':28} {'add+resolve':>12} {'+gather':>10}")
    for loop_name, factory in loops.items():
        rows = []
        for name, module in _twins().items():
            rows.append((f"{name} handle",
                         _best(factory, lambda: _handles(module, args.records, args.rounds, False), args.repeat, per),
                         _best(factory, lambda: _handles(module, args.records, args.rounds, True), args.repeat, per)))
        rows.append(("asyncio Future per record",
                     _best(factory, lambda: _futures_add_only(args.records, args.rounds), args.repeat, per),
                     _best(factory, lambda: _futures_gather(args.records, args.rounds), args.repeat, per)))
        for name, add_only, gathered in rows:
            print(f"{loop_name:8} {name:28} {add_only:12.3f} {gathered:10.3f}")


if __name__ == "__main__":
    main()
