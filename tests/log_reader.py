"""Read a partition's log as record batches, with their producer fields: a raw Fetch through our connection,
decoded by the codec's decoder (whose correctness is checked against kafka-python elsewhere).

Consumers hide producer ids, sequences and control batches; the idempotence tests need exactly those.
"""
from __future__ import annotations

from aiokprod.codec import decode_record_batches
from aiokprod.connection import BrokerConnection
from aiokprod.protocol import FetchRequest


async def read_batches(host: str, port: int, topic: str, partition: int, max_bytes: int = 16 * 1024 * 1024):
    """Every batch of ``topic``/``partition`` from offset 0 to the high watermark (an empty partition
    costs one ``max_wait_ms`` of 0.5 s)."""
    connection = await BrokerConnection.open(host, port)
    try:
        version = connection.version_for(FetchRequest, 4, 12)  # 13+ name topics by id
        batches = []
        offset = 0
        while True:
            request = FetchRequest(
                replica_id=-1, max_wait_ms=500, min_bytes=1, max_bytes=max_bytes, isolation_level=0,
                topics=[FetchRequest.FetchTopic(topic=topic, partitions=[
                    FetchRequest.FetchPartition(partition=partition, fetch_offset=offset,
                                                partition_max_bytes=max_bytes)])])
            # Tansu answers min_bytes=0 with an empty response list, so ask for at least one byte.
            response = await connection.request(request, version)
            if not response.responses:
                return batches
            data = response.responses[0].partitions[0]
            if data.error_code:
                raise AssertionError(f"Fetch {topic}-{partition} at {offset}: error {data.error_code}")
            new = decode_record_batches(data.records or b"", allow_partial_tail=True)
            new = [b for b in new if b.base_offset + b.last_offset_delta >= offset]
            if not new:
                return batches
            batches.extend(new)
            offset = new[-1].base_offset + new[-1].last_offset_delta + 1
            if offset >= data.high_watermark:
                return batches
    finally:
        connection.close()
