"""Keyed records always go to the same partition, the one Java's murmur2 picks for the key; keyless
records are "uniform sticky" (KIP-794): they stick to one partition for about a batch's worth of bytes,
then move on, so over time they spread over all partitions in full batches.

    python examples/keyed_vs_keyless.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop]
"""
import asyncio
import collections
import sys

from _common import run

from aiokprod import Producer
from aiokprod.codec import key_partition

KEYS = [f"user-{i}" for i in range(6)]
KEYLESS = 400  # about 40 KB of keyless records: several batch_size (4 KB) worth, so the sticky partition moves


async def main(bootstrap: str, topic: str, args) -> None:
    # A small batch_size makes the sticky partition move often enough to see in a short run.
    async with Producer(bootstrap, batch_size=4096, linger_ms=5) as producer:
        partitions = await producer.partitions_for(topic)
        print(f"topic {topic} has {len(partitions)} partitions: {partitions}")

        # Keyed: each key three times, interleaved. Every copy of a key lands on the same partition.
        keyed = [(key, await producer.send(topic, f"{key} #{n}".encode(), key=key.encode()))
                 for n in range(3) for key in KEYS]
        landed = collections.defaultdict(set)
        for key, handle in keyed:
            landed[key].add((await handle).partition)
        for key in KEYS:
            expected = key_partition(key.encode(), len(partitions))  # what a Java producer would pick too
            print(f"keyed: key {key} -> partition(s) {sorted(landed[key])}, murmur2 says {expected}")

        # Keyless: 100-byte values, no key. Note the runs: consecutive records share a partition.
        handles = [await producer.send(topic, b"x" * 100) for _ in range(KEYLESS)]
        order = [metadata.partition for metadata in await asyncio.gather(*handles)]
        runs = 1 + sum(1 for a, b in zip(order, order[1:]) if a != b)
        counts = dict(sorted(collections.Counter(order).items()))
        print(f"keyless: {KEYLESS} records in {runs} sticky runs, per partition {counts}")


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__))
