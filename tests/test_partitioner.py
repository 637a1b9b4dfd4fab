"""Partitioners without a broker: Java murmur2 vectors, uniform-sticky switching, round robin, custom ones."""
from __future__ import annotations

import pytest

from aiokprod.partitioner import (
    CallablePartitioner, DefaultPartitioner, RoundRobinPartitioner, make_partitioner,
)
from helpers import JAVA_MURMUR2, java_partition


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 12, 100, 1009])
def test_keyed_records_follow_java_murmur2(n):
    partitioner = DefaultPartitioner()
    for key in JAVA_MURMUR2:
        assert partitioner.partition("t", key, n) == java_partition(key, n)
        # Keys are stable: the same key, the same partition, whatever was sent before.
        partitioner.record_appended("t", java_partition(key, n), 10_000, n)
        assert partitioner.partition("t", key, n) == java_partition(key, n)


def test_keyed_bytes_like_keys():
    partitioner = DefaultPartitioner()
    assert partitioner.partition("t", bytearray(b"foobar"), 7) == java_partition(b"foobar", 7)
    assert partitioner.partition("t", memoryview(b"abc"), 7) == java_partition(b"abc", 7)


def test_empty_key_is_a_key():
    # Java hashes an empty key like any other (murmur2 of b"" with the seed); only null is keyless.
    # Java: Utils.murmur2(new byte[0]) == 275646681, so the partition is 275646681 % n (already positive).
    partitioner = DefaultPartitioner()
    for n in (1, 3, 7, 1000, 2**31 - 1):
        assert partitioner.partition("t", b"", n) == (275646681 & 0x7FFFFFFF) % n, n
    assert partitioner.partition("t", b"", 1000) == 681


def test_keyless_sticks_until_about_a_batch_then_switches():
    partitioner = DefaultPartitioner(batch_size=1000)
    n = 6
    first = partitioner.partition("t", None, n)
    for _ in range(9):  # 9 * 100 bytes < 1000: stays
        partitioner.record_appended("t", first, 100, n)
        assert partitioner.partition("t", None, n) == first
    partitioner.record_appended("t", first, 100, n)  # 1000 bytes: switches, to another partition
    second = partitioner.partition("t", None, n)
    assert second != first and 0 <= second < n
    # Bytes counted on another partition (explicit sends) do not move the sticky one.
    partitioner.record_appended("t", (second + 1) % n, 10_000, n)
    assert partitioner.partition("t", None, n) == second


def test_keyless_switches_uniformly_over_the_other_partitions():
    partitioner = DefaultPartitioner(batch_size=1)
    n = 4
    seen = {p: 0 for p in range(n)}
    previous = partitioner.partition("t", None, n)
    for _ in range(4000):
        partitioner.record_appended("t", previous, 1, n)
        current = partitioner.partition("t", None, n)
        assert current != previous
        seen[current] += 1
        previous = current
    # Each partition gets about a quarter; a loose band, far from any plausible random deviation.
    assert all(700 < count < 1300 for count in seen.values()), seen


def test_keyless_single_partition_and_shrinking_topic():
    partitioner = DefaultPartitioner(batch_size=10)
    assert partitioner.partition("t", None, 1) == 0
    partitioner.record_appended("t", 0, 100, 1)
    assert partitioner.partition("t", None, 1) == 0
    partitioner = DefaultPartitioner(batch_size=10)
    for _ in range(50):
        p = partitioner.partition("u", None, 8)
        if p >= 2:
            break
        partitioner.record_appended("u", p, 10, 8)
    assert p >= 2
    assert partitioner.partition("u", None, 2) in (0, 1)  # a stale sticky partition is never returned


def test_keyless_topics_are_independent():
    partitioner = DefaultPartitioner(batch_size=100)
    a = partitioner.partition("a", None, 50)
    partitioner.record_appended("b", partitioner.partition("b", None, 50), 1000, 50)
    assert partitioner.partition("a", None, 50) == a


def test_round_robin_cycles_per_topic_keyed_or_not():
    partitioner = RoundRobinPartitioner()
    assert [partitioner.partition("t", b"k", 3) for _ in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [partitioner.partition("u", None, 2) for _ in range(3)] == [0, 1, 0]
    assert partitioner.partition("t", None, 3) == 1


def test_callable_partitioner_gets_topic_key_and_partition_list():
    calls = []

    def fn(topic, key, partitions):
        calls.append((topic, key, partitions))
        return len(key) % len(partitions)

    partitioner = make_partitioner(fn, 16384)
    assert isinstance(partitioner, CallablePartitioner)
    assert partitioner.partition("t", b"abcde", 3) == 2
    assert calls == [("t", b"abcde", [0, 1, 2])]


def test_make_partitioner_names_and_objects():
    assert isinstance(make_partitioner(None, 100), DefaultPartitioner)
    assert make_partitioner("murmur2_random", 100).batch_size == 100
    assert isinstance(make_partitioner("round_robin", 100), RoundRobinPartitioner)
    custom = RoundRobinPartitioner()
    assert make_partitioner(custom, 100) is custom
    with pytest.raises(ValueError, match="partitioner must be"):
        make_partitioner("random", 100)
    with pytest.raises(ValueError, match="partitioner must be"):
        make_partitioner(42, 100)
