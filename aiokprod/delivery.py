"""Failed records, recovered from their batch when it fails: ``Producer(..., on_delivery_error=fn)``.

The hot path keeps nothing per record beyond what the batch already holds (its builder's bytes and each
handle's timestamp). When a batch fails, :class:`DeliveryErrorReporter` decodes its records once from those
bytes and calls ``fn(error, record)`` for each, with a :class:`FailedRecord` (topic, partition, key, value,
headers, timestamp_ms). The calls are made from the batch's loop callback (before the handles' own
callbacks), never inside the sender's bookkeeping, so ``fn`` may start a task that sends elsewhere (a
dead-letter topic). A ``fn`` that raises is logged and the next record is still reported.
"""
from __future__ import annotations

import logging
from typing import Any, Callable, NamedTuple, Optional

from .codec import decode_record_batches

log = logging.getLogger("aiokprod.producer")


class FailedRecord(NamedTuple):
    """A record whose delivery failed, as the producer appended it (key and value serialized)."""

    topic: str
    partition: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: list[tuple[str, Optional[bytes]]]
    timestamp_ms: int


def batch_records(batch: Any) -> list[FailedRecord]:
    """Decode a batch's records from its bytes: the ones it was sent with, else built now (a batch that
    failed before it was ever drained). Header keys come back as str, as they were given."""
    payload = batch.payload
    if payload is None:
        payload = batch.builder.build()
    records: list[FailedRecord] = []
    topic, partition = batch.topic, batch.partition
    for decoded in decode_record_batches(payload):
        for record in decoded.records:
            headers = [(key.decode("utf-8", "replace") if isinstance(key, (bytes, bytearray)) else key, value)
                       for key, value in (record.headers or ())]
            records.append(FailedRecord(topic, partition, record.key, record.value, headers,
                                        record.timestamp_ms))
    return records


class DeliveryErrorReporter:
    """Calls ``fn(error, record)`` once per record of every failed batch (see the module docstring)."""

    def __init__(self, fn: Callable[[BaseException, FailedRecord], Any]) -> None:
        self.fn = fn

    def batch_failed(self, batch: Any, error: BaseException) -> None:
        """The sender failed ``batch`` with ``error``: decode its records now (the builder is still there),
        report them from the batch's loop callback. The batch's error counts as retrieved: ``fn`` took it."""
        try:
            records = batch_records(batch)
        except Exception:  # a batch we cannot decode must not stop the others being failed
            log.exception("cannot recover the records of failed batch %r for on_delivery_error", batch)
            return
        completion = batch.completion
        completion.log_unretrieved = False
        completion.add_batch_callback(lambda _completion: self._report(error, records))

    def _report(self, error: BaseException, records: list[FailedRecord]) -> None:
        fn = self.fn
        for record in records:
            try:
                fn(error, record)
            except Exception:
                log.exception("on_delivery_error %r raised for a record to %s-%s; skipped", fn, record.topic,
                              record.partition)
