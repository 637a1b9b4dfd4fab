"""Partitioners: where a record goes when the caller did not name a partition.

- ``DefaultPartitioner``: keyed records go to ``(murmur2(key) & 0x7fffffff) % n`` exactly as the Java client
  does (so keys land where Java producers put them); keyless records are "uniform sticky" (KIP-794): they stay
  on one partition until ``batch_size`` bytes went there, then move to another chosen at random, so batches
  fill up instead of one record going to each partition. The bytes are counted as the Java client counts
  them: what each keyless record added to its batch (its encoded size there; for a record that opened a new
  batch, the new batch's size, 61-byte header included), not the record's upper-bound size.
- ``RoundRobinPartitioner``: every record (keyed or not) to the next partition in turn.
- Any callable ``(topic, key_bytes, partitions) -> int`` is a custom partitioner; ``partitions`` is the list of
  the topic's partition ids.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

from .appender import RecordAppender
from .codec import key_partition


class Partitioner(Protocol):
    """What the producer asks of a partitioner object (any object with these two methods will do)."""

    def partition(self, topic: str, key: bytes | None, num_partitions: int) -> int: ...

    # Called for each keyless record the partitioner placed, with the bytes it added to its batch (the whole
    # new batch, header included, if it opened one), as Java's KIP-794 partitioner is told.
    def record_appended(self, topic: str, partition: int, num_bytes: int, num_partitions: int) -> None: ...


class DefaultPartitioner:
    """Java-compatible murmur2 for keys, uniform sticky for keyless records.

    The sticky state (per topic: the partition and the bytes sent there) lives in a ``RecordAppender``:
    the producer passes its own, whose ``append`` (send()'s compiled fast path) places keyless records from
    the same state and counts their bytes with the same switching rule. One copy of the state means both
    paths switch at the same byte, with the same random draws. Built alone, it makes a private one.
    """

    name = "default"

    def __init__(self, batch_size: int = 16384, sticky: RecordAppender | None = None) -> None:
        self.batch_size = batch_size
        self.sticky = RecordAppender(batch_size) if sticky is None else sticky
        if self.sticky.batch_size != batch_size:
            raise ValueError(f"sticky state counts to {self.sticky.batch_size} bytes, not {batch_size}")
        self._sticky_partition = self.sticky.sticky_partition

    def partition(self, topic: str, key: bytes | None, num_partitions: int) -> int:
        if key is not None:
            return key_partition(key, num_partitions)
        # Stays on one partition until batch_size bytes went there (record_appended), then moves to
        # another chosen at random; a new random one if the topic shrank below it.
        return self._sticky_partition(topic, num_partitions)

    def record_appended(self, topic: str, partition: int, num_bytes: int, num_partitions: int) -> None:
        """A keyless record this partitioner placed was appended, adding ``num_bytes`` to its batch (the whole
        batch, header included, if it opened the batch): count them on the sticky partition and switch once
        ``batch_size`` bytes went there (KIP-794)."""
        self.sticky.record_appended(topic, partition, num_bytes, num_partitions)


class RoundRobinPartitioner:
    """Each record to the next partition in turn (per topic), keyed or not."""

    name = "round_robin"

    def __init__(self) -> None:
        self._next: dict[str, int] = {}

    def partition(self, topic: str, key: bytes | None, num_partitions: int) -> int:
        index = self._next.get(topic, 0)
        self._next[topic] = index + 1
        return index % num_partitions

    def record_appended(self, topic: str, partition: int, num_bytes: int, num_partitions: int) -> None:
        pass


class CallablePartitioner:
    """Adapts a user's ``fn(topic, key_bytes, partitions) -> int``."""

    name = "custom"

    def __init__(self, fn: Callable[[str, Optional[bytes], list[int]], int]) -> None:
        self._fn = fn

    def partition(self, topic: str, key: bytes | None, num_partitions: int) -> int:
        partition: int = self._fn(topic, key, list(range(num_partitions)))
        return partition

    def record_appended(self, topic: str, partition: int, num_bytes: int, num_partitions: int) -> None:
        pass


def make_partitioner(spec: Any, batch_size: int, sticky: RecordAppender | None = None) -> Partitioner:
    """``None``/"default"/"murmur2" -> default (keeping its sticky state in ``sticky`` if given);
    "round_robin"; an object with ``partition`` and ``record_appended``; or a callable."""
    if spec is None or spec in ("default", "murmur2", "murmur2_random", "consistent_random"):
        return DefaultPartitioner(batch_size, sticky)
    if spec in ("round_robin", "roundrobin"):
        return RoundRobinPartitioner()
    if hasattr(spec, "partition") and hasattr(spec, "record_appended"):
        partitioner: Partitioner = spec
        return partitioner
    if callable(spec):
        return CallablePartitioner(spec)
    raise ValueError(f"partitioner must be 'default', 'round_robin' or a callable, got {spec!r}")
