"""Shared helpers of the producer tests: read back what was written, with clients no one here wrote.

``read_back`` uses confluent-kafka's (librdkafka's) consumer with ``assign`` at offset 0, never
``subscribe``: a group join takes seconds on Tansu and we only want the log. It runs in a thread
(``read_back_async``) so a test's event loop, and the producer on it, keep running meanwhile.
"""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Optional

from confluent_kafka import Consumer, KafkaError, TopicPartition


@dataclass(frozen=True)
class Stored:
    """One record as the consumer saw it."""

    topic: str
    partition: int
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: tuple  # ((key str, value bytes or None), ...)
    timestamp: int


def read_back(bootstrap: str, topic: str, partitions, expected: int, timeout: float = 20.0,
              settle: float = 0.3, consumer_config: Optional[dict] = None) -> list[Stored]:
    """Every record of ``topic``'s ``partitions`` from offset 0: poll until ``expected`` arrived (then a short
    ``settle`` more, to catch duplicates) or ``timeout`` passed. Returned sorted by (partition, offset)."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": "aiokprod-readback",  # required by librdkafka, unused with assign()
        "enable.auto.commit": False,
        "enable.partition.eof": False,
        "auto.offset.reset": "earliest",
        "fetch.wait.max.ms": 50,
        "topic.metadata.refresh.interval.ms": 1000,
        "log_level": 3,
        **(consumer_config or {}),  # e.g. TLS or SASL settings
    })
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records: list[Stored] = []
        deadline = time.monotonic() + timeout
        settle_until = None
        while True:
            now = time.monotonic()
            if now >= deadline or (settle_until is not None and now >= settle_until):
                break
            for message in consumer.consume(num_messages=1000, timeout=0.1):
                error = message.error()
                if error is not None:
                    if error.code() in (KafkaError._PARTITION_EOF,):
                        continue
                    raise AssertionError(f"consumer error on {topic}: {error}")
                _, timestamp = message.timestamp()
                records.append(Stored(
                    message.topic(), message.partition(), message.offset(), message.key(), message.value(),
                    tuple(message.headers() or ()), timestamp))
            if settle_until is None and len(records) >= expected:
                settle_until = time.monotonic() + settle
        records.sort(key=lambda r: (r.partition, r.offset))
        return records
    finally:
        consumer.close()


async def read_back_async(bootstrap: str, topic: str, partitions, expected: int, timeout: float = 20.0,
                          settle: float = 0.3, consumer_config: Optional[dict] = None) -> list[Stored]:
    return await asyncio.to_thread(read_back, bootstrap, topic, partitions, expected, timeout, settle,
                                   consumer_config)


def other_tasks() -> set:
    """Tasks of the running loop other than the current one (a stopped producer must leave none)."""
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() if task is not current and not task.done()}


async def no_tasks_left(timeout: float = 2.0) -> set:
    """Wait (briefly) for tasks that are finishing to finish; return those still alive."""
    deadline = time.monotonic() + timeout
    while other_tasks() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return other_tasks()


# Java's murmur2 results for these keys (clients/src/test/.../UtilsTest.java), from kafka-protocol/README.md.
JAVA_MURMUR2 = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def java_partition(key: bytes, n: int) -> int:
    return (JAVA_MURMUR2[key] & 0x7FFFFFFF) % n
