"""send()'s hot path alone: ``await producer.send()`` in a loop, ns per call, no I/O in the timed loop.

A producer on the embedded broker with ``linger_ms=60000`` and a 1 GiB ``buffer_memory``: once the topic's
metadata is cached, ``send()`` never awaits anything that yields, so the loop never gives the sender a turn;
batches fill and wait, and are sent by the ``flush()`` after the timed loop. Records: 100-byte values,
``--mode keyless`` (uniform sticky, KIP-794) or ``keyed`` (1000 distinct 10-byte keys). A warm-up of 20k
records first, then ``--count`` records in rounds of 10k: the best round and the median round. Run:

    python bench/bench_send.py [--mode keyless|keyed] [--count 200000] [--bootstrap host:port]

It prints the environment first: figures are only comparable between runs on an otherwise idle machine.
``AIOKPROD_NO_EXTENSIONS=1`` measures the pure-Python twins (use a smaller ``--count``).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import time

# Run from a checkout without installing: the repository root first on the path.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from aiokprod import Producer, _impl  # noqa: E402
from aiokprod.testing import EmbeddedBroker  # noqa: E402


async def timed_sends(bootstrap: str, count: int, mode: str) -> tuple[float, float]:
    value = b"v" * 100
    keys = [b"key-%06d" % i for i in range(1000)] if mode == "keyed" else [None] * 1000
    async with Producer(bootstrap, linger_ms=60_000, buffer_memory=1 << 30, acks=1) as producer:
        topic = f"bench-send-{os.getpid()}-{mode}"
        await producer.send_and_wait(topic, b"metadata")
        send = producer.send
        for i in range(20_000):
            await send(topic, value, key=keys[i % 1000])
        await producer.flush()
        # --count records in rounds of 10k, back to back; the best round is the figure least disturbed by
        # other load on the machine.
        rounds = []
        for _ in range(max(1, count // 10_000)):
            started = time.perf_counter()
            for i in range(10_000):
                await send(topic, value, key=keys[i % 1000])
            rounds.append((time.perf_counter() - started) / 10_000 * 1e9)
        await producer.flush()
    return min(rounds), sorted(rounds)[len(rounds) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--mode", choices=("keyless", "keyed"), default="keyless")
    parser.add_argument("--bootstrap", help="an existing broker (default: start the embedded one)")
    args = parser.parse_args()
    print(f"environment: {os.cpu_count()} CPUs, load average {[round(x, 2) for x in os.getloadavg()]}, "
          f"Python {platform.python_version()}, implementation "
          f"{'python (AIOKPROD_NO_EXTENSIONS=1)' if _impl.NO_EXTENSIONS else 'native'}")
    if args.bootstrap:
        best, median = asyncio.run(timed_sends(args.bootstrap, args.count, args.mode))
    else:
        with EmbeddedBroker() as broker:
            best, median = asyncio.run(timed_sends(broker.bootstrap, args.count, args.mode))
    print(f"{args.mode}: {best:.0f} ns per send() (best round of 10k; median round {median:.0f}; {args.count} "
          f"records, appender {_impl.LOADED.get('appender')})")


if __name__ == "__main__":
    main()
