"""How many records the broker holds in each topic, asked independently of the clients under test.

Kafka's high watermark (ListOffsets LATEST) is the offset after the last record. The embedded broker's
(Tansu 0.6) is the base offset of the partition's last *batch* (checked: 1,000 records in ~30 batches per
partition, each high watermark 4-6 below the last offset + 1), so the watermarks alone undercount. So each
partition is read from its high watermark to its end, and the log ends after the highest offset seen. On a
real Kafka that read finds nothing and the watermark stands. Offsets are assigned by the broker and
contiguous, so a lost or duplicated record shows up in the total.

The reader is librdkafka's consumer (confluent-kafka) when it is installed: truth from a client that is not
aiokprod. Without it, aiokprod's own ListOffsets and Fetch (with its record-batch decoder) do the count.
"""
from __future__ import annotations

import asyncio
import time
import uuid
from typing import Optional

READ_TIMEOUT = 30.0


def stored_counts(bootstrap: str, topics: list) -> tuple:
    """({topic: records in its log, or None if it could not be read}, the reader's name)."""
    if not topics:
        return {}, "none"
    try:
        import confluent_kafka  # noqa: F401
    except ImportError:
        return asyncio.run(count_with_aiokprod(bootstrap, topics)), "aiokprod Fetch"
    return count_with_librdkafka(bootstrap, topics), "librdkafka consumer"


def count_with_librdkafka(bootstrap: str, topics: list) -> dict:
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-verify-" + uuid.uuid4().hex[:8],
                         "enable.auto.commit": False, "enable.partition.eof": True, "log_level": 3})
    try:
        low: dict = {}
        end: dict = {}
        assign = []
        metadata = consumer.list_topics(timeout=10).topics
        for topic in topics:
            if topic not in metadata:
                continue
            for partition in metadata[topic].partitions:
                tp = (topic, partition)
                low[tp], end[tp] = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
                assign.append(TopicPartition(topic, partition, end[tp]))
        consumer.assign(assign)
        at_eof: set = set()
        deadline = time.monotonic() + READ_TIMEOUT
        while len(at_eof) < len(assign) and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            tp = (message.topic(), message.partition())
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    at_eof.add(tp)
                continue
            end[tp] = max(end[tp], message.offset() + 1)
        incomplete = {topic for topic, _ in set(end) - at_eof}
        counts: dict = {topic: None for topic in topics}
        for (topic, partition), last in end.items():
            if topic not in incomplete:
                counts[topic] = (counts[topic] or 0) + last - low[(topic, partition)]
        return counts
    finally:
        consumer.close()


async def count_with_aiokprod(bootstrap: str, topics: list) -> dict:
    from aiokprod.admin import EARLIEST, list_offsets

    counts: dict = {}
    for topic in topics:
        try:
            low = await list_offsets(bootstrap, topic, timestamp=EARLIEST)
            high = await list_offsets(bootstrap, topic)
            total = 0
            for partition, watermark in high.items():
                total += await _log_end(bootstrap, topic, partition, watermark) - low[partition]
            counts[topic] = total
        except Exception:  # noqa: BLE001 - the run then says its log could not be read
            counts[topic] = None
    return counts


async def _log_end(bootstrap: str, topic: str, partition: int, offset: int) -> int:
    """The offset after the last record of the partition, reading from ``offset`` (its high watermark)."""
    from aiokprod.codec import decode_record_batches
    from aiokprod.config import parse_bootstrap
    from aiokprod.connection import BrokerConnection
    from aiokprod.protocol import FetchRequest

    host, port = parse_bootstrap(bootstrap)[0]  # the embedded broker, or a single-node cluster's leader
    connection = await BrokerConnection.open(host, port)
    try:
        version = connection.version_for(FetchRequest, 4, 12)  # 13+ name topics by id
        end = offset
        while True:
            request = FetchRequest(
                replica_id=-1, max_wait_ms=100, min_bytes=1, max_bytes=16 << 20, isolation_level=0,
                topics=[FetchRequest.FetchTopic(topic=topic, partitions=[FetchRequest.FetchPartition(
                    partition=partition, fetch_offset=end, partition_max_bytes=16 << 20)])])
            response = await asyncio.wait_for(connection.request(request, version), READ_TIMEOUT)
            if not response.responses:
                return end
            data = response.responses[0].partitions[0]
            batches = [b for b in decode_record_batches(data.records or b"", allow_partial_tail=True)
                       if b.base_offset + b.last_offset_delta >= end]
            if not batches:
                return end
            end = batches[-1].base_offset + batches[-1].last_offset_delta + 1
    finally:
        connection.close()


def check(expected: int, acknowledged: Optional[int], delivered: Optional[int], errors: int,
          first_error: Optional[str], stored: Optional[int], warm_up: int = 0) -> list:
    """The problems with one run's delivery (empty: every record acknowledged and in the log, once).
    ``stored`` is the whole log, which also holds the ``warm_up`` records sent before the timed section."""
    problems = []
    if errors:
        problems.append(f"{errors} records failed (first: {first_error})")
    if delivered is not None and delivered != expected:
        problems.append(f"the application saw {delivered} of {expected} records delivered")
    if acknowledged is not None and acknowledged != expected:
        problems.append(f"the client counts {acknowledged} of {expected} records acknowledged")
    if stored is None:
        problems.append("the broker's log could not be read")
    elif stored != expected + warm_up:
        problems.append(f"the broker's log holds {stored} records, expected {expected + warm_up}"
                        + (f" ({expected} + {warm_up} warm-up)" if warm_up else ""))
    return problems
