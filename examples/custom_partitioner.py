"""Choosing partitions yourself: a plain callable ``(topic, key_bytes, partitions) -> partition`` and the
built-in ``RoundRobinPartitioner`` (every record to the next partition in turn, keyed or not).

    python examples/custom_partitioner.py [--bootstrap HOST:PORT] [--topic NAME] [--uvloop]
"""
import sys
import zlib

from _common import run

from aiokprod import Producer, RoundRobinPartitioner


def vip_first(topic: str, key, partitions: list) -> int:
    """VIP keys get partition 0 to themselves; every other key is spread (by CRC-32) over the rest."""
    if len(partitions) == 1:
        return partitions[0]
    if key is not None and key.startswith(b"vip-"):
        return partitions[0]
    rest = partitions[1:]
    return rest[zlib.crc32(key or b"") % len(rest)]


async def main(bootstrap: str, topic: str, args) -> None:
    # 1. A callable partitioner: it is called for every record sent without an explicit partition.
    async with Producer(bootstrap, partitioner=vip_first) as producer:
        partitions = await producer.partitions_for(topic)
        print(f"topic {topic} has {len(partitions)} partitions: {partitions}")
        for key in ("vip-alice", "bob", "vip-carol", "dave", "erin"):
            metadata = await producer.send_and_wait(topic, b"hello", key=key.encode())
            print(f"vip_first: key {key} -> partition {metadata.partition} offset {metadata.offset}")

    # 2. RoundRobinPartitioner: the same key five-plus times still cycles through every partition.
    #    (partitioner="round_robin" builds the same thing.)
    async with Producer(bootstrap, partitioner=RoundRobinPartitioner()) as producer:
        handles = [await producer.send(topic, f"tick {i}".encode(), key=b"same-key") for i in range(8)]
        order = [(await handle).partition for handle in handles]
        print(f"round_robin: 8 records with key same-key -> partitions {order}")


if __name__ == "__main__":
    sys.exit(run(main, __file__, __doc__))
