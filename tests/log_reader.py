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


ABORT, COMMIT = 0, 1  # control record key: int16 version, int16 type


def control_type(batch) -> int:
    """ABORT or COMMIT, from a control batch's one record's key."""
    key = batch.records[0].key
    return int.from_bytes(key[2:4], "big", signed=True)


async def read_committed(host: str, port: int, topic: str, partition: int):
    """What a read_committed consumer must see in ``topic``/``partition``, worked out from the log itself
    (the embedded broker's own Fetch hands aborted records out, see BROKER.md): ``(values, markers)``.

    Records of a transactional batch become visible when their producer's next control batch is a COMMIT,
    and never if it is an ABORT or there is none yet (the transaction is still open). ``markers`` lists
    ``(producer_id, COMMIT | ABORT)`` in log order."""
    visible, markers = [], []
    open_transactions: dict[int, list] = {}
    for batch in await read_batches(host, port, topic, partition):
        if batch.is_control:
            kind = control_type(batch)
            markers.append((batch.producer_id, kind))
            pending = open_transactions.pop(batch.producer_id, [])
            if kind == COMMIT:
                visible.extend(pending)
        elif batch.is_transactional:
            open_transactions.setdefault(batch.producer_id, []).extend(r.value for r in batch.records)
        else:
            visible.extend(r.value for r in batch.records)
    return visible, markers
