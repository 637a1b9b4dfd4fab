"""What a delivered record learns from the broker: ``RecordMetadata``.

Plain Python and shared by both handle twins (the compiled one imports it), so a caller never sees two
different metadata types depending on which implementation loaded.
"""
from __future__ import annotations

from typing import NamedTuple

__all__ = ["RecordMetadata"]


class RecordMetadata(NamedTuple):
    """Where a record landed.

    ``offset`` is -1 when the producer ran with ``acks=0`` (the broker sends no answer, so there is no
    offset to report). ``timestamp`` is the broker's log-append time when the topic uses
    ``message.timestamp.type=LogAppendTime``, else the record's own (create) timestamp, in milliseconds.
    """

    topic: str
    partition: int
    offset: int
    timestamp: int
