"""The Java client's keyless sticky partitioning (KIP-794) as a small model, to pin aiokprod's cadence to Java's.

What the model follows (Kafka's RecordAccumulator.append and BuiltInPartitioner.updatePartitionInfo): after
each keyless record the partitioner placed, the sticky partition's counter grows by the bytes the record added
to its batch: the growth of the batch's size when the record joined the open batch, the whole new batch
(61-byte header + the record) when it opened one; once the counter reaches ``batch_size`` the partitioner
moves to another partition and the counter starts again at 0. A record joins the open batch when the batch
plus the record fit in ``batch_size`` (Java's ``hasRoomFor``; a first record always fits).

Record sizes come from kafka-python's magic-2 encoder (``DefaultRecordBatchBuilder.size_in_bytes``), not from
aiokprod's codec.

Not modelled, because aiokprod does not do it: Java's ``enableSwitch``, which defers the switch while the
partition's last batch is not full (up to 2 x ``batch_size``); and adaptive partitioning by queue sizes.
"""
from __future__ import annotations

from kafka.record.default_records import DefaultRecordBatchBuilder

BATCH_HEADER = DefaultRecordBatchBuilder.HEADER_STRUCT.size  # 61


def record_size(offset_delta: int, timestamp_delta: int, key, value, headers=()) -> int:
    # kafka-python takes header keys as str only (their UTF-8 is what is written either way).
    headers = [(k.decode() if isinstance(k, bytes) else k, v) for k, v in headers or ()]
    return DefaultRecordBatchBuilder.size_in_bytes(offset_delta, timestamp_delta, key, value, headers)


class JavaSticky:
    """Per partition the open batch ``[records, bytes, first timestamp]`` and the record count of every batch
    made, and the sticky counter."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.open: dict[int, list] = {}
        self.batches: dict[int, list[int]] = {}
        self.counted = 0

    def append(self, partition: int, timestamp_ms: int, key, value, headers=()) -> int:
        """Append a record as the accumulator does; return the bytes it added (Java's ``appendedBytes``)."""
        batch = self.open.get(partition)
        if batch is not None:
            count, size, first = batch
            grown = record_size(count, timestamp_ms - first, key, value, headers)
            if size + grown <= self.batch_size:
                batch[0] += 1
                batch[1] += grown
                self.batches[partition][-1] += 1
                return grown
        grown = BATCH_HEADER + record_size(0, 0, key, value, headers)
        self.open[partition] = [1, grown, timestamp_ms]
        self.batches.setdefault(partition, []).append(1)
        return grown

    def keyless(self, partition: int, timestamp_ms: int, value, headers=()) -> bool:
        """A keyless record on the sticky ``partition``; True if the partitioner switches after it."""
        self.counted += self.append(partition, timestamp_ms, None, value, headers)
        if self.counted >= self.batch_size:
            self.counted = 0
            return True
        return False

    def drained(self) -> None:
        """The sender took every batch: the next record of each partition opens a new one."""
        self.open.clear()
