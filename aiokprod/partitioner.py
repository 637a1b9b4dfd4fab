"""Partitioners: where a record goes when the caller did not name a partition.

- ``DefaultPartitioner``: keyed records go to ``(murmur2(key) & 0x7fffffff) % n`` exactly as the Java client
  does (so keys land where Java producers put them); keyless records are "uniform sticky" (KIP-794): they stay
  on one partition until about ``batch_size`` bytes went there, then move to another chosen at random, so
  batches fill up instead of one record going to each partition.
- ``RoundRobinPartitioner``: every record (keyed or not) to the next partition in turn.
- Any callable ``(topic, key_bytes, partitions) -> int`` is a custom partitioner; ``partitions`` is the list of
  the topic's partition ids.
"""
from __future__ import annotations

import random

from .codec import key_partition


class DefaultPartitioner:
    """Java-compatible murmur2 for keys, uniform sticky for keyless records."""

    name = "default"

    def __init__(self, batch_size: int = 16384) -> None:
        self.batch_size = batch_size
        # topic -> [sticky partition, bytes sent there since it was chosen]
        self._sticky: dict[str, list] = {}
        self._random = random.Random()

    def partition(self, topic: str, key: bytes | None, num_partitions: int) -> int:
        if key is not None:
            return key_partition(key, num_partitions)
        state = self._sticky.get(topic)
        if state is None or state[0] >= num_partitions:
            state = self._sticky[topic] = [self._random.randrange(num_partitions), 0]
        return state[0]

    def record_appended(self, topic: str, partition: int, num_bytes: int, num_partitions: int) -> None:
        """Count bytes on the sticky partition; switch once about a batch's worth went there (KIP-794)."""
        state = self._sticky.get(topic)
        if state is None or state[0] != partition:
            return
        state[1] += num_bytes
        if state[1] >= self.batch_size:
            state[1] = 0
            if num_partitions > 1:
                # Any partition but the current one, uniformly.
                choice = self._random.randrange(num_partitions - 1)
                state[0] = choice if choice < partition else choice + 1


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

    def __init__(self, fn) -> None:
        self._fn = fn

    def partition(self, topic: str, key: bytes | None, num_partitions: int) -> int:
        return self._fn(topic, key, list(range(num_partitions)))

    def record_appended(self, topic: str, partition: int, num_bytes: int, num_partitions: int) -> None:
        pass


def make_partitioner(spec, batch_size: int):
    """``None``/"default"/"murmur2" -> default; "round_robin"; an object with ``partition``; or a callable."""
    if spec is None or spec in ("default", "murmur2", "murmur2_random", "consistent_random"):
        return DefaultPartitioner(batch_size)
    if spec in ("round_robin", "roundrobin"):
        return RoundRobinPartitioner()
    if hasattr(spec, "partition") and hasattr(spec, "record_appended"):
        return spec
    if callable(spec):
        return CallablePartitioner(spec)
    raise ValueError(f"partitioner must be 'default', 'round_robin' or a callable, got {spec!r}")
